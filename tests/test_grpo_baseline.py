"""grpo_baseline end to end on CPU: options, training, checkpoint/resume, dynamic sampling, the Hugging Face model path."""
import copy
import json
import os
import signal

import pytest
import torch

import cepo
import gcpo
import grpo_baseline as gb
from loop import dynamic_sampling, embedded_task, job
from loop.data import DEFAULT_INSTRUCTION, prompt_ids
from loop.embedded_task import char_tokenizer, load_task, warm_start
from loop.language_model import load_policy, pad_batch
from loop.options import parse_config

TIMING = ("t_generate", "t_score", "t_credit", "t_update", "peak_mem_mb")


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def final_weights(output_dir):
    return torch.load(os.path.join(output_dir, "checkpoint.pt"), weights_only=False)["model"]


def test_a_few_steps_of_grpo_train_and_log(tiny_cfg):
    cfg = tiny_cfg()
    summary = gb.train(cfg)
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all("eval_acc" in metrics[i] for i in (0, 2, 3))
    for m in metrics[1:]:
        assert 0 <= m["reward"] <= 1 and m["skipped_updates"] == 0
        assert m["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # one PPO epoch: on-policy
    assert any(m["grad_norm"] > 0 for m in metrics[1:])
    assert set(summary) >= {"start_acc", "final_acc", "sec_per_step", "peak_mem_mb"}
    assert os.path.getsize(os.path.join(cfg.output_dir, "curves.png")) > 1000
    start = load_policy(warm_start(cfg, *load_task(cfg), torch.device("cpu")), cfg, torch.device("cpu"))[0]
    trained = load_policy(os.path.join(cfg.output_dir, "final"), cfg, torch.device("cpu"))[0]
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters(), trained.parameters()))


def test_one_step_per_rollout_takes_pi_old_from_the_update_pass(tiny_cfg, tiny_policy):
    """At one optimizer step per rollout no scoring pass runs before the update (as TRL): the
    update's own log-probs, detached, are log pi_old. The step and the recorded log pi_old and
    entropy equal those of a batch scored beforehand, to float tolerance."""
    cfg = tiny_cfg()
    model, tok, rows, _ = tiny_policy(cfg)
    rows = rows[:cfg.prompts_per_step]
    prompts = [prompt_ids(tok, r["question"]) for r in rows]
    torch.manual_seed(0)
    batch, times, _ = gb.rollout(model, tok, rows, prompts, cfg, torch.device("cpu"), None)
    assert batch.old_logp is None and times["t_score"] == 0.0
    scored = copy.copy(batch)
    scored.old_logp, scored.entropy = gb.score_pi_old(model, batch, cfg)
    token_adv = gb.grpo_token_advantages(batch.advantages, batch.completion_mask)
    models = {}
    for name, b in (("lazy", batch), ("scored", scored)):
        models[name] = copy.deepcopy(model)
        gb.update(models[name], torch.optim.AdamW(models[name].parameters(), lr=1e-3), b, token_adv, cfg)
    torch.testing.assert_close(batch.old_logp, scored.old_logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch.entropy, scored.entropy, atol=1e-5, rtol=1e-5)
    for a, b in zip(models["lazy"].parameters(), models["scored"].parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), models["lazy"].parameters()))


def test_the_loop_scores_pi_old_before_the_credit_exactly_when_it_is_read(tiny_cfg, tmp_path):
    """log pi_old is scored before the credit when the method's credit reads it (reads_pi_old) or
    the update takes several optimizer steps (the ratio then needs pi_old after pi has moved);
    otherwise it is left to the update's first pass."""
    seen = []

    def spy(batch, *args):
        seen.append(batch.old_logp is not None)
        return gb.grpo_credit(batch, *args)
    for overrides, reads, scored in (({}, False, False), ({}, True, True), ({"num_iterations": 2}, False, True),
                                     ({"num_mini_batches": 2}, False, True)):
        seen.clear()
        cfg = tiny_cfg(max_steps=1, eval_steps=10, output_dir=str(tmp_path / f"{len(overrides)}{reads}{sorted(overrides)}"),
                       **overrides)
        gb.train(cfg, credit=spy, reads_pi_old=lambda cfg: reads)
        assert seen == [scored], (overrides, reads)


def test_the_chain_task_logs_credit_against_its_ground_truth(tiny_cfg, monkeypatch):
    """A step on the chain task logs GRPO's credit against the ground truth: uniform, so the share on
    decisive tokens is the uniform share, every role gets A (Â/A = 1), a first wrong token -1. The
    policy is a 1-step warm start; its responses are set (each group's reference solution, right in
    half the group and wrong from its first sum in the other half), so every group has a contrast."""
    cfg = tiny_cfg(task="chain", max_completion_length=64, max_steps=1, warm_start_steps=1, eval_steps=5, eval_size=2)
    tok = char_tokenizer()
    solution = {tuple(prompt_ids(tok, r["question"])): r["solution"] for r in load_task(cfg)[0]}

    def responses(model, tokenizer, prompts, cfg, device):
        texts = []
        for i, p in enumerate(prompts):
            right = solution[tuple(p)]
            first_sum = right.index("=") + 1
            texts.append(right if i % 2 == 0 else right[:first_sum] + str((int(right[first_sum]) + 1) % 10) + right[first_sum + 1:])
        _, _, ids, mask = pad_batch([[]] * len(texts), [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts],
                                    tokenizer.pad_token_id, device)
        return ids, mask, texts
    monkeypatch.setattr(gb, "generate", responses)
    gb.train(cfg)
    (m,) = read_metrics(cfg.output_dir)[1:]
    assert m["reward"] == 0.5 and m["zero_adv_groups"] == 0
    assert m["decisive_credit_share"] == pytest.approx(m["decisive_credit_share_uniform"], abs=1e-6)
    assert 0.05 < m["decisive_credit_share_uniform"] < 0.5
    credit = {k: v for k, v in m.items() if k.startswith("credit_") and v is not None}
    assert {"credit_pos_decisive", "credit_neg_decisive"} <= set(credit)
    assert all(v == pytest.approx(1.0) for v in credit.values())
    assert m["first_error_credit"] == pytest.approx(-1.0) and m["free_tag_entropy"] >= 0


def test_data_seed_fixes_the_prompts_and_seed_the_sampling(tiny_cfg, monkeypatch, tmp_path):
    """The benchmark's pairing: runs with one --data_seed see the same prompts whatever their --seed."""
    seen, rollout = [], gb.rollout
    monkeypatch.setattr(gb, "rollout", lambda model, tok, rows, *a, **k: seen.append([r["question"] for r in rows]) or
                        rollout(model, tok, rows, *a, **k))
    runs = {}
    for seed, data_seed in ((1, 5), (2, 5), (1, None), (2, None)):
        seen.clear()
        gb.train(tiny_cfg(max_steps=2, eval_steps=10, seed=seed, data_seed=data_seed, output_dir=str(tmp_path / f"{seed}{data_seed}")))
        runs[seed, data_seed] = list(seen)
    assert runs[1, 5] == runs[2, 5] and runs[1, None] != runs[2, None] and len(runs[1, 5]) == 2


def test_ppo_epochs_minibatches_and_kl_run(tiny_cfg):
    cfg = tiny_cfg(num_iterations=2, num_mini_batches=2, beta=0.1, loss_type="seq-mean-token-mean", max_steps=2)
    gb.train(cfg)
    last = read_metrics(cfg.output_dir)[-1]
    assert last["kl"] > 0 and last["skipped_updates"] == 0  # step 2: the policy has moved from the reference


def test_sigterm_ends_a_run_as_ctrl_c_does(monkeypatch, tmp_path):
    """A preemption's SIGTERM unwinds the run (its lock released) and says how to resume, as Ctrl-C."""
    monkeypatch.setattr(gb, "train", lambda cfg, **method: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit, match=f"^interrupted; rerun with --resume to continue {tmp_path}"):
        gb.main(gb.GRPOConfig, ["--output_dir", str(tmp_path)])
    assert signal.getsignal(signal.SIGTERM) is before


def test_resume_refuses_changed_options(tiny_cfg):
    gb.train(tiny_cfg(max_steps=2))
    with pytest.raises(ValueError, match="learning_rate"):
        gb.train(tiny_cfg(max_steps=3, resume=True, learning_rate=1e-3))


def test_a_non_finite_reward_is_one_line_not_a_run_of_skipped_updates(tiny_cfg, monkeypatch):
    """A reward function (Python API) that returns NaN once made every advantage NaN: every update
    skipped, and the run 'finished'. Now the first such reward stops it, naming the value: in the step-0
    evaluation, before a NaN accuracy is recorded, or in a step."""
    nan = lambda response, row: (float("nan"), False)  # noqa: E731
    for module in (embedded_task, job):  # the step's rewards, the job's evaluations
        monkeypatch.setattr(module, "task_reward", lambda cfg: nan)
    with pytest.raises(ValueError, match="^the reward function returned nan for a response; rewards must be finite"):
        gb.train(tiny_cfg(max_steps=1))
    assert not os.path.exists(os.path.join(tiny_cfg().output_dir, "metrics.jsonl"))  # no record of a NaN accuracy
    monkeypatch.setattr(job, "evaluate", lambda *args: 0.5)
    with pytest.raises(ValueError, match="^the reward function returned nan for a response; rewards must be finite"):
        gb.train(tiny_cfg(max_steps=1, output_dir=tiny_cfg().output_dir + "_steps"))


def test_non_finite_credit_skips_the_update_and_keeps_the_checkpoint_clean(tiny_cfg, capsys):
    cfg = tiny_cfg(max_steps=2)

    def nan_credit(batch, model, tokenizer, cfg, step):
        return torch.full_like(batch.completion_mask, float("nan")), {}

    gb.train(cfg, credit=nan_credit)
    assert [m["skipped_updates"] for m in read_metrics(cfg.output_dir)[1:]] == [1, 1]
    assert "non-finite" in capsys.readouterr().err
    start = load_policy(warm_start(cfg, *load_task(cfg), torch.device("cpu")), cfg, torch.device("cpu"))[0]
    for name, value in start.state_dict().items():
        assert torch.equal(value, final_weights(cfg.output_dir)[name]), name



CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_real_path_loads_a_saved_model_and_a_local_dataset(tmp_path, capsys):
    """Any causal LM and any dataset: a tiny model saved with save_pretrained (tokenizer with a chat
    template) and a GSM8K-shaped jsonl file, loaded back through the public APIs."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"problem": f"What is {a} plus {a}?", "solution": f"{a}+{a}={2 * a}.\n#### {2 * a}"} for a in range(12)]
    rows.append({"problem": "broken row", "solution": "no final answer"})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = gb.GRPOConfig(model=str(tmp_path / "model"), dataset=str(tmp_path / "data.jsonl"), question_field="problem",
                        answer_field="solution", output_dir=str(tmp_path / "run"), eval_size=3, prompts_per_step=2,
                        num_generations=2, max_completion_length=6, max_steps=2, eval_steps=2, save_steps=2)
    gb.train(cfg)
    assert "skipped 1 of" in capsys.readouterr().err
    metrics = read_metrics(cfg.output_dir)
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[-1]["skipped_updates"] == 0
    _, loaded_tok = load_policy(cfg.model, cfg, torch.device("cpu"))
    prompt = loaded_tok.decode(prompt_ids(loaded_tok, "What is 1 plus 1?", DEFAULT_INSTRUCTION))
    assert prompt.startswith("<user>What is 1 plus 1?") and prompt.endswith("<assistant>")


def test_keep_informative_groups_prefers_mixed_groups_and_keeps_the_batch_size():
    G, pad = 2, 0

    def fake(rewards, width):
        n = len(rewards)
        return ([{"answer": str(i)} for i in range(n)], [[1]] * n, torch.full((n, width), 7), torch.ones(n, width),
                [f"t{width}"] * n, torch.tensor(rewards), torch.ones(n, dtype=torch.bool))

    pool = [fake([1.0, 1.0, 0.0, 1.0], 3), fake([0.0, 0.0, 1.0, 0.0], 5)]  # groups: right, mixed | wrong, mixed
    (rows, prompts, ids, mask, texts, rewards, sampled), stats = dynamic_sampling.keep_informative_groups(pool, 2, G, pad)
    assert rewards.tolist() == [0.0, 1.0, 1.0, 0.0] and stats["informative_groups"] == 2
    assert ids.shape == (4, 5) and mask[:2, 3:].sum() == 0 and ids[0, 3:].tolist() == [pad, pad]
    (_, _, ids, _, _, rewards, _), stats = dynamic_sampling.keep_informative_groups(pool[:1], 2, G, pad)  # too few: topped up
    assert rewards.tolist() == [0.0, 1.0, 1.0, 1.0] and stats["informative_groups"] == 1 and ids.shape == (4, 3)


def test_dynamic_sampling_runs_and_fills_the_batch_with_informative_groups(tiny_cfg, monkeypatch):
    """Each step's first round is all wrong, so every group is dropped; the second round's groups are
    mixed and fill the batch."""
    cfg = tiny_cfg(dynamic_sampling=True, max_resample_rounds=2, max_steps=2)
    B, G = cfg.prompts_per_step, cfg.num_generations
    queue = [[0.0] * B * G, ([1.0] + [0.0] * (G - 1)) * B] * 2
    monkeypatch.setattr(gb, "verified_rewards", lambda texts, rows, cfg, stats: queue.pop(0))
    gb.train(cfg)
    assert not queue
    for m in read_metrics(cfg.output_dir)[1:]:
        assert m["sampling_rounds"] == 2 and m["informative_groups"] == B and m["zero_adv_groups"] == 0


@pytest.mark.parametrize("argv, flag", [
    (["--num_generations", "1"], "--num_generations"),
    (["--learning_rate", "-1e-5"], "--learning_rate"),
    (["--temperature", "0"], "--temperature"),
    (["--num_mini_batches", "3"], "--num_mini_batches"),
    (["--loss_type", "sum"], "--loss_type"),
    (["--epsilon", "1.5"], "--epsilon"),
    (["--no_such_flag", "1"], "--no_such_flag"),
])
def test_bad_options_exit_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(gb.GRPOConfig, argv)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_options_parse_with_trl_names():
    cfg = parse_config(gb.GRPOConfig, ["--num_generations", "4", "--epsilon_high", "0.2", "--beta", "0.04",
                                          "--scale_rewards", "none", "--resume"])
    assert (cfg.num_generations, cfg.epsilon_high, cfg.beta, cfg.scale_rewards, cfg.resume) == (4, 0.2, 0.04, "none", True)


def tiny_llama_dir(path, **config):
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = char_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{"vocab_size": len(tok), **config}, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_prompts_and_responses_must_fit_the_models_context_and_held_out_prompts_are_filtered(tmp_path, monkeypatch):
    model = tiny_llama_dir(tmp_path / "model", max_position_embeddings=64)
    os.makedirs(tmp_path / "data")
    short = [{"question": f"{a}+{a}?", "answer": str(2 * a)} for a in range(12)]
    for split, rows in (("train", short), ("test", short[:3] + [{"question": "9+" * 100 + "9?", "answer": "909"}])):
        (tmp_path / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = dict(model=model, dataset=str(tmp_path / "data"), instruction="", max_prompt_length=40, prompts_per_step=2,
               num_generations=2, max_steps=1, eval_size=8)
    evaluated = []

    def evaluate(model, tokenizer, rows, *args):
        evaluated.append([r["question"] for r in rows])
        return 0.0
    monkeypatch.setattr(job, "evaluate", evaluate)
    gb.train(gb.GRPOConfig(**cfg, max_completion_length=20, output_dir=str(tmp_path / "fits")))
    assert evaluated[0] == [r["question"] for r in short[:3]]  # the 201-character held-out prompt was skipped
    evaluated.clear()
    with pytest.raises(ValueError, match="a prompt of 7 tokens \\+ --max_completion_length 60 exceed the model's context of "
                                         "64 positions; lower --max_prompt_length to at most 4"):
        gb.train(gb.GRPOConfig(**cfg, max_completion_length=60, output_dir=str(tmp_path / "too_long")))
    assert not evaluated  # refused before the step-0 evaluation


def test_the_contexts_a_method_scores_responses_under_must_fit_the_models_context(tmp_path, monkeypatch):
    """Seam 0: GCPO's x- and CEPO's prompt + hint, each with a response, must fit in the model's
    context as the prompt must; refused in one line before the step-0 evaluation, where a run used
    to index past the position embeddings at its first live group (or scored past the trained
    context of a rotary model)."""
    model = tiny_llama_dir(tmp_path / "model", max_position_embeddings=64)
    os.makedirs(tmp_path / "data")
    rows = [{"question": f"{a}+{a}?", "answer": str(2 * a)} for a in range(12)]
    long_answer = [{"question": "1+1?", "answer": "7" * 50}]  # a hint of 51 tokens: 5 + 51 + 20 > 64
    longer = [{"question": "1+1?", "answer": "7" * 58}]
    for name, split in (("short", rows), ("long", rows[:9] + long_answer + rows[9:]), ("longer", rows[:3] + longer)):
        os.makedirs(tmp_path / name)
        for part in ("train", "test"):
            (tmp_path / name / f"{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split))
    evaluated = []
    monkeypatch.setattr(job, "evaluate", lambda *args: evaluated.append(1) or 0.0)

    def run(config, method, data, **options):
        cfg = config(model=model, dataset=str(tmp_path / data), instruction="", max_prompt_length=40, prompts_per_step=2,
                     num_generations=2, max_steps=1, eval_size=4, max_completion_length=20,
                     output_dir=str(tmp_path / f"run{len(os.listdir(tmp_path))}"), **options)
        gb.train(cfg, **method.METHOD)

    # the reference's request adds 51 tokens to the longest prompt, 7 tokens
    with pytest.raises(ValueError, match="GCPO's negative prompt x- \\(--negative_instruction\\) of 58 tokens \\+ "
                                         "--max_completion_length 20 exceed "
                                         "the model's context of 64 positions \\(it adds up to 51 tokens to a prompt\\); "
                                         "lower --max_completion_length"):
        run(gcpo.GCPOConfig, gcpo, "short")
    with pytest.raises(ValueError, match="CEPO's prompt \\+ answer hint \\(--hint_template\\) of 56 tokens \\+ "
                                         "--max_completion_length 20"):
        run(cepo.CEPOConfig, cepo, "long")
    with pytest.raises(ValueError, match="CEPO's prompt \\+ answer hint"):
        run(cepo.CEPOConfig, cepo, "long", teacher="rlsd")  # RLSD scores x + hint(r+) + y as well
    with pytest.raises(ValueError, match="shorten what the method adds \\(its option above\\)"):
        run(gcpo.GCPOConfig, gcpo, "short", negative_instruction=" Be wrong." * 7)  # 70 tokens: no row can fit
    assert not evaluated  # each refused before the step-0 evaluation
    with pytest.raises(ValueError, match="CEPO's prompt \\+ answer hint .* of 64 tokens .*; remove the 2 rows that cannot "
                                         "fit, the first whose question begins '1\\+1\\?'$"):  # in both splits; no option
        # makes a 59-token hint fit in 64 positions
        run(cepo.CEPOConfig, cepo, "longer")
    run(gcpo.GCPOConfig, gcpo, "short", negative_instruction=" Be wrong.")  # 16 + 20 tokens fit
    run(cepo.CEPOConfig, cepo, "short")
    run(gb.GRPOConfig, gb, "long")  # GRPO scores no hint: the long answer is no concern of it
    assert len(evaluated) == 6  # at step 0 and after the last step of each


def test_a_sampled_wrong_answer_too_long_for_the_context_gets_no_teacher(tmp_path):
    """CEPO's r- is a sampled answer, of any length: a group whose prompt + hint(r-) + response would
    not fit in the model's context gets GRPO's credit instead of a teacher pass past its positions
    (an IndexError in GPT-2's position embeddings); the other groups are scored as before."""
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id,
                                       eos_token_id=tok.eos_token_id)).eval()
    cfg = cepo.CEPOConfig(model="gpt2", max_completion_length=12, num_generations=2)
    rows = [{"question": "3+3?", "answer": "6"}, {"question": "4+4?", "answer": "8"}]
    prompts = [prompt_ids(tok, r["question"]) for r in rows for _ in range(2)]
    texts = ["#### 6", "#### " + "7" * 60, "#### 8", "#### 9"]  # group 0's r- cannot fit; group 1's can
    completions = [tok(t[:12], add_special_tokens=False).input_ids for t in texts]
    p_ids, p_mask, c_ids, c_mask = gb.pad_batch(prompts, completions, tok.pad_token_id, "cpu")
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    batch = gb.Rollouts([r for r in rows for _ in range(2)], prompts, p_ids, p_mask, c_ids, c_mask, texts, rewards,
                        gb.group_advantages(rewards, 2), group_size=2, sampled=torch.ones(4, dtype=torch.bool))
    token_adv, stats = cepo.cepo_credit(batch, model, tok, cfg, step=1)
    grpo = gb.grpo_token_advantages(batch.advantages, c_mask)
    assert stats["teacher_rows"] == 2  # group 1's two responses only
    assert torch.equal(token_adv[:2], grpo[:2]) and not torch.equal(token_adv[2:], grpo[2:])
    assert batch.scored_under[0]["r-"] == "None" and batch.scored_under[2]["r-"] == "9"


def test_an_eval_split_that_is_the_training_split_is_warned_of(tmp_path, capsys):
    """--eval_split train with --dataset_split train measures 'held-out' accuracy on training rows:
    said, before the model loads (here it cannot), not refused (a user may want exactly that)."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}?", "answer": str(2 * a)}) + "\n" for a in range(8)))
    for split, warned in (("train", True), ("test", False)):
        with pytest.raises(ValueError, match="--model"):
            gb.train(gb.GRPOConfig(model=str(tmp_path / "none"), dataset=str(data), eval_split=split, eval_size=2,
                                   output_dir=str(tmp_path / split)))
        assert ("warning: --eval_split train is the training split" in capsys.readouterr().err) == warned


def test_a_tokenizer_larger_than_the_models_embedding_is_one_line(tmp_path):
    """A tokenizer with ids past the model's embedding rows (another model's): refused at load, where
    the step-0 evaluation used to die in the embedding with an IndexError."""
    path = tiny_llama_dir(tmp_path / "model", vocab_size=50)  # the character tokenizer has 99 tokens
    with pytest.raises(ValueError, match=f"--model {path}: the tokenizer has 99 tokens but the model embeds 50"):
        load_policy(path, gb.GRPOConfig(), torch.device("cpu"))


def test_a_truncated_weights_file_is_one_line(tmp_path):
    path = tiny_llama_dir(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"--model {path}: cannot load a tokenizer and causal LM from it"):
        load_policy(path, gb.GRPOConfig(), torch.device("cpu"))


def test_an_update_of_several_optimizer_steps_refuses_to_take_log_pi_old_from_its_own_pass():
    """The own pass is log pi_old only before the policy moves: with several optimizer steps and
    nothing scored, every ratio would be 1 and the clip would never act."""
    from types import SimpleNamespace
    batch = SimpleNamespace(rows=[{}] * 4, old_logp=None)
    with pytest.raises(ValueError, match="score log pi_old"):
        gb.update(None, None, batch, None, gb.GRPOConfig(num_mini_batches=2, prompts_per_step=2, num_generations=2))
