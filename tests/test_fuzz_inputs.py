"""Fuzzing what users and models control: junk dataset files (.jsonl, .json, .csv, .parquet) through
load_rows, junk responses and answers through the reward, junk responses and accepted rows through
the methods' hooks that read text. Invariants: the loader returns usable rows or raises a one-line
ValueError naming the file (and the line, item or field); the reward is 0 or 1 within the time
bound; the hooks never raise. Any other exception fails the test."""
import csv
import json
import os
import tempfile
import time
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from transformers import AutoTokenizer

import cepo
import gold
from grpo_baseline import GRPOConfig
from loop import data, diagnostics
from loop.data import check_answer, extract_answer, load_rows, normalize_answer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TIME_BOUND_S = 3 * data.VERIFY_TIMEOUT_S + 1  # math-verify's bound on two parses and a comparison, plus parsing

# Pieces that answer parsing reacts to, so that junk text reaches its branches and not only its first test.
PIECES = ["####", "#### ", "\\boxed{", "{", "}", "\n", " ", "1", "42", "-", ".", ",", "/", "e", "E+5", "²", "٣", "$",
          "\\frac{1}{2}", "\\begin{pmatrix}", "\\end{pmatrix}", "\\\\", "\\text{", "\\mbox{ cm}", "x", " dollars", "<<",
          ">>", "=", "\"", "'", "\x00", "7" * 5000, "1" * 300]
JUNK_TEXT = st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=10).map("".join)
FIELDS = ["question", "answer", "solution", "blank_question"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 63, max_value=10 ** 30)
    | st.floats() | JUNK_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
JSON_ROWS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), JSON_VALUES, max_size=4)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(os.path.join(FIXTURES, "qwen2.5-tokenizer"))


def load_or_explain(path):
    """load_rows on the file: its rows, or None after checking that the error is one line naming
    the file and what is wrong (a line, an item, a field, or the whole file: no rows, not a list)."""
    try:
        train, held_out = load_rows(GRPOConfig(dataset=str(path), eval_size=1))
    except ValueError as e:
        message = str(e)
        assert "\n" not in message and f"--dataset {path}" in message, message
        assert any(w in message for w in ("line ", "item ", "field", "holds no rows", "must hold a list", "not a readable parquet", "usable rows")), message
        return None
    for row in train + held_out:
        assert isinstance(row["question"], str) and row["question"].strip() and isinstance(row["answer"], str)
        assert row["answer"] and "\n" not in row["answer"]
    return train + held_out


def write(name, content):
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, name)
    with open(path, "wb" if isinstance(content, bytes) else "w", encoding=None if isinstance(content, bytes) else "utf-8",
              newline="" if isinstance(content, str) else None) as f:
        f.write(content)
    return path


JSONL_LINES = st.lists(JSON_ROWS.map(json.dumps) | JSON_VALUES.map(json.dumps) | st.text(max_size=12) | st.just(""),
                       max_size=6)


@settings(max_examples=80)
@given(lines=JSONL_LINES)
@example(lines=[])
@example(lines=["", "  "])
@example(lines=["{}", "{}"])
@example(lines=['{"question": "q", "answer": ' + str(2 ** 64) + "}", '{"question": "q", "answer": -' + str(2 ** 64) + "}"])
def test_junk_jsonl_files_load_or_name_the_line(lines):
    load_or_explain(write("d.jsonl", "\n".join(lines)))


@settings(max_examples=40)
@given(content=st.lists(JSON_ROWS, max_size=5).map(json.dumps) | JSON_VALUES.map(json.dumps) | st.text(max_size=20)
       | st.binary(max_size=20))
def test_junk_json_files_load_or_name_the_item(content):
    load_or_explain(write("d.json", content))


CSV_CELLS = st.lists(st.lists(JUNK_TEXT | st.sampled_from(["1e-05", "2.5e-07", '"', '"q', "a,b"]), min_size=1, max_size=4),
                     max_size=5)


def csv_text(header, rows):
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as f:
        csv.writer(f).writerows([header] + rows)
        f.seek(0)
        return f.read()


@settings(max_examples=60)
@given(header=st.lists(st.sampled_from(FIELDS) | st.text(max_size=4), min_size=1, max_size=4), rows=CSV_CELLS,
       raw=st.booleans())
@example(header=["question", "answer"], rows=[["q1", "1"], ['"q2', "2"], ["q3", "3"]], raw=True)
def test_junk_csv_files_load_or_name_the_line(header, rows, raw):
    """Well-formed CSV of junk cells, or the cells joined by commas as they are (open quotes, rows
    wider than the header)."""
    content = "\n".join(",".join(r) for r in [header] + rows) if raw else csv_text(header, rows)
    load_or_explain(write("d.csv", content))


def parquet_column(n):
    return st.one_of(st.lists(st.none() | JUNK_TEXT, min_size=n, max_size=n),
                     st.lists(st.none() | st.integers(-2 ** 63, 2 ** 63 - 1), min_size=n, max_size=n),
                     st.lists(st.none() | st.floats(), min_size=n, max_size=n),
                     st.lists(st.none() | st.lists(JUNK_TEXT, max_size=2), min_size=n, max_size=n))


@settings(max_examples=15)
@given(columns=st.integers(0, 5).flatmap(lambda n: st.tuples(parquet_column(n), parquet_column(n))))
def test_junk_parquet_files_load_or_explain(columns):
    path = write("d.parquet", b"")
    pq.write_table(pa.table({"question": pa.array(columns[0]), "answer": pa.array(columns[1])}), path)
    load_or_explain(path)


@settings(max_examples=60)
@given(response=JUNK_TEXT, answer=JUNK_TEXT)
@example(response="#### " + "1" * 100_000 + "x", answer="5")
@example(response="#### 1e-05", answer="0.00001")
def test_the_reward_of_junk_is_0_or_1_within_the_time_bound(response, answer):
    answer = normalize_answer(answer)  # a row's answer is always in canonical form
    start = time.perf_counter()
    reward, timed_out = check_answer(response, answer)
    assert reward in (0.0, 1.0) and timed_out in (True, False)
    assert time.perf_counter() - start < TIME_BOUND_S


@settings(max_examples=40)
@given(texts=st.lists(JUNK_TEXT, min_size=2, max_size=6).filter(lambda t: len(t) % 2 == 0),
       rewards=st.lists(st.sampled_from([0.0, 1.0, 0.5]), min_size=6, max_size=6))
def test_cepo_wrong_answer_hints_take_any_responses(texts, rewards):
    hints = cepo.wrong_answer_hints(texts, torch.tensor(rewards[:len(texts)]), group_size=2)
    assert len(hints) == len(texts) // 2
    for g, hint in enumerate(hints):
        assert hint is None or hint in {extract_answer(t) for t in texts[2 * g:2 * g + 2]}


@settings(max_examples=40)
@given(solution=JUNK_TEXT, answer=JUNK_TEXT, max_length=st.integers(1, 40))
def test_gold_reference_response_takes_any_solution(tokenizer, solution, answer, max_length):
    row = {"solution": solution, "answer": extract_answer(solution) or normalize_answer(answer) or "1"}
    ids, why = gold.reference_response(tokenizer, row, gold.GoldConfig(max_completion_length=max_length))
    assert (why is None and ids and len(ids) <= max_length) or (ids is None and why in (
        "no_reference", "unparsable_reference", "too_long"))


@settings(max_examples=40)
@given(lines=st.lists(st.fixed_dictionaries({"question": JUNK_TEXT, "answer": JUNK_TEXT}).map(json.dumps),
                      min_size=2, max_size=4))
@example(lines=['{"question": "q", "answer": "#### \\u00b2"}'] * 2)
@example(lines=['{"question": "q", "answer": "so\\n#### ' + "7" * 5000 + '"}'] * 2)
def test_the_hooks_take_every_row_the_loader_accepts(tokenizer, lines):
    """CEPO's hint check (its model pass replaced: what is fuzzed is the hint it builds) and Gold's
    reference response, on rows built by the loader: they never raise, and the wrong-answer hint's
    context differs from the correct one's."""
    rows = [r for r in load_or_explain(write("d.jsonl", "\n".join(lines))) or [] if r["solution"]]
    contexts = []

    def gap(model, tok, solutions, right, wrong, cfg):
        contexts.extend(zip(right, wrong))
        return torch.zeros(len(solutions))

    if rows:
        with mock.patch.object(diagnostics, "solution_logprob_gap", gap):
            diagnostics.hint_contrast(None, tokenizer, rows, cepo.CEPOConfig(model="qwen"), cepo.hint_ids)
        assert len(contexts) == len(rows) and all(right != wrong for right, wrong in contexts)
    for row in rows:
        gold.reference_response(tokenizer, row, gold.GoldConfig(max_completion_length=64))
