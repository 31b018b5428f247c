"""GCPO (docs/gcpo.md): the guidance weights and the token credit built from them."""
import json
import math
import os

import hypothesis.strategies as st
import torch
from hypothesis import given

import gcpo
import grpo_baseline as gb
from embedded_task import char_tokenizer

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
    assert tok.decode(gcpo.negative_prompt(tok, row, "wrong_answer", "")) == "1+2+3+4 Give a wrong answer.\n"
    assert tok.decode(gcpo.negative_prompt(tok, row, "empty_prompt", "")) == "?+?+?+?\n"
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    real = {"question": "What is 1+2?", "answer": "3", "blank_question": None}
    assert tok.decode(gcpo.negative_prompt(tok, real, "empty_prompt", " Think.")) == "<user>Answer the question. Think.<assistant>"
    assert tok.decode(gcpo.negative_prompt(tok, real, "wrong_answer", " Think.")) == \
        "<user>What is 1+2? Think. Give a wrong answer.<assistant>"


def test_entropy_term_adds_coef_times_mean_nll():
    logp, mask = torch.log(torch.tensor([[0.5, 0.25, 0.9]])), torch.tensor([[1.0, 1.0, 0.0]])
    cfg = gcpo.GCPOConfig(entropy_coef=0.1)
    with_term, _ = gcpo.gcpo_loss(logp, logp, torch.zeros_like(logp), mask, cfg, mask.sum())
    assert math.isclose(with_term.item(), 0.1 * (math.log(2) + math.log(4)) / 2, rel_tol=1e-6)


def test_gcpo_end_to_end(tiny_cfg):
    for negative in ("wrong_answer", "empty_prompt"):
        cfg = tiny_cfg(gcpo.GCPOConfig, negative=negative, max_steps=2, output_dir=tiny_cfg().output_dir + negative)
        gb.train(cfg, credit=gcpo.gcpo_credit, loss_fn=gcpo.gcpo_loss)
        with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
            steps = [json.loads(line) for line in f][1:]
        assert all(m["skipped_updates"] == 0 for m in steps)
        scored = [m for m in steps if "div_mean" in m]  # a step whose groups all tie has nothing to score
        assert scored and all(0 <= m["div_mean"] <= 10 and 0 < m["weight_top40_share"] <= 1 for m in scored)
        assert "negative prompt" in open(os.path.join(cfg.output_dir, "credit.html")).read()
