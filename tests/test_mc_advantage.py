"""Monte-Carlo token advantages: exact values under a policy whose next-token distribution is
rigged, the telescoping identity and budgets on a tiny random Llama, and the agreement measure
on tensors made by hand. No trained model, and every test is a few seconds on one thread."""
import math

import pytest
import torch

from benchmark.mc_advantage import agreement, mc_standard_errors, mc_token_advantages, prefix_values
from grpo_baseline import GRPOConfig
from loop.embedded_task import char_tokenizer
from loop.language_model import generate, pad_batch

CPU = torch.device("cpu")
PROMPT = "Q:"       # every prompt: the rigged policy reads the response position off the attention mask
TARGET = "ab?cd"    # what the rigged policy writes, then its stop token; '?' is '7' or '8'
DECIDING = TARGET.index("?")


def seventh(text, row):
    """The toy reward: 1 iff the response's 3rd character is '7'."""
    return float(len(text) > DECIDING and text[DECIDING] == "7")


def tiny_llama(tokenizer, cls=None):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return (cls or LlamaForCausalLM)(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None)).eval()


def rigged_policy(tokenizer, p7):
    """A Llama whose sampling distribution is known exactly: after k response tokens it writes
    TARGET[k] with probability 1, except at DECIDING, where it writes '7' with probability p7 and
    '8' otherwise, and it stops after TARGET. The real model runs (so generate's cache and masks
    work as ever); only the logits of the position being sampled are replaced."""
    from transformers import LlamaForCausalLM
    vocab = tokenizer.get_vocab()
    table = torch.full((len(TARGET) + 1, len(tokenizer)), -math.inf)
    for k, char in enumerate(TARGET):
        table[k, vocab[char]] = 0.0
    table[DECIDING] = -math.inf
    table[DECIDING, vocab["7"]] = math.log(p7) if p7 > 0 else -math.inf
    table[DECIDING, vocab["8"]] = math.log(1 - p7) if p7 < 1 else -math.inf
    table[len(TARGET), tokenizer.eos_token_id] = 0.0
    prompt_length = len(tokenizer(PROMPT).input_ids)

    class Rigged(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kw):
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)
            # generate passes no mask when nothing is padded: every row is then as long as the cache
            length = attention_mask.sum(1) if attention_mask is not None else kw["cache"].get_seq_length()
            position = torch.as_tensor(length - prompt_length).clamp(max=len(TARGET)).expand(len(input_ids))
            out.logits[:, -1] = table[position]
            return out
    return tiny_llama(tokenizer, Rigged)


def responses(tokenizer, texts):
    """Hand-written finished responses as generate returns them: (prompts, completion_ids, mask)."""
    prompts = [tokenizer(PROMPT).input_ids] * len(texts)
    completions = [tokenizer(t).input_ids + [tokenizer.eos_token_id] for t in texts]
    _, _, ids, mask = pad_batch(prompts, completions, tokenizer.pad_token_id, CPU)
    return prompts, ids, mask


def cfg(max_completion_length, batch=64):
    return GRPOConfig(max_completion_length=max_completion_length, temperature=1.0, generation_batch_size=batch)


def test_a_greedy_policy_gives_exact_values_and_credits_only_the_deciding_token():
    # The policy always writes '7' at DECIDING: every prefix before it is worth 1 (its continuation
    # writes '7'); the off-policy response 'ab8cd' is worth 0 from the '8' on.
    tok = char_tokenizer()
    prompts, ids, mask = responses(tok, ["ab7cd", "ab8cd"])
    values = prefix_values(rigged_policy(tok, p7=1.0), tok, prompts, ids, mask, [{}, {}], seventh,
                           cfg(len(TARGET) + 1), CPU, continuations=3)
    n = len(TARGET) + 1  # tokens with the stop
    torch.testing.assert_close(values[0], torch.ones(n + 1))
    torch.testing.assert_close(values[1], torch.tensor([1.0] * (DECIDING + 1) + [0.0] * (n - DECIDING)))
    adv = mc_token_advantages(values, mask)
    torch.testing.assert_close(adv, torch.stack([torch.zeros(n), -torch.eye(n)[DECIDING]]))
    assert mc_standard_errors(values, mask, 3).eq(0).all()  # every estimate is 0 or 1: no sampling error


def test_a_coin_at_the_deciding_token_is_where_all_the_advantage_goes():
    # '7' with probability 1/2: V = 1/2 up to the coin, then the response's own reward exactly.
    tok = char_tokenizer()
    prompts, ids, mask = responses(tok, ["ab7cd", "ab8cd"])
    K = 256
    values = prefix_values(rigged_policy(tok, p7=0.5), tok, prompts, ids, mask, [{}, {}], seventh,
                           cfg(len(TARGET) + 1, batch=512), CPU, continuations=K)
    before, after = values[:, :DECIDING + 1], values[:, DECIDING + 1:len(TARGET) + 2]
    assert (before - 0.5).abs().max() < 4 * 0.5 / math.sqrt(K)
    assert after[0].eq(1).all() and after[1].eq(0).all()  # decided: exact, nothing sampled differs
    adv, se = mc_token_advantages(values, mask), mc_standard_errors(values, mask, K)
    assert adv[0, DECIDING] > 0.4 and adv[1, DECIDING] < -0.4 and (adv[:, DECIDING].abs() > 2 * se[:, DECIDING]).all()
    assert adv[:, :DECIDING].abs().max() < 0.25  # differences of two estimates of 1/2 (5 standard errors)
    assert adv[:, DECIDING + 1:].eq(0).all() and se[:, DECIDING + 1:].eq(0).all()


def test_random_llama_values_telescope_and_respect_the_budget():
    tok = char_tokenizer()
    model = tiny_llama(tok)
    config = cfg(8, batch=32)
    prompts = [tok(q).input_ids for q in ["1+2\n", "3+4+5\n", "6\n", "7+8\n"]]
    torch.manual_seed(1)
    ids, mask, texts = generate(model, tok, prompts, config, CPU)
    lengths = mask.sum(1).long()
    seen = []
    def has_a_letter(text, row):  # two thirds of the random model's 8-character texts have one of a..m
        seen.append(len(text))
        return float(any(c in "abcdefghijklm" for c in text))

    state = torch.random.get_rng_state()
    values = prefix_values(model, tok, prompts, ids, mask, [{}] * 4, has_a_letter, config, CPU, continuations=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG stream is untouched
    N, L = ids.shape
    assert values.shape == (N, L + 1)
    valid = torch.arange(L + 1) <= lengths[:, None]
    v = values[valid]
    assert v.ge(0).all() and v.le(1).all() and v.mul(4).eq(v.mul(4).round()).all() and values[~valid].isnan().all()
    assert values[torch.arange(N), lengths].tolist() == [has_a_letter(t, {}) for t in texts]
    adv = mc_token_advantages(values, mask)
    assert adv.shape == (N, L) and adv[mask == 0].eq(0).all()
    # Exactly, not approximately: with K = 4 every value and partial sum is a float of a few bits.
    assert torch.equal(adv.sum(1), values[torch.arange(N), lengths] - values[:, 0])
    assert max(seen) <= config.max_completion_length  # prefix + continuation within the response's budget
    again = prefix_values(model, tok, prompts, ids, mask, [{}] * 4, has_a_letter, config, CPU, continuations=4)
    assert torch.equal(again.nan_to_num(-1), values.nan_to_num(-1))  # seeded


def test_a_response_longer_than_the_budget_is_refused():
    tok = char_tokenizer()
    prompts, ids, mask = responses(tok, ["ab7cd"])
    with pytest.raises(ValueError, match="max_completion_length"):
        prefix_values(rigged_policy(tok, 1.0), tok, prompts, ids, mask, [{}], seventh, cfg(3), CPU)


def test_telescoping_on_random_values():
    torch.manual_seed(0)
    mask = (torch.arange(7) < torch.randint(1, 8, (20, 1))).float()
    values = torch.randint(0, 9, (20, 8)) / 8.0
    adv = mc_token_advantages(values, mask)
    lengths = mask.sum(1).long()
    assert torch.equal(adv.sum(1), values[torch.arange(20), lengths] - values[:, 0])


def test_standard_errors_count_the_final_reward_as_exact():
    values = torch.tensor([[0.5, 0.5, 0.5, math.nan]])  # a reward of 0.5 ends the 2-token response
    se = mc_standard_errors(values, torch.tensor([[1.0, 1, 0]]), continuations=4)
    torch.testing.assert_close(se, torch.tensor([[math.sqrt(2 * 0.25 / 4), math.sqrt(0.25 / 4), 0.0]]))


def test_agreement_on_hand_made_credit():
    mc = torch.tensor([[0.5, -0.25, 0.0, 9.0], [0.125, 0.5, -0.5, 9.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]])  # the 9s are padding and must not count
    same = agreement(2 * mc, mc, mask)
    assert same["corr"] == pytest.approx(1.0) and same["sign_agreement"] == 1.0
    assert (same["tokens"], same["decided_tokens"], same["responses"]) == (6, 5, 2)
    negated = agreement(-mc, mc, mask)
    assert negated["corr"] == pytest.approx(-1.0) and negated["sign_agreement"] == 0.0
    # GRPO-like credit: constant, so no correlation; no credit on a decided token is a disagreement.
    flat = agreement(torch.zeros_like(mc), mc, mask)
    assert flat["corr"] is None and flat["sign_agreement"] == 0.0 and flat["zero_credit_decided"] == 5
    # Only tokens clearly away from 0 are judged: here those of row 0 (|A_MC| > 2 * 0.1).
    se = torch.full_like(mc, 0.1)
    se[1] = 1.0
    judged = agreement(-mc, mc, mask, se)
    assert judged["decided_tokens"] == 2 and judged["sign_agreement"] == 0.0
    nothing = agreement(mc, mc, mask, torch.full_like(mc, 10.0))
    assert nothing["sign_agreement"] is None and nothing["decided_tokens"] == 0
