"""The real-model default: sums asked in English, for a pretrained chat model (--model without
--dataset), as the chain task is for the embedded model.

    question  'Mia has 8 shells. Mia gets 5 more. Mia gets 2 more. How many shells does Mia have now?'
    solution  '8 + 5 = 13\\n13 + 2 = 15\\n#### 15'      (Gold's reference; the worked running sum)
    blank     'Mia has ? shells. Mia gets ? more. Mia gets ? more. How many shells does Mia have now?'

Two or three numbers from 1 to 9 (OPERANDS, MAX_OPERAND): at this size SmolLM2-135M-Instruct solves
about a third of them greedily, so RL has both rewards to learn from. Every prompt opens with one
worked exchange (EXAMPLE, an earlier user and assistant turn): without it the 135M model explains
at length and almost never writes '#### n', so the reward would measure the format, not the sum.
The reward is the answer check every --dataset gets (data.answer_reward), as on GSM8K.
"""
import random
import re

import torch

OPERANDS = (3,)  # numbers per problem, drawn uniformly
MAX_OPERAND = 9
NAMES = ("Sam", "Mia", "Leo", "Ava", "Tom", "Zoe", "Ben", "Lily", "Max", "Ella", "Noah", "Ruby")
THINGS = ("apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "shells", "stamps", "beads")
EXAMPLE = ("Kim has 4 pens. Kim gets 3 more. Kim gets 6 more. How many pens does Kim have now?",
           "4 + 3 = 7\n7 + 6 = 13\n#### 13")  # shown before every question (data.prompt_ids)
TRAIN_SIZE = 4000
MAX_HELD_OUT = 20000  # of about 97,000 distinct questions


def word_problem(rng):
    """One row: question, answer, solution (the running sum, then '#### n'), blank_question (the
    numbers hidden: GCPO's empty prompt) and the worked example every prompt opens with."""
    nums = [rng.randint(1, MAX_OPERAND) for _ in range(rng.choice(OPERANDS))]
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    question = " ".join([f"{who} has {nums[0]} {what}."] + [f"{who} gets {n} more." for n in nums[1:]]
                        + [f"How many {what} does {who} have now?"])
    lines, total = [], nums[0]
    for n in nums[1:]:
        lines.append(f"{total} + {n} = {total + n}")
        total += n
    return {"question": question, "answer": str(total), "solution": "\n".join(lines) + f"\n#### {total}",
            "blank_question": re.sub(r"\d+", "?", question), "example": EXAMPLE}


# A response's tokens by what they hold: the sums the model computes ("sum": the number after each
# '='), the final answer after '####' ("answer"), the numbers it copies from the question or carries
# ("operand"), and the rest ("text": '+', '=', line breaks, '####', words, the end of turn).
WORD_ROLES = ("sum", "answer", "operand", "text")
_NUMBERS = (("answer", re.compile(r"####\s*(-?\d+)")), ("sum", re.compile(r"=\s*(-?\d+)")), ("operand", re.compile(r"(\d+)")))


def token_roles(tokenizer, completion_ids, mask):
    """(N, L) long: each completion token's index in WORD_ROLES, -1 on padding. A token holding a
    digit takes the role of its first digit (a number's role by the regular expressions above, the
    first that claims it); any other token is text."""
    roles = torch.full(completion_ids.shape, -1, dtype=torch.long)
    for i, (ids, n) in enumerate(zip(completion_ids.tolist(), mask.sum(1).long().tolist())):
        pieces = [tokenizer.decode([t]) for t in ids[:n]]
        text = "".join(pieces)
        char_role = [WORD_ROLES.index("text")] * len(text)
        for role, pattern in reversed(_NUMBERS):  # the first pattern that claims a number wins
            for m in pattern.finditer(text):
                char_role[m.start(1):m.end(1)] = [WORD_ROLES.index(role)] * (m.end(1) - m.start(1))
        start = 0
        for k, piece in enumerate(pieces):
            digits = [j for j in range(start, start + len(piece)) if text[j].isdigit()]
            roles[i, k] = char_role[digits[0]] if digits else WORD_ROLES.index("text")
            start += len(piece)
    return roles.to(completion_ids.device)


def credit_by_role(roles, advantages, token_adv, mask):
    """credit_{pos,neg}_{role}: the mean multiplier Â_t / A_i on each role's tokens, for A > 0 and
    A < 0 responses apart (GRPO's is 1 everywhere). roles: token_roles'; advantages (N,); token_adv, mask (N, L)."""
    valid = (mask > 0) & (advantages != 0)[:, None]
    multiplier = token_adv / torch.where(advantages == 0, 1.0, advantages)[:, None]
    out = {}
    for sign, side in (("pos", advantages > 0), ("neg", advantages < 0)):
        for k, name in enumerate(WORD_ROLES):
            on = valid & side[:, None] & (roles == k)
            if on.any():
                out[f"credit_{sign}_{name}"] = multiplier[on].mean().item()
    return out


def make_word_task(cfg):
    """(train rows, eval rows): TRAIN_SIZE problems, and cfg.eval_size held-out ones whose questions
    are not among them. Fixed seeds: every run of every method sees the same task."""
    if cfg.eval_size > MAX_HELD_OUT:
        raise ValueError(f"--eval_size {cfg.eval_size}: the words task holds out at most {MAX_HELD_OUT} problems")
    rng = random.Random(20261206)
    train = [word_problem(rng) for _ in range(TRAIN_SIZE)]
    seen, held_out = {r["question"] for r in train}, []
    while len(held_out) < cfg.eval_size:
        row = word_problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            held_out.append(row)
    return train, held_out
