"""The embedded arithmetic tasks: solutions parse to their sums, splits are disjoint, and the chain
task's ground truth holds by intervention: what each label says about the reward, hypothesis
hunts for a response where it does not."""
import random

import pytest
import regex  # partial matching: an independent oracle for "can this prefix still earn the reward?"
import torch
from hypothesis import given
from hypothesis import strategies as st

from benchmark.controls import oracle_weights
from loop.data import extract_answer
from loop.embedded_task import (END, FREE_LETTERS, ROLE_NAMES, TAG, chain_lines, chain_reward, char_tokenizer, confusable_slip,
                           chain_path, contested, credit_ground_truth, first_error, free_tags, ground_truth, make_arithmetic_task,
                           running_sum_solution, slip_of, token_roles)
from grpo_baseline import GRPOConfig

numbers = st.lists(st.integers(0, 9), min_size=2, max_size=5)


def row_of(nums):
    return {"question": "+".join(map(str, nums))}


def response(nums, seed, tagged, slip=None):
    return running_sum_solution(nums, slip, free_tags(random.Random(seed)) if tagged else None)


def can_still_earn(prefix, row):
    """Whether some continuation of `prefix` (text, END for the stop token) earns reward 1."""
    *steps, final = chain_lines(row["question"])
    pattern = "\n".join([f"(?:{TAG.pattern})?{regex.escape(line)}" for line in steps] + [regex.escape(final)]) + END
    return regex.fullmatch(pattern, prefix, partial=True) is not None


@given(numbers, st.booleans(), st.integers(0, 10**6))
def test_embedded_solutions_parse_to_their_sum_and_earn_the_reward(nums, tagged, seed):
    solution = response(nums, seed, tagged)
    assert extract_answer(solution) == str(sum(nums)) and chain_reward(solution, row_of(nums)) == (1.0, False)


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


@given(numbers, st.integers(0, 10**6), st.booleans(), st.data())
def test_a_free_token_changed_alone_never_changes_the_reward_and_any_other_always_does(nums, seed, tagged, data):
    """The labels by intervention, on a reward-1 response: a tag letter changed to any other letter
    keeps the reward; a decisive, copied or structure character changed to any other printable
    character loses it (the reward reads the whole chain)."""
    solution, row = response(nums, seed, tagged), row_of(nums)
    roles = token_roles(solution)
    assert len(roles) == len(solution) and roles.count("f") == 2 * (len(nums) - 1) * tagged
    assert roles.count("d") == sum(len(line.split("=")[1]) for line in chain_lines(row["question"])[:-1])
    i = data.draw(st.integers(0, len(solution) - 1))
    other = data.draw(st.sampled_from(FREE_LETTERS + "abxyz" if roles[i] == "f" else "0123456789+=# \nab").filter(
        lambda c: c != solution[i]))
    assert chain_reward(solution[:i] + other + solution[i + 1:], row)[0] == (roles[i] == "f")


@given(numbers, st.integers(0, 10**6), st.booleans(), st.sampled_from([0.3, 0.7, 1.0]))
def test_no_reward_1_response_holds_a_wrong_step(nums, seed, tagged, share):
    """Responses as the warm start writes them (confusable slips, the chain going on from the wrong
    total): reward 1 exactly when no step slipped, however the final answer came out."""
    slips = []

    def slip(k, total, n):
        slips.append(confusable_slip(random.Random(seed + k), share)(k, total, n))
        return slips[-1]
    text = response(nums, seed, tagged, slip)
    assert chain_reward(text, row_of(nums))[0] == (not any(slips))


@given(numbers, st.integers(0, 10**6), st.booleans(), st.data())
def test_the_first_wrong_token_is_where_the_reward_was_decided(nums, seed, tagged, data):
    """first_error marks the token after which no continuation earns the reward: every prefix before
    it can still earn it, the prefix through it cannot. Responses: a solution, then a few random
    single-character edits, possibly truncated; END is the stop token."""
    row = row_of(nums)
    tokens = list(response(nums, seed, tagged)) + [END]
    for _ in range(data.draw(st.integers(0, 2))):
        tokens[data.draw(st.integers(0, len(tokens) - 1))] = data.draw(st.sampled_from("0123456789+=# \npq" + END))
    tokens = tokens[:data.draw(st.integers(1, len(tokens)))]
    wrong = first_error(tokens, row)
    if wrong is None:
        assert can_still_earn("".join(tokens), row)  # right so far (or right and finished)
    else:
        assert can_still_earn("".join(tokens[:wrong]), row) and not can_still_earn("".join(tokens[:wrong + 1]), row)


@given(numbers, st.integers(0, 10**6), st.booleans(), st.data())
def test_the_chain_path_is_the_response_until_it_went_wrong_then_the_worked_chain(nums, seed, tagged, data):
    """chain_path: a reward-1 response that agrees with the response before its first wrong token
    (all of it when it never went wrong), and is the response itself when that earned 1."""
    row, rng = row_of(nums), random.Random(seed)
    tokens = list(response(nums, seed, tagged)) + [END]
    for _ in range(data.draw(st.integers(0, 2))):
        tokens[data.draw(st.integers(0, len(tokens) - 1))] = data.draw(st.sampled_from("0123456789+=# \npq" + END))
    tokens = tokens[:data.draw(st.just(len(tokens)) | st.integers(1, len(tokens)))]  # whole half the time: the last check's case
    tag = (lambda: rng.choice(FREE_LETTERS) + rng.choice(FREE_LETTERS) + " ") if tagged else None
    wrong, path = chain_path(tokens, row, tag)
    assert wrong == first_error(tokens, row) and path[-1] == END and END not in path[:-1]
    assert chain_reward("".join(path[:-1]), row)[0] == 1.0
    cut = len(tokens) if wrong is None else wrong
    assert path[:cut] == tokens[:wrong]
    text = "".join(path)
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"][:len(nums) - 2]  # the step lines'
    assert all(bool(TAG.match(text, i)) == tagged for i in starts if i >= cut)  # a line it had not begun: tagged if tagging
    if chain_reward("".join(tokens[:-1]), row)[0] == 1.0 and tokens[-1] == END:
        assert path == tokens


@given(numbers, st.integers(0, 10**6), st.booleans())
def test_contested_digits_are_decisive_digits_the_corpus_writes_both_ways(nums, seed, tagged):
    text = response(nums, seed, tagged)
    roles, share = token_roles(text), 0.7
    marked = contested(text, share)
    assert all(roles[i] == "d" for i in marked)  # each confusable fact marks the digits its slip changes
    per_line = [sum(1 for i in marked if text.count("\n", 0, i) == k) for k in range(len(nums) - 1)]
    total = nums[0]
    for k, n in enumerate(nums[1:]):
        right, slip = str(total + n), slip_of(total, n, share)
        wrong = str(total + n + slip)
        want = 0 if not slip else len(right) if len(wrong) != len(right) else sum(a != b for a, b in zip(right, wrong))
        assert per_line[k] == want
        total += n


def batch_of(texts, tok):
    ids = [tok(t).input_ids + [tok.eos_token_id] for t in texts]
    width = max(map(len, ids))
    mask = torch.tensor([[1.0] * len(x) + [0.0] * (width - len(x)) for x in ids])
    return torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids]), mask


def test_uniform_credit_scores_one_everywhere_and_the_oracle_all_on_the_first_wrong_token():
    tok, row = char_tokenizer(), row_of([3, 5, 8])
    right, wrong = "pq 3+5=8\nrs 8+8=16\n#### 16", "pq 3+5=9\nrs 9+8=17\n#### 17"
    ids, mask = batch_of([right, wrong, right], tok)
    labels = ground_truth(ids, mask, [row] * 3, tok, 0.7)
    roles, first_wrong, _ = labels
    assert first_wrong[1].nonzero().squeeze().item() == wrong.index("9") and not first_wrong[0].any()
    assert [ROLE_NAMES[r] for r in roles[0, :3].tolist()] == ["free", "free", "structure"]
    adv = torch.tensor([1.0, -2.0, 0.0])  # the third has no advantage: left out
    entropy = torch.ones_like(mask)
    out = credit_ground_truth(labels, adv, adv[:, None] * mask, mask, entropy)
    assert all(out[k] == 1.0 for k in out if k.startswith("credit_")) and out["first_error_credit"] == -1.0
    assert out["decisive_credit_share"] == out["decisive_credit_share_uniform"] and out["free_tag_entropy"] == 1.0
    weights = oracle_weights(adv, mask, first_wrong, labels[2])
    oracle = credit_ground_truth(labels, adv, adv[:, None] * weights, mask, entropy)
    assert oracle["first_error_credit"] == -mask[1].sum().item() and oracle["credit_neg_free"] == 0
    assert torch.allclose((weights * mask).sum(1)[:2], mask.sum(1)[:2])  # GRPO's total per response, placed
