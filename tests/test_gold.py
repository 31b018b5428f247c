"""Gold (docs/gold.md): injection into all-wrong groups, and the sequence-level ratio."""
import json
import math
import os

import hypothesis.strategies as st
import torch
from hypothesis import given

import gold
import grpo_baseline as gb
from loop.data import prompt_ids
from loop.embedded_task import char_tokenizer


@st.composite
def binary_groups(draw, kind):
    """Binary rewards in groups; kind: 'mixed_or_correct' (some 1 in every group) or 'all_wrong'."""
    g, groups = draw(st.integers(2, 8)), draw(st.integers(1, 4))
    rows = []
    for _ in range(groups):
        if kind == "all_wrong":
            rows.append([0.0] * g)
        else:
            row = draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=g, max_size=g))
            row[draw(st.integers(0, g - 1))] = 1.0
            rows.append(row)
    return torch.tensor(rows).reshape(-1), g


@given(binary_groups("mixed_or_correct"), st.data())
def test_mixed_and_all_correct_groups_are_untouched(rg, data):
    rewards, g = rg
    has_gold = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(rewards) // g, max_size=len(rewards) // g)))
    new, is_gold = gold.inject_gold(rewards, g, has_gold)
    assert torch.equal(new, rewards) and not is_gold.any()
    assert torch.equal(gb.group_advantages(new, g), gb.group_advantages(rewards, g))


@given(binary_groups("all_wrong"))
def test_all_wrong_group_with_a_reference_gets_exactly_one_gold_member(rg):
    rewards, g = rg
    new, is_gold = gold.inject_gold(rewards, g, torch.ones(len(rewards) // g, dtype=torch.bool))
    assert torch.equal(is_gold.view(-1, g).sum(1), torch.ones(len(rewards) // g, dtype=torch.long))
    assert torch.all(is_gold.view(-1, g)[:, -1])
    assert torch.equal(new, is_gold.float())
    adv = gb.group_advantages(new, g).view(-1, g)
    expected = torch.full((g,), -1 / math.sqrt(g))
    expected[-1] = (g - 1) / math.sqrt(g)
    torch.testing.assert_close(adv, expected.expand_as(adv), atol=1e-4, rtol=0)
    assert torch.all(adv.sum(1).abs() < 1e-5)


@given(binary_groups("all_wrong"))
def test_all_wrong_group_without_a_reference_stays_all_zero(rg):
    rewards, g = rg
    new, is_gold = gold.inject_gold(rewards, g, torch.zeros(len(rewards) // g, dtype=torch.bool))
    assert not is_gold.any() and torch.equal(gb.group_advantages(new, g), torch.zeros(len(rewards)))


def test_gold_advantages_for_g8_match_the_spec():
    new, _ = gold.inject_gold(torch.zeros(8), 8, torch.tensor([True]))
    adv = gb.group_advantages(new, 8)
    assert math.isclose(adv[-1].item(), 2.4749, abs_tol=1e-4) and math.isclose(adv[0].item(), -0.3536, abs_tol=1e-4)


@st.composite
def logp_batch(draw):
    n, l = draw(st.integers(1, 5)), draw(st.integers(1, 8))
    logp = -torch.tensor(draw(st.lists(st.floats(0, 20), min_size=n * l, max_size=n * l)), dtype=torch.float64).view(n, l)
    lengths = draw(st.lists(st.integers(1, l), min_size=n, max_size=n))
    mask = (torch.arange(l)[None] < torch.tensor(lengths)[:, None]).double()
    return logp, mask


@given(logp_batch())
def test_sequence_ratio_is_exactly_one_on_policy(batch):
    logp, mask = batch
    assert torch.equal(gold.sequence_ratio(logp, logp.clone(), mask), torch.ones(len(logp), dtype=logp.dtype))


@given(logp_batch(), st.integers(1, 5), st.floats(-1, 1))
def test_sequence_ratio_ignores_padding(batch, extra, shift):
    logp, mask = batch
    old = logp + shift * mask
    pad = lambda x, v: torch.cat([x, torch.full((len(x), extra), v, dtype=x.dtype)], 1)
    torch.testing.assert_close(gold.sequence_ratio(pad(logp, math.nan), pad(old, math.inf), pad(mask, 0.0)),
                               gold.sequence_ratio(logp, old, mask), rtol=1e-12, atol=0)
    torch.testing.assert_close(gold.sequence_ratio(logp, old, mask), torch.full((len(logp),), math.exp(-shift),
                                                                                  dtype=logp.dtype))


def test_sequence_ratio_is_clamped_in_log_space():
    logp, mask = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    assert gold.sequence_ratio(logp, logp - 50, mask, max_log=10.0).item() == math.exp(10.0)


def test_reference_response_keeps_its_final_answer_or_is_dropped():
    tok = char_tokenizer()
    row = {"solution": "1+2=3\n3+4=7\n#### 7", "answer": "7"}
    ids, why = gold.reference_response(tok, row, gold.GoldConfig(max_completion_length=64))
    assert why is None and ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == row["solution"]
    assert gold.reference_response(tok, row, gold.GoldConfig(max_completion_length=10)) == (None, "too_long")
    assert gold.reference_response(tok, row, gold.GoldConfig(max_completion_length=len(row["solution"]))) == (
        None, "too_long")  # the end token needs a place too, and the cut would take the final digit
    long_row = {"solution": row["solution"] + " apples, said the farmer", "answer": "7"}
    ids, why = gold.reference_response(tok, long_row, gold.GoldConfig(max_completion_length=len(row["solution"]) + 1))
    assert why is None and ids[-1] == tok.eos_token_id  # cut, but it still ends the turn
    assert tok.decode(ids, skip_special_tokens=True) == row["solution"]
    assert gold.reference_response(tok, {"solution": None, "answer": "7"}, gold.GoldConfig()) == (None, "no_reference")
    assert gold.reference_response(tok, {"solution": "#### 8", "answer": "7"}, gold.GoldConfig())[1] == "unparsable_reference"
    gsm = {"solution": "48/2 = <<48/2=24>>24 clips\n#### 24", "answer": "24"}
    ids, _ = gold.reference_response(tok, gsm, gold.GoldConfig(max_completion_length=64))
    assert tok.decode(ids, skip_special_tokens=True) == "48/2 = 24 clips\n#### 24"


def test_sequence_ratio_needs_sequence_mean_aggregation():
    try:
        gold.GoldConfig(loss_type="token-mean")
    except ValueError as e:
        assert "--loss_type" in str(e)
    else:
        raise AssertionError("token-mean with the sequence ratio was accepted")


def test_gold_end_to_end_injects_into_all_wrong_groups(tiny_cfg):
    # a weak warm start, so that all-wrong groups occur
    cfg = tiny_cfg(gold.GoldConfig, warm_start_steps=80, max_steps=3)
    gb.train(cfg, loss_fn=gold.gold_loss, edit_rollouts=gold.inject_reference_solutions)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        steps = [json.loads(line) for line in f][1:]
    assert sum(m["gold_injections"] for m in steps) > 0
    for m in steps:
        assert m["gold_injections"] == m["all_wrong_groups"]  # every problem here has a reference
        assert m["ratio_mean"] == 1.0 and m["skipped_updates"] == 0  # one optimizer step: its own pass is pi_old, exactly


def test_dynamic_sampling_sees_the_injected_group_as_informative(tiny_cfg, tiny_policy, monkeypatch):
    """Gold edits each group before the filter judges it: round 0 holds an all-wrong group (with a
    reference) and a mixed one, so after the injection both are informative and no second round
    is drawn. Were the filter first, it would drop the all-wrong group and resample."""
    cfg = tiny_cfg(gold.GoldConfig, prompts_per_step=2, dynamic_sampling=True, max_resample_rounds=2)
    model, tok, train_rows, _ = tiny_policy(cfg)
    G, queue = cfg.num_generations, [[0.0] * 4 + [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0] * 2]

    def fake_generate(model, tokenizer, prompts, cfg, device):
        texts = ["#### 0"] * len(prompts)
        ids = torch.tensor([tokenizer(t + tokenizer.eos_token, add_special_tokens=False).input_ids for t in texts])
        return ids, torch.ones(ids.shape), texts

    monkeypatch.setattr(gb, "generate", fake_generate)
    monkeypatch.setattr(gb, "verified_rewards", lambda texts, rows, cfg, stats: queue.pop(0))
    rows = train_rows[:2]
    more = lambda round: (train_rows[2:4], [prompt_ids(tok, r["question"]) for r in train_rows[2:4]])  # noqa: E731
    batch, _, stats = gb.rollout(model, tok, rows, [prompt_ids(tok, r["question"]) for r in rows], cfg,
                                 torch.device("cpu"), None, gold.inject_reference_solutions, more)
    assert stats["sampling_rounds"] == 1 and stats["informative_groups"] == 2 and stats["gold_injections"] == 1
    assert (~batch.sampled).nonzero().squeeze(1).tolist() == [G - 1] and batch.rewards[G - 1] == 1
