"""GCPO (docs/gcpo.md): the guidance weights and the token credit built from them."""
import json
import math
import os

import hypothesis.strategies as st
import torch
from hypothesis import given

import compare
import gcpo
import grpo_baseline as gb
from loop.data import prompt_ids
from loop.embedded_task import char_tokenizer
from loop.language_model import completion_logprobs

NORMS = st.sampled_from(["hist", "mean", "softmax"])
# multiples of 1/8: sums and differences are exact in float64, so shifts and ties are exact too
eighths = st.integers(-160, 0).map(lambda k: k / 8)


@st.composite
def contrast_batch(draw, values=eighths):
    """(logp_pos, logp_neg, mask): every response has at least one valid token, padding at the end."""
    n, l = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    pos = torch.tensor(draw(st.lists(values, min_size=n * l, max_size=n * l)), dtype=torch.float64).view(n, l)
    neg = torch.tensor(draw(st.lists(values, min_size=n * l, max_size=n * l)), dtype=torch.float64).view(n, l)
    lengths = torch.tensor(draw(st.lists(st.integers(1, l), min_size=n, max_size=n)))
    return pos, neg, (torch.arange(l)[None] < lengths[:, None]).double()


@given(contrast_batch(), NORMS)
def test_weights_nonnegative_mean_one_zero_on_padding(batch, norm):
    pos, neg, mask = batch
    w = gcpo.guidance_weights(pos, neg, mask, norm)
    assert torch.all(w >= 0) and torch.all(w[mask == 0] == 0)
    torch.testing.assert_close(w.sum(1) / mask.sum(1), torch.ones(len(w), dtype=w.dtype), rtol=1e-12, atol=1e-12)


@given(contrast_batch(), NORMS)
def test_no_contrast_gives_grpo_exactly(batch, norm):
    pos, _, mask = batch
    adv = torch.linspace(-1, 1, len(pos), dtype=torch.float64)
    assert torch.equal(gcpo.guidance_weights(pos, pos.clone(), mask, norm), mask)
    assert torch.equal(gcpo.gcpo_token_advantages(adv, pos, pos.clone(), mask, norm), gb.grpo_token_advantages(adv, mask))


@given(contrast_batch(), NORMS, st.integers(-40, 40).map(lambda k: k / 8))
def test_weights_depend_on_the_difference_only(batch, norm, shift):
    pos, neg, mask = batch
    torch.testing.assert_close(gcpo.guidance_weights(pos + shift, neg + shift, mask, norm),
                               gcpo.guidance_weights(pos, neg, mask, norm), rtol=0, atol=0)


@given(contrast_batch(), NORMS)
def test_equal_divergences_get_equal_weights_and_larger_never_less(batch, norm):
    pos, neg, mask = batch
    d, w = gcpo.divergence(pos, neg), gcpo.guidance_weights(pos, neg, mask, norm)
    for i in range(len(w)):
        valid = mask[i].bool()
        di, wi = d[i][valid], w[i][valid]
        same, larger = di[:, None] == di[None, :], di[:, None] > di[None, :]
        assert torch.all((wi[:, None] == wi[None, :])[same])
        assert torch.all((wi[:, None] >= wi[None, :])[larger])


@given(contrast_batch(), st.lists(st.floats(-3, 3), min_size=5, max_size=5), NORMS)
def test_credit_is_moved_never_created(batch, adv, norm):
    pos, neg, mask = batch
    adv = torch.tensor(adv[:len(pos)], dtype=torch.float64)
    token_adv = gcpo.gcpo_token_advantages(adv, pos, neg, mask, norm)
    torch.testing.assert_close(token_adv.sum(1), adv * mask.sum(1), rtol=1e-9, atol=1e-9)
    assert torch.all((torch.sign(token_adv) == torch.sign(adv)[:, None]) | (token_adv == 0))


def reference_hist(d):
    """The rank-power weights of one response, written out: average ranks by counting."""
    n = len(d)
    ranks = [sum(x < v for x in d) + (sum(x == v for x in d) + 1) / 2 for v in d]
    raw = [(r / n) ** gcpo.HIST_ALPHA for r in ranks]
    return [x * n / sum(raw) for x in raw]


@given(contrast_batch(st.floats(-20, 0)))
def test_vectorised_hist_equals_a_per_response_reference(batch):
    pos, neg, mask = batch
    d, w = gcpo.divergence(pos, neg), gcpo.guidance_weights(pos, neg, mask, "hist")
    for i in range(len(w)):
        valid = mask[i].bool()
        if len(set(d[i][valid].tolist())) > 1:  # all equal: exactly 1, checked above
            torch.testing.assert_close(w[i][valid], torch.tensor(reference_hist(d[i][valid].tolist()), dtype=w.dtype))


@given(st.integers(2, 30))
def test_rank_power_formula_without_ties(n):
    d = torch.arange(1, n + 1, dtype=torch.float64)[torch.randperm(n)] / n  # distinct divergences
    w = gcpo.guidance_weights(torch.zeros(1, n, dtype=torch.float64), torch.log1p(d)[None], torch.ones(1, n, dtype=torch.float64))
    k3 = gcpo.divergence(torch.zeros(1, n, dtype=torch.float64), torch.log1p(d)[None])[0]
    p = (k3.argsort().argsort() + 1).double() / n  # ranks 1..n
    torch.testing.assert_close(w[0], p ** gcpo.HIST_ALPHA / (p ** gcpo.HIST_ALPHA).mean())


def test_hist_alpha_puts_80_percent_of_weight_on_the_top_40_percent():
    n = 10000
    w = gcpo.guidance_weights(torch.zeros(1, n, dtype=torch.float64), -torch.linspace(0.01, 5, n, dtype=torch.float64)[None],
                              torch.ones(1, n, dtype=torch.float64))[0]
    assert math.isclose(w.sort(descending=True).values[:4000].sum().item() / n, 0.8, abs_tol=1e-3)
    assert math.isclose(gcpo.HIST_ALPHA, 2.1507, abs_tol=1e-4)


def test_negative_prompts_for_the_embedded_task_and_a_chat_template():
    tok = char_tokenizer()
    row = {"question": "1+2+3+4", "answer": "10", "blank_question": "?+?+?+?"}
    cfg = gcpo.GCPOConfig()
    assert tok.decode(gcpo.negative_prompt_ids(tok, row, cfg)) == "1+2+3+4 Give a wrong answer.\n"
    assert tok.decode(gcpo.negative_prompt_ids(tok, row, gcpo.GCPOConfig(negative="empty_prompt"))) == "?+?+?+?\n"
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    real = {"question": "What is 1+2?", "answer": "3", "blank_question": None}
    real_cfg = gcpo.GCPOConfig(model="some/model", instruction=" Think.")
    assert tok.decode(gcpo.negative_prompt_ids(tok, real, gcpo.GCPOConfig(model="m", instruction=" Think.",
                                                                       negative="empty_prompt"))) == \
        "<user>Answer the question. Think.<assistant>"
    assert tok.decode(gcpo.negative_prompt_ids(tok, real, real_cfg)) == \
        "<user>What is 1+2? Think.\n\nNote: Intentionally generate an incorrect answer.<assistant>"  # the reference's words
    mine = gcpo.GCPOConfig(model="m", instruction="", negative_instruction=" Be wrong.")
    assert tok.decode(gcpo.negative_prompt_ids(tok, real, mine)) == "<user>What is 1+2? Be wrong.<assistant>"


def test_softmax_is_the_references_scaled_by_the_largest_divergence():
    """The reference: w = n * softmax(d / max(d) / T) over the valid tokens. Here with k3 divergences
    computed by hand, so the scale (not the rank) is what the test checks."""
    logp_pos = torch.zeros(1, 4, dtype=torch.float64)
    logp_neg = torch.tensor([[0.0, -0.5, -1.0, -2.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    u = logp_neg[0]
    d = torch.exp(u) - u - 1
    expected = 4 * torch.softmax(d / d.max() / 0.1, 0)
    w = gcpo.guidance_weights(logp_pos, logp_neg, mask, "softmax", 0.1)[0]
    assert torch.allclose(w, expected, atol=1e-12) and w.max() > 3.5  # one token takes most of the weight


def test_entropy_term_adds_coef_times_mean_nll():
    logp, mask = torch.log(torch.tensor([[0.5, 0.25, 0.9]])), torch.tensor([[1.0, 1.0, 0.0]])
    cfg = gcpo.GCPOConfig(entropy_coef=0.1)
    with_term, _ = gcpo.gcpo_loss(logp, logp, torch.zeros_like(logp), mask, cfg, mask.sum())
    assert math.isclose(with_term.item(), 0.1 * (math.log(2) + math.log(4)) / 2, rel_tol=1e-6)


def test_gcpo_end_to_end(tiny_cfg):
    for negative, steps_per_rollout in (("wrong_answer", 1), ("empty_prompt", 2)):
        cfg = tiny_cfg(gcpo.GCPOConfig, negative=negative, max_steps=2, output_dir=tiny_cfg().output_dir + negative,
                       num_mini_batches=steps_per_rollout)
        gb.train(cfg, **gcpo.METHOD)
        with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
            steps = [json.loads(line) for line in f][1:]
        assert all(m["skipped_updates"] == 0 for m in steps)
        scored = [m for m in steps if "div_mean" in m]  # a step whose groups all tie has nothing to score
        assert scored and all(0 <= m["div_mean"] <= 10 and 0 < m["weight_top40_share"] <= 1 for m in scored)
        assert "negative prompt" in open(os.path.join(cfg.output_dir, "credit.html")).read()


def rolled_out(tiny_cfg, tiny_policy, **overrides):
    """A batch with some response of A != 0 (compare.informative_batch: the first block of prompts that
    gives one; the warm start, and so its samples, differ between CPUs: on one machine the first
    block's groups all tied), log pi_old scored as the loop does for GCPO (reads_pi_old)."""
    cfg = tiny_cfg(gcpo.GCPOConfig, **overrides)
    model, tok, train_rows, _ = tiny_policy(cfg)
    batch, _ = compare.informative_batch(model, tok, train_rows, cfg, torch.device("cpu"))
    assert (batch.advantages != 0).any()
    return cfg, model, tok, batch


def test_weights_follow_the_policy_from_one_mini_batch_to_the_next(tiny_cfg, tiny_policy):
    """The reference recomputes lp+ and lp- under the current policy in every mini-batch. Under
    pi_old, recredit gives the step's credit (lp+ = log pi_old); after the policy moves, it gives
    (1.3)-(1.5) on the moved policy's log-probs, no longer the stale ones. ('mean' weights are
    continuous in d, so float noise between batchings cannot flip a rank.)"""
    cfg, model, tok, batch = rolled_out(tiny_cfg, tiny_policy, weight_norm="mean", num_mini_batches=2)
    token_adv, _ = gcpo.gcpo_credit(batch, model, tok, cfg, 1)
    idx = torch.arange(len(batch.rows))[1::2]
    torch.testing.assert_close(gcpo.gcpo_recredit(batch, idx, model, tok, cfg), token_adv[idx], atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fresh = gcpo.gcpo_recredit(batch, idx, model, tok, cfg)
    live = idx[batch.advantages[idx] != 0]
    mask = batch.completion_mask[live]
    logp_pos, _ = completion_logprobs(model, batch.prompt_ids[live], batch.prompt_mask[live], batch.completion_ids[live],
                                      mask, cfg.temperature, 64)
    logp_neg, _ = gcpo.negative_logprobs(batch, live, model, tok, cfg)
    expected = gcpo.gcpo_token_advantages(batch.advantages[live], logp_pos, logp_neg, mask, "mean")
    torch.testing.assert_close(fresh[batch.advantages[idx] != 0], expected, atol=1e-5, rtol=1e-4)
    assert (fresh[batch.advantages[idx] == 0] == 0).all()
    assert not torch.allclose(fresh, token_adv[idx], atol=1e-3)


def test_update_recomputes_credit_after_every_optimizer_step_and_never_at_one(tiny_cfg, tiny_policy):
    cfg, model, tok, batch = rolled_out(tiny_cfg, tiny_policy)
    token_adv = gb.grpo_token_advantages(batch.advantages, batch.completion_mask)
    calls = []

    def recredit(idx):
        calls.append(sorted(idx.tolist()))
        return token_adv[idx]

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gb.update(model, optimizer, batch, token_adv, cfg, recredit=recredit)  # the defaults: one step per rollout
    assert calls == []
    two_by_two = tiny_cfg(gcpo.GCPOConfig, num_mini_batches=2, num_iterations=2)
    gb.update(model, optimizer, batch, token_adv, two_by_two, recredit=recredit)
    assert len(calls) == 3 and all(len(c) == len(batch.rows) // 2 for c in calls)  # steps 2, 3 and 4 of 4
