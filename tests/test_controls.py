"""The benchmark's control arms (controls.py): each changes one seam, and only as it says."""
import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

import grpo_baseline as gb
from benchmark import controls
from loop.data import prompt_ids, resolve_instruction
from loop.options import parse_config


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
    state = torch.get_rng_state()
    out = controls.shuffle_within(token_adv, mask, controls.own_generator(gb.GRPOConfig(seed=seed), 1))
    assert torch.equal(torch.get_rng_state(), state)  # its own numbers: the run's stream is GRPO's
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
    cfg = parse_config(cfg_cls, ["--max_steps", "3", "--seed", "7", "--data_seed", "2"])
    assert (cfg.max_steps, cfg.seed, cfg.data_seed) == (3, 7, 2) and cfg.output_dir == f"runs/{arm}"


def test_the_oracle_refuses_a_dataset_it_has_no_ground_truth_for(tmp_path):
    with pytest.raises(ValueError, match="--dataset=.*the oracles read the embedded task's ground truth"):
        controls.OracleConfig(dataset=str(tmp_path))


@given(batches(), st.sampled_from([0.0, 0.5, 4.0, 100.0]))
def test_the_soft_oracle_weighs_decided_tokens_1_plus_beta_and_keeps_grpos_total(batch, beta):
    adv, mask, first_wrong, contested = batch
    weights = controls.soft_oracle_weights(adv, mask, first_wrong, contested, beta)
    target = controls.oracle_target(adv, mask, first_wrong, contested)
    assert torch.allclose(weights.sum(1), mask.sum(1)) and (weights[mask == 0] == 0).all()
    for i in range(len(adv)):
        on, off = weights[i][target[i]], weights[i][(mask[i] > 0) & ~target[i]]
        if len(on) and len(off):
            assert torch.allclose(on / off.mean(), torch.full_like(on, 1 + beta))  # 1 + β : 1
        else:
            assert torch.allclose(weights[i][mask[i] > 0], torch.ones(int(mask[i].sum())))  # nothing to weigh


@st.composite
def chain_batches(draw):
    """Paths with per-token log-probabilities and the responses along them: each response follows
    its path to its end (R = 1) or up to a first wrong token (R = 0)."""
    n = draw(st.integers(1, 5))
    rows = []
    for _ in range(n):
        length = draw(st.integers(1, 7))
        logp = draw(st.lists(st.floats(-6.0, 0.0), min_size=length, max_size=length))
        counted = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        wrong = draw(st.none() | st.integers(0, length - 1))
        tail = 0 if wrong is None else draw(st.integers(0, 3))  # tokens after the wrong one
        rows.append((logp, counted, wrong, (length if wrong is None else wrong + 1 + tail), draw(st.booleans())))
    Lp, L = max(len(r[0]) for r in rows), max(r[3] for r in rows)
    pad = lambda x, width, v: x + [v] * (width - len(x))
    logp = torch.tensor([pad(r[0], Lp, 0.0) for r in rows])
    path_mask = torch.tensor([pad([1.0] * len(r[0]), Lp, 0.0) for r in rows])
    counted = torch.tensor([pad(r[1], Lp, False) for r in rows])
    mask = torch.tensor([pad([1.0] * r[3], L, 0.0) for r in rows])
    first_wrong = torch.zeros(n, L, dtype=torch.bool)
    for i, r in enumerate(rows):
        if r[2] is not None:
            first_wrong[i, r[2]] = True
    return logp, path_mask, counted, torch.tensor([r[4] for r in rows]), mask, first_wrong


@given(chain_batches())
def test_true_token_advantages_telescope_to_the_reward_minus_the_start_value(batch):
    """Σ_t A^π(s_t, y_t) = R - V(s_0): 1 - V(s_0) for a response that finished its path, -V(s_0)
    for one that went wrong; a success credits no token below 0, a failure only its first wrong
    token; nothing after it; a path that does not fit the budget has V = 0 and no credit."""
    logp, path_mask, counted, fits, mask, first_wrong = batch
    values = controls.path_values(logp, path_mask, counted, fits)
    adv = controls.true_token_advantages(values, mask, first_wrong)
    failed = first_wrong.any(1)
    expected = torch.where(failed, 0.0, 1.0).double() * fits - values[:, 0]
    assert torch.allclose(adv.sum(1), expected, atol=1e-9)
    own = torch.exp(torch.where(counted & (path_mask > 0), logp.double(), 0.0).sum(1)) * fits
    assert torch.allclose(values[:, 0], own)  # V(s_0): the probability of the path's counted tokens
    after = first_wrong.long().cumsum(1) - first_wrong.long() > 0
    assert (adv[after] == 0).all() and (adv[mask == 0] == 0).all()
    assert (adv[~failed] >= 0).all() and (adv[failed][~first_wrong[failed]] >= 0).all() and (adv[first_wrong] <= 0).all()


@given(chain_batches(), st.lists(st.sampled_from([-1.5, 0.0, 0.7]), min_size=5, max_size=5))
def test_the_value_oracle_is_sized_as_grpo_and_signed_as_the_true_advantage(batch, advantages):
    logp, path_mask, counted, fits, mask, first_wrong = batch
    token_values = controls.true_token_advantages(controls.path_values(logp, path_mask, counted, fits), mask, first_wrong)
    adv = torch.tensor(advantages[:len(mask)])
    credit = controls.grpo_sized(adv, mask, token_values)
    some = token_values.abs().sum(1) > 0
    assert torch.allclose(credit.abs().sum(1)[some].double(), (adv.abs() * mask.sum(1))[some].double(), rtol=1e-5)
    assert (credit[~some] == 0).all() and (torch.sign(credit) == torch.sign(token_values) * (adv != 0)[:, None]).all()


def test_the_value_oracle_reads_a_right_responses_value_as_its_own_probability(tiny_cfg, tiny_policy):
    """On the tiny warm start (the sum task, no free tags): a reward-1 response's path is itself, so
    Σ_t A^π = 1 - π(response), π from its own log-probabilities; a failed one's is -V(s_0) < 0."""
    cfg = tiny_cfg(controls.ValueOracleConfig, prompts_per_step=8, num_generations=8)
    model, tok, train_rows, _ = tiny_policy(cfg)
    prompts = [prompt_ids(tok, r["question"], resolve_instruction(cfg)) for r in train_rows[:8]]
    torch.manual_seed(0)
    batch, _, _ = gb.rollout(model, tok, train_rows[:8], prompts, cfg, torch.device("cpu"), None)
    logp, _ = gb.score_pi_old(model, batch, cfg)
    token_values, start = controls.chain_advantages(batch, model, tok, cfg, 1)
    right = batch.rewards == 1
    assert right.any() and (~right).any()
    assert torch.allclose(token_values.sum(1)[right], 1 - logp.double().sum(1)[right].exp(), atol=1e-5)
    assert torch.allclose(token_values.sum(1)[~right], -start[~right]) and (start > 0).all()


@pytest.mark.parametrize("arm", ["random", "shuffled_oracle", "value_oracle", "soft_oracle"])
def test_a_control_samples_grpos_batches_common_random_numbers(arm, tiny_cfg, monkeypatch):
    """With the policy held still (a learning rate too small to move a float32 weight), an arm's
    step-2 batch is GRPO's, token for token: its credit draws no number from the run's random stream."""
    rollout = gb.rollout

    def step_two(config_cls, seams, name):
        drawn = []
        monkeypatch.setattr(gb, "rollout", lambda *a, **k: drawn.append(rollout(*a, **k)) or drawn[-1])
        cfg = tiny_cfg(config_cls, learning_rate=1e-30, max_steps=2, output_dir=str(tiny_cfg().output_dir) + name)
        gb.train(cfg, **seams)
        return drawn[1][0].completion_ids
    cfg_cls, seams = controls.ARMS[arm]
    assert torch.equal(step_two(cfg_cls, seams, arm), step_two(gb.GRPOConfig, gb.METHOD, "grpo"))
