"""trl_credit: our methods inside TRL's GRPOTrainer, on the CPU, with the embedded warm start (an
HF Llama and tokenizer loaded through the public APIs), a real Qwen2.5 chat template, and two
processes. Docs: docs/trl.md."""
import copy
import dataclasses
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import gcpo  # noqa: E402
import grpo_baseline as gb  # noqa: E402
import train_trl  # noqa: E402
from cepo import cepo_token_advantages, hint_ids, lambda_at, wrong_answer_hints  # noqa: E402
from gcpo import gcpo_token_advantages  # noqa: E402
from gold import inject_gold  # noqa: E402
from loop import diagnostics  # noqa: E402
from loop.data import prompt_ids, reward_fn  # noqa: E402
from loop.embedded_task import load_task, warm_start  # noqa: E402
from trl_trainers import trl_credit  # noqa: E402
from trl_trainers.trl_credit import CEPOTrainer, GCPOTrainer, GoldTrainer, negative_messages  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G = 4


@pytest.fixture(scope="module")
def warm(warm_cache):
    """(model dir, tokenizer, dataset): the tests' tiny warm start (the one tiny_cfg trains), and
    64 embedded rows as TRL reads them: the prompt (a string holding the chat template), the
    question in it, the answer and the reference solution."""
    cfg = gb.GRPOConfig(task="sum", cache_dir=warm_cache, warm_start_steps=250, eval_size=16)
    rows, eval_rows = load_task(cfg)
    path = warm_start(cfg, rows, eval_rows, torch.device("cpu"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    dataset = Dataset.from_list([{"prompt": tokenizer.decode(prompt_ids(tokenizer, r["question"], "")), "question": r["question"],
                                  "answer": r["answer"], "solution": r["solution"], "hard": i % 2 == 1}
                                 for i, r in enumerate(rows[:64])])
    return path, tokenizer, dataset


def accuracy(completions, answer, **kwargs):
    return [reward_fn(c, a) for c, a in zip(completions, answer)]


def trainer(cls, warm, tmp_path, reward=accuracy, rows=32, **kwargs):
    path, tokenizer, dataset = warm
    args = dict(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=rows, num_generations=G,
                max_completion_length=40, beta=0.0, max_steps=1, use_cpu=True, bf16=False, gradient_checkpointing=False,
                report_to="none", save_strategy="no", disable_tqdm=True, seed=0)
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in GRPOConfig.__dataclass_fields__})
    t = cls(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=reward if isinstance(reward, list) else [reward],
            args=GRPOConfig(**args),
            train_dataset=dataset, processing_class=tokenizer, **kwargs)
    t.model.train()
    t.current_gradient_accumulation_steps = 1  # set by Trainer's loop; compute_loss is called outside it here
    return t


def cpu_args(tmp_path, **kwargs):
    return GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", **kwargs)


def batch(warm, prompts):
    """TRL's input rows for `prompts` distinct problems, each repeated G times."""
    return [dict(warm[2][i]) for i in range(prompts) for _ in range(G)]


def scored(t, inputs, seed=0):
    """TRL's generation batch for `inputs` on a fixed seed, and what GRPOTrainer itself returned
    before the subclass changed it."""
    seen = {}
    original = GRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = original(self, inputs)
        seen["grpo"] = copy.deepcopy(out)
        return out
    torch.manual_seed(seed)
    GRPOTrainer._generate_and_score_completions = spy
    try:
        out = t._generate_and_score_completions(copy.deepcopy(inputs))
    finally:
        GRPOTrainer._generate_and_score_completions = original
    return out, seen["grpo"]


def loss_and_grads(t, out):
    t.model.zero_grad()
    loss = t.compute_loss(t.model, out)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in t.model.parameters() if p.grad is not None]


def own_logprobs(t, context_ids, completion_ids, completion_mask):
    """log pi(y_t | context, y_<t) of one completion, alone (no padding), with TRL's helper."""
    n = int(completion_mask.sum())
    ids = torch.tensor([list(context_ids) + completion_ids[:n].tolist()])
    with torch.no_grad():
        logp, _, _ = t._get_per_token_logps_and_entropies(t.model, ids, torch.ones_like(ids), n)
    return torch.nn.functional.pad(logp[0], (0, len(completion_ids) - n))


def test_the_trl_internals_the_trainers_rely_on_are_pinned():
    """A TRL upgrade that moves any of these must fail here, not silently mis-assign credit."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        assert f"trl=={trl.__version__}" in [line.split("#")[0].strip() for line in f]
    params = {name: list(inspect.signature(getattr(GRPOTrainer, name)).parameters) for name in trl_credit.TRL_METHODS}
    assert params["_generate"] == ["self", "prompts"]
    assert params["_generate_and_score_completions"] == ["self", "inputs"]
    assert params["_calculate_rewards"] == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    assert params["_tokenize_prompts"] == ["self", "prompts"]
    assert params["_get_per_token_logps_and_entropies"][:6] == ["self", "model", "input_ids", "attention_mask",
                                                                "logits_to_keep", "batch_size"]
    source = inspect.getsource(GRPOTrainer)
    # _generate's outputs, in the order GoldTrainer unpacks them
    assert "return prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images" in source
    assert "if advantages.dim() == 1:\n            advantages = advantages.unsqueeze(1)" in source  # (B, T) accepted
    assert "self.accelerator.process_index * len(prompts)" in source  # this rank's rows: a contiguous slice
    assert 'float("nan") if x is None else x' in source and "nan_to_num(per_token_logps_diff, nan=0.0)" in source
    assert "LigerFusedLinearGRPOLoss" not in source  # a loss that takes only (B,) advantages would drop our credit


@pytest.mark.parametrize("cls, options", [(GCPOTrainer, {"negative_instruction": ""}), (CEPOTrainer, {"lambda_init": 0.0})])
def test_without_contrast_each_trainer_is_grpotrainer(warm, tmp_path, cls, options):
    """x- = x (GCPO), λ = 0 (CEPO): the same completions on the same seed, and the same loss and
    gradients as plain GRPOTrainer's, through the (B, T) advantages for GCPO."""
    inputs = batch(warm, 4)
    theirs, ours = trainer(GRPOTrainer, warm, tmp_path), trainer(cls, warm, tmp_path, **options)
    out_theirs, _ = scored(theirs, inputs)
    out_ours, _ = scored(ours, inputs)
    assert torch.equal(out_theirs["completion_ids"], out_ours["completion_ids"])
    assert (out_theirs["advantages"] != 0).any()  # some group has a contrast: the comparison is not of zeros
    if cls is GCPOTrainer:
        assert out_ours["advantages"].shape == out_ours["completion_mask"].shape
        assert torch.equal(out_ours["advantages"], out_theirs["advantages"][:, None] * out_ours["completion_mask"])
    loss_theirs, grads_theirs = loss_and_grads(theirs, out_theirs)
    loss_ours, grads_ours = loss_and_grads(ours, out_ours)
    assert torch.allclose(loss_ours, loss_theirs, rtol=1e-6, atol=1e-9)
    assert len(grads_ours) == len(grads_theirs)
    for a, b in zip(grads_ours, grads_theirs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("norm", ["mean", "softmax"])
def test_gcpo_hands_trl_our_token_advantages(warm, tmp_path, norm):
    """With the reference's negative prompt, the advantages TRL's loss receives are
    gcpo_token_advantages of its own advantages and of lp+ / lp- scored here, one completion at
    a time, with x- tokenized independently. (The rank weights, 'hist', can swap two
    near-equal divergences on float noise, so the comparison uses the continuous norms.)"""
    t = trainer(GCPOTrainer, warm, tmp_path, weight_norm=norm)
    out, grpo = scored(t, batch(warm, 4))
    A, mask = grpo["advantages"], out["completion_mask"]
    live = (A != 0).nonzero().squeeze(1).tolist()
    assert live
    prompts = [p[m.bool()].tolist() for p, m in zip(out["prompt_ids"], out["prompt_mask"])]
    cfg = dataclasses.replace(t.method, instruction="")  # the fixture's prompts are the bare question
    for i in live:
        negative = gcpo.negative_prompt_ids(warm[1], warm[2][i // G], cfg)  # x- as our loop builds it
        pos = own_logprobs(t, prompts[i], out["completion_ids"][i], mask[i])
        neg = own_logprobs(t, negative, out["completion_ids"][i], mask[i])
        expected = gcpo_token_advantages(A[i:i + 1], pos[None], neg[None], mask[i:i + 1].float(), norm)
        assert torch.allclose(out["advantages"][i], expected[0], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(expected[0], A[i] * mask[i])  # the contrast moved credit between tokens
    for i in set(range(len(A))) - set(live):
        assert (out["advantages"][i] == 0).all()
    # what the step logs: every live row's weights moved here, and their top 40% of tokens carry more than 40%
    logged = t._metrics["train"]
    assert logged["gcpo/contrast_rows"] == [1.0]
    weights = out["advantages"][live] / A[live, None]
    top = diagnostics.weight_diagnostics(torch.ones_like(weights), weights, mask[live])["weight_top40_share"]
    assert logged["gcpo/weight_top40_share"] == [pytest.approx(top, rel=1e-5)] and top > 0.4


def test_gcpo_takes_grpos_step_when_no_completion_has_credit(warm, tmp_path):
    """A batch where every group's rewards are equal (a model that never solves; on two processes,
    one rank's share): every advantage is 0, so nothing is scored under x-; the step is GRPO's,
    with the metrics logged empty (every rank joins log_means with the same keys)."""
    t = trainer(GCPOTrainer, warm, tmp_path, reward=lambda completions, **kwargs: [0.0] * len(completions))
    sizes, logprobs_under = [], t.logprobs_under
    t.logprobs_under = lambda contexts, out, rows: sizes.append(len(rows)) or logprobs_under(contexts, out, rows)
    out, grpo = scored(t, batch(warm, 2))
    assert (grpo["advantages"] == 0).all() and (out["advantages"] == 0).all()
    assert sum(sizes) == 0  # no row scored under x- (a call with no rows is allowed: every rank joins the same forwards)
    assert not any(t._metrics["train"].get(key) for key in GCPOTrainer.METRICS)


def test_gcpo_leaves_rows_without_a_loss_token_out_of_its_metrics(warm, tmp_path):
    """mask_truncated_completions=True and every completion cut at 4 tokens: rows with A != 0 but no
    token in the loss carry no weights to describe: the step logs no GCPO metric (no NaN, no error)."""
    alternate = lambda completions, **kwargs: [float(i % 2) for i in range(len(completions))]  # noqa: E731
    t = trainer(GCPOTrainer, warm, tmp_path, reward=alternate, max_completion_length=4, mask_truncated_completions=True)
    out, grpo = scored(t, batch(warm, 2))
    assert (grpo["advantages"] != 0).all() and (out["completion_mask"] == 0).all()
    assert not any(t._metrics["train"].get(key) for key in GCPOTrainer.METRICS)


def test_cepo_hands_trl_our_token_advantages(warm, tmp_path):
    """r- from wrong_answer_hints on the decoded completions and TRL's rewards; P+ and P- scored
    here one completion at a time; Â = cepo_token_advantages at λ(step 1)."""
    t = trainer(CEPOTrainer, warm, tmp_path, lambda_init=0.5, epsilon_w=0.5)
    out, grpo = scored(t, batch(warm, 8))
    A, mask = grpo["advantages"], out["completion_mask"]
    texts = warm[1].batch_decode(out["completion_ids"], skip_special_tokens=True)
    r_minus = wrong_answer_hints(texts, t._rewards[:, 0], G)
    prompts = [p[m.bool()].tolist() for p, m in zip(out["prompt_ids"], out["prompt_mask"])]
    checked, multipliers = 0, []
    for i in range(len(A)):
        answer, wrong = warm[2][i // G]["answer"], r_minus[i // G]
        if A[i] == 0 or wrong is None:
            assert torch.equal(out["advantages"][i], A[i] * mask[i])
            continue
        pos = own_logprobs(t, prompts[i] + hint_ids(warm[1], answer, t.method), out["completion_ids"][i], mask[i])
        neg = own_logprobs(t, prompts[i] + hint_ids(warm[1], wrong, t.method), out["completion_ids"][i], mask[i])
        expected = cepo_token_advantages(A[i:i + 1], pos[None], neg[None], mask[i:i + 1], 0.5, 0.5)
        assert torch.allclose(out["advantages"][i], expected[0], rtol=1e-4, atol=1e-6)
        checked += not torch.allclose(expected[0], A[i] * mask[i])
        multipliers.append((expected[0] / A[i])[mask[i] > 0])
    assert checked  # some completion's credit was re-weighted by the teachers
    # what the step logs: λ, the share of groups with a wrong answer to contrast, Â / A's range
    logged, multipliers = t._metrics["train"], torch.cat(multipliers)
    assert logged["cepo/lambda"] == [0.5]
    assert logged["cepo/r_minus_groups"] == [sum(h is not None for h in r_minus) / len(r_minus)]
    assert logged["cepo/multiplier_min"] == [pytest.approx(multipliers.min().item(), abs=1e-4)]
    assert logged["cepo/multiplier_max"] == [pytest.approx(multipliers.max().item(), abs=1e-4)]
    assert 1 - 0.25 <= multipliers.min() < 1 < multipliers.max() <= 1 + 0.25  # within 1 ± λ ε_w


def test_cepo_lambda_decays_per_generation_not_per_optimizer_step(warm, tmp_path):
    """λ follows the generation batch, as cepo.py's RL step and the reference's rollout: with two
    optimizer steps per generation the second generation (at global step 2) gets λ(2), not λ(3);
    and the count TRL's schedule implies holds for several accumulation / iteration settings,
    after a resume too (TRL restarts its micro-step count then)."""
    t = trainer(CEPOTrainer, warm, tmp_path, rows=8, steps_per_generation=2, lambda_decay_steps=4)
    t.state.global_step, t._step = 2, 2  # TRL's counters when it generates the second batch
    scored(t, batch(warm, 4))
    assert t._metrics["train"]["cepo/lambda"] == [pytest.approx(lambda_at(2, t.method))] != [lambda_at(3, t.method)]
    for accumulation, per_generation, iterations in ((1, 2, 1), (2, 2, 2), (2, 4, 1), (3, 2, 1), (2, 1, 1)):
        t.args.gradient_accumulation_steps, t.args.steps_per_generation = accumulation, per_generation
        t.num_iterations = iterations
        rollout, generate_every = 0, per_generation * iterations
        for micro_step in range(24):  # TRL's _prepare_inputs: generate when _step % generate_every == 0
            rollout += micro_step % generate_every == 0
            t.state.global_step = micro_step // accumulation
            for t._step in (micro_step, micro_step % accumulation):  # straight through; resumed at this optimizer step
                assert t.rollout() == rollout


def test_gcpo_recomputes_its_weights_after_each_optimizer_step_on_the_same_generation(warm, tmp_path, monkeypatch):
    """steps_per_generation=2: the second optimizer step trains on the same generation batch under a
    moved policy; the advantages TRL's loss receives there are gcpo_token_advantages of lp+ and
    lp- scored under the current policy (here, one completion at a time), as gcpo.py's recredit,
    and differ from those computed at generation."""
    t = trainer(GCPOTrainer, warm, tmp_path, rows=8, steps_per_generation=2, weight_norm="mean", learning_rate=1e-2,
                max_steps=2)
    generated, checked = [], []
    generate = t._generate_and_score_completions
    t._generate_and_score_completions = lambda inputs: generated.append(generate(inputs)) or generated[-1]
    compute_loss = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        if self.state.global_step == 1:  # the policy moved once since the batch was generated
            A, mask = inputs["sequence_advantages"], inputs["completion_mask"]
            for i in (A != 0).nonzero().squeeze(1).tolist():
                prompt = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()].tolist()
                negative = inputs["negative_ids"][i][inputs["negative_mask"][i].bool()].tolist()
                pos = own_logprobs(t, prompt, inputs["completion_ids"][i], mask[i])
                neg = own_logprobs(t, negative, inputs["completion_ids"][i], mask[i])
                expected = gcpo_token_advantages(A[i:i + 1], pos[None], neg[None], mask[i:i + 1].float(), "mean")[0]
                at_generation = next(a for a, c in zip(generated[0]["advantages"], generated[0]["completion_ids"])
                                     if torch.equal(c, inputs["completion_ids"][i]))
                assert torch.allclose(inputs["advantages"][i], expected, rtol=1e-4, atol=1e-5)
                checked.append(not torch.allclose(expected, at_generation, rtol=1e-3, atol=1e-4))
        return compute_loss(self, model, inputs)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    t.train()
    assert len(generated) == 1 and checked and any(checked)


@pytest.mark.parametrize("cls", [GCPOTrainer, CEPOTrainer])
def test_sharded_parameters_score_every_row_and_change_no_credit(warm, tmp_path, cls):
    """Under ZeRO-3 or FSDP each forward is a collective, so every process must run the same
    extra forwards: then every row is scored, not only those whose credit can change, and the
    credit is the same (to float tolerance: the batches differ)."""
    t = trainer(cls, warm, tmp_path, **({"weight_norm": "mean"} if cls is GCPOTrainer else {}))  # hist: see above
    inputs, sizes = batch(warm, 8), []
    logprobs_under = t.logprobs_under
    t.logprobs_under = lambda contexts, out, rows: sizes.append(len(rows)) or logprobs_under(contexts, out, rows)
    only_useful, _ = scored(t, inputs)
    t.is_fsdp_enabled = True
    every_row, _ = scored(t, inputs)
    assert torch.equal(only_useful["completion_ids"], every_row["completion_ids"])
    assert sizes[0] < len(inputs) and sizes[-1] == len(inputs)
    assert torch.allclose(only_useful["advantages"], every_row["advantages"], rtol=1e-4, atol=1e-6)


def hard_reward(completions, answer, solution, hard, **kwargs):
    """The usual accuracy, except on 'hard' rows, where only the reference itself scores: their
    groups are all wrong unless Gold steps in."""
    return [float(c.strip() == s.strip()) if h else reward_fn(c, a) for c, a, s, h in zip(completions, answer, solution, hard)]


def shaping(completions, **kwargs):
    """A reward every completion earns a little of (as a format or length reward would)."""
    return [0.001 * (1 + len(c)) for c in completions]


def test_gold_injects_where_inject_gold_says_with_ratio_one(warm, tmp_path):
    """The reference replaces the last completion of exactly the groups inject_gold picks from
    the correctness reward of the sampled completions (a shaping reward > 0 beside it changes
    nothing); TRL then rewards it (1), so its group gains a contrast; its old log-probs
    (computed here: num_iterations=2) equal the policy's own, so its sequence ratio is 1; with
    sampler log-probs (vLLM), the injected row gets None, which TRL neutralises."""
    t = trainer(GoldTrainer, warm, tmp_path, reward=[hard_reward, shaping], correctness_reward="hard_reward",
                importance_sampling_level="sequence", loss_type="grpo", num_iterations=2)
    calls = []
    calculate = t._calculate_rewards
    t._calculate_rewards = lambda *a: calls.append((a, calculate(*a))) or calls[-1][1]
    inputs = batch(warm, 8)
    out, _ = scored(t, inputs)
    sampled, final = calls[0][1][:, 0], calls[1][1][:, 0]
    has_gold = torch.tensor([bool(inputs[g * G]["solution"]) for g in range(8)])
    _, is_gold = inject_gold(sampled, G, has_gold)
    assert is_gold.any()
    texts = warm[1].batch_decode(out["completion_ids"], skip_special_tokens=True)
    for i in range(len(texts)):
        if is_gold[i]:
            assert texts[i] == inputs[i]["solution"] and final[i] == 1
            assert out["advantages"][i] > 0 and (out["advantages"][i - G + 1:i] < 0).all()
        else:
            assert final[i] == sampled[i]  # the completion and its reward are untouched
    with torch.no_grad():
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
        logp, _, _ = t._get_per_token_logps_and_entropies(t.model, ids, torch.cat([out["prompt_mask"], out["completion_mask"]], 1),
                                                          out["completion_ids"].size(1))
    m = out["completion_mask"][is_gold]
    ratio = torch.exp(((logp - out["old_per_token_logps"])[is_gold] * m).sum(1) / m.sum(1))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
    assert t._metrics["train"]["gold/injections"] == [int(is_gold.sum())]
    assert t._metrics["train"]["gold/sampled_reward"] == [pytest.approx(t.total_reward(calls[1][1])[~is_gold].mean().item())]
    # the vLLM path: sampler log-probs come with the sampled completions
    _, prompts, completions, ids = calls[0][0]
    _, _, _, logprobs = t.inject(inputs, prompts, ids, None, completions, [[-0.5] * len(c) for c in ids])
    for i in range(len(ids)):
        assert (logprobs[i] == [None] * len(logprobs[i])) == bool(is_gold[i])


def test_gold_leaves_a_group_the_correctness_reward_does_not_judge(warm, tmp_path):
    """A correctness reward of None (TRL's 'does not apply to this sample') is no verdict of wrong:
    such groups get no reference and are not counted as all wrong."""
    t = trainer(GoldTrainer, warm, tmp_path, reward=lambda completions, **kwargs: [None] * len(completions),
                importance_sampling_level="sequence", loss_type="grpo")
    scored(t, batch(warm, 4))
    assert t._metrics["train"]["gold/injections"] == [0] and t._metrics["train"]["gold/all_wrong_groups"] == [0]


def test_gold_says_when_a_reference_is_unusable_or_teaches_nothing(warm, tmp_path):
    """Every group all wrong: where the solution column holds only the bare answer (TRL's own
    convention for `solution`), the group is skipped as unparsable_reference, with a warning;
    where a reference is injected but the reward functions score it no higher than the sampled
    completions (here they reject everything), the group has no contrast: a warning and a count."""
    def never(completions, **kwargs):
        return [0.0] * len(completions)
    t = trainer(GoldTrainer, warm, tmp_path, reward=never, importance_sampling_level="sequence", loss_type="grpo")
    inputs = batch(warm, 4)
    for row in inputs[:2 * G]:
        row["solution"] = row["answer"]
    with pytest.warns(UserWarning) as caught:
        scored(t, inputs)
    messages = " ".join(str(w.message) for w in caught)
    assert "does not end in the final answer" in messages and "rewarded no higher" in messages
    logged = t._metrics["train"]
    assert logged["gold/all_wrong_groups"] == [4] and logged["gold/skipped_unparsable_reference"] == [2]
    assert logged["gold/injections"] == [2] and logged["gold/reference_not_best"] == [2]


def test_two_processes_decide_per_group_as_one_does(warm, tmp_path):
    """torchrun, 2 CPU processes (gloo), a group split across them: each rank's CEPO r- and Gold
    injections equal what wrong_answer_hints and inject_gold decide on the whole batch in one
    process, and differ from what either rank would decide from its own rows alone."""
    data = str(tmp_path / "data")
    warm[2].save_to_disk(data)
    out = tmp_path / "out"
    out.mkdir()
    run = torchrun(os.path.join("tests", "trl_two_ranks.py"), warm[0], data, str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    per_rank = 6
    # CEPO: one wrong_answers call per step on each rank
    cepo = [r["CEPOTrainer"] for r in ranks]
    local_differs = False
    for step in range(2):
        rewards = torch.tensor(cepo[0]["rewards"][step])
        assert rewards.tolist() == cepo[1]["rewards"][step]  # every rank sees all rows' rewards
        texts = cepo[0]["texts"][step] + cepo[1]["texts"][step]
        hints = wrong_answer_hints(texts, rewards, G)
        used = cepo[0]["r_minus"][step] + cepo[1]["r_minus"][step]
        assert used == [hints[i // G] for i in range(len(texts))]
        alone = wrong_answer_hints(cepo[0]["texts"][step][4:], rewards[4:per_rank], 2)  # rank 0's half of group 1
        local_differs |= alone[0] != hints[1]
    assert local_differs
    # Gold: calls alternate, the injection's own scoring of the sampled completions, then TRL's
    gold = [r["GoldTrainer"] for r in ranks]
    for step in range(2):
        sampled = torch.tensor(gold[0]["rewards"][2 * step])
        has_ref = torch.tensor(gold[0]["has_ref"][step] + gold[1]["has_ref"][step])
        _, is_gold = inject_gold(sampled, G, has_ref.view(-1, G)[:, -1])
        used = [r for rank in (0, 1) for r in (rank * per_rank + i for i in gold[rank]["gold_rows"][step])]
        assert used == is_gold.nonzero().squeeze(1).tolist() and used
        _, rank1_alone = inject_gold(sampled[per_rank:per_rank + 2], 2, torch.tensor([True]))  # rank 1's half of group 1
        assert rank1_alone.any() and not is_gold[per_rank + 1]


@pytest.mark.parametrize("negative", ["wrong_answer", "empty_prompt"])
def test_gcpo_negative_prompt_is_our_loops_in_every_prompt_form(negative):
    """x- in each prompt form TRL takes, tokenized as TRL tokenizes that form, equals gcpo.py's x-
    (gcpo.negative_prompt_ids) of the same question and instruction: a user turn, one with a system
    turn before it (kept), one whose content is a list of parts, a string that already holds the
    chat template (the edit stays inside the user turn), and a plain string on a tokenizer without
    a template (data.prompt_ids' form, its final newline kept last). 'empty_prompt' keeps the
    instruction and drops only the question."""
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures", "qwen2.5-tokenizer"))
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    row, instruction = {"question": "What is 2+3?"}, " Think, then answer after '####'."
    cfg = gcpo.GCPOConfig(model="trl", negative=negative, instruction=instruction)
    ours = gcpo.negative_prompt_ids(tokenizer, row, cfg)
    content = row["question"] + instruction

    def chat(messages):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)

    def x_minus(prompt, tok=tokenizer):
        return negative_messages(prompt, cfg, row["question"], tail=trl_credit.template_tail(tok))
    system = {"role": "system", "content": "Be brief."}
    assert chat(x_minus([{"role": "user", "content": content}])) == ours
    with_system = x_minus([system, {"role": "user", "content": content}])
    assert with_system[0] == system and chat(with_system) == chat([system, {"role": "user", "content":
                                                                             gcpo.negative_text(row["question"], instruction, cfg)}])
    parts = x_minus([{"role": "user", "content": [{"type": "text", "text": content}]}])
    assert chat([{"role": "user", "content": parts[0]["content"][0]["text"]}]) == ours
    templated = tokenizer.decode(prompt_ids(tokenizer, row["question"], instruction))
    assert tokenizer(x_minus(templated)).input_ids == ours
    text = plain.decode(prompt_ids(plain, row["question"], instruction))
    assert text.endswith("\n") and plain(x_minus(text, plain)).input_ids == gcpo.negative_prompt_ids(plain, row, cfg)
    if negative == "empty_prompt":
        with pytest.raises(ValueError, match="question_column="):
            negative_messages(templated, cfg, None)


def test_bad_options_fail_with_one_clear_line(warm, tmp_path):
    with pytest.raises(ValueError, match="importance_sampling_level='sequence', loss_type='grpo'"):
        GoldTrainer(model=str(tmp_path / "no-model"), reward_funcs=[accuracy], args=cpu_args(tmp_path))
    with pytest.raises(ValueError, match="entropy_coef"):
        GCPOTrainer(model=warm[0], entropy_coef=0.02)  # ours (lowers entropy), not GRPOConfig's bonus
    with pytest.raises(ValueError, match="lambda_init"):
        trainer(CEPOTrainer, warm, tmp_path, lambda_init=2.0)
    t = trainer(CEPOTrainer, warm, tmp_path, answer_column="final")
    with pytest.raises(ValueError, match="needs a dataset column 'final'"):
        scored(t, batch(warm, 4))


@pytest.mark.parametrize("cls", [GCPOTrainer, CEPOTrainer])
def test_a_sequence_level_ratio_is_refused_where_it_cancels_token_credit(tmp_path, cls):
    """importance_sampling_level='sequence' makes TRL's ratio one number per completion: for every
    loss that multiplies that ratio by Â_t and sums over tokens, the gradient sees only Σ_t Â_t,
    and token credit has no effect. Refused before the model loads (the path does not exist);
    cispo and vespo, whose terms keep log pi(y_t), and the token level are accepted."""
    missing = str(tmp_path / "no-model")
    for loss in ("grpo", "dapo", "bnpo", "dr_grpo", "luspo", "sapo"):
        args = cpu_args(tmp_path, importance_sampling_level="sequence", loss_type=loss)
        with pytest.raises(ValueError, match=f"{cls.__name__} with GRPOConfig\\(importance_sampling_level='sequence', "
                                             f"loss_type='{loss}'\\): TRL's ratio is then one number per completion"):
            cls(model=missing, reward_funcs=[accuracy], args=args)
    method = cls.method_config()
    for level, loss in (("sequence", "cispo"), ("sequence", "vespo"), ("token", "luspo"), ("token", "grpo")):
        cls.check_trl_config(cpu_args(tmp_path, importance_sampling_level=level, loss_type=loss), method)


def test_why_the_sequence_level_is_refused_gcpo_credit_gives_grpos_gradient_there(warm, tmp_path):
    """The premise of the refusal, on TRL's own loss: with GCPO's token advantages the gradient at
    the sequence level equals the one with GRPO's uniform advantages; at the token level it
    does not."""
    t = trainer(GCPOTrainer, warm, tmp_path, weight_norm="mean")
    out, grpo = scored(t, batch(warm, 4))
    uniform = dict(out, advantages=grpo["advantages"][:, None] * out["completion_mask"])
    for level, same in (("sequence", True), ("token", False)):
        t.importance_sampling_level, t.loss_type = level, "grpo"
        _, credited = loss_and_grads(t, out)
        _, plain = loss_and_grads(t, uniform)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(credited, plain)) == same


def test_a_misspelt_keyword_names_the_trainer_and_the_nearest_option(tmp_path):
    missing = str(tmp_path / "no-model")
    for cls, typo, meant in ((GCPOTrainer, "weight_nrom", "weight_norm"), (CEPOTrainer, "lamda_init", "lambda_init"),
                             (GoldTrainer, "ratio_levle", "ratio_level"), (GoldTrainer, "corectness_reward", "correctness_reward"),
                             (GCPOTrainer, "question_colum", "question_column"), (CEPOTrainer, "reward_func", "reward_funcs")):
        with pytest.raises(TypeError, match=f"^{cls.__name__}\\(\\) got an unexpected keyword argument '{typo}': "
                                            f"did you mean {meant}=\\?$"):
            cls(model=missing, **{typo: 1})
    with pytest.raises(TypeError, match="argument 'lambda_init'; it takes answer_column, args, ") as caught:  # CEPO's
        GCPOTrainer(model=missing, lambda_init=0.5)
    assert "weight_norm" in str(caught.value) and "entropy_coef" not in str(caught.value)  # refused: not offered


def test_a_column_dropped_by_remove_unused_columns_is_named_with_the_fix(warm, tmp_path):
    """TRL's remove_unused_columns=True hands the trainer only the prompt: the missing-column error
    says which setting dropped it."""
    alternate = lambda completions, **kwargs: [float(i % 2) for i in range(len(completions))]  # noqa: E731 (reads no column)
    t = trainer(CEPOTrainer, warm, tmp_path, reward=alternate, rows=8, remove_unused_columns=True)
    with pytest.raises(ValueError, match=r"needs a dataset column 'answer' .*\['prompt'\] \(GRPOConfig\("
                                         r"remove_unused_columns=True\) drops every column but the prompt: set it False\)"):
        t.train()


def test_gold_refuses_column_and_reward_roles_it_cannot_tell_apart(tmp_path):
    """Before the model loads: the final answer and the injected solution in one column; several
    reward functions with none named as the correctness check (a shaping reward > 0 would keep
    every group from being all wrong)."""
    missing, args = str(tmp_path / "no-model"), cpu_args(tmp_path, importance_sampling_level="sequence", loss_type="grpo")
    with pytest.raises(ValueError, match="answer_column='solution', solution_column='solution'.*two columns"):
        GoldTrainer(model=missing, reward_funcs=[accuracy], args=args, answer_column="solution")

    def length(completions, **kwargs):
        return [0.01 * len(c) for c in completions]
    with pytest.raises(ValueError, match=r"2 reward functions \(accuracy, length\): name the one that decides "
                                         "correctness with correctness_reward="):
        GoldTrainer(model=missing, reward_funcs=[accuracy, length], args=args)


def torchrun(*argv, processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                           *argv], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def documented_commands():
    """Every train_trl.py command README.md and the docs print in a bash block: (page, argv)."""
    commands = []
    pages = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")]
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
        for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
            if "train_trl.py" in line and not line.lstrip().startswith("#"):
                commands.append((page, shlex.split(line)))
    return commands


def local(argv, **swaps):
    """A documented command with only what this machine needs swapped: the values of the flags in
    `swaps` (model, dataset, output folder, sizes, process count), then --use_cpu (TRL turns bf16
    on by default and refuses it without a GPU unless told the run is on the CPU)."""
    argv = list(argv)
    for flag, value in swaps.items():
        argv[argv.index(flag) + 1] = value
    return argv + ["--use_cpu"]


def sizes(model, data, out):
    return {"--nproc_per_node": "2", "--model": model, "--dataset": data, "--output_dir": out,
            "--per_device_train_batch_size": "4", "--num_generations": "4", "--max_completion_length": "32", "--max_steps": "2"}


def test_every_documented_command_parses_as_printed(tmp_path):
    """Flags as the docs print them, --bf16 bare included: it means bf16=True."""
    commands = documented_commands()
    assert {argv[argv.index("--method") + 1] for _, argv in commands} == {"cepo", "gold", "gcpo"}
    for page, argv in commands:
        assert "--bf16" in argv, page
        run = local(argv, **sizes("some/model", "rows.jsonl", str(tmp_path)))
        trainer, script, args, options = train_trl.parse(run[run.index("train_trl.py") + 1:])
        assert args.bf16 is True and args.per_device_train_batch_size == 4 and script.model == "some/model"


def test_the_documented_python_block_runs_as_printed(warm, tmp_path, monkeypatch):
    """docs/trl.md's Python block, executed, with only this machine's swaps: the tiny warm start
    for the model (given a chat template, as an instruct model has, since the block's prompts are
    chat messages), a folder here for the output, CPU, and sizes that take seconds."""
    model = tmp_path / "chat-model"
    shutil.copytree(warm[0], model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}{% endif %}")
    tokenizer.save_pretrained(model)
    with open(os.path.join(ROOT, "docs", "trl.md"), encoding="utf-8") as f:
        block = next(b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "Trainer(" in b)
    swaps = {'"Qwen/Qwen2.5-1.5B-Instruct"': repr(str(model)), 'output_dir="runs/cepo"': f"output_dir={str(tmp_path / 'run')!r}",
             "max_completion_length=256, max_steps=50": "max_completion_length=16, max_steps=1, use_cpu=True, bf16=False, "
             "per_device_train_batch_size=4, num_generations=4, report_to='none'"}
    for old, new in swaps.items():
        assert old in block
        block = block.replace(old, new)
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(block, "docs/trl.md", "exec"), scope)  # the docs' own code (ours, not model output)
    assert scope["trainer"].state.global_step == 1


def test_every_documented_trainer_call_passes_reward_funcs():
    """TRL refuses a GRPOTrainer without a reward source: a call the docs print must have one."""
    for page in (os.path.join("docs", "running.md"), os.path.join("docs", "trl.md"), os.path.join("trl_trainers", "trl_credit.py")):
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            calls = re.findall(r"(?:GCPO|CEPO|Gold)Trainer\(model=[^)]*\)", f.read())  # up to its first ')'
        assert calls, page
        for call in calls:
            assert "reward_funcs=" in call, f"{page}: {call}"


@pytest.mark.parametrize("method", ["cepo", "gold"])
def test_the_documented_command_trains_on_two_processes(warm, tmp_path, method):
    """The command README.md and docs/trl.md print for the method, run as printed (torchrun; accelerate
    launch starts the same) on 2 CPU processes: it trains, saves, and logs the method's metrics.
    Swapped: the model (the tiny warm start), the dataset (a local file), the output folder, the
    sizes and process count; added: --use_cpu. (GCPO's documented command needs vLLM, which is
    not installed here: it is only parsed, above.)"""
    argv = next(argv for _, argv in documented_commands() if argv[argv.index("--method") + 1] == method)
    data = tmp_path / "sum.jsonl"
    data.write_text("".join(json.dumps({"question": r["question"], "answer": r["solution"]}) + "\n" for r in warm[2]))
    out = tmp_path / "run"
    run = torchrun(*local(argv, **sizes(warm[0], str(data), str(out)))[argv.index("train_trl.py"):], processes=2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model.safetensors").exists()
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    key = {"cepo": "cepo/lambda", "gold": "gold/injections"}[method]
    assert [step["step"] for step in logged if key in step] == [1, 2]


def test_the_process_group_is_destroyed_after_the_trainer(warm, tmp_path):
    """Why a two-process run could hang (or abort) at exit, about 1 run in 5: the trainer's DDP
    wrapper held the last reference to the process group, so the group's destructor ran while
    the GIL was held and joined a gloo worker that was waiting for the GIL to free a gathered
    tensor. The property that rules it out, checked on each rank: when train_trl destroys the
    process group, no DDP wrapper is alive (the group's last reference then drops where torch
    releases the GIL)."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"""import gc, json, os, sys
sys.path.insert(0, {ROOT!r})
import torch.distributed
from torch.nn.parallel import DistributedDataParallel
import train_trl
destroy = torch.distributed.destroy_process_group
def checked(*args, **kwargs):
    alive = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
    with open(os.path.join({str(tmp_path)!r}, "rank" + os.environ["RANK"] + ".json"), "w") as f:
        json.dump(alive, f)
    destroy(*args, **kwargs)
torch.distributed.destroy_process_group = checked
train_trl.main()
""")
    data = tmp_path / "sum.jsonl"
    data.write_text("".join(json.dumps({"question": r["question"], "answer": r["solution"]}) + "\n" for r in warm[2]))
    run = torchrun(str(probe), "--method", "gold", "--model", warm[0], "--dataset", str(data), "--output_dir",
                   str(tmp_path / "run"), "--per_device_train_batch_size", "4", "--num_generations", "4",
                   "--max_completion_length", "16", "--max_steps", "1", "--importance_sampling_level", "sequence",
                   "--loss_type", "grpo", "--use_cpu", "--report_to", "none")
    assert run.returncode == 0, run.stderr[-3000:]
    assert [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)] == [0, 0]


def test_the_script_help_lists_its_options_and_hides_refused_ones(capsys):
    train_trl.main(["--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--method", "--model", "--dataset", "--question_field", "trl.GRPOConfig"))
    train_trl.main(["--method", "gcpo", "--help"])
    text = capsys.readouterr().out
    assert "--weight_norm" in text and "--entropy_coef" not in text


def test_the_script_names_bad_input_in_one_line(tmp_path, capsys):
    """A bad method option (before anything loads), a missing dataset file, a model that is not
    there: each one line naming it."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1+2", "answer": "#### 3"}) + "\n")
    missing = tmp_path / "none.jsonl"
    for lam, dataset, error in (("3", data, "error: bad option: --lambda_init=3.0: must be in [0, 1]"),
                                ("0.5", missing, f"error: --dataset {missing}: no such file"),
                                ("0.5", data, f"error: --model {tmp_path / 'm'}: cannot load its tokenizer")):
        run = subprocess.run([sys.executable, "train_trl.py", "--method", "cepo", "--lambda_init", lam, "--model",
                              str(tmp_path / "m"), "--dataset", str(dataset), "--output_dir", str(tmp_path), "--use_cpu"],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert run.returncode != 0 and run.stderr.strip().splitlines()[-1].startswith(error)
    # a misspelt option or another method's is named first, before TRL's own checks (here: bf16 without a GPU)
    for flags, error in ((["--method", "cepo", "--lamda_init", "0.5"], "unrecognized arguments: --lamda_init 0.5"),
                         (["--method", "gcpo", "--lambda_init", "0.5"], "unrecognized arguments: --lambda_init 0.5")):
        with pytest.raises(SystemExit):
            train_trl.main([*flags, "--model", str(tmp_path / "m"), "--dataset", str(data), "--output_dir", str(tmp_path)])
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(error)
    # refusals come before the dataset and the model load (neither exists here)
    for flags, error in ((["--method", "gcpo", "--entropy_coef", "0.01"], "error: GCPOTrainer(entropy_coef=...): "),
                         (["--method", "cepo", "--importance_sampling_level", "sequence", "--loss_type", "grpo"],
                          "error: CEPOTrainer with GRPOConfig(importance_sampling_level='sequence', loss_type='grpo'): ")):
        with pytest.raises(SystemExit, match=re.escape(error)):
            train_trl.main([*flags, "--model", str(tmp_path / "m"), "--dataset", str(missing), "--output_dir", str(tmp_path),
                            "--use_cpu"])


def test_the_script_checks_its_output_dir_before_anything_loads(tmp_path):
    """An empty --output_dir, one that is a file, a link to nothing, one holding a run (unless told to
    resume or replace it), a checkpoint that is not there: one line each, before the dataset (which
    does not exist here) is read."""
    afile, link, held = tmp_path / "afile", tmp_path / "link", tmp_path / "held"
    afile.write_text("x")
    link.symlink_to(tmp_path / "gone")
    (held / "checkpoint-10").mkdir(parents=True)
    (held / "checkpoint-9").mkdir()
    (held / "trainer_state.json").write_text("{}")
    for flags, error in (([""], "--output_dir is empty"), ([str(afile)], f"--output_dir {afile} is a file"),
                         ([str(link)], f"--output_dir {link} is a link to {tmp_path / 'gone'}, which does not exist"),
                         ([str(held)], f"--output_dir {held} already holds a run (checkpoint-10, checkpoint-9, "
                                       f"trainer_state.json): pass --resume_from_checkpoint {held / 'checkpoint-10'} "
                                       "to continue it, --overwrite_output_dir to replace it"),
                         ([str(held), "--resume_from_checkpoint", str(held / "checkpoint-11")],
                          f"--resume_from_checkpoint {held / 'checkpoint-11'}: no such checkpoint folder"),
                         ([str(held), "--resume_from_checkpoint", str(held / "checkpoint-10"), "--overwrite_output_dir"],
                          "--resume_from_checkpoint and --overwrite_output_dir contradict each other: pass one")):
        with pytest.raises(SystemExit, match="^" + re.escape("error: " + error)):
            train_trl.main(["--model", "m", "--dataset", str(tmp_path / "none.jsonl"), "--use_cpu", "--output_dir", *flags])
    kept = sorted(os.listdir(held))
    with pytest.raises(SystemExit, match="no such file"):  # to be replaced, but the dataset is not there: the old run stays
        train_trl.main(["--model", "m", "--dataset", str(tmp_path / "none.jsonl"), "--use_cpu", "--output_dir", str(held),
                        "--overwrite_output_dir"])
    assert sorted(os.listdir(held)) == kept


def test_the_script_replaces_an_old_run_only_once_the_new_one_is_built(tmp_path, monkeypatch):
    """--overwrite_output_dir: the old run's files are still there while the trainer is built (the
    model loads), and gone before it trains; files that are not a run's stay."""
    from loop.embedded_task import char_tokenizer
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": len(tok)}))
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"question": "1+2", "answer": "#### 3"}) + "\n")
    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "trainer_state.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    seen = []

    class Trainer:  # stands in for GRPOTrainer: what the output folder holds at each stage
        accelerator = SimpleNamespace(wait_for_everyone=lambda: None)

        def __init__(self, **kwargs):
            seen.append(sorted(os.listdir(out)))

        def train(self, resume_from_checkpoint=None):
            seen.append(sorted(os.listdir(out)))

        def save_model(self):
            pass

        save_state = save_model
    monkeypatch.setattr(train_trl, "GRPOTrainer", Trainer)
    monkeypatch.setitem(train_trl.TRAINERS, "grpo", Trainer)
    assert train_trl.train(["--model", str(tmp_path / "m"), "--dataset", str(data), "--output_dir", str(out),
                            "--overwrite_output_dir", "--use_cpu", "--max_completion_length", "8"]) is None
    assert seen == [["checkpoint-3", "notes.txt", "trainer_state.json"], ["notes.txt"]]


def test_the_script_resumes_from_a_checkpoint(warm, tmp_path):
    """--resume_from_checkpoint continues the run (TRL's Trainer reads it only when train() is given
    it): the resumed run's step 1 is the checkpoint's, not a new one (another seed would differ)."""
    data = tmp_path / "sum.jsonl"
    data.write_text("".join(json.dumps({"question": r["question"], "answer": r["solution"]}) + "\n" for r in warm[2]))
    out = tmp_path / "run"
    common = [sys.executable, "train_trl.py", "--model", warm[0], "--dataset", str(data), "--per_device_train_batch_size",
              "4", "--num_generations", "4", "--max_completion_length", "16", "--logging_steps", "1", "--save_steps", "1",
              "--use_cpu", "--report_to", "none", "--disable_tqdm", "true"]
    first = subprocess.run(common + ["--output_dir", str(out), "--max_steps", "1"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    step1 = json.loads((out / "trainer_state.json").read_text())["log_history"][0]
    second = subprocess.run(common + ["--output_dir", str(out), "--max_steps", "2", "--seed", "1",
                                      "--resume_from_checkpoint", str(out / "checkpoint-1")],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    logged = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert logged[0] == step1 and [entry["step"] for entry in logged if "loss" in entry] == [1, 2]


def test_the_script_checks_the_model_before_training(tmp_path, capsys):
    """A model directory without its weights, prompts that with --max_completion_length exceed the
    model's context, a tokenizer without EOS: one line each, before TRL loads anything."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from loop.embedded_task import char_tokenizer
    tok = char_tokenizer()
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+2", "answer": f"#### {a + 2}"}) + "\n" for a in range(4)))
    base = ["--model", str(tmp_path / "m"), "--dataset", str(data), "--output_dir", str(tmp_path / "out"), "--use_cpu",
            "--instruction", "", "--per_device_train_batch_size", "2", "--num_generations", "2"]
    with pytest.raises(SystemExit, match="a prompt of 4 tokens \\+ --max_completion_length 61 exceed the model's context "
                                         "of 64 positions; drop the dataset's prompts longer than 3 tokens"):
        train_trl.main([*base, "--max_completion_length", "61"])
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match=f"--model {tmp_path / 'm'}: cannot load its weights"):
        train_trl.main([*base, "--max_completion_length", "8"])
    tok.eos_token = None  # a tokenizer without EOS (TRL's padding died on it with a TypeError); checked before the weights
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit, match=f"--model {tmp_path / 'm'}: the tokenizer has no EOS token"):
        train_trl.main([*base, "--max_completion_length", "8"])
