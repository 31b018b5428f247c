"""The causal-LM plumbing: the response mask, and log-probs that padding does not change."""
import hypothesis.strategies as st
import torch
from hypothesis import given

from embedded_task import warm_start
from grpo_baseline import load_task
from language_model import completion_logprobs, completion_mask, load_policy, pad_batch


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

