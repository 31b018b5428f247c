"""The causal-LM plumbing: the response mask, and log-probs that padding does not change."""
from types import SimpleNamespace

import hypothesis.strategies as st
import torch
from hypothesis import given, settings
from transformers import GPT2Config, GPT2LMHeadModel

from loop.embedded_task import char_tokenizer, load_task, warm_start
from loop.language_model import completion_logprobs, completion_mask, load_policy, pad_batch, solution_logprob_gap


@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=10), min_size=1, max_size=5))
def test_completion_mask_keeps_the_first_eos_even_when_pad_is_eos(rows):
    eos = 0  # also the pad id
    width = max(map(len, rows))
    ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    mask = completion_mask(ids, eos)
    for r, m in zip(ids.tolist(), mask.tolist()):
        first = r.index(eos) if eos in r else len(r) - 1
        assert m == [1.0] * (first + 1) + [0.0] * (len(r) - first - 1)


def test_left_padding_does_not_change_log_probs(tiny_cfg):
    cfg = tiny_cfg()
    model, tok = load_policy(warm_start(cfg, *load_task(cfg), torch.device("cpu")), cfg, torch.device("cpu"))
    short, long_ = tok("1+2\n").input_ids, tok("11+12+13\n").input_ids
    response = tok("1+2=3\n#### 3").input_ids + [tok.eos_token_id]
    alone = completion_logprobs(model, *pad_batch([short], [response], tok.pad_token_id, "cpu"), 1.0, 8)[0]
    padded = completion_logprobs(model, *pad_batch([long_, short], [response[:3], response], tok.pad_token_id,
                                                         "cpu"), 1.0, 8)[0]
    torch.testing.assert_close(padded[1], alone[0], atol=1e-5, rtol=1e-5)



@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60), st.text("0123456789+=\n", min_size=0, max_size=40)),
                min_size=1, max_size=6), st.integers(1, 3))
def test_a_solution_gap_is_each_pair_scored_alone_and_fits_the_context(pairs, micro_batch_size):
    """solution_logprob_gap, however its rows are sorted, padded and micro-batched, equals each pair
    scored alone; a solution counts its first --max_completion_length tokens, fewer where the longer
    context leaves less room in GPT-2's 64 positions, so no context + solution indexes past them (a
    preflight once did, on long reference solutions)."""
    tok = char_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).eval()
    cfg = SimpleNamespace(max_completion_length=12, temperature=1.0, micro_batch_size=micro_batch_size)
    contexts_a, contexts_b = ([[5 + (i + k) % 50 for i in range(n)] for n in lengths] for k, lengths in
                              enumerate(zip(*[(a, b) for a, b, _ in pairs])))
    solutions = [s for _, _, s in pairs]
    gap = solution_logprob_gap(model, tok, solutions, contexts_a, contexts_b, cfg)
    for i, (a, b, s) in enumerate(zip(contexts_a, contexts_b, solutions)):
        response = (tok(s, add_special_tokens=False).input_ids + [tok.eos_token_id])[:min(12, 64 - max(len(a), len(b)))]
        alone = [completion_logprobs(model, *pad_batch([c], [response], tok.pad_token_id, "cpu"), 1.0, 1)[0].sum()
                 for c in (a, b)]
        torch.testing.assert_close(gap[i], alone[0] - alone[1], atol=1e-4, rtol=1e-4)
