"""Answer parsing, the reward and dataset loading: equivalent answers score 1 and wrong ones 0,
model text never reaches eval, bad rows are skipped and counted, bad files get a clear error."""
import builtins
import json
import os
import pathlib
import re
import tempfile
import time
from decimal import Decimal
from unittest import mock

import pytest
from hypothesis import given, strategies as st

import grpo_baseline as gb
from grpo_baseline import GRPOConfig
from loop import data
from loop.data import answers_match, bare_answer, check_answer, extract_answer, load_rows, reward_fn
from loop.embedded_task import char_tokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


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
    ("so she pays\n#### 72 dollars", "72"),  # a number followed by words is the number
    ("#### 6 - 5i\nthat is all", "6 - 5i"),  # the rest of the line, spaces and all
    ("#### \\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # commas kept
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_reward_compares_normalised_answers():
    assert reward_fn("12+5=17\n#### 17", "17") == 1.0
    assert reward_fn("#### 17.0", "17") == 1.0
    assert reward_fn("#### 18", "17") == 0.0
    assert reward_fn("", "17") == 0.0


# MATH-style answers: (response, reference) pairs that are the same value written differently ...
EQUIVALENT = [
    ("#### \\dfrac{14}{3}", "\\frac{14}{3}"),
    ("#### 0.5", "\\frac{1}{2}"),
    ("\\boxed{\\frac12}", "0.5"),
    ("#### 3\\sqrt{2}", "3 \\sqrt{2}"),
    ("#### \\sqrt{18}", "3\\sqrt{2}"),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("#### 6-5i", "6 - 5i"),
    ("#### [1,2)", "[1, 2)"),
    ("#### (-\\infty, 3]", "(-\\infty,3]"),
    ("#### \\{2,1\\}", "\\{1,2\\}"),
    ("#### 50\\%", "\\frac{1}{2}"),
    ("#### (x+2)(x+5)", "x^2+7x+10"),
    ("#### 1,000", "1000"),
    ("#### \\text{(C)}", "\\text{(C)}"),
]
# ... and pairs that are not.
DIFFERENT = [
    ("#### 0.49", "\\frac{1}{2}"),
    ("#### \\frac{14}{5}", "\\frac{14}{3}"),
    ("#### 3\\sqrt{3}", "3 \\sqrt{2}"),
    ("#### [1,2]", "[1, 2)"),
    ("#### q - p", "p - q"),
    ("#### 6+5i", "6 - 5i"),
    ("#### 7", "8"),
    ("no answer at all", "\\frac{1}{2}"),
]


@pytest.mark.parametrize("response, answer", EQUIVALENT)
def test_equivalent_math_answers_score_one(response, answer):
    assert check_answer(response, answer) == (1.0, False)


@pytest.mark.parametrize("response, answer", DIFFERENT)
def test_different_math_answers_score_zero(response, answer):
    assert check_answer(response, answer) == (0.0, False)


HOSTILE = ["__import__('os').system('touch {marker}')", "exec(open('{marker}', 'w').write('x'))",
           "lambda: __import__('os').system('touch {marker}')", "\\text{{__import__('os').system('touch {marker}')}}",
           "x_{{__class__}}", "\\operatorname{{eval}}(1)", "1e309", "12345678901234567890.5", "\\mathrm{{os}}.system(1)",
           "2*x + 1", "x**2 - y"]  # the last two: what a plain-expression reader would hand to eval


def test_model_text_never_reaches_eval(tmp_path, monkeypatch):
    """math-verify's plain-expression reader calls sympy's parse_expr (Python's eval); we use its
    LaTeX reader only. All that reaches eval from a response is a number token, which sympy turns
    into Integer(...) or Float(...): checked on hostile responses with a spy on eval."""
    check_answer("#### \\frac{1}{2} + x", "\\frac{1}{3}")  # imports and their own start-up evals happen first
    marker = tmp_path / "pwned"
    seen, real_eval = [], builtins.eval

    def spy(source, *args, **kwargs):
        seen.append(source)
        return real_eval(source, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", spy)
    for payload in HOSTILE:
        text = payload.format(marker=marker)
        for response in (f"#### {text}", f"\\boxed{{{text}}}"):
            assert check_answer(response, "\\frac{1}{2}")[0] == 0.0
    monkeypatch.undo()
    assert not marker.exists()
    number = re.compile(r"(Integer \(\d+ \)|Float \('\d*\.?\d+' \))")
    assert all(isinstance(s, str) and number.fullmatch(s) for s in seen), [s for s in seen if not number.fullmatch(str(s))]


def test_a_check_that_runs_out_of_time_counts_as_wrong_and_is_counted(monkeypatch):
    import math_verify.grader
    monkeypatch.setattr(data, "VERIFY_TIMEOUT_S", 1)
    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", lambda *a, **k: time.sleep(5))
    start = time.perf_counter()
    assert answers_match("\\frac{2}{4}", "\\frac{1}{2}") == (False, True)
    assert time.perf_counter() - start < 4


@pytest.mark.parametrize("text, bare", [
    ("42", "42"), ("\\frac{14}{3}", "\\frac{14}{3}"), ("6 - 5i", "6 - 5i"), ("\\text{Evelyn}", "\\text{Evelyn}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"), ("x^2+7x+10", "x^2+7x+10"),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}"),
    ("15\\mbox{ cm}^2", "15\\mbox{ cm}^2"), ("5\\text{ cm}", "5\\text{ cm}"), ("\\textbf{(A)}", "\\textbf{(A)}"),
    ("\\operatorname{lcm}(2, 3)", "\\operatorname{lcm}(2, 3)"), ("3\\mathrm{m/s}", "3\\mathrm{m/s}"),
    ("no idea", None), ("The answer is 5", None), ("", None), ("The answer is that he walked", None),
    ("\\text{so} it is 5", None), ("\\begin{pmatrix} yes \\end{pmatrix}", None),
])
def test_a_bare_answer_is_math_not_prose(text, bare):
    assert bare_answer(text) == bare


def test_matrix_and_unit_answers_are_kept_and_matched(tmp_path):
    """MATH-style bare answers with an environment or a unit are rows, matched by their value."""
    matrix, area = "\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "15\\mbox{ cm}^2"
    rows = [{"question": "q1", "answer": matrix}, {"question": "q2", "answer": area}]
    train, _ = load_rows(GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows), eval_split="train", eval_size=2))
    assert [r["answer"] for r in train] == [matrix, area]
    assert check_answer("\\boxed{\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\end{pmatrix}}", matrix)[0] == 1.0
    assert check_answer("\\boxed{\\begin{pmatrix} \\frac13 \\\\ \\frac23 \\end{pmatrix}}", matrix)[0] == 0.0
    assert check_answer("#### 15", area)[0] == 1.0 and check_answer("#### 16", area)[0] == 0.0


def test_every_row_of_the_real_gsm8k_test_split_parses():
    cfg = GRPOConfig(dataset=os.path.join(FIXTURES, "gsm8k", "test.jsonl"), eval_size=19)
    train, held_out = load_rows(cfg)
    assert len(train) + len(held_out) == 1319
    for row in train + held_out:
        assert re.fullmatch(r"-?\d+", row["answer"]), row["answer"]
        assert row["answer"] == row["solution"].rsplit("####", 1)[1].strip().replace(",", "")



def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_rows_are_skipped_with_a_count(tmp_path, capsys):
    rows = [{"question": "q1", "answer": "work\n#### 3"}, {"question": "q2"}, {"question": "q3", "answer": "no idea"},
            {"question": "", "answer": "#### 1"}, {"question": "q5", "answer": "\\boxed{5}"}, {"question": "q6", "answer": 7}]
    cfg = GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows * 3), eval_size=2)
    train, held_out = load_rows(cfg)
    err = capsys.readouterr().err
    assert "skipped" in err and "unparsable answer" in err and "missing answer" in err and "missing question" in err
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



def exit_message(argv):
    """What `python grpo_baseline.py ARGV` says when it stops on bad input (one line, no traceback)."""
    with pytest.raises(SystemExit) as stop:
        gb.main(gb.GRPOConfig, argv + ["--max_steps", "1"])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_a_dataset_path_that_does_not_exist_is_one_clear_line(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    assert f"--dataset {missing}: no such file" in exit_message(["--dataset", missing, "--output_dir", str(tmp_path / "r")])


def test_a_jsonl_line_that_is_not_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": "q2", "answer": "#### 2"\n')
    message = exit_message(["--dataset", str(path), "--output_dir", str(tmp_path / "r")])
    assert f"--dataset {path} line 3: not valid JSON" in message and "fix or remove" in message
    path.write_text('{"question": "q", "answer": "#### 1"}\n[1, 2]\n')
    assert "line 2: a row must be a JSON object" in exit_message(["--dataset", str(path), "--output_dir", str(tmp_path / "r")])


def test_a_model_path_that_does_not_exist_is_one_clear_line(tmp_path):
    rows = write_jsonl(tmp_path / "d.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(8)])
    missing = str(tmp_path / "no_model")
    message = exit_message(["--model", missing, "--dataset", rows, "--eval_size", "2", "--output_dir", str(tmp_path / "r")])
    assert f"--model {missing}: no such directory" in message
    (tmp_path / "empty").mkdir()
    empty = str(tmp_path / "empty")
    message = exit_message(["--model", empty, "--dataset", rows, "--eval_size", "2", "--output_dir", str(tmp_path / "r")])
    assert f"--model {empty}: cannot load a tokenizer and causal LM from it" in message


def test_a_datasets_id_goes_to_load_dataset_with_its_config_and_its_failure_is_one_line(tmp_path, monkeypatch):
    import datasets
    calls = []

    def offline(path, **kwargs):
        calls.append((path, kwargs))
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = exit_message(["--dataset", "openai/gsm8k", "--dataset_config", "main", "--output_dir", str(tmp_path / "r")])
    assert calls == [("openai/gsm8k", {"name": "main"})]
    assert "--dataset openai/gsm8k: cannot load it (Couldn't reach 'openai/gsm8k' on the Hub" in message


@pytest.mark.parametrize("response", ["#### " + "1" * 100_000 + "x", "#### " + "9" * 100_000,
                                      "#### " + "7" * 100_000 + " apples", "#### 1e999999999"],
                         ids=["100k digits then x", "100k digits", "100k digits then words", "a huge exponent"])
def test_a_long_run_of_digits_is_parsed_and_checked_within_the_time_bound(response):
    """The answer parser is linear in the response's length (a regex that backtracked over a run of
    digits took minutes on 100,000 of them), so a check stays within math-verify's bound on its own
    steps (a parse of each side and the comparison) plus a second for the parsing."""
    start = time.perf_counter()
    assert check_answer(response, "5")[0] == 0.0  # math-verify may run out of time on it (then counted), on a busy CPU
    assert time.perf_counter() - start < 3 * data.VERIFY_TIMEOUT_S + 1


def test_a_row_answering_30000_digits_loads_fast_and_is_matched(tmp_path):
    digits = "7" * 30_000
    rows = [{"question": f"q{i}", "answer": f"so\n#### {digits}"} for i in range(3)]
    start = time.perf_counter()
    train, _ = load_rows(GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows), eval_size=1))
    assert time.perf_counter() - start < 5
    assert train[0]["answer"] == digits and check_answer(f"#### {digits}", digits) == (1.0, False)
    assert check_answer(f"#### {digits}8", digits) == (0.0, False)


@pytest.mark.parametrize("text, number", [("#### 72 dollars", "72"), ("#### 1,000 apples", "1000"), ("#### .5 cups", "1/2"),
                                          ("#### 3/4 cup", "3/4"), ("#### -2 degrees", "-2"), ("#### 12.50 dollars", "25/2")])
def test_a_number_followed_by_words_is_the_number(text, number):
    assert extract_answer(text) == number


def write_csv(path, rows):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet])
@pytest.mark.parametrize("answer, written", [(1e-05, "0.00001"), (2.5e-07, "0.00000025"), (1e16, "10000000000000000"),
                                             (1.0000000272564224e+16, "10000000272564224"), (0.0001, "0.0001"),
                                             (12, "12.0")])
def test_a_float_answer_is_matched_by_its_value_in_any_written_form(tmp_path, writer, answer, written):
    """JSON floats and CSV float cells are written in exponent form below 1e-4 and from 1e16
    ('1e-05'): the row's answer is their value, matched by the plain decimal too."""
    ext = writer.__name__.split("_")[1]
    cfg = GRPOConfig(dataset=writer(tmp_path / f"d.{ext}", [{"question": "q", "answer": answer}] * 2), eval_size=1)
    train, held_out = load_rows(cfg)
    for row in train + held_out:
        for response in (f"#### {written}", f"#### {answer!r}", f"\\boxed{{{written}}}"):
            assert check_answer(response, row["answer"]) == (1.0, False), (response, row["answer"])
        assert check_answer(f"#### {written}1", row["answer"]) == (0.0, False)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_answer_is_matched_by_its_plain_decimal_and_its_repr(x):
    """Property: for any finite float x, a row answering x, read from a real .jsonl and a real .csv
    file, is matched by '#### <x in plain decimal>' and by '#### <repr(x)>'."""
    plain = format(Decimal(repr(x)), "f")
    with tempfile.TemporaryDirectory() as tmp:
        for writer, ext in ((write_jsonl, "jsonl"), (write_csv, "csv")):
            path = writer(pathlib.Path(tmp) / f"d.{ext}", [{"question": "q", "answer": x}] * 2)
            train, held_out = load_rows(GRPOConfig(dataset=path, eval_size=1))
            for response in (f"#### {plain}", f"#### {x!r}"):
                assert check_answer(response, train[0]["answer"]) == (1.0, False), (response, train[0]["answer"])


@pytest.mark.parametrize("response, answer, equal", [("#### 1e3", "1000", True), ("#### 1E+3", "1000", True),
                                                     ("#### 1e3", "1001", False), ("#### 2e", "2e", True),
                                                     ("#### 2e", "2", False), ("#### e^{2}", "e^2", True)])
def test_exponents_are_read_only_in_numbers(response, answer, equal):
    assert check_answer(response, answer) == (float(equal), False)


@pytest.mark.parametrize("name, content, expected", [
    ("d.jsonl", "", "the file holds no rows (it is empty"),
    ("d.jsonl", "\n\n  \n", "the file holds no rows (it is empty"),
    ("d.csv", "question,answer\n", "the file holds no rows (it is empty"),
    ("d.json", "", "the file holds no rows (it is empty"),
    ("d.jsonl", "{}\n{}\n", ": split 'train' has no field 'question' (--question_field/--answer_field); its fields are []"),
    ("d.csv", 'question,answer\nq1,1\n"q2,2\nq3,3\n', 'line 3: not valid CSV (unexpected end of data)'),
    ("d.csv", "question,answer\nq1,1\nq2,2,3\n", "line 3: 3 fields, but the header has 2"),
    ("d.jsonl", '{"question": "q", "answer": "1"}\n' + "[" * 100_000 + "\n", "line 2: not valid JSON (nested too deeply)"),
    ("d.json", '{"question": "q", "answer": "1"}', "a .json file must hold a list of rows"),
    ("d.json", '[{"question": "q", "answer": "1"}, 3]', "item 2 of the list: a row must be a JSON object"),
])
def test_a_file_the_loader_cannot_use_is_one_line_naming_the_file_and_the_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    message = exit_message(["--dataset", str(path), "--output_dir", str(tmp_path / "r")])
    assert f"--dataset {path}" in message and expected in message, message


def test_a_parquet_file_without_rows_or_unreadable_is_one_line(tmp_path):
    path = tmp_path / "d.parquet"
    write_parquet(path, [])
    assert "holds no rows" in exit_message(["--dataset", str(path), "--output_dir", str(tmp_path / "r")])
    path.write_bytes(b"PAR1 not really")
    assert f"--dataset {path}: not a readable parquet file" in exit_message(["--dataset", str(path), "--output_dir",
                                                                              str(tmp_path / "r")])


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "\xff", "answer": "2"}\n')
    assert f"--dataset {path} line 2: not UTF-8 text" in exit_message(["--dataset", str(path), "--output_dir", str(tmp_path / "r")])


def test_numbers_in_json_rows_are_read_exactly_whatever_their_size(tmp_path):
    """An integer beyond int64 (or beyond Python's 4,300-digit int/str limit) is a valid JSON answer."""
    huge = "9" * 5000
    path = tmp_path / "d.jsonl"
    path.write_text(f'{{"question": "q1", "answer": {2 ** 70}}}\n{{"question": "q2", "answer": {huge}}}\n'
                    f'{{"question": "q3", "answer": -{2 ** 64}}}\n{{"question": 12345, "answer": 0.1}}\n')
    train, held_out = load_rows(GRPOConfig(dataset=str(path), dataset_split="train", eval_split="train", eval_size=4))
    assert [(r["question"], r["answer"]) for r in train] == [("q1", str(2 ** 70)), ("q2", huge), ("q3", str(-2 ** 64)),
                                                              ("12345", "1/10")]


def test_a_question_or_answer_that_is_neither_text_nor_a_number_is_skipped_and_named(tmp_path, capsys):
    rows = [{"question": {"text": "q"}, "answer": "#### 1"}, {"question": "q", "answer": ["230"]},
            {"question": "q", "answer": True}, {"question": 7, "answer": "#### 7"}, {"question": "q", "answer": "#### 8"},
            {"question": "q \ud800", "answer": "#### 9"}]  # JSON's escape of a lone surrogate, which no tokenizer takes
    train, _ = load_rows(GRPOConfig(dataset=write_jsonl(tmp_path / "d.jsonl", rows), eval_split="train", eval_size=2))
    err = capsys.readouterr().err
    assert err.count("row 0: question is a dict, not text or a number") == 1  # once, though it is the held-out split too
    assert "row 1: answer is a list" in err
    assert "row 2: answer is a bool" in err and [r["question"] for r in train] == ["7", "q"]
    assert "skipped 4 of 6 rows" in err and data.unusable("q \ud800", "question") == (
        "question holds a character that is not Unicode text (a lone surrogate)")


@given(st.integers(1, 40), st.lists(st.integers(0, 4000), min_size=1, max_size=6))
def test_prompts_too_long_are_skipped_whether_or_not_they_are_tokenized(max_length, lengths):
    """encode_prompts keeps exactly the rows whose prompt fits in max_length tokens; a question that
    cannot fit (longer than 16 x max_length of the vocabulary's longest tokens) is not tokenized at all."""
    tok = char_tokenizer()  # one token per character; its longest token, '<pad>', is 5 characters
    rows = [{"question": "7" * n, "answer": "7"} for n in lengths]
    tokenized = []
    real = data.prompt_ids

    def spy(tokenizer, question, *args):
        tokenized.append(len(question))
        return real(tokenizer, question, *args)
    with mock.patch.object(data, "prompt_ids", spy):
        try:
            kept, prompts = data.encode_prompts(tok, rows, "", max_length)
        except ValueError:  # every prompt too long
            kept, prompts = [], []
    fits = [r for r in rows if len(real(tok, r["question"])) <= max_length]
    assert kept == fits and all(len(p) <= max_length for p in prompts)
    assert all(n <= 16 * 5 * max_length for n in tokenized)
