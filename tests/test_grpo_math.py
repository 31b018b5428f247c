"""Property tests of GRPO's pure functions: they call the production code, never a copy."""
import math

import hypothesis.strategies as st
import torch
from hypothesis import given

import grpo_baseline as gb

reward_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def grouped_rewards(draw, values=reward_values):
    group_size = draw(st.integers(2, 8))
    groups = draw(st.integers(1, 4))
    rewards = draw(st.lists(values, min_size=group_size * groups, max_size=group_size * groups))
    return torch.tensor(rewards), group_size


@st.composite
def token_batch(draw, max_n=5, max_l=7):
    """(logp, old_logp, adv, mask) with ratios in a realistic range and at least one valid token."""
    n, l = draw(st.integers(1, max_n)), draw(st.integers(1, max_l))
    old = -torch.tensor(draw(st.lists(st.floats(0.0, 10.0), min_size=n * l, max_size=n * l))).view(n, l)
    delta = torch.tensor(draw(st.lists(st.floats(-1.0, 1.0), min_size=n * l, max_size=n * l))).view(n, l)
    adv = torch.tensor(draw(st.lists(st.floats(-3.0, 3.0), min_size=n * l, max_size=n * l))).view(n, l)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n * l, max_size=n * l))).view(n, l).float()
    mask[0, 0] = 1.0
    return (old + delta).double(), old.double(), (adv * mask).double(), mask.double()


# ---------------------------------------------------------------- group_advantages
@given(grouped_rewards())
def test_advantages_sum_to_zero_per_group(rg):
    rewards, g = rg
    for scale in (True, False):
        adv = gb.group_advantages(rewards, g, scale=scale).view(-1, g)
        spread = rewards.view(-1, g).abs().amax(1) + 1
        # float32: the group mean is off by about g ulps of the largest reward, and scaling divides
        # that by the std (hypothesis found rewards near -4.7e5 with a std of 127)
        std = rewards.view(-1, g).double().std(1).float()
        bound = 1e-4 * spread if not scale else g * (1e-4 + g * 2 ** -23 * spread / (std + 1e-6))
        assert torch.all(adv.sum(1).abs() <= bound)


@given(st.integers(1, 4), st.integers(2, 8), reward_values)
def test_constant_group_gets_exactly_zero(groups, g, value):
    adv = gb.group_advantages(torch.full((groups * g,), value), g)
    assert torch.equal(adv, torch.zeros(groups * g))


@given(grouped_rewards(), st.data())
def test_permuting_within_a_group_permutes_advantages(rg, data):
    rewards, g = rg
    perm = torch.cat([torch.tensor(data.draw(st.permutations(range(g)))) + k * g for k in range(len(rewards) // g)])
    adv = gb.group_advantages(rewards, g)
    torch.testing.assert_close(gb.group_advantages(rewards[perm], g), adv[perm], rtol=1e-5, atol=1e-5)


@given(grouped_rewards(st.integers(-5, 5).map(float)), st.floats(0.1, 100.0), st.floats(-100.0, 100.0))
def test_scaled_advantages_invariant_to_positive_affine_maps(rg, a, b):
    rewards, g = rg
    # eps = 1e-6 against a std >= 0.35 (integer rewards, non-constant): invariance up to ~1e-5
    torch.testing.assert_close(gb.group_advantages(a * rewards + b, g), gb.group_advantages(rewards, g),
                               rtol=1e-4, atol=1e-4)


@given(grouped_rewards())
def test_advantages_never_nan(rg):
    rewards, g = rg
    for scale in (True, False):
        assert torch.isfinite(gb.group_advantages(rewards, g, scale=scale)).all()


def test_binary_rewards_match_hand_computation():
    # one right of four: mean 0.25, unbiased std 0.5
    adv = gb.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    torch.testing.assert_close(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- policy_loss
def reference_loss(logp, old, adv, mask, lo, hi, agg):
    """The clipped objective written element by element."""
    per_seq, total, count = [], 0.0, 0
    for i in range(len(logp)):
        seq, n_i = 0.0, 0
        for t in range(len(logp[i])):
            if mask[i][t]:
                r, a = math.exp(logp[i][t] - old[i][t]), adv[i][t]
                term = -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
                seq, n_i = seq + term, n_i + 1
        total, count = total + seq, count + n_i
        per_seq.append(seq / max(n_i, 1))
    return total / count if agg == "token-mean" else sum(per_seq) / len(per_seq)


@given(token_batch(), st.floats(0.05, 0.5), st.floats(0.05, 0.5), st.sampled_from(["token-mean", "seq-mean-token-mean"]))
def test_policy_loss_equals_reference_formula(batch, lo, hi, agg):
    logp, old, adv, mask = batch
    loss, _ = gb.policy_loss(logp, old, adv, mask, lo, hi, agg)
    assert math.isclose(loss.item(), reference_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), lo, hi, agg),
                        rel_tol=1e-9, abs_tol=1e-9)


@given(token_batch())
def test_gradient_at_ratio_one_is_plain_policy_gradient(batch):
    _, old, adv, mask = batch
    logp = old.clone().requires_grad_(True)
    loss, _ = gb.policy_loss(logp, old, adv, mask)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv * mask / mask.sum())


@given(token_batch())
def test_no_gradient_where_the_clip_is_active(batch):
    logp, old, adv, mask = batch
    lo, hi = 0.2, 0.28
    logp = logp.clone().requires_grad_(True)
    loss, stats = gb.policy_loss(logp, old, adv, mask, lo, hi)
    loss.backward()
    ratio = torch.exp(logp.detach() - old)
    active = (mask > 0) & (((adv > 0) & (ratio > 1 + hi)) | ((adv < 0) & (ratio < 1 - lo)))
    assert torch.all(logp.grad[active] == 0)
    free = (mask > 0) & ~active
    torch.testing.assert_close(logp.grad[free], (-adv * ratio / mask.sum())[free])
    assert math.isclose(stats["clip_frac"], (active & (adv != 0)).sum().item() / mask.sum().item(), rel_tol=1e-6)


@given(token_batch(), st.integers(1, 4))
def test_appending_masked_garbage_changes_nothing(batch, extra):
    logp, old, adv, mask = batch
    n = logp.shape[0]
    pad = lambda x, v: torch.cat([x, torch.full((n, extra), v, dtype=x.dtype)], 1)
    for agg in ("token-mean", "seq-mean-token-mean"):
        clean, _ = gb.policy_loss(logp, old, adv, mask, agg=agg)
        dirty, _ = gb.policy_loss(pad(logp, math.nan), pad(old, math.inf), pad(adv, math.nan), pad(mask, 0.0), agg=agg)
        assert torch.isfinite(dirty) and math.isclose(dirty.item(), clean.item(), rel_tol=1e-12, abs_tol=1e-12)


@given(token_batch(max_n=6), st.integers(1, 5), st.sampled_from(["token-mean", "seq-mean-token-mean"]))
def test_micro_batches_with_global_normaliser_match_the_full_batch(batch, cut, agg):
    logp, old, adv, mask = batch
    cut = min(cut, logp.shape[0])
    full_logp = logp.clone().requires_grad_(True)
    gb.policy_loss(full_logp, old, adv, mask, agg=agg)[0].backward()
    normalizer = mask.sum() if agg == "token-mean" else logp.shape[0]
    split_logp = logp.clone().requires_grad_(True)
    total = sum(gb.policy_loss(split_logp[s:e], old[s:e], adv[s:e], mask[s:e], agg=agg, normalizer=normalizer)[0]
                for s, e in ((0, cut), (cut, logp.shape[0])) if e > s)
    total.backward()
    full, _ = gb.policy_loss(logp, old, adv, mask, agg=agg)
    assert math.isclose(total.item(), full.item(), rel_tol=1e-9, abs_tol=1e-12)
    torch.testing.assert_close(split_logp.grad, full_logp.grad)


# ---------------------------------------------------------------- kl_k3, masks
logps = st.floats(-30.0, 0.0)


@given(logps, logps)
def test_k3_nonnegative_and_zero_iff_equal(a, b):
    kl = gb.kl_k3(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).item()
    assert kl >= 0
    assert (kl == 0) == (a == b) or abs(a - b) < 1e-7  # exp(r)-r-1 underflows to 0 for |r| < ~1e-8


@given(st.lists(logps, min_size=1, max_size=20))
def test_k3_has_zero_gradient_where_policy_equals_reference(values):
    ref = torch.tensor(values, dtype=torch.float64)
    logp = ref.clone().requires_grad_(True)
    kl = gb.kl_k3(logp, ref)
    kl.sum().backward()
    assert torch.all(kl == 0) and torch.all(logp.grad == 0)

