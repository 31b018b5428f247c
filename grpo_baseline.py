"""GRPO baseline: the shared rollout loop every credit-assignment method in this repo imports.

Reads top to bottom: config -> task -> model -> rollout -> GRPO math -> train loop -> main.
The one seam the other methods change is `credit`: a function that turns a rolled-out batch into
per-token advantages of shape (N, L). GRPO's credit is the uniform broadcast of A_i
(`grpo_credit`); gcpo.py / cepo.py pass their own to `train`.

Equations refer to ../shared/ALGORITHMS.md §0 (GRPO, with DAPO's clip-higher and token-mean):
  (0.1) A_i = (R_i - mean_g R) / (std_g R + eps)          group_advantages
  (0.2) Â_{i,t} = A_i * m_{i,t}                            grpo_token_advantages
  (0.3) rho_{i,t} = exp(log pi_theta - log pi_old)         policy_loss
  (0.4) loss_t = -min(rho Â, clip(rho, 1-eps_low, 1+eps_high) Â)   policy_loss
  (0.5) k3 = exp(r) - r - 1, r = log pi_ref - log pi_theta kl_k3

Run `python grpo_baseline.py --help` for every option. With no --model / --dataset it trains
on the embedded default: a synthetic arithmetic task and a tiny Llama warm-started from scratch.
"""
import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import string
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch
from tqdm import tqdm


# =============================================================================================
# 1. Config. Option names follow TRL's GRPOConfig where the concept is the same.
# =============================================================================================
OUTPUT_DIR_HELP = "metrics.jsonl, curves.png, credit.html, checkpoint.pt and the final model go here"


def opt(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class GRPOConfig:
    # --- what to train on ---
    model: str = opt("", "causal LM id or local path; empty = the embedded tiny Llama (warm-started here)")
    dataset: str = opt("", "datasets id or local .json/.jsonl/.parquet file; empty = the embedded arithmetic task")
    dataset_config: str = opt("", "dataset config name (GSM8K: 'main')")
    dataset_split: str = opt("train", "split to train on")
    eval_split: str = opt("test", "held-out split; if the dataset has none, eval_size rows are carved off the train split")
    question_field: str = opt("question", "row field with the question")
    answer_field: str = opt("answer", "row field with the answer: a worked solution ending in '#### 42' or '\\boxed{42}', or a bare one-token answer")
    instruction: str = opt(None, "text appended to every question; default '' on the embedded task, DEFAULT_INSTRUCTION with --model")
    trust_remote_code: bool = opt(False, "allow model/dataset repos to run their own code")
    max_prompt_length: int = opt(512, "prompts longer than this (in tokens) are skipped, with a count")
    # --- rollout ---
    prompts_per_step: int = opt(16, "distinct prompts per RL step (B); a step has B * num_generations responses")
    num_generations: int = opt(8, "responses per prompt, the group size G")
    max_completion_length: int = opt(48, "max new tokens per response")
    temperature: float = opt(1.0, "sampling temperature; log-probs are computed at the same temperature")
    # --- GRPO loss ---
    learning_rate: float = opt(1e-4, "AdamW learning rate (embedded default: >= 3e-4 collapses the tiny model)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    beta: float = opt(0.0, "KL coefficient (k3 estimator, frozen reference = the initial model); 0 = no reference model")
    epsilon: float = opt(0.2, "lower clip range eps_low")
    epsilon_high: float = opt(0.28, "upper clip range eps_high (DAPO clip-higher); = epsilon gives classic PPO")
    scale_rewards: str = opt("group", "'group': divide by the group std (GRPO); 'none': Dr. GRPO", choices=("group", "none"))
    loss_type: str = opt("token-mean", "'token-mean' over all valid tokens (DAPO, TRL 'dapo'); 'seq-mean-token-mean' (original GRPO, TRL 'grpo')",
                         choices=("token-mean", "seq-mean-token-mean"))
    num_iterations: int = opt(1, "PPO epochs over each rolled-out batch (TRL's num_iterations, mu)")
    num_mini_batches: int = opt(1, "optimizer steps per PPO epoch; must divide B * num_generations")
    micro_batch_size: int = opt(64, "sequences per forward pass (memory bound); the loss is normalised by the mini-batch, so this changes nothing else")
    generation_batch_size: int = opt(256, "sequences per generate() call")
    gradient_checkpointing: bool = opt(False, "trade compute for memory on large models")
    dynamic_sampling: bool = opt(False, "DAPO's dynamic sampling: drop groups whose accuracy is <= 0.01 or >= 0.99 and "
                                 "sample more prompts until prompts_per_step groups are informative (as GCPO's reference)")
    max_resample_rounds: int = opt(3, "with --dynamic_sampling: at most this many extra sampling rounds per step; "
                                   "then uninformative groups fill the batch")
    # --- schedule, evaluation, checkpoints ---
    max_steps: int = opt(100, "RL steps")
    eval_steps: int = opt(20, "greedy held-out evaluation every this many steps (and at 0 and the end)")
    eval_size: int = opt(300, "held-out problems to evaluate on")
    save_steps: int = opt(20, "checkpoint every this many steps")
    output_dir: str = opt("runs/grpo", OUTPUT_DIR_HELP)
    overwrite_output_dir: bool = opt(False, "start afresh even if output_dir holds a run")
    resume: bool = opt(False, "continue the run in output_dir from its last checkpoint")
    seed: int = opt(0, "seed for sampling and prompt order")
    # --- the embedded default ---
    cache_dir: str = opt("cache", "where the embedded warm start is cached, keyed by its config")
    task_operands: int = opt(4, "embedded task: numbers to add per problem")
    task_max_operand: int = opt(9, "embedded task: operands are drawn from 0..this")
    warm_start_steps: int = opt(500, "embedded task: supervised steps of the warm start")

    # options that may differ when a run is resumed (everything else must match the checkpoint)
    RESUMABLE = ("resume", "max_steps", "eval_steps", "save_steps", "overwrite_output_dir")

    def __post_init__(self):
        bad = []
        def need(ok, flag, why):
            if not ok:
                bad.append(f"--{flag}={getattr(self, flag)!r}: {why}")
        need(self.num_generations >= 2, "num_generations", "a group needs at least 2 responses to have a baseline")
        need(self.prompts_per_step >= 1, "prompts_per_step", "must be >= 1")
        need(self.max_completion_length >= 1, "max_completion_length", "must be >= 1")
        need(self.max_prompt_length >= 1, "max_prompt_length", "must be >= 1")
        need(math.isfinite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")
        need(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        need(self.beta >= 0, "beta", "must be >= 0")
        need(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        need(self.epsilon_high > 0, "epsilon_high", "must be > 0")
        need(self.num_iterations >= 1, "num_iterations", "must be >= 1")
        need(self.num_mini_batches >= 1 and (self.prompts_per_step * self.num_generations) % self.num_mini_batches == 0,
             "num_mini_batches", f"must divide prompts_per_step * num_generations = {self.prompts_per_step * self.num_generations}")
        for flag in ("micro_batch_size", "generation_batch_size", "max_steps", "eval_steps", "eval_size", "save_steps",
                     "task_operands", "task_max_operand"):
            need(getattr(self, flag) >= 1, flag, "must be >= 1")
        need(self.warm_start_steps >= 0, "warm_start_steps", "must be >= 0")
        need(self.max_resample_rounds >= 0, "max_resample_rounds", "must be >= 0")
        for f in dataclasses.fields(self):
            if "choices" in f.metadata:
                need(getattr(self, f.name) in f.metadata["choices"], f.name, f"must be one of {f.metadata['choices']}")
        bad.extend(self.method_problems())
        if bad:
            raise ValueError("bad option: " + "; ".join(bad))

    def method_problems(self):
        """Checks an algorithm's config adds: a list of '--flag=value: why' strings."""
        return []


def parse_config(config_cls=GRPOConfig, argv=None):
    """Build an argparse CLI from the dataclass fields; bad values exit with the flag named."""
    parser = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_cls):
        kw = {"default": f.default, "help": f.metadata["help"]}
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kw)
    args = parser.parse_args(argv)
    try:
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))


# =============================================================================================
# 2. Task: rows {question, answer, solution, blank_question}, answer parsing, reward.
# =============================================================================================
DEFAULT_INSTRUCTION = " Let's think step by step and output the final answer after \"####\"."
# Contexts the later methods score responses under. The embedded warm start teaches all three, so
# a model trained from scratch can read them as a pretrained LLM reads an instruction.
ANSWER_HINT = "Answer: #### {answer}\n"           # CEPO's teachers: prompt + hint + response
WRONG_ANSWER_INSTRUCTION = " Give a wrong answer."  # GCPO's negative 'wrong_answer': appended to the question
EMPTY_QUESTION = "Answer the question."             # GCPO's negative 'empty_prompt' when a row has no blank_question


def arithmetic_problem(rng, operands, max_operand):
    """One embedded problem: add `operands` numbers, with a worked running-sum solution.

    The answer field is shaped like GSM8K's: the worked solution, then '#### <final>'.
    blank_question is the same question with its operands hidden (the guidance-free prompt).
    """
    nums = [rng.randint(0, max_operand) for _ in range(operands)]
    return {"question": "+".join(map(str, nums)),
            "answer": running_sum_solution(nums),
            "blank_question": "+".join("?" * len(str(n)) for n in nums)}


def running_sum_solution(nums, slip=None):
    """'3+5=8\\n8+8=16\\n#### 16'. slip(k, total, n) -> an offset added to step k's sum (a mistake;
    the chain then goes on from the wrong total)."""
    lines, total = [], nums[0]
    for k, n in enumerate(nums[1:]):
        new = total + n + (slip(k, total, n) if slip else 0)
        lines.append(f"{total}+{n}={new}")
        total = new
    return "\n".join(lines) + f"\n#### {total}"


CONFUSABLE_SHARE = 0.4  # of the addition facts, written wrong half of the time in the warm-start corpus


def confusable_slip(rng):
    """The warm start's imperfect knowledge: a fixed 40% of the facts 'total+n' are written off by
    a fixed ±1 in half of the corpus's solutions. A model trained on it to convergence has seen
    both answers of those facts and is unsure between them, so it is partially competent, for a
    reason RL can fix: it samples both, and the reward tells them apart."""
    def slip(k, total, n):
        fact = random.Random(f"{total}+{n}")
        return fact.choice([-1, 1]) if fact.random() < CONFUSABLE_SHARE and rng.random() < 0.5 else 0
    return slip


def make_arithmetic_task(cfg, train_size=4000):
    """Embedded task as two datasets.Dataset splits with GSM8K-shaped fields; no question in both."""
    from datasets import Dataset
    if (cfg.task_max_operand + 1) ** cfg.task_operands < 2 * (train_size + cfg.eval_size):
        raise ValueError(f"--task_operands {cfg.task_operands} / --task_max_operand {cfg.task_max_operand}: too few "
                         f"distinct problems for {train_size} training and {cfg.eval_size} held-out ones")
    rng = random.Random(1234)  # the task is fixed; cfg.seed varies the RL run, not the problems
    rows, seen = [], set()
    while len(rows) < train_size + cfg.eval_size:
        row = arithmetic_problem(rng, cfg.task_operands, cfg.task_max_operand)
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return Dataset.from_list(rows[cfg.eval_size:]), Dataset.from_list(rows[:cfg.eval_size])


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


def load_task(cfg):
    """(train rows, eval rows), each row {question, answer, solution, blank_question}.

    Rows whose question or answer is missing, or whose final answer cannot be parsed, are skipped
    and counted (a warning names the first few by their row number); zero usable rows is an error.
    """
    if not cfg.dataset:
        train, held_out = make_arithmetic_task(cfg)
        splits = {"train": train, "test": held_out}
    elif os.path.isfile(cfg.dataset):
        from datasets import load_dataset
        ext = os.path.splitext(cfg.dataset)[1].lstrip(".")
        if ext not in ("json", "jsonl", "parquet", "csv"):
            raise ValueError(f"--dataset {cfg.dataset}: local files must be .json, .jsonl, .parquet or .csv")
        splits = load_dataset("json" if ext == "jsonl" else ext, data_files=cfg.dataset)
    else:
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


# =============================================================================================
# 3. Model: any causal LM, or the embedded tiny Llama warm-started from scratch on the task.
# =============================================================================================
def char_tokenizer():
    """A character-level Hugging Face tokenizer (save_pretrained / AutoTokenizer round-trip)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # printable ASCII, so chat templates tokenize
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<unk>", *chars])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def prompt_ids(tokenizer, question, instruction=""):
    """Token ids of the prompt for `question`: the chat template when the tokenizer has one."""
    content = question + instruction
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False)
    return tokenizer(content + "\n").input_ids


def warm_start_corpus(rng, row, cfg):
    """One supervised example (context text, response text) for the embedded warm start.

    Solutions come with the corpus's imperfect knowledge (confusable_slip). Most examples (55%) are
    plain question -> solution. A minority teach the contexts the other methods score responses
    under, which a model trained from scratch cannot otherwise read:
    - CEPO's teachers: an answer hint before the solution, right (10%), or wrong (25%) with the
      solution's steps and the hint as its final answer: a writer told the answer writes it down.
      The hint is written as the answer line ('Answer: #### 13') so that reading it is a copy of a
      string seen before, which a tiny model learns. (With the hint as a sentence, with 12% of wrong
      hints, or with the error inside the steps, it never learned to read the hint in our tries.)
    - GCPO's negative prompts: a request for a wrong answer (5%), answered with one more mistake at
      a random step, and the question with its operands blanked (5%), answered with a solution.
    """
    nums = [int(n) for n in row["question"].split("+")]
    slip = confusable_slip(rng)
    solution = running_sum_solution(nums, slip)
    written = int(extract_answer(solution))
    u = rng.random()
    if u < 0.10:
        return row["question"] + "\n" + ANSWER_HINT.format(answer=written), solution
    if u < 0.35:
        hint = written + rng.choice([-3, -2, -1, 1, 2, 3])
        return row["question"] + "\n" + ANSWER_HINT.format(answer=hint), solution.rsplit("####", 1)[0] + f"#### {hint}"
    if u < 0.40:
        step, error = rng.randrange(len(nums) - 1), rng.choice([-3, -2, -1, 1, 2, 3])
        wrong = running_sum_solution(nums, lambda k, total, n: slip(k, total, n) + (error if k == step else 0))
        return row["question"] + WRONG_ANSWER_INSTRUCTION + "\n", wrong
    if u < 0.45:
        return row["blank_question"] + "\n", solution
    return row["question"] + "\n", solution


def warm_start(cfg, train_rows, eval_rows, device):
    """Path of the embedded model: a tiny Llama trained from scratch on the task to partial
    competence, cached on disk keyed by everything that shapes it (so every method and seed
    starts from the same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = char_tokenizer()
    spec = {"version": 9, "confusable": CONFUSABLE_SHARE, "layers": 4, "hidden": 128, "heads": 4, "steps": cfg.warm_start_steps,
            "batch": 64, "lr": 3e-3, "operands": cfg.task_operands, "max_operand": cfg.task_max_operand,
            "vocab": tokenizer.get_vocab()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cfg.cache_dir, f"warmstart-{key}")
    if os.path.exists(os.path.join(path, "warm_start.json")):
        return path
    torch.manual_seed(0)
    rng = random.Random(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec["hidden"], intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], max_position_embeddings=256,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    losses = []
    for step in tqdm(range(spec["steps"]), desc="warm start (supervised)", leave=False):
        pairs = [warm_start_corpus(rng, rng.choice(train_rows), cfg) for _ in range(spec["batch"])]
        contexts = [tokenizer(c).input_ids for c, _ in pairs]
        responses = [tokenizer(r).input_ids + [tokenizer.eos_token_id] for _, r in pairs]
        batch = pad_batch(contexts, responses, tokenizer.pad_token_id, device)
        for group in optimizer.param_groups:  # linear warm-up over the first 10%, then linear decay to 0
            group["lr"] = spec["lr"] * min((step + 1) / max(1, spec["steps"] // 10), 1 - step / spec["steps"])
        logp, _ = completion_logprobs(model, *batch, temperature=1.0, micro_batch_size=spec["batch"], grad=True)
        loss = -(logp * batch[3]).sum() / batch[3].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    tmp = f"{path}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    acc = evaluate(model, tokenizer, eval_rows, cfg, device, instruction="")
    with open(os.path.join(tmp, "warm_start.json"), "w") as f:
        json.dump({"spec": {k: v for k, v in spec.items() if k != "vocab"}, "eval_acc": acc,
                   "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}, f, indent=1)
    try:
        os.rename(tmp, path)  # atomic: a half-written warm start is never picked up
    except OSError:           # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_policy(path, cfg, device):
    """Model and tokenizer through the public Hugging Face APIs a user would call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--model {path}: the tokenizer has no EOS token, so responses cannot end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad = eos is handled: see completion_mask
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code).to(device)
    model.eval()  # dropout off (as TRL's disable_dropout): the trainer's log-probs must match the sampler's
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


# =============================================================================================
# 4. Rollout: sample G responses per prompt, then teacher-force them for log-probs.
# =============================================================================================
def pad_batch(prompts, completions, pad_id, device):
    """Prompts left-padded, completions right-padded. Returns (prompt_ids (N, P), prompt_mask,
    completion_ids (N, L), completion_mask (N, L) float)."""
    P, L = max(map(len, prompts)), max(1, max(map(len, completions)))
    ids = torch.full((len(prompts), P + L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), P + L)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P], mask[i, P - len(p):P] = torch.tensor(p), 1
        ids[i, P:P + len(c)], mask[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long), 1
    ids, mask = ids.to(device), mask.to(device)
    return ids[:, :P], mask[:, :P], ids[:, P:], mask[:, P:]


def completion_mask(completion_ids, eos_id):
    """1 up to and including the first EOS, 0 after. Found by position, not by `!= pad`, so the
    EOS stays in the mask when pad == eos. (N, L) -> (N, L) float."""
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).float()


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def generate(model, tokenizer, prompts, cfg, device, greedy=False):
    """Sample one response per prompt (lists of token ids). Returns (completion_ids (N, L),
    completion_mask (N, L)); tokens after the first EOS are pad and masked out."""
    from transformers import GenerationConfig
    gen_cfg = GenerationConfig(  # a fresh config: the model's own (top_k, repetition penalty...) would bias sampling
        do_sample=not greedy, temperature=cfg.temperature if not greedy else None, top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None, max_new_tokens=cfg.max_completion_length,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    chunks = []
    for s in range(0, len(prompts), cfg.generation_batch_size):
        chunk = prompts[s:s + cfg.generation_batch_size]
        ids, mask, _, _ = pad_batch(chunk, [[]] * len(chunk), tokenizer.pad_token_id, device)
        with autocast(device):
            out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gen_cfg)
        chunks.append(out[:, ids.shape[1]:].cpu())
    L = max(c.shape[1] for c in chunks)
    completion = torch.cat([torch.nn.functional.pad(c, (0, L - c.shape[1]), value=tokenizer.pad_token_id)
                            for c in chunks])
    mask = completion_mask(completion, tokenizer.eos_token_id)
    completion = completion.masked_fill(mask == 0, tokenizer.pad_token_id)
    return completion.to(device), mask.to(device)


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                        micro_batch_size, grad=False, entropy=False):
    """log pi(y_t | context, y_<t) for every completion token, by teacher forcing.

    prompt_ids/prompt_mask (N, P) left-padded; completion_ids/completion_mask (N, L) right-padded.
    Returns (logp (N, L), entropy (N, L) or None), both 0 on padding. Position ids follow the
    mask so a left-padded row scores exactly as it would unpadded. Micro-batched for memory;
    only the L+1 last positions' logits are materialised.
    """
    L = completion_ids.shape[1]
    logps, entropies = [], []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(prompt_ids), micro_batch_size):
            e = s + micro_batch_size
            ids = torch.cat([prompt_ids[s:e], completion_ids[s:e]], 1)
            attn = torch.cat([prompt_mask[s:e], completion_mask[s:e]], 1).long()
            positions = (attn.cumsum(1) - 1).clamp(min=0)
            with autocast(ids.device):
                logits = model(input_ids=ids, attention_mask=attn, position_ids=positions,
                               logits_to_keep=L + 1).logits[:, :-1]
            logits = logits.float() / temperature
            logp_all = logits.log_softmax(-1)
            valid = completion_mask[s:e] > 0
            logp = logp_all.gather(-1, completion_ids[s:e, :, None]).squeeze(-1)
            logps.append(torch.where(valid, logp, 0.0))
            if entropy:
                ent = -(logp_all.exp() * logp_all).sum(-1)
                entropies.append(torch.where(valid, ent, 0.0).detach())
    return torch.cat(logps), (torch.cat(entropies) if entropy else None)


@dataclass
class Rollouts:
    """One RL step's batch: N = B * G responses, prompts grouped contiguously (rows i*G..i*G+G-1)."""
    rows: list              # (N,) task rows, one per response
    prompts: list           # (N,) prompt token ids, unpadded
    prompt_ids: torch.Tensor       # (N, P) left-padded
    prompt_mask: torch.Tensor      # (N, P)
    completion_ids: torch.Tensor   # (N, L)
    completion_mask: torch.Tensor  # (N, L) float, includes the EOS
    texts: list              # (N,) decoded responses
    rewards: torch.Tensor          # (N,)
    advantages: torch.Tensor       # (N,) A_i, eq. (0.1)
    old_logp: torch.Tensor         # (N, L) log pi_old, teacher-forced with the trainer's code path
    ref_logp: torch.Tensor = None  # (N, L) log pi_ref when beta > 0
    group_size: int = 1
    sampled: torch.Tensor = None   # (N,) bool: False for responses the policy did not sample (gold's)
    notes: list = None             # (N,) what the credit scored each response under, for the picture


# =============================================================================================
# 5. GRPO math: pure tensor functions (no model, no I/O).
# =============================================================================================
def group_advantages(rewards, group_size, eps=1e-6, scale=True):
    """(0.1) A_i = (R_i - mean_g R) / (std_g R + eps). rewards (N,) with groups contiguous -> (N,).

    std is unbiased (torch.std's default, as verl and TRL); eps = 1e-6 as verl (TRL 1e-4).
    scale=False drops the division (Dr. GRPO). A constant group gives exactly 0, never NaN.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).float()
    centred = grouped - grouped.mean(1, keepdim=True)  # (0.1) numerator
    constant = (grouped == grouped[:, :1]).all(1, keepdim=True)
    centred = torch.where(constant, 0.0, centred)  # exactly 0: a float mean can miss equal rewards by an ulp
    if scale:
        centred = centred / (grouped.std(1, keepdim=True) + eps)  # (0.1) denominator
    return centred.reshape(-1)


def grpo_token_advantages(advantages, mask):
    """(0.2) Â_{i,t} = A_i * m_{i,t}: every token of a response gets the same credit.
    advantages (N,), mask (N, L) -> (N, L)."""
    return advantages[:, None] * mask  # (0.2)


def policy_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.28, agg="token-mean", normalizer=None):
    """PPO-clip with clip-higher, eqs. (0.3)-(0.4). All inputs (N, L); advantages are per token.

    agg="token-mean": sum over valid tokens / number of valid tokens (DAPO, verl default).
    agg="seq-mean-token-mean": mean over responses of each response's token mean (original GRPO).
    `normalizer` overrides the denominator (token count, or response count) so that micro-batches
    summed together give exactly the mini-batch's loss and gradient.
    Padding is excluded with `where`, so NaN/inf there cannot leak in. Returns (loss, stats).
    """
    valid = mask > 0
    log_ratio = torch.where(valid, logp - old_logp, 0.0)  # TRL does not clamp the log-ratio; neither do we
    ratio = torch.exp(log_ratio)  # (0.3)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = torch.where(valid, -torch.minimum(unclipped, clipped), 0.0)  # (0.4)
    loss = aggregate(per_token, mask, agg, normalizer)
    with torch.no_grad():
        is_clipped = valid & (clipped < unclipped)  # the clip is active: the gradient is 0 here
        n = valid.sum().clamp(min=1)
        stats = {"clip_frac": (is_clipped.sum() / n).item(),
                 "ratio_mean": (torch.where(valid, ratio, 0.0).sum() / n).item(),
                 "ratio_max": torch.where(valid, ratio, -math.inf).max().item() if valid.any() else 1.0}
    return loss, stats


def aggregate(per_token, mask, agg, normalizer=None):
    """Reduce an (N, L) per-token loss under `agg` (see policy_loss)."""
    if agg == "token-mean":
        return per_token.sum() / (mask.sum() if normalizer is None else normalizer)
    if agg == "seq-mean-token-mean":
        per_seq = per_token.sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / (len(per_seq) if normalizer is None else normalizer)
    raise ValueError(f"unknown loss aggregation {agg!r}: use 'token-mean' or 'seq-mean-token-mean'")


def kl_k3(logp, ref_logp):
    """(0.5) k3 estimator of KL(pi_theta || pi_ref) per token: exp(r) - r - 1, r = ref - logp.
    >= 0, and exactly 0 (with zero gradient) where logp == ref_logp. Same shape in and out.
    Unclamped, as TRL (verl clamps to +-10)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1  # (0.5)


def grpo_credit(batch, model, tokenizer, cfg, step):
    """Seam 1, token credit: rolled-out batch -> (per-token advantages (N, L), metrics).
    GRPO's is uniform. gcpo.py and cepo.py replace it."""
    return grpo_token_advantages(batch.advantages, batch.completion_mask), {}


def grpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer):
    """Seam 2, the surrogate loss on one micro-batch: -> (loss, stats). gold.py replaces the
    token ratio with a sequence ratio; gcpo.py adds an entropy term."""
    return policy_loss(logp, old_logp, token_adv, mask, cfg.epsilon, cfg.epsilon_high, cfg.loss_type, normalizer)


METHOD = {"credit": grpo_credit, "loss_fn": grpo_loss}  # the seams; each algorithm file has its own METHOD


# =============================================================================================
# 6. Training loop, evaluation, checkpoints.
# =============================================================================================
def sample(model, tokenizer, rows, prompts, cfg, device):
    """G responses for each of the given prompts, with their rewards; rows and prompts come back
    repeated G times, groups contiguous."""
    G = cfg.num_generations
    rows = [r for r in rows for _ in range(G)]
    prompts = [p for p in prompts for _ in range(G)]
    completion_ids, mask = generate(model, tokenizer, prompts, cfg, device)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    rewards = torch.tensor([reward_fn(t, r["answer"]) for t, r in zip(texts, rows)], device=device)
    return rows, prompts, completion_ids, mask, texts, rewards


def informative_groups(rewards, G):
    """(N,) rewards -> (N/G,) bool: groups whose accuracy is strictly between 0.01 and 0.99 (DAPO)."""
    accuracy = rewards.view(-1, G).mean(1)
    return (accuracy > 0.01) & (accuracy < 0.99)


def keep_informative_groups(pool, num_groups, G, pad_id):
    """Dynamic sampling (DAPO): from several sample() results, the first num_groups groups whose
    mean reward is strictly between 0.01 and 0.99, topped up with the others if too few are."""
    L = max(p[2].shape[1] for p in pool)
    rows, prompts, ids, mask, texts, rewards = (
        sum((p[0] for p in pool), []), sum((p[1] for p in pool), []),
        torch.cat([torch.nn.functional.pad(p[2], (0, L - p[2].shape[1]), value=pad_id) for p in pool]),
        torch.cat([torch.nn.functional.pad(p[3], (0, L - p[3].shape[1])) for p in pool]),
        sum((p[4] for p in pool), []), torch.cat([p[5] for p in pool]))
    informative = informative_groups(rewards, G).tolist()
    order = [g for g in range(len(informative)) if informative[g]] + [g for g in range(len(informative)) if not informative[g]]
    keep = [g * G + k for g in order[:num_groups] for k in range(G)]
    width = int(mask[keep].sum(1).max())  # drop columns only the dropped groups used
    return ([rows[i] for i in keep], [prompts[i] for i in keep], ids[keep, :width], mask[keep, :width],
            [texts[i] for i in keep], rewards[keep]), {"informative_groups": sum(informative[g] for g in order[:num_groups]),
                                                       "reward_all_rounds": rewards.mean().item()}


def rollout(model, tokenizer, rows, prompts, cfg, device, ref_model, edit_rollouts=None, more_prompts=None):
    """Sample, reward and baseline one step's groups, then teacher-force log pi_old.
    Returns (Rollouts, seconds per phase, stats).

    With --dynamic_sampling, more_prompts(round) -> (rows, prompts) supplies further prompts until
    enough groups are informative (keep_informative_groups).
    Seam 3, `edit_rollouts(rows, completion_ids, mask, texts, rewards, tokenizer, cfg) ->
    (completion_ids, mask, texts, rewards, sampled, stats)` may change the group before the
    advantages are computed (gold.py swaps in reference solutions)."""
    G = cfg.num_generations
    t0 = time.perf_counter()
    pool, stats = [sample(model, tokenizer, rows, prompts, cfg, device)], {}
    if cfg.dynamic_sampling:
        while sum(int(informative_groups(p[5], G).sum()) for p in pool) < len(prompts) and len(pool) <= cfg.max_resample_rounds:
            pool.append(sample(model, tokenizer, *more_prompts(len(pool)), cfg, device))
        kept, stats = keep_informative_groups(pool, len(prompts), G, tokenizer.pad_token_id)
        stats["sampling_rounds"] = len(pool)
        pool = [kept]
    rows, prompts, completion_ids, mask, texts, rewards = pool[0]
    t1 = time.perf_counter()
    sampled = torch.ones_like(rewards, dtype=torch.bool)
    if edit_rollouts is not None:
        completion_ids, mask, texts, rewards, sampled, edit_stats = edit_rollouts(rows, completion_ids, mask, texts,
                                                                                 rewards, tokenizer, cfg)
        stats.update(edit_stats)
    advantages = group_advantages(rewards, G, scale=cfg.scale_rewards == "group")
    p_ids, p_mask, _, _ = pad_batch(prompts, [[]] * len(prompts), tokenizer.pad_token_id, device)
    old_logp, entropy = completion_logprobs(model, p_ids, p_mask, completion_ids, mask, cfg.temperature,
                                            cfg.micro_batch_size, entropy=True)
    ref_logp = None
    if ref_model is not None:
        ref_logp, _ = completion_logprobs(ref_model, p_ids, p_mask, completion_ids, mask, cfg.temperature,
                                          cfg.micro_batch_size)
    batch = Rollouts(rows, prompts, p_ids, p_mask, completion_ids, mask, texts, rewards, advantages, old_logp, ref_logp,
                     G, sampled)
    own = sampled.nonzero().squeeze(1).tolist()  # metrics describe the policy's own samples only
    stats = {**stats, "reward": rewards[sampled].mean().item(),
             "entropy": ((entropy * mask)[sampled].sum() / mask[sampled].sum()).item(),
             "response_length": mask[sampled].sum(1).mean().item(),
             "empty_responses": sum(not texts[i].strip() for i in own),
             "truncated": (mask[:, -1] * (completion_ids[:, -1] != tokenizer.eos_token_id))[sampled].sum().item()}
    return batch, {"t_generate": t1 - t0, "t_score": time.perf_counter() - t1}, stats


def update(model, optimizer, batch, token_adv, cfg, loss_fn=grpo_loss):
    """num_iterations PPO epochs of num_mini_batches optimizer steps each. A mini-batch whose loss
    or gradient is not finite is skipped (and counted), never applied."""
    N = len(batch.rows)
    size = N // cfg.num_mini_batches
    logs, skipped = [], 0
    for _ in range(cfg.num_iterations):
        order = torch.randperm(N) if cfg.num_mini_batches > 1 else torch.arange(N)
        for m in range(cfg.num_mini_batches):
            idx = order[m * size:(m + 1) * size].to(batch.old_logp.device)
            mask = batch.completion_mask[idx]
            normalizer = mask.sum() if cfg.loss_type == "token-mean" else len(idx)
            optimizer.zero_grad()
            finite, stats_sum = True, {}
            for s in range(0, size, cfg.micro_batch_size):
                mb = idx[s:s + cfg.micro_batch_size]
                logp, _ = completion_logprobs(model, batch.prompt_ids[mb], batch.prompt_mask[mb], batch.completion_ids[mb],
                                              batch.completion_mask[mb], cfg.temperature, cfg.micro_batch_size, grad=True)
                loss, stats = loss_fn(logp, batch.old_logp[mb], token_adv[mb], batch.completion_mask[mb], cfg, normalizer)
                if cfg.beta > 0:
                    kl = torch.where(batch.completion_mask[mb] > 0, kl_k3(logp, batch.ref_logp[mb]), 0.0)
                    loss = loss + cfg.beta * aggregate(kl, batch.completion_mask[mb], cfg.loss_type, normalizer)
                    stats["kl"] = ((kl.sum() / batch.completion_mask[mb].sum()).item())
                if not torch.isfinite(loss):
                    finite = False
                    break
                loss.backward()
                w = len(mb) / size
                stats["loss"] = loss.item() / w  # report the mini-batch-scale loss
                for k, v in stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + w * v
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if finite else None
            if not finite or not torch.isfinite(grad_norm):
                optimizer.zero_grad()
                skipped += 1
                continue
            optimizer.step()
            logs.append({**stats_sum, "grad_norm": grad_norm.item()})
    out = {k: sum(l[k] for l in logs) / len(logs) for k in logs[0]} if logs else {}
    return {**out, "skipped_updates": skipped}


@torch.no_grad()
def evaluate(model, tokenizer, rows, cfg, device, instruction):
    """Greedy held-out accuracy."""
    prompts = [prompt_ids(tokenizer, r["question"], instruction) for r in rows]
    completion_ids, _ = generate(model, tokenizer, prompts, cfg, device, greedy=True)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return sum(reward_fn(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)


def peak_memory_mb(device):
    """Peak GPU memory allocated, or on CPU the process's peak resident set (since the last reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def reset_peak_memory(device):
    """So that several runs in one process each report their own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux: reset the peak resident set (VmHWM)
        except OSError:
            pass


def save_checkpoint(path, model, optimizer, step, cfg):
    """Atomic: write to a temp file, then rename; a model with non-finite weights is never saved."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RuntimeError(f"step {step}: the model has non-finite weights; not overwriting {path}")
    state = {"step": step, "config": dataclasses.asdict(cfg), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, model, optimizer, cfg):
    state = torch.load(path, map_location="cpu", weights_only=False)
    changed = [k for k, v in state["config"].items()
               if k not in cfg.RESUMABLE and getattr(cfg, k, None) != v]
    if changed:
        raise ValueError(f"--resume: options differ from the checkpoint's in {changed}; resume with the same options")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def step_prompts(step, batch_size, n, seed):
    """Indices of the prompts for RL step `step` (1-based): epochs of seeded permutations, a pure
    function of the step, so a resumed run sees the same prompts."""
    out = []
    for k in range((step - 1) * batch_size, step * batch_size):
        epoch, pos = divmod(k, n)
        out.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))[pos].item())
    return out


def train(cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None):
    """Run RL with the given method (the three seams above); returns the run's summary dict."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.output_dir, "checkpoint.pt")
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if os.path.exists(metrics_path) and not (cfg.resume or cfg.overwrite_output_dir):
        raise ValueError(f"--output_dir {cfg.output_dir} already holds a run: pass --resume to continue it "
                         "or --overwrite_output_dir to start afresh")
    if cfg.resume and not os.path.exists(ckpt_path):
        raise ValueError(f"--resume: no checkpoint at {ckpt_path}")

    train_rows, eval_rows = load_task(cfg)
    model_path = cfg.model or warm_start(cfg, train_rows, eval_rows, device)
    model, tokenizer = load_policy(model_path, cfg, device)
    instruction = resolve_instruction(cfg)
    prompts = [prompt_ids(tokenizer, r["question"], instruction) for r in train_rows]
    keep = [i for i, p in enumerate(prompts) if len(p) <= cfg.max_prompt_length]
    if len(keep) < len(prompts):
        print(f"[data] skipped {len(prompts) - len(keep)} prompts longer than --max_prompt_length "
              f"{cfg.max_prompt_length}", file=sys.stderr)
        if not keep:
            raise ValueError("every prompt is longer than --max_prompt_length")
    train_rows, prompts = [train_rows[i] for i in keep], [prompts[i] for i in keep]
    ref_model = load_policy(model_path, cfg, device)[0].requires_grad_(False) if cfg.beta > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    reset_peak_memory(device)
    start, history = 0, []
    if cfg.resume:
        start = load_checkpoint(ckpt_path, model, optimizer, cfg)
        with open(metrics_path) as f:  # drop what was logged after the checkpoint: those steps rerun
            history = [m for m in map(json.loads, f) if m["step"] <= start]
    with open(metrics_path, "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in history)
    log = open(metrics_path, "a")

    def record(metrics):
        history.append(metrics)
        log.write(json.dumps(metrics) + "\n")
        log.flush()

    if start == 0:
        record({"step": 0, "eval_acc": evaluate(model, tokenizer, eval_rows, cfg, device, instruction)})
    bar = tqdm(range(start + 1, cfg.max_steps + 1), desc=os.path.basename(cfg.output_dir), initial=start,
               total=cfg.max_steps, file=sys.stdout)
    for step in bar:
        def draw(round):  # round 0: this step's prompts; later rounds: fresh ones, for dynamic sampling
            idx = step_prompts(step, cfg.prompts_per_step, len(train_rows), cfg.seed + 1000003 * round)
            return [train_rows[i] for i in idx], [prompts[i] for i in idx]

        batch, times, stats = rollout(model, tokenizer, *draw(0), cfg, device, ref_model, edit_rollouts, draw)
        t0 = time.perf_counter()
        token_adv, credit_stats = credit(batch, model, tokenizer, cfg, step)
        t1 = time.perf_counter()
        upd = update(model, optimizer, batch, token_adv, cfg, loss_fn)
        t2 = time.perf_counter()
        valid = batch.completion_mask > 0
        metrics = {"step": step, **stats,
                   "adv_abs_mean": batch.advantages.abs().mean().item(),
                   "token_adv_abs_mean": token_adv[valid].abs().mean().item(),
                   "zero_adv_groups": (batch.advantages.view(-1, batch.group_size).abs().sum(1) == 0).sum().item(),
                   **credit_stats, **upd, **times, "t_credit": t1 - t0, "t_update": t2 - t1,
                   "peak_mem_mb": peak_memory_mb(device)}
        if upd["skipped_updates"]:
            print(f"[train] step {step}: skipped {upd['skipped_updates']} update(s) with a non-finite loss or gradient",
                  file=sys.stderr)
        if step % cfg.eval_steps == 0 or step == cfg.max_steps:
            metrics["eval_acc"] = evaluate(model, tokenizer, eval_rows, cfg, device, instruction)
        record(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", eval=f"{history_last(history, 'eval_acc'):.2f}")
        if step % cfg.save_steps == 0 or step == cfg.max_steps:
            save_checkpoint(ckpt_path, model, optimizer, step, cfg)
    log.close()
    if start < cfg.max_steps:  # the last step's responses, coloured by their credit
        render_credit_html(os.path.join(cfg.output_dir, "credit.html"),
                           {os.path.basename(cfg.output_dir): credit_examples(batch, token_adv, tokenizer)})
    model.save_pretrained(os.path.join(cfg.output_dir, "final"))
    tokenizer.save_pretrained(os.path.join(cfg.output_dir, "final"))
    summary = summarize(history, cfg)
    with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_curves({os.path.basename(cfg.output_dir): [history]}, os.path.join(cfg.output_dir, "curves.png"))
    return summary


def resolve_instruction(cfg):
    return cfg.instruction if cfg.instruction is not None else (DEFAULT_INSTRUCTION if cfg.model else "")


def credit_examples(batch, token_adv, tokenizer, k=6, per_group=2):
    """The first k sampled responses with A != 0 (at most per_group from a group), each token with
    its credit multiplier Â/A."""
    examples, taken = [], {}
    for i in range(len(batch.rows)):
        a = batch.advantages[i].item()
        group = i // batch.group_size
        if not batch.sampled[i] or a == 0 or taken.get(group, 0) == per_group:
            continue
        taken[group] = taken.get(group, 0) + 1
        n = int(batch.completion_mask[i].sum())
        examples.append({"question": batch.rows[i]["question"], "answer": batch.rows[i]["answer"],
                         "note": batch.notes[i] if batch.notes else "", "advantage": a,
                         "tokens": [tokenizer.decode([t]) for t in batch.completion_ids[i, :n].tolist()],
                         "multipliers": (token_adv[i, :n] / a).tolist()})
        if len(examples) == k:
            break
    return examples


def credit_colour(multiplier):
    """RGB in [0, 1] for a credit multiplier Â/A: white at 1 (GRPO), green above, red below;
    x3 or /3 and beyond saturate."""
    v = max(-1.0, min(1.0, math.log(max(multiplier, 1e-3)) / math.log(3)))
    return (1.0, 1 + v, 1 + v) if v < 0 else (1 - v, 1.0, 1 - v)


def render_credit_html(path, columns):
    """An HTML page colouring each response token by its credit multiplier Â/A: white = 1 (GRPO's
    uniform credit), green > 1 (more credit), red < 1 (less). columns: {method: credit_examples},
    shown side by side, row by row, so the same response can be compared across methods."""
    import html

    def cell(ex):
        spans = []
        for tok, m in zip(ex["tokens"], ex["multipliers"]):
            rgb = tuple(int(255 * c) for c in credit_colour(m))
            text = html.escape(tok).replace("\n", "&#9166;<br>") or "&nbsp;"
            spans.append(f'<span title="{m:.3f}" style="background:rgb{rgb}">{text}</span>')
        return (f"<b>{html.escape(ex['question'])}</b> (answer {html.escape(ex['answer'])}, A = {ex['advantage']:+.2f})"
                f"<br><small>{html.escape(ex['note'])}</small><pre>{''.join(spans)}</pre>")

    rows = max(len(v) for v in columns.values())
    body = "".join("<tr>" + "".join(f"<td>{cell(v[r]) if r < len(v) else ''}</td>" for v in columns.values()) + "</tr>"
                   for r in range(rows))
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>token credit</title><style>td{vertical-align:top;"
                "padding:8px;border:1px solid #ddd}pre{font-size:15px;white-space:pre-wrap}span{padding:1px}</style>"
                "<p>Each response token coloured by its credit multiplier Â/A (hover for the value): white = 1, "
                f"as GRPO gives every token; green = more credit, red = less.</p><table><tr>{head}</tr>{body}</table>")


def render_credit_png(path, columns):
    """The picture of render_credit_html as a PNG, for short responses (one character wide per
    character of a token, lines broken at newlines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = max(len(v) for v in columns.values())
    fig, axes = plt.subplots(rows, len(columns), figsize=(4.2 * len(columns), 1.3 * rows), squeeze=False)
    for c, (name, examples) in enumerate(columns.items()):
        axes[0][c].set_title(name, fontsize=11, fontweight="bold")
        for r in range(rows):
            ax = axes[r][c]
            ax.axis("off")
            if r >= len(examples):
                continue
            ex = examples[r]
            ax.text(0, 1, f"{ex['question']}  (A = {ex['advantage']:+.2f})", fontsize=7, color="gray", va="top",
                    transform=ax.transAxes)
            col, line = 0, 1
            for tok, m in zip(ex["tokens"], ex["multipliers"]):
                for k, piece in enumerate(tok.split("\n")):
                    if k:
                        col, line = 0, line + 1
                    if piece:
                        ax.text(0.024 * col, 1 - 0.2 * line, piece, family="monospace", fontsize=9, va="top",
                                transform=ax.transAxes, bbox={"facecolor": credit_colour(m), "edgecolor": "none", "pad": 0.8})
                        col += len(piece)
    fig.text(0.5, 0.005, "token credit multiplier Â/A: white = 1 (GRPO), green = more, red = less", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def history_last(history, key):
    return next((m[key] for m in reversed(history) if key in m), float("nan"))


def summarize(history, cfg):
    steps = [m for m in history if m["step"] > 0]
    phases = ("t_generate", "t_score", "t_credit", "t_update")
    return {"start_acc": history[0]["eval_acc"], "final_acc": history_last(history, "eval_acc"),
            "final_reward": sum(m["reward"] for m in steps[-10:]) / max(1, len(steps[-10:])),
            "steps": len(steps), **{p: sum(m[p] for m in steps) / max(1, len(steps)) for p in phases},
            "sec_per_step": sum(m[p] for m in steps for p in phases) / max(1, len(steps)),
            "peak_mem_mb": max((m["peak_mem_mb"] for m in steps), default=0.0)}


def plot_curves(runs, path):
    """Sampled reward and held-out greedy accuracy against step: {name: [metrics of each seed]},
    one line per name (the mean over its runs) with a band of one standard deviation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, histories in runs.items():
        for axis, key in ((ax[0], "reward"), (ax[1], "eval_acc")):
            steps = sorted({m["step"] for h in histories for m in h if key in m})
            per_step = [[m[key] for h in histories for m in h if m["step"] == s and key in m] for s in steps]
            mean = torch.tensor([sum(v) / len(v) for v in per_step])
            std = torch.tensor([torch.tensor(v).std().item() if len(v) > 1 else 0.0 for v in per_step])
            if key == "reward" and len(mean) >= 10:  # sampled reward is noisy: a 10-step moving average
                mean = torch.nn.functional.avg_pool1d(mean[None], 10, 1)[0]
                std = torch.nn.functional.avg_pool1d(std[None], 10, 1)[0]
                steps = steps[9:]
            (line,) = axis.plot(steps, mean.tolist(), label=name, marker="o" if key == "eval_acc" else None)
            axis.fill_between(steps, (mean - std).tolist(), (mean + std).tolist(), color=line.get_color(), alpha=0.2)
    ax[0].set(title="sampled reward (10-step moving average)", xlabel="step")
    ax[1].set(title="held-out greedy accuracy", xlabel="step", ylim=(0, 1))
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(config_cls=GRPOConfig, argv=None, **method):
    """CLI entry point; `method` holds the seams an algorithm file replaces (credit, loss_fn, edit_rollouts)."""
    cfg = parse_config(config_cls, argv)
    try:
        summary = train(cfg, **method)
    except ValueError as e:  # bad input: name the problem, no traceback
        sys.exit(f"error: {e}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(GRPOConfig, **METHOD)
