"""The real-model path on real artifacts: the Qwen2.5 tokenizer with its chat template, its
152k vocabulary, a generation_config with two stop tokens, and real GSM8K rows. Models are small
and randomly initialised (or rigged so that their output is known), saved with save_pretrained and
loaded back through the public APIs a user calls."""
import json
import os

import pytest
import torch

import cepo
import gcpo
import gold
import grpo_baseline as gb
from loop.data import DEFAULT_INSTRUCTION, extract_answer, prompt_ids, reward_fn
from loop.language_model import end_of_turn_id, generate, load_policy, collect_stop_ids

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
IM_END, ENDOFTEXT = 151645, 151643  # Qwen2.5: the chat template's end of turn (= tokenizer EOS), and the pad/base EOS


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(FIXTURES, "qwen2.5-tokenizer"))


def qwen(hidden=16, tie=False):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=tie, bos_token_id=ENDOFTEXT,
        eos_token_id=IM_END))


def save(model, tokenizer, path, eos_ids):
    """A model directory as the hub ships one: weights, tokenizer, generation_config.json."""
    model.generation_config.eos_token_id = eos_ids
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def rigged(tokenizer, chain):
    """A Qwen2 whose next token depends on the current token only: attention and MLP outputs are
    zero, so the residual stream is the token's embedding; the embeddings are basis vectors and the
    LM head maps token chain[k] to chain[k + 1] with a logit gap of about 40."""
    model = qwen()
    layer = model.model.layers[0]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (current, following) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[current, k] = 1.0
            model.lm_head.weight[following, k] = 10.0
    return model


def test_stop_tokens_are_the_union_of_eos_generation_config_and_the_template(qwen_tokenizer):
    assert end_of_turn_id(qwen_tokenizer) == IM_END
    model = qwen()
    model.generation_config.eos_token_id = [IM_END, ENDOFTEXT]
    assert collect_stop_ids(model, qwen_tokenizer) == [ENDOFTEXT, IM_END]
    # a base-model-style tokenizer (EOS <|endoftext|>) whose template ends turns with <|im_end|>,
    # and a generation_config that lists only the EOS: the template's end of turn still stops
    base_style = type(qwen_tokenizer).from_pretrained(os.path.join(FIXTURES, "qwen2.5-tokenizer"), eos_token="<|endoftext|>")
    model.generation_config.eos_token_id = ENDOFTEXT
    assert base_style.eos_token_id == ENDOFTEXT and collect_stop_ids(model, base_style) == [ENDOFTEXT, IM_END]


def test_generation_stops_at_a_generation_config_stop_token_and_the_reward_reads_only_before_it(qwen_tokenizer, tmp_path):
    """The rigged model writes '#### 7', then <|endoftext|> (a stop token only generation_config
    lists), then '8' and <|im_end|>. Stopping at the tokenizer's EOS alone would read '#### 78'."""
    tok = qwen_tokenizer
    prompt = prompt_ids(tok, "What is 3+4?", DEFAULT_INSTRUCTION)
    body = tok("#### 7", add_special_tokens=False).input_ids
    chain = [prompt[-1], *body, ENDOFTEXT, *tok("8", add_special_tokens=False).input_ids, IM_END]
    cfg = gb.GRPOConfig(max_completion_length=12, temperature=1.0)
    for eos_ids, expected_ids, expected_text, reward in (
            ([IM_END, ENDOFTEXT], body + [ENDOFTEXT], "#### 7", 1.0),     # as Qwen2.5-Instruct ships
            ([IM_END], chain[1:], "#### 78", 0.0)):                      # the tokenizer's EOS only
        path = save(rigged(tok, chain), tok, tmp_path / f"rigged{len(eos_ids)}", eos_ids)
        model, loaded = load_policy(path, cfg, torch.device("cpu"))
        for greedy in (True, False):
            ids, mask, texts = generate(model, loaded, [prompt, prompt], cfg, torch.device("cpu"), greedy=greedy)
            n = int(mask[0].sum())
            assert ids[0, :n].tolist() == expected_ids and mask[0, n:].sum() == 0
            assert texts == [expected_text] * 2 and reward_fn(texts[0], "7") == reward


def gsm8k_rows(tokenizer, k=12):
    """The k real GSM8K test rows with the shortest worked solutions (so Gold's reference fits)."""
    with open(os.path.join(FIXTURES, "gsm8k", "test.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return sorted(rows, key=lambda r: len(tokenizer(r["answer"]).input_ids))[:k]


def test_gold_injects_real_gsm8k_solutions_ending_with_the_models_end_of_turn(qwen_tokenizer):
    cfg = gold.GoldConfig(max_completion_length=256)
    for raw in gsm8k_rows(qwen_tokenizer):
        row = {"solution": raw["answer"], "answer": extract_answer(raw["answer"])}
        ids, why = gold.reference_response(qwen_tokenizer, row, cfg)
        assert why is None and ids[-1] == IM_END
        text = qwen_tokenizer.decode(ids[:-1])
        assert "<<" not in text and ">>" not in text and reward_fn(text, row["answer"]) == 1.0


def test_method_contexts_through_the_real_chat_template(qwen_tokenizer):
    tok, row = qwen_tokenizer, {"question": "What is 3+4?", "blank_question": None}
    negative = tok.decode(gcpo.negative_prompt_ids(tok, row, gcpo.GCPOConfig(model="Qwen/Qwen2.5-0.5B-Instruct")))
    assert ("What is 3+4?" + DEFAULT_INSTRUCTION + "\n\nNote: Intentionally generate an incorrect answer.<|im_end|>"
            in negative)
    assert negative.endswith("<|im_start|>assistant\n")
    empty = gcpo.GCPOConfig(model="Qwen/Qwen2.5-0.5B-Instruct", negative="empty_prompt")
    assert tok.decode(gcpo.negative_prompt_ids(tok, row, empty)).count("Answer the question.") == 1
    real = cepo.CEPOConfig(model="Qwen/Qwen2.5-0.5B-Instruct")
    hinted = tok.decode(prompt_ids(tok, row["question"], DEFAULT_INSTRUCTION) + cepo.hint_ids(tok, "7", real))
    assert hinted.endswith("<|im_start|>assistant\n 7")  # the reference's bare answer opens the assistant turn
    embedded = tok.decode(cepo.hint_ids(tok, "7", cepo.CEPOConfig()))
    assert embedded == "Answer: #### 7\n"  # the form the embedded warm start teaches


@pytest.fixture(scope="module")
def qwen_run_inputs(qwen_tokenizer, tmp_path_factory):
    """A random 152k-vocabulary Qwen2 saved as the hub ships one, and 12 real GSM8K rows as jsonl.
    (Sampling from 152k logits is slow on a CPU, so only Gold, whose reference solutions must fit,
    samples 48 tokens.)"""
    folder = tmp_path_factory.mktemp("qwen_run")
    model_dir = save(qwen(hidden=32, tie=True), qwen_tokenizer, folder / "model", [IM_END, ENDOFTEXT])
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(qwen_tokenizer)))
    return model_dir, str(folder / "gsm8k.jsonl")


@pytest.mark.parametrize("method, config_cls", [("grpo", gb.GRPOConfig), ("gcpo", gcpo.GCPOConfig),
                                                ("cepo", cepo.CEPOConfig), ("gold", gold.GoldConfig)])
def test_every_method_trains_a_real_vocabulary_model_on_real_gsm8k_rows(qwen_run_inputs, tmp_path, monkeypatch, method,
                                                                       config_cls):
    """Every method's credit acts and the model moves. A random model is always wrong, which is
    what Gold needs (every group gets its real reference); the others would see no contrast and
    compute nothing, so their responses are set: '#### 5' (rewarded 1) and '#### 7' in each group,
    real tokens of the real vocabulary, whose wrong answer CEPO's teacher reads."""
    seams = {"grpo": gb.METHOD, "gcpo": gcpo.METHOD, "cepo": cepo.METHOD, "gold": gold.METHOD}[method]
    if method != "gold":
        def set_responses(model, tokenizer, prompts, cfg, device):
            texts = ["#### 5" if i % 2 == 0 else "#### 7" for i in range(len(prompts))]
            ids = torch.tensor([tokenizer(t, add_special_tokens=False).input_ids + [IM_END] for t in texts])
            return ids, torch.ones(ids.shape), texts
        monkeypatch.setattr(gb, "generate", set_responses)
        monkeypatch.setattr(gb, "verified_rewards", lambda texts, rows, cfg, stats: stats.update(verify_timeouts=0) or
                            [float(t == "#### 5") for t in texts])
    model_dir, data_path = qwen_run_inputs
    cfg = config_cls(model=model_dir, dataset=data_path, eval_size=2, prompts_per_step=2, num_generations=2,
                     max_completion_length=48 if method == "gold" else 12, max_steps=2, eval_steps=2, save_steps=2, micro_batch_size=4,
                     output_dir=str(tmp_path / "run"))
    gb.train(cfg, **seams)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        metrics = [json.loads(line) for line in f]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert metrics[0]["stop_tokens"] == ["<|endoftext|>", "<|im_end|>"]
    for m in metrics[1:]:
        assert m["skipped_updates"] == 0 and m["verify_timeouts"] == 0 and m["grad_norm"] > 0
        assert {"gold": "gold_injections", "gcpo": "div_mean", "cepo": "teacher_rows", "grpo": "reward"}[method] in m
        if method == "gold":
            assert m["gold_injections"] == cfg.prompts_per_step


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_log_softmax_equals_the_full_one_on_a_152k_vocabulary(tie):
    """The large-vocabulary path (LM head and log-softmax over chunks of positions, logits
    recomputed in the backward) gives the full path's log-probs, entropies and gradients."""
    from loop.embedded_task import char_tokenizer
    from loop.language_model import LARGE_VOCAB, completion_logprobs, plain_lm_head
    model = qwen(hidden=32, tie=tie)
    assert plain_lm_head(model) and len(char_tokenizer()) < LARGE_VOCAB  # the embedded model keeps the full path
    g = torch.Generator().manual_seed(0)
    prompt_ids, completion_ids = torch.randint(0, 151936, (3, 5), generator=g), torch.randint(0, 151936, (3, 7), generator=g)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]).float()
    completion_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]).float()
    results = {}
    for chunked in (False, True):
        model.zero_grad()
        logp, ent = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, 0.7, 2,
                                        grad=True, entropy=True, chunked=chunked)
        (logp * torch.linspace(-1, 1, 7)).sum().backward()  # any weighting of the tokens
        results[chunked] = logp.detach(), ent, [p.grad.clone() for p in model.parameters()]
    (lp_full, ent_full, grads_full), (lp, ent, grads) = results[False], results[True]
    torch.testing.assert_close(lp, lp_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_full, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, grads_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
