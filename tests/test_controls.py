"""The benchmark's control arms (controls.py): each changes one seam, and only as it says."""
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import controls
import grpo_baseline as gb


def masks(draw, n, length):
    lengths = draw(st.lists(st.integers(1, length), min_size=n, max_size=n))
    return torch.tensor([[1.0] * k + [0.0] * (length - k) for k in lengths])


@st.composite
def batches(draw):
    n, length = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    mask = masks(draw, n, length)
    adv = torch.tensor(draw(st.lists(st.sampled_from([-1.5, -0.5, 0.0, 0.5, 2.0]), min_size=n, max_size=n)))
    bits = lambda: torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=n, max_size=n)))
    return adv, mask, bits(), bits()


@given(batches())
def test_oracle_keeps_grpos_total_and_puts_it_only_where_the_reward_was_decided(batch):
    adv, mask, first_wrong, contested = batch
    weights = controls.oracle_weights(adv, mask, first_wrong, contested)
    target = torch.where((adv < 0)[:, None], first_wrong, (adv > 0)[:, None] & contested) & (mask > 0)
    assert (weights[~target] == 0).all() and (weights >= 0).all()
    has = target.any(1)
    assert torch.allclose(weights.sum(1)[has], mask.sum(1)[has])  # Σ_t Â_t = A_i |o_i|, as uniform credit


@given(st.integers(1, 5), st.integers(1, 9), st.integers(0, 10**6))
def test_shuffled_credit_keeps_each_responses_values_and_padding(n, length, seed):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, length, generator=g) > 0.3).float()
    token_adv = torch.randn(n, length, generator=g) * mask
    torch.manual_seed(seed)
    out = controls.shuffle_within(token_adv, mask)
    for i in range(n):
        valid = mask[i] > 0
        assert torch.equal(out[i, valid].sort().values, token_adv[i, valid].sort().values)
        assert torch.equal(out[i, ~valid], token_adv[i, ~valid])


def test_sft_gold_zeroes_the_sampled_members_of_a_group_with_a_reference_and_nothing_else():
    adv = torch.tensor([0.0, 0.0, 0.0, 1.5, 0.7, -0.7, 0.0, 0.0])  # group 0: three failures + Gold's reference
    sampled = torch.tensor([True, True, True, False, True, True, True, True])
    out = controls.supervised_only(adv, 4, sampled)
    assert torch.equal(out, adv)  # nothing to take away: the failures already have A = 0
    adv[0] = -0.5  # Gold's contrast: the failures pushed down beside the reference
    assert controls.supervised_only(adv, 4, sampled)[0] == 0 and controls.supervised_only(adv, 4, sampled)[3] == 1.5


@pytest.mark.parametrize("arm", list(controls.ARMS))
def test_each_control_parses_its_options_like_a_method(arm, capsys):
    cfg_cls, _ = controls.ARMS[arm]
    cfg = gb.parse_config(cfg_cls, ["--max_steps", "3", "--seed", "7", "--data_seed", "2"])
    assert (cfg.max_steps, cfg.seed, cfg.data_seed) == (3, 7, 2) and cfg.output_dir == f"runs/{arm}"


def test_the_oracle_refuses_a_dataset_it_has_no_ground_truth_for(tmp_path):
    with pytest.raises(ValueError, match="--dataset=.*the oracle reads the embedded task's ground truth"):
        controls.OracleConfig(dataset=str(tmp_path))
