"""Datasets, prompts, answer parsing and the reward: what turns rows of a dataset into RL prompts
and a response into a 0/1 reward.

A row is {question, answer, solution, blank_question}: `answer` is the parsed final answer,
`solution` the worked reference solution when the dataset has one (Gold's gold member), and
`blank_question` the question with its content hidden when the task defines one (GCPO's
'empty_prompt'). Model output is untrusted text: it is parsed here, never evaluated.
"""
import os
import random
import re
import sys
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch

from language_model import generate

DEFAULT_INSTRUCTION = " Let's think step by step and output the final answer after \"####\"."


_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?$")


def normalize_answer(text):
    """Canonical form of a final answer: '1,000.0' -> '1000', ' $42. ' -> '42'; non-numbers stripped."""
    text = text.strip().strip("$").replace(",", "").rstrip(".").strip()
    if _NUMBER.match(text):
        try:
            value = Fraction(Decimal(text)) if "/" not in text else Fraction(text)
            return str(value.numerator) if value.denominator == 1 else str(value)
        except (InvalidOperation, ValueError, ZeroDivisionError):
            pass
    return text


def extract_answer(text):
    """Final answer of a response or a reference solution: after the last '####', else the last
    \\boxed{...}; None if neither. Text is parsed, never evaluated."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        return normalize_answer(tail.split()[0]) if tail else None
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return normalize_answer(text[i:j]) or None
    return None


def reward_fn(response, answer):
    """Verifiable reward: 1 if the response's final answer equals the reference, else 0."""
    return float(extract_answer(response) == answer)


def load_rows(cfg, splits=None):
    """(train rows, eval rows) of --dataset, or of `splits` ({split name: datasets.Dataset}, the
    embedded task's) when given.

    Rows whose question or answer is missing, or whose final answer cannot be parsed, are skipped
    and counted (a warning names the first few by their row number); zero usable rows is an error.
    """
    if splits is None and os.path.isfile(cfg.dataset):
        from datasets import load_dataset
        ext = os.path.splitext(cfg.dataset)[1].lstrip(".")
        if ext not in ("json", "jsonl", "parquet", "csv"):
            raise ValueError(f"--dataset {cfg.dataset}: local files must be .json, .jsonl, .parquet or .csv")
        splits = load_dataset("json" if ext == "jsonl" else ext, data_files=cfg.dataset)
    elif splits is None:
        from datasets import load_dataset
        splits = load_dataset(cfg.dataset, cfg.dataset_config or None, trust_remote_code=cfg.trust_remote_code)
    if cfg.dataset_split not in splits:
        raise ValueError(f"--dataset_split {cfg.dataset_split!r} not in {cfg.dataset}: it has {list(splits)}")
    train = clean_rows(splits[cfg.dataset_split], cfg, cfg.dataset_split)
    if cfg.eval_split in splits:
        return train, clean_rows(splits[cfg.eval_split], cfg, cfg.eval_split)[:cfg.eval_size]
    if len(train) <= cfg.eval_size:  # no held-out split: carve one off, deterministically
        raise ValueError(f"--dataset {cfg.dataset} has no split {cfg.eval_split!r} and only {len(train)} usable rows: "
                         f"too few to hold out --eval_size {cfg.eval_size}")
    random.Random(1234).shuffle(train)
    return train[cfg.eval_size:], train[:cfg.eval_size]


def clean_rows(dataset, cfg, name):
    """Task rows from one split of a datasets.Dataset, skipping (and counting) unusable ones."""
    for needed in (cfg.question_field, cfg.answer_field):
        if needed not in dataset.column_names:
            raise ValueError(f"dataset split '{name}' has no field {needed!r} (--question_field/--answer_field); "
                             f"its fields are {dataset.column_names}")
    rows, skipped = [], []
    for i, row in enumerate(dataset):
        question, answer_text = row[cfg.question_field], row[cfg.answer_field]
        if not isinstance(question, str) or not question.strip() or answer_text is None:
            skipped.append((i, "missing question or answer"))
            continue
        answer_text = str(answer_text)
        answer = extract_answer(answer_text)
        if answer is None and "####" not in answer_text and "\\boxed" not in answer_text:
            bare = normalize_answer(answer_text)  # a bare answer: one token such as '42' or '\\frac{1}{2}'
            answer = bare if bare and not any(c.isspace() for c in bare) else None
        if not answer:
            skipped.append((i, f"unparsable answer {answer_text[-40:]!r}"))
            continue
        rows.append({"question": question, "answer": answer,
                     "solution": answer_text if answer_text.strip() != answer else None,
                     "blank_question": row.get("blank_question")})
    if skipped:
        print(f"[data] {name}: skipped {len(skipped)} of {len(dataset)} rows, e.g. "
              + "; ".join(f"row {i}: {why}" for i, why in skipped[:3]), file=sys.stderr)
    if not rows:
        raise ValueError(f"dataset split '{name}' has no usable rows (all {len(dataset)} skipped)")
    return rows


def prompt_ids(tokenizer, question, instruction=""):
    """Token ids of the prompt for `question`: the chat template when the tokenizer has one."""
    content = question + instruction
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
    return tokenizer(content + "\n").input_ids


def resolve_instruction(cfg):
    return cfg.instruction if cfg.instruction is not None else (DEFAULT_INSTRUCTION if cfg.model else "")


@torch.no_grad()
def evaluate(model, tokenizer, rows, cfg, device, instruction):
    """Greedy held-out accuracy."""
    prompts = [prompt_ids(tokenizer, r["question"], instruction) for r in rows]
    completion_ids, _ = generate(model, tokenizer, prompts, cfg, device, greedy=True)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return sum(reward_fn(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)
