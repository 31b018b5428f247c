"""Answer parsing, reward, dataset loading and option validation: bad input gets a clear error."""
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import grpo_baseline as gb


@pytest.mark.parametrize("text, answer", [
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
    ("so the total is 1,000.\n#### 1,000", "1000"),
    ("#### $42.", "42"),
    ("#### 3.50", "7/2"),
    ("The answer is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{ 12 }", "12"),
    ("#### 18 is my answer #### 19", "19"),
    ("no final answer here", None),
    ("####", None),
    ("\\boxed{unclosed", None),
    ("__import__('os').system('echo pwned') #### 2+2", "2+2"),  # parsed, never evaluated
])
def test_extract_answer(text, answer):
    assert gb.extract_answer(text) == answer


def test_reward_compares_normalised_answers():
    assert gb.reward_fn("12+5=17\n#### 17", "17") == 1.0
    assert gb.reward_fn("#### 17.0", "17") == 1.0
    assert gb.reward_fn("#### 18", "17") == 0.0
    assert gb.reward_fn("", "17") == 0.0


@given(st.lists(st.integers(0, 99), min_size=2, max_size=6))
def test_embedded_solutions_parse_to_their_sum(nums):
    assert gb.extract_answer(gb.running_sum_solution(nums)) == str(sum(nums))


def test_embedded_task_splits_are_disjoint_and_gsm8k_shaped():
    cfg = gb.GRPOConfig(eval_size=50)
    train, held_out = gb.make_arithmetic_task(cfg, train_size=500)
    assert not set(train["question"]) & set(held_out["question"])
    row = train[0]
    assert gb.extract_answer(row["answer"]) == str(sum(map(int, row["question"].split("+"))))
    assert row["blank_question"].count("?") == len(row["question"].replace("+", ""))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_rows_are_skipped_with_a_count(tmp_path, capsys):
    rows = [{"question": "q1", "answer": "work\n#### 3"}, {"question": "q2"}, {"question": "q3", "answer": "no idea"},
            {"question": "", "answer": "#### 1"}, {"question": "q5", "answer": "\\boxed{5}"}, {"question": "q6", "answer": 7}]
    cfg = gb.GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows * 3), eval_size=2)
    train, held_out = gb.load_task(cfg)
    err = capsys.readouterr().err
    assert "skipped" in err and "unparsable answer" in err and "missing question or answer" in err
    assert {r["answer"] for r in train + held_out} == {"3", "5", "7"}
    assert all((r["solution"] is None) == (r["answer"] == "7") for r in train + held_out)  # a bare answer has no solution


def test_missing_field_names_the_field_and_the_flag(tmp_path):
    cfg = gb.GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "solution": "#### 1"}] * 5),
                        eval_size=2)
    with pytest.raises(ValueError, match=r"no field 'question'.*--question_field"):
        gb.load_task(cfg)


def test_no_usable_rows_is_an_error(tmp_path):
    cfg = gb.GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": None}] * 5),
                        eval_size=2)
    with pytest.raises(ValueError, match="no usable rows"):
        gb.load_task(cfg)


@pytest.mark.parametrize("argv, flag", [
    (["--num_generations", "1"], "--num_generations"),
    (["--learning_rate", "-1e-5"], "--learning_rate"),
    (["--temperature", "0"], "--temperature"),
    (["--num_mini_batches", "3"], "--num_mini_batches"),
    (["--loss_type", "sum"], "--loss_type"),
    (["--epsilon", "1.5"], "--epsilon"),
    (["--no_such_flag", "1"], "--no_such_flag"),
])
def test_bad_options_exit_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gb.parse_config(gb.GRPOConfig, argv)
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err


def test_options_parse_with_trl_names():
    cfg = gb.parse_config(gb.GRPOConfig, ["--num_generations", "4", "--epsilon_high", "0.2", "--beta", "0.04",
                                          "--scale_rewards", "none", "--resume"])
    assert (cfg.num_generations, cfg.epsilon_high, cfg.beta, cfg.scale_rewards, cfg.resume) == (4, 0.2, 0.04, "none", True)
