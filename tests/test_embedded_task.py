"""The embedded arithmetic tasks: solutions parse to their sums, splits are disjoint, and the
chain task's ground truth labels every token of a response."""
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from data import extract_answer, reward_fn
from embedded_task import (char_tokenizer, credit_ground_truth, free_tags, make_arithmetic_task, running_sum_solution,
                           token_roles)
from grpo_baseline import GRPOConfig


@given(st.lists(st.integers(0, 99), min_size=2, max_size=6), st.booleans(), st.integers(0, 10**6))
def test_embedded_solutions_parse_to_their_sum(nums, tagged, seed):
    solution = running_sum_solution(nums, tag=free_tags(random.Random(seed)) if tagged else None)
    assert extract_answer(solution) == str(sum(nums))


@pytest.mark.parametrize("task", ["sum", "chain"])
def test_embedded_task_splits_are_disjoint_and_gsm8k_shaped(task):
    cfg = GRPOConfig(task=task, eval_size=50)
    splits = make_arithmetic_task(cfg, train_size=500)
    train, held_out = splits["train"], splits["test"]
    assert len(train) == 500 and len(held_out) == 50
    assert not set(train["question"]) & set(held_out["question"])
    row = train[0]
    assert len(row["question"].split("+")) == 4
    assert all((line[:2].isalpha() and line[2] == " ") == (task == "chain") for line in row["answer"].split("\n")[:-1])
    assert extract_answer(row["answer"]) == str(sum(map(int, row["question"].split("+"))))
    assert row["blank_question"].count("?") == len(row["question"].replace("+", ""))


@given(st.lists(st.integers(0, 9), min_size=2, max_size=6), st.integers(0, 10**6), st.data())
def test_changing_a_free_tag_never_changes_the_reward_and_a_decisive_token_does(nums, seed, data):
    """The ground truth is right about the reward: every tag letter can be replaced without
    changing it, and changing a digit of the final answer always does."""
    solution = running_sum_solution(nums, tag=free_tags(random.Random(seed)))
    roles = token_roles(solution)
    assert len(roles) == len(solution) and roles.count("f") == 2 * (len(nums) - 1)
    answer = str(sum(nums))
    free = [i for i, r in enumerate(roles) if r == "f"]
    i = data.draw(st.sampled_from(free))
    assert reward_fn(solution[:i] + data.draw(st.sampled_from("abcxyz")) + solution[i + 1:], answer) == 1
    last = max(i for i, r in enumerate(roles) if r == "d")
    wrong = str((int(solution[last]) + 1) % 10)
    assert reward_fn(solution[:last] + wrong + solution[last + 1:], answer) == 0
    assert token_roles("pq 3+5=8\nzz 8+8=1x\n#### 16") == "ffscscsd" + "s" * 16 + "dd"  # what does not parse is structure


def test_credit_ground_truth_shares_under_uniform_and_concentrated_credit():
    tok = char_tokenizer()
    text = "pq 3+5=8\n#### 8"
    ids = torch.tensor([tok(text).input_ids + [tok.eos_token_id]] * 3)
    mask = torch.ones(ids.shape)
    roles = token_roles(text) + "s"  # the EOS is structure
    decisive = torch.tensor([r == "d" for r in roles])
    adv = torch.tensor([2.0, -0.5, 0.0])  # the third response has no credit: left out
    uniform = adv[:, None] * mask
    entropy = torch.where(torch.tensor([r == "f" for r in roles]), 2.0, 0.1).expand(3, -1)
    out = credit_ground_truth(ids, mask, adv, uniform, entropy, tok)
    assert out["decisive_credit_share"] == out["decisive_credit_share_uniform"] == decisive.float().mean().item()
    assert out["free_tag_entropy"] == 2.0
    focused = adv[:, None] * torch.where(decisive, 3.0, 0.5)
    assert credit_ground_truth(ids, mask, adv, focused, entropy, tok)["decisive_credit_share"] > 2 / 16
