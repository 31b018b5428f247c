"""CEPO (docs/cepo.md): the evidence weights, the choice of r-, the teachers' alignment."""
import json
import os
from decimal import Decimal
from fractions import Fraction

import hypothesis.strategies as st
import torch
from hypothesis import given

import cepo
import grpo_baseline as gb
from loop import diagnostics
from loop.data import prompt_ids
from loop.embedded_task import load_task, warm_start
from loop.language_model import load_policy

lams, eps_ws = st.floats(0.0, 1.0), st.floats(0.0, 0.99)


@st.composite
def teacher_batch(draw):
    """(adv, logp_pos, logp_neg, mask) with at least one valid token per response."""
    n, l = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    values = st.lists(st.floats(-30.0, 0.0), min_size=n * l, max_size=n * l)
    pos = torch.tensor(draw(values), dtype=torch.float64).view(n, l)
    neg = torch.tensor(draw(values), dtype=torch.float64).view(n, l)
    adv = torch.tensor(draw(st.lists(st.floats(-3.0, 3.0), min_size=n, max_size=n)), dtype=torch.float64)
    lengths = torch.tensor(draw(st.lists(st.integers(1, l), min_size=n, max_size=n)))
    return adv, pos, neg, (torch.arange(l)[None] < lengths[:, None]).double()


@given(teacher_batch(), lams, eps_ws, st.data())
def test_filler_tokens_keep_their_advantage_exactly(batch, lam, eps_w, data):
    adv, pos, neg, mask = batch
    agree = torch.tensor(data.draw(st.lists(st.booleans(), min_size=pos.numel(), max_size=pos.numel()))).view_as(pos)
    neg = torch.where(agree, pos, neg)
    token_adv = cepo.cepo_token_advantages(adv, pos, neg, mask, lam, eps_w)
    filler = agree & (mask > 0)
    assert torch.equal(token_adv[filler], adv[:, None].expand_as(pos)[filler])


@given(teacher_batch(), lams, eps_ws)
def test_sign_is_anchored_and_magnitude_bounded(batch, lam, eps_w):
    adv, pos, neg, mask = batch
    token_adv = cepo.cepo_token_advantages(adv, pos, neg, mask, lam, eps_w)
    valid = mask > 0
    a = adv[:, None].expand_as(pos)[valid]
    assert torch.equal(torch.sign(token_adv[valid]), torch.sign(a))
    assert torch.all(token_adv[valid].abs() >= (1 - lam * eps_w) * a.abs() * (1 - 1e-12))
    assert torch.all(token_adv[valid].abs() <= (1 + lam * eps_w) * a.abs() * (1 + 1e-12))
    assert torch.all(token_adv[~valid] == 0)


@given(teacher_batch(), lams, eps_ws)
def test_lambda_zero_or_equal_teachers_is_grpo_exactly(batch, lam, eps_w):
    adv, pos, neg, mask = batch
    grpo = gb.grpo_token_advantages(adv, mask)
    assert torch.equal(cepo.cepo_token_advantages(adv, pos, neg, mask, 0.0, eps_w), grpo)
    assert torch.equal(cepo.cepo_token_advantages(adv, pos, pos.clone(), mask, lam, eps_w), grpo)


@given(teacher_batch(), lams, eps_ws)
def test_no_gradient_flows_through_the_teachers(batch, lam, eps_w):
    adv, pos, neg, mask = batch
    pos, neg = pos.clone().requires_grad_(True), neg.clone().requires_grad_(True)
    old = torch.full_like(mask, -1.0)
    student = old.clone().requires_grad_(True)
    token_adv = cepo.cepo_token_advantages(adv, pos, neg, mask, lam, eps_w)
    gb.policy_loss(student, old, token_adv, mask)[0].backward()
    assert pos.grad is None and neg.grad is None
    constant = token_adv.detach().clone()
    reference = old.clone().requires_grad_(True)
    gb.policy_loss(reference, old, constant, mask)[0].backward()
    assert torch.equal(student.grad, reference.grad)


def test_lambda_schedule():
    cfg = cepo.CEPOConfig(lambda_init=0.5, lambda_decay_steps=25)
    assert [cepo.lambda_at(s, cfg) for s in (1, 13, 26, 100)] == [0.5, 0.5 * (1 - 12 / 25), 0.0, 0.0]
    assert cepo.lambda_at(100, cepo.CEPOConfig(lambda_schedule="constant")) == 0.5


def test_wrong_answer_choice_per_group():
    texts = ["#### 5", "#### 7", "#### 9", "no answer",      # group 1: 7 is the first lowest-reward parsable
             "#### 5", "garbled", "#### 5", "#### 5",       # group 2: the only rejected one is unparsable
             "#### 5", "#### 5", "#### 5", "#### 5",        # group 3: all correct
             "oops", "#### 8", "#### 6", "x"]               # group 4: all wrong, first parsable is 8
    rewards = torch.tensor([1, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float)
    assert cepo.wrong_answer_hints(texts, rewards, 4) == ["7", None, None, "8"]
    assert cepo.wrong_answer_hints(["#### 3", "#### 4"], torch.tensor([0.5, 0.0]), 2) == ["4"]  # lowest reward first


def test_empty_hint_teacher_equals_the_student(tiny_cfg):
    """The teachers' log-probs line up with the student's token for token: with no hint, the
    teacher pass reproduces the rollout's own teacher-forced log-probs."""
    cfg = tiny_cfg(cepo.CEPOConfig)
    train_rows, eval_rows = load_task(cfg)
    model, tok = load_policy(warm_start(cfg, train_rows, eval_rows, torch.device("cpu")), cfg, torch.device("cpu"))
    rows = train_rows[:4]
    torch.manual_seed(0)
    batch, _, _ = gb.rollout(model, tok, rows, [prompt_ids(tok, r["question"]) for r in rows], cfg,
                             torch.device("cpu"), None)
    reversed_order = list(range(len(rows) * cfg.num_generations))[::-1]  # a different padding and batching
    teacher = cepo.teacher_logprobs(model, tok, [batch.prompts[i] for i in reversed_order],
                                    batch.completion_ids[reversed_order], batch.completion_mask[reversed_order], cfg)
    torch.testing.assert_close(teacher.flip(0), gb.score_pi_old(model, batch, cfg)[0], atol=1e-5, rtol=1e-5)


def test_cepo_end_to_end(tiny_cfg):
    for teacher in ("cepo", "rlsd"):
        cfg = tiny_cfg(cepo.CEPOConfig, teacher=teacher, lambda_decay_steps=2, max_steps=3,
                       output_dir=tiny_cfg().output_dir + teacher)
        gb.train(cfg, **cepo.METHOD)
        with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
            start, *steps = [json.loads(line) for line in f]
        assert abs(start["hint_contrast_nats"]) < 1e3 and 0 <= start["hint_contrast_wins"] <= 1  # the preflight ran
        assert [m["lambda"] for m in steps] == [0.5, 0.25, 0.0]
        assert "teacher_rows" not in steps[2]  # λ = 0: no teacher pass
        assert all(m["skipped_updates"] == 0 for m in steps)
        scored = [m for m in steps if "teacher_rows" in m]
        assert scored and all(0 <= m["w_clip_frac"] <= 1 and 0 <= m["against_frac"] <= 1 for m in scored)
        assert "r+: " in open(os.path.join(cfg.output_dir, "credit.html")).read()  # what the teachers scored under


def test_hint_check_warns_when_the_model_ignores_the_hint(tiny_cfg, tiny_policy, capsys, monkeypatch):
    cfg = tiny_cfg(cepo.CEPOConfig)
    model, tok, _, eval_rows = tiny_policy(cfg)
    checks = cepo.hint_preflight(model, tok, eval_rows, cfg)
    assert checks["hint_contrast_nats"] > 0, "the warm start was taught to read the hint"
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(diagnostics, "hint_contrast", lambda *a: (-0.4, 0.3))
    assert cepo.hint_preflight(model, tok, eval_rows, cfg) == {"hint_contrast_nats": -0.4, "hint_contrast_wins": 0.3}
    assert "warning: this model does not read CEPO's answer hints" in capsys.readouterr().err
    assert cepo.hint_preflight(model, tok, [{**r, "solution": None} for r in eval_rows], cfg) == {}
    assert "hint check skipped" in capsys.readouterr().out


def test_hint_template_needs_a_place_for_the_answer():
    try:
        cepo.CEPOConfig(hint_template="The answer is")
    except ValueError as e:
        assert "--hint_template" in str(e) and "{answer}" in str(e)
    else:
        raise AssertionError("a hint without the answer was accepted")


@given(st.one_of(st.integers(-10**30, 10**30).map(str),
                 st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
                 st.tuples(st.integers(-99, 99), st.integers(1, 99)).map(lambda f: f"{f[0]}/{f[1]}"),
                 st.tuples(st.integers(-999, 999), st.integers(-60, 60)).map(lambda m: f"{m[0]}E{m[1]}"),
                 st.text(min_size=1, max_size=12)))
def test_the_hint_checks_wrong_answer_always_has_another_value(answer):
    """hint_contrast contrasts the right hint with a wrong one: for a number, the wrong one is worth
    exactly one more (so '3.5' never becomes '3.50', the same value); any other text gets ' + 1'."""
    wrong = diagnostics.wrong_hint(answer)
    try:
        right = Fraction(Decimal(answer)) if "/" not in answer else Fraction(answer)
    except (ValueError, ArithmeticError):
        assert wrong == answer + " + 1"
        return
    assert (Fraction(Decimal(wrong)) if "/" not in wrong else Fraction(wrong)) == right + 1, wrong
