"""Datasets, prompts, answer parsing and the reward: what turns rows of a dataset into RL prompts
and a response into a 0/1 reward.

A row is {question, answer, solution, blank_question}: `answer` is the parsed final answer,
`solution` the worked reference solution when the dataset has one (Gold's gold member), and
`blank_question` the question with its content hidden when the task defines one (GCPO's
'empty_prompt'). Model output is untrusted text: it is parsed here, never evaluated.
"""
import csv
import functools
import io
import json
import math
import os
import random
import re
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch

from loop.language_model import first_line, generate
from loop.options import opt

DEFAULT_INSTRUCTION = " Let's think step by step and output the final answer after \"####\"."


@dataclass
class DataOptions:
    """What to train on: GRPOConfig's first options (empty --model and --dataset: the embedded task)."""
    model: str = opt("", "causal LM id or local path; empty = the embedded tiny Llama (warm-started here)")
    dataset: str = opt("", "datasets id or local .json/.jsonl/.csv/.parquet file; empty = the embedded arithmetic task")
    dataset_config: str = opt("", "dataset config name (GSM8K: 'main')")
    dataset_split: str = opt("train", "split to train on")
    eval_split: str = opt("test", "held-out split; if the dataset has none, eval_size rows are carved off the train split")
    question_field: str = opt("question", "row field with the question")
    answer_field: str = opt("answer", "row field with the answer: a worked solution ending in '#### 42' or '\\boxed{42}', or a bare one-token answer")
    instruction: str = opt(None, "text appended to every question; default '' on the embedded task, DEFAULT_INSTRUCTION with --model")
    trust_remote_code: bool = opt(False, "allow a model repo to run its own code")
    max_prompt_length: int = opt(512, "prompts longer than this (in tokens) are skipped, with a count")


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?(/\d+)?$")
# '72 dollars' -> '72'. The atomic group keeps the match linear in the length of a run of digits
# (a plain group backtracks over every split of the run: seconds on 20,000 digits, outside any time bound).
_NUMBER_THEN_WORDS = re.compile(r"^((?>[-+]?[\d,]*\.?\d+(?:/\d+)?))\s+[A-Za-z]")
EXACT_DIGITS = 4300  # Python's own bound on int <-> str conversion: longer numbers are compared as written
_PROSE = re.compile(r"[A-Za-z]{2,}")
_LATEX_WORDS = re.compile(r"\\(?:text[a-z]*|mbox|math[a-z]+|operatorname|begin|end)\s*\{[^{}]*\}|\\[A-Za-z]+")
VERIFY_TIMEOUT_S = 2  # math-verify's bound on each parse and each comparison (whole seconds: it uses SIGALRM)


def normalize_answer(text):
    """Canonical form of a final answer: a number by its exact value, whatever its written form
    ('1,000.0' -> '1000', ' $42. ' -> '42', '3.50' -> '7/2', '1e-05' and '0.00001' -> '1/100000'),
    unless its value would need more than EXACT_DIGITS digits (then it is kept as written); anything
    else stripped (its commas kept: '(3, 4)' and '\\{1,2\\}' are not numbers)."""
    text = text.strip().strip("$").rstrip(".").strip()
    number = text.replace(",", "")
    if _NUMBER.match(number) and value_digits(number) <= EXACT_DIGITS:
        try:
            value = Fraction(Decimal(number)) if "/" not in number else Fraction(number)
            return str(value.numerator) if value.denominator == 1 else str(value)
        except (InvalidOperation, ValueError, ZeroDivisionError):
            pass
    return text


def value_digits(number):
    """A bound on the digits of a number's exact value, from its written form (a _NUMBER): its
    length plus the size of its exponent ('1e999999999' has a billion), computed without building it."""
    if len(number) > EXACT_DIGITS:
        return len(number)
    return len(number) + abs(int(number.lower().partition("e")[2].partition("/")[0] or 0))


def extract_answer(text):
    """Final answer of a response or a reference solution: the rest of the line after the last
    '####' (a number followed by words, '72 dollars', is the number), else the last \\boxed{...};
    None if neither. Text is parsed, never evaluated."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip().split("\n")[0].strip()
        number = _NUMBER_THEN_WORDS.match(tail)
        return normalize_answer(number.group(1) if number else tail) or None
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return normalize_answer(text[i:j]) or None
    return None


def bare_answer(text):
    """A dataset's answer field that is itself the final answer ('42', '\\frac{14}{3}', '6 - 5i',
    '\\left( 3, \\frac{\\pi}{2} \\right)', '15\\mbox{ cm}^2', a pmatrix), or None when it reads as
    prose. The rule: one line, and no word of two or more letters outside LaTeX command names, the
    argument of a text or font command (\\text{...}, \\mbox, \\mathrm, \\operatorname, ...) and the
    name of an environment (\\begin{pmatrix}). math-verify's parse cannot decide it: it reads any
    prose as a product of letters."""
    text = normalize_answer(text)
    math_only = _LATEX_WORDS.sub("", text)
    return text if text and "\n" not in text and not _PROSE.search(math_only) else None


@functools.lru_cache(maxsize=4096)
def parse_latex(answer):
    """math-verify's parse of one final answer, read as LaTeX only: its plain-expression reader
    would hand the text to sympy's parse_expr, i.e. to Python's eval; the LaTeX reader builds
    sympy objects from a grammar (the one string of the answer that reaches eval is a run of
    digits, as sympy turns a number token into Integer(...) or Float(...); tests/test_data.py
    checks it)."""
    from math_verify import LatexExtractionConfig, parse
    return parse(f"${answer}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=VERIFY_TIMEOUT_S,
                 raise_on_error=True)


def answers_match(predicted, answer):
    """(equal, timed_out) for a predicted final answer against the reference. Equal strings, and
    two numbers (canonical forms, see normalize_answer), decide at once; anything else ('\\dfrac12'
    vs '0.5', intervals, sets, roots, '6 - 5i') is math-verify's equivalence check, bounded by
    VERIFY_TIMEOUT_S per step; a check that runs out of time counts as wrong."""
    if predicted is None or predicted == answer:
        return predicted is not None, False
    if _NUMBER.match(predicted) and _NUMBER.match(answer):
        return False, False
    from math_verify import verify
    from math_verify.errors import TimeoutException
    try:
        return bool(verify(parse_latex(answer), parse_latex(predicted), timeout_seconds=VERIFY_TIMEOUT_S,
                           raise_on_error=True)), False
    except TimeoutException:
        return False, True
    except Exception:  # an answer math-verify cannot read is not a match
        return False, False


def check_answer(response, answer):
    """(reward, timed_out): reward 1.0 if the response's final answer equals the reference."""
    equal, timed_out = answers_match(extract_answer(response), answer)
    return float(equal), timed_out


def answer_reward(response, row):
    """(reward, timed_out) of a response to a dataset row: its final answer against the row's
    (check_answer). The embedded tasks check the whole worked chain instead (embedded_task.chain_reward)."""
    return check_answer(response, row["answer"])


def reward_fn(response, answer):
    """Verifiable reward: 1 if the response's final answer equals the reference, else 0."""
    return check_answer(response, answer)[0]


def load_rows(cfg, splits=None):
    """(train rows, eval rows) of --dataset, or of `splits` ({split name: datasets.Dataset}, the
    embedded task's) when given.

    Rows whose question or answer is missing or neither text nor a number, or whose final answer
    cannot be parsed, are skipped and counted (a warning names the first few by their row number);
    zero usable rows is an error.
    """
    if splits is None:
        splits = load_splits(cfg)
    if cfg.dataset_split not in splits:
        raise ValueError(f"--dataset_split {cfg.dataset_split!r} not in {cfg.dataset}: it has {list(splits)}")
    train = clean_rows(splits[cfg.dataset_split], cfg, cfg.dataset_split)
    if cfg.eval_split == cfg.dataset_split:  # read once: its skipped rows are counted once
        return train, train[:cfg.eval_size]
    if cfg.eval_split in splits:
        return train, clean_rows(splits[cfg.eval_split], cfg, cfg.eval_split)[:cfg.eval_size]
    if len(train) <= cfg.eval_size:  # no held-out split: carve one off, deterministically
        raise ValueError(f"--dataset {cfg.dataset} has no split {cfg.eval_split!r} and only {len(train)} usable rows: "
                         f"too few to hold out --eval_size {cfg.eval_size}")
    random.Random(1234).shuffle(train)
    return train[cfg.eval_size:], train[:cfg.eval_size]


def load_splits(cfg):
    """{split: rows} of --dataset: a local .json/.jsonl/.parquet/.csv file (read_file_rows: a list
    of dicts, split 'train'), or a folder or a datasets id (a datasets.Dataset per split).
    A missing file, a row that cannot be read, a dataset that cannot be loaded: one clear error."""
    path, ext = cfg.dataset, os.path.splitext(cfg.dataset)[1].lstrip(".")
    if os.path.isfile(path):
        if ext not in ("json", "jsonl", "parquet", "csv"):
            raise ValueError(f"--dataset {path}: local files must be .json, .jsonl, .parquet or .csv")
        return {"train": read_file_rows(path, ext)}
    if os.path.isdir(path):
        name, kw = path, {}
    elif ext in ("json", "jsonl", "parquet", "csv") or path.startswith((".", "/", "~")):
        raise ValueError(f"--dataset {path}: no such file; give an existing .json/.jsonl/.parquet/.csv file or a datasets id")
    else:  # a datasets id such as openai/gsm8k
        name, kw = path, {"name": cfg.dataset_config or None}  # datasets >= 4 runs no loading scripts
    from datasets import load_dataset
    try:
        return load_dataset(name, **kw)
    except Exception as e:  # the datasets library's errors are many and long: name the dataset and the first line
        raise ValueError(f"--dataset {path}: cannot load it ({first_line(e)}); give a local .json/.jsonl/.parquet/.csv file "
                         "or a datasets id this machine can download") from None


def read_file_rows(path, ext):
    """The rows (dicts) of a local .jsonl (one JSON object per non-empty line), .json (a list of
    objects), .csv (a header line, then one row per record) or .parquet file. Read here rather than
    by the datasets library so that an error names the line to fix, and so that rows need no common
    column type: JSON numbers and CSV cells are kept as their text ('1e-05', an integer beyond int64
    or one of 10,000 digits stay exact), and clean_rows judges each row on its own. Else a
    ValueError naming the file, the line (or item) and what to do."""
    if ext == "parquet":
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors are many: the file as a whole is unreadable, it names no row
            raise ValueError(f"--dataset {path}: not a readable parquet file ({first_line(e)}); write it again") from None
    else:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ValueError(f"--dataset {path} line {line}: not UTF-8 text; save the file as UTF-8") from None
        rows = [] if not text.strip() else (
            read_csv_rows(path, text) if ext == "csv" else read_json_rows(path, text, lines=ext == "jsonl"))
    if not rows:
        raise ValueError(f"--dataset {path}: the file holds no rows (it is empty, blank or only a header); give one "
                         "row per line (.jsonl, .csv after its header) or a list of rows (.json, .parquet)")
    return rows


def parse_json(text):
    """JSON with its numbers kept as their text (no float rounding, no int-size limit)."""
    return json.loads(text, parse_int=str, parse_float=str)


def read_json_rows(path, text, lines):
    """read_file_rows of a .jsonl (lines=True) or .json file's text."""
    try:
        if lines:
            rows = []
            for n, line in enumerate(text.split("\n"), 1):
                if line.strip():
                    rows.append(parse_json(line))
                    if not isinstance(rows[-1], dict):
                        raise ValueError(f"--dataset {path} line {n}: a row must be a JSON object {{...}}; fix or "
                                         "remove that line")
            return rows
        rows = parse_json(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--dataset {path} line {n if lines else e.lineno}: not valid JSON ({e.msg}); fix or remove "
                         "that line") from None
    except RecursionError:
        raise ValueError(f"--dataset {path}{f' line {n}' if lines else ''}: not valid JSON (nested too deeply); fix or "
                         "remove that row") from None
    if not isinstance(rows, list):
        raise ValueError(f"--dataset {path}: a .json file must hold a list of rows [{{...}}, ...]; use .jsonl for one "
                         "row per line")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"--dataset {path} item {i} of the list: a row must be a JSON object {{...}}; fix or remove it")
    return rows


def read_csv_rows(path, text):
    """read_file_rows of a .csv file's text; a record's line is the one where it starts (a quoted
    cell may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    limit = csv.field_size_limit(len(text) + 1)  # a long question is a row to judge, not a broken file
    try:
        header, rows, start = None, [], 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise ValueError(f"--dataset {path} line {start}: not valid CSV ({e}); fix that row (a quote left "
                                 "open?)") from None
            if fields and header is None:
                header = fields
            elif fields:
                if len(fields) > len(header):
                    raise ValueError(f"--dataset {path} line {start}: {len(fields)} fields, but the header has "
                                     f"{len(header)}; quote the fields that hold commas")
                rows.append(dict(zip(header, fields)))
            start = reader.line_num + 1
        return rows
    finally:
        csv.field_size_limit(limit)


def clean_rows(dataset, cfg, name):
    """Task rows from one split (a datasets.Dataset or a list of dicts), skipping (and counting)
    unusable ones. A question or answer may be text or a number (read as its text)."""
    where = f"--dataset {cfg.dataset}: split '{name}'" if cfg.dataset else f"split '{name}'"
    fields = dataset.column_names if hasattr(dataset, "column_names") else list(dict.fromkeys(k for r in dataset for k in r))
    for needed in (cfg.question_field, cfg.answer_field):
        if needed not in fields:
            raise ValueError(f"{where} has no field {needed!r} (--question_field/--answer_field); "
                             f"its fields are {fields}")
    rows, skipped = [], []
    for i, row in enumerate(dataset):
        question, answer_text = row.get(cfg.question_field), row.get(cfg.answer_field)
        why = unusable(question, cfg.question_field) or unusable(answer_text, cfg.answer_field)
        if why:
            skipped.append((i, why))
            continue
        question, answer_text = str(question), str(answer_text)
        answer = extract_answer(answer_text)
        if answer is None and "####" not in answer_text and "\\boxed" not in answer_text:
            answer = bare_answer(answer_text)
        if not answer:
            skipped.append((i, f"unparsable answer {answer_text[-40:]!r}"))
            continue
        blank = row.get("blank_question")
        rows.append({"question": question, "answer": answer,
                     "solution": answer_text if answer_text.strip() != answer else None,
                     "blank_question": blank if isinstance(blank, str) else None})
    if skipped:
        print(f"[data] {name}: skipped {len(skipped)} of {len(dataset)} rows, e.g. "
              + "; ".join(f"row {i}: {why}" for i, why in skipped[:3]), file=sys.stderr)
    if not rows:
        raise ValueError(f"{where} has no usable rows (all {len(dataset)} skipped)")
    return rows


def unusable(value, field):
    """Why a row's question or answer cannot be used, or None: it must be non-empty text or a number
    (then read as its text)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"missing {field}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        return f"{field} is a {type(value).__name__}, not text or a number"
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ('\\ud800'): no tokenizer takes it
        return f"{field} holds a character that is not Unicode text (a lone surrogate)"
    return None


def prompt_ids(tokenizer, question, instruction="", example=None):
    """Token ids of the prompt for `question`: the chat template when the tokenizer has one.
    `example`, a (question, worked answer) pair (a row's, word_task.EXAMPLE), goes first as an earlier
    exchange, its question with the same instruction."""
    turns = [(example[0] + instruction, example[1])] if example else []
    if tokenizer.chat_template:
        messages = [{"role": role, "content": text} for q, a in turns for role, text in (("user", q), ("assistant", a))]
        return tokenizer.apply_chat_template(messages + [{"role": "user", "content": question + instruction}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
    return tokenizer("".join(f"{q}\n{a}\n\n" for q, a in turns) + question + instruction + "\n").input_ids


def encode_prompts(tokenizer, rows, instruction, max_length):
    """(rows, prompt token ids) for the rows whose prompt fits in max_length tokens; the others are
    skipped and counted. A question longer than 16 x max_length of the vocabulary's longest tokens is
    skipped untokenized (a 30 MB one once took minutes and gigabytes to tokenize): a bound, for
    byte-level BPE and SentencePiece, where no token covers more characters than its own string; the
    16x margin is for tokenizers that normalize text (collapse spaces, map a long word to one token)."""
    chars = 16 * max_length * max(map(len, tokenizer.get_vocab()))
    prompts = [prompt_ids(tokenizer, r["question"], instruction, r.get("example")) if len(r["question"]) <= chars
               else None for r in rows]
    keep = [i for i, p in enumerate(prompts) if p is not None and len(p) <= max_length]
    if len(keep) < len(prompts):
        print(f"[data] skipped {len(prompts) - len(keep)} prompts longer than --max_prompt_length {max_length}",
              file=sys.stderr)
        if not keep:
            raise ValueError(f"every prompt is longer than --max_prompt_length {max_length}: raise it")
    return [rows[i] for i in keep], [prompts[i] for i in keep]


def resolve_instruction(cfg):
    return cfg.instruction if cfg.instruction is not None else (DEFAULT_INSTRUCTION if cfg.model else "")


@torch.no_grad()
def evaluate(model, tokenizer, rows, cfg, device, instruction, reward):
    """Greedy held-out accuracy under reward(response, row) -> (reward, timed_out)."""
    prompts = [prompt_ids(tokenizer, r["question"], instruction, r.get("example")) for r in rows]
    _, _, texts = generate(model, tokenizer, prompts, cfg, device, greedy=True)
    return sum(finite_rewards([reward(t, r)[0] for t, r in zip(texts, rows)])) / len(rows)


def finite_rewards(rewards):
    """The rewards (numbers), unchanged; a non-finite one is bad input from the reward function (a
    NaN makes every advantage of its group NaN, and every update is skipped): one line."""
    bad = [r for r in rewards if not math.isfinite(r)]
    if bad:
        raise ValueError(f"the reward function returned {bad[0]} for a response; rewards must be finite numbers")
    return rewards
