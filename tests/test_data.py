"""Answer parsing, the reward and dataset loading: bad rows are skipped and counted, bad files get a clear error."""
import json

import pytest

from data import extract_answer, load_rows, reward_fn
from grpo_baseline import GRPOConfig


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
    assert extract_answer(text) == answer


def test_reward_compares_normalised_answers():
    assert reward_fn("12+5=17\n#### 17", "17") == 1.0
    assert reward_fn("#### 17.0", "17") == 1.0
    assert reward_fn("#### 18", "17") == 0.0
    assert reward_fn("", "17") == 0.0



def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_rows_are_skipped_with_a_count(tmp_path, capsys):
    rows = [{"question": "q1", "answer": "work\n#### 3"}, {"question": "q2"}, {"question": "q3", "answer": "no idea"},
            {"question": "", "answer": "#### 1"}, {"question": "q5", "answer": "\\boxed{5}"}, {"question": "q6", "answer": 7}]
    cfg = GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows * 3), eval_size=2)
    train, held_out = load_rows(cfg)
    err = capsys.readouterr().err
    assert "skipped" in err and "unparsable answer" in err and "missing question or answer" in err
    assert {r["answer"] for r in train + held_out} == {"3", "5", "7"}
    assert all((r["solution"] is None) == (r["answer"] == "7") for r in train + held_out)  # a bare answer has no solution


def test_missing_field_names_the_field_and_the_flag(tmp_path):
    cfg = GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", [{"problem": "q", "solution": "#### 1"}] * 5),
                        eval_size=2)
    with pytest.raises(ValueError, match=r"no field 'question'.*--question_field"):
        load_rows(cfg)


def test_no_usable_rows_is_an_error(tmp_path):
    cfg = GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": None}] * 5),
                        eval_size=2)
    with pytest.raises(ValueError, match="no usable rows"):
        load_rows(cfg)

