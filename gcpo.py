"""GCPO: Guidance Contrastive Policy Optimization (Shufan Li et al., 2026, arXiv 2605.29198).

Credit goes to the tokens whose probability depends on the prompt's guidance: each sampled token
is scored under the prompt x and a negative prompt x-, and the response's advantage moves onto the
tokens where the two disagree most. Against grpo_baseline.py it replaces the credit (and
`recredit`) and adds an optional entropy term to the loss. Docs: docs/gcpo.md.

  (1.1) lp+_t = log pi_old(y_t | x, y_<t)
  (1.2) lp-_t = log pi(y_t | x-, y_<t)
  (1.3) d_t = min(10, e^u - u - 1),  u = clamp(lp-_t - lp+_t, -20, 20)
  (1.4) "hist": w_t = (rank of d_t in its response / n)^HIST_ALPHA (ties: their average rank),
        normalised to mean 1
  (1.5) Â_{i,t} = A_i * w_{i,t} * m_{i,t}
"""
import math
from dataclasses import dataclass

import torch

import grpo_baseline as gb
from loop.data import prompt_ids, resolve_instruction
from loop.diagnostics import weight_diagnostics
from loop.embedded_task import EMPTY_QUESTION, WRONG_ANSWER_INSTRUCTION
from loop.language_model import completion_logprobs, pad_batch
from loop.options import OUTPUT_DIR_HELP, opt

TOP_TOKENS, TOP_WEIGHT = 0.4, 0.8  # (1.4): the top 40% of tokens carry 80% of the weight
HIST_ALPHA = math.log(1 - TOP_WEIGHT) / math.log(1 - TOP_TOKENS) - 1  # ~2.15
REFERENCE_WRONG_ANSWER = "\n\nNote: Intentionally generate an incorrect answer."  # the reference's request


@dataclass
class GCPOConfig(gb.GRPOConfig):
    output_dir: str = opt("runs/gcpo", OUTPUT_DIR_HELP)
    negative: str = opt("wrong_answer", "negative prompt x-: 'wrong_answer' (the question and a request for a wrong "
                        "answer) or 'empty_prompt' (the question removed)", choices=("wrong_answer", "empty_prompt"))
    negative_instruction: str = opt(None, "with --negative wrong_answer, the request; default the reference's words with "
                                    f"--model, {WRONG_ANSWER_INSTRUCTION!r} on the embedded task")
    weight_norm: str = opt("hist", "divergence -> weight: 'hist' (rank power, the paper's), 'mean' (d / mean d), "
                           "'softmax' (n * softmax(d / max d / weight_temperature))", choices=("hist", "mean", "softmax"))
    weight_temperature: float = opt(0.1, "temperature of --weight_norm softmax")
    entropy_coef: float = opt(0.0, "the reference's 'entropy penalty': adds coef * mean(-log pi(y_t)), which lowers entropy")

    def method_problems(self):
        bad = []
        if not self.weight_temperature > 0:
            bad.append(f"--weight_temperature={self.weight_temperature!r}: must be > 0")
        if self.entropy_coef < 0:
            bad.append(f"--entropy_coef={self.entropy_coef!r}: must be >= 0")
        return bad


def divergence(logp_pos, logp_neg):
    """(1.3) k3, (N, L) -> (N, L). The lower clamp at 0 only removes float rounding (k3 >= 0)."""
    u = (logp_neg - logp_pos).clamp(-20, 20)
    return (torch.exp(u) - u - 1).clamp(0, 10)  # (1.3)


def average_ranks(values, valid):
    """(ranks, first_of_tie), both (N, L): each valid entry's 1-based rank in its row, ties sharing
    their average rank, and the position of one member of its tie. Padding sorts last."""
    key = torch.where(valid, values, torch.inf).contiguous()
    ordered, order = key.sort(1)
    below = torch.searchsorted(ordered, key, right=False)
    up_to = torch.searchsorted(ordered, key, right=True)
    return (below + 1 + up_to).to(values.dtype) / 2, order.gather(1, below)


def guidance_weights(logp_pos, logp_neg, mask, norm="hist", temperature=0.1):
    """Token weights (N, L) -> (N, L): >= 0, mean exactly 1 over each response's valid tokens, 0 on
    padding, a function of lp- - lp+ only, non-decreasing in d within a response; all d equal
    gives w = 1 exactly."""
    valid = mask > 0
    n = valid.sum(1, keepdim=True).clamp(min=1)
    d = torch.where(valid, divergence(logp_pos, logp_neg), 0.0)
    ranks, first_of_tie = average_ranks(d, valid)
    if norm == "hist":  # (1.4)
        raw = (ranks / n) ** HIST_ALPHA
    elif norm == "mean":
        raw = d
    elif norm == "softmax":  # n * softmax(d / max d / temperature)
        scaled = torch.where(valid, d, -torch.inf) / d.amax(1, keepdim=True).clamp(min=1e-8) / temperature
        raw = torch.exp(scaled - scaled.amax(1, keepdim=True))
    else:
        raise ValueError(f"unknown weight norm {norm!r}: use 'hist', 'mean' or 'softmax'")
    raw = torch.where(valid, raw, 0.0)
    total = raw.sum(1, keepdim=True)
    weights = raw * n / torch.where(total > 0, total, 1.0)
    # Vectorised pow and division can round equal inputs an ulp apart by position (SIMD lane vs.
    # tail), so each tie takes one member's weight.
    weights = weights.gather(1, first_of_tie)
    d_first = d.gather(1, valid.float().argmax(1, keepdim=True))
    uniform = (torch.where(valid, d, d_first) == d_first).all(1, keepdim=True)  # no contrast at all
    return torch.where(valid, torch.where(uniform, 1.0, weights), 0.0)


def gcpo_token_advantages(adv, logp_pos, logp_neg, mask, norm="hist", temperature=0.1):
    """(1.5) Â_{i,t} = A_i * w_{i,t} * m_{i,t}. adv (N,), the rest (N, L) -> (N, L)."""
    return adv[:, None] * guidance_weights(logp_pos, logp_neg, mask, norm, temperature) * mask


def negative_prompt_ids(tokenizer, row, cfg):
    """Token ids of x-: negative_text through the chat template as x's, after x's worked example
    if the row has one, so x and x- differ in the last question alone."""
    instruction, example = resolve_instruction(cfg), row.get("example")
    return prompt_ids(tokenizer, negative_text(row["question"], instruction, cfg, row.get("blank_question")),
                      example=example and (example[0] + instruction, example[1]))


def resolve_negative_instruction(cfg):
    if cfg.negative_instruction is not None:
        return cfg.negative_instruction
    return REFERENCE_WRONG_ANSWER if cfg.model else WRONG_ANSWER_INSTRUCTION


def negative_logprobs(batch, scored, model, tokenizer, cfg):
    """(1.2) lp- (len(scored), L) of the responses `scored` (1-D indices), one no-grad forward of
    x- ⊕ y; and {group: x-'s token ids}."""
    G = batch.group_size
    per_group = {g: negative_prompt_ids(tokenizer, batch.rows[g * G], cfg) for g in {i // G for i in scored.tolist()}}
    negatives = [per_group[i // G] for i in scored.tolist()]
    ids, ids_mask, _, _ = pad_batch(negatives, [[]] * len(negatives), tokenizer.pad_token_id, scored.device)
    logp_neg, _ = completion_logprobs(model, ids, ids_mask, batch.completion_ids[scored], batch.completion_mask[scored],
                                      cfg.temperature, cfg.micro_batch_size)  # (1.2)
    return logp_neg, per_group


def gcpo_credit(batch, model, tokenizer, cfg, step):
    """Seam 3: lp- for the responses with A != 0 (no others get credit), lp+ = log pi_old,
    then (1.3)-(1.5)."""
    scored = (batch.advantages != 0).nonzero().squeeze(1)
    token_adv = torch.zeros_like(batch.completion_mask)
    if not len(scored):
        return token_adv, {}
    logp_neg, x_minus = negative_logprobs(batch, scored, model, tokenizer, cfg)
    batch.scored_under = [{"negative prompt x-": x_minus[i // batch.group_size]} if batch.advantages[i] != 0 else {}
                          for i in range(len(batch.rows))]
    mask = batch.completion_mask[scored]
    logp_pos = batch.old_logp[scored]  # (1.1), scored by the loop (reads_pi_old)
    adv = batch.advantages[scored]
    token_adv[scored] = gcpo_token_advantages(adv, logp_pos, logp_neg, mask, cfg.weight_norm, cfg.weight_temperature)  # (1.5)
    return token_adv, weight_diagnostics(divergence(logp_pos, logp_neg), token_adv[scored] / adv[:, None], mask)


def gcpo_recredit(batch, idx, model, tokenizer, cfg):
    """Seam 5: Â (len(idx), L) of the mini-batch `idx` (1-D indices), lp+ and lp- re-scored under
    the current policy with no grad."""
    nonzero_adv = batch.advantages[idx] != 0
    token_adv = torch.zeros_like(batch.completion_mask[idx])
    if nonzero_adv.any():
        scored = idx[nonzero_adv]
        mask = batch.completion_mask[scored]
        logp_pos, _ = completion_logprobs(model, batch.prompt_ids[scored], batch.prompt_mask[scored],
                                          batch.completion_ids[scored], mask, cfg.temperature,
                                          cfg.micro_batch_size)  # lp+ as (1.1), under the moved policy
        logp_neg, _ = negative_logprobs(batch, scored, model, tokenizer, cfg)
        token_adv[nonzero_adv] = gcpo_token_advantages(batch.advantages[scored], logp_pos, logp_neg, mask,
                                                       cfg.weight_norm, cfg.weight_temperature)  # (1.5)
    return token_adv


def gcpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer):
    """GRPO's loss plus entropy_coef * mean(-log pi)."""
    loss, stats = gb.grpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer)
    if cfg.entropy_coef:
        loss = loss + cfg.entropy_coef * gb.aggregate(torch.where(mask > 0, -logp, 0.0), mask, cfg.loss_type, normalizer)
    return loss, stats


def negative_text(question, instruction, cfg, blank_question=None):
    """x-'s user turn as text: 'wrong_answer' appends the request to the question and instruction;
    'empty_prompt' puts blank_question (else EMPTY_QUESTION) in the question's place. Shared with
    trl_credit.py."""
    if cfg.negative == "wrong_answer":
        return question + instruction + resolve_negative_instruction(cfg)
    return (blank_question or EMPTY_QUESTION) + instruction


def negative_contexts(tokenizer, rows, prompts, cfg):
    """Seam 0: every task row's x-, each checked with a response against the model's context."""
    return "GCPO's negative prompt x- (--negative_instruction)", [negative_prompt_ids(tokenizer, r, cfg) for r in rows]


# the seams it replaces; its credit reads log pi_old (lp+), so the loop scores it first
METHOD = {"credit": gcpo_credit, "loss_fn": gcpo_loss, "recredit": gcpo_recredit, "reads_pi_old": lambda cfg: True,
          "contexts": negative_contexts}

if __name__ == "__main__":
    gb.main(GCPOConfig, **METHOD)
