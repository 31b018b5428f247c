"""The embedded arithmetic task: its solutions parse to their sums, its splits are disjoint."""
from hypothesis import given
from hypothesis import strategies as st

from data import extract_answer
from embedded_task import make_arithmetic_task, running_sum_solution
from grpo_baseline import GRPOConfig


@given(st.lists(st.integers(0, 99), min_size=2, max_size=6))
def test_embedded_solutions_parse_to_their_sum(nums):
    assert extract_answer(running_sum_solution(nums)) == str(sum(nums))


def test_embedded_task_splits_are_disjoint_and_gsm8k_shaped():
    cfg = GRPOConfig(eval_size=50)
    splits = make_arithmetic_task(cfg, train_size=500)
    train, held_out = splits["train"], splits["test"]
    assert len(train) == 500 and len(held_out) == 50
    assert not set(train["question"]) & set(held_out["question"])
    row = train[0]
    assert extract_answer(row["answer"]) == str(sum(map(int, row["question"].split("+"))))
    assert row["blank_question"].count("?") == len(row["question"].replace("+", ""))

