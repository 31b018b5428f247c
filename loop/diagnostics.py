"""What the training loop and the benchmark measure beyond the loss: each step's credit and entropy
statistics (and, on the embedded task, the credit each token role got against the ground truth),
the methods' own diagnostics (GCPO's weight spread, CEPO's teacher evidence), and the checks that a
model reads the contexts a method scores under (CEPO's hints, GCPO's negative prompt).
Nothing here changes what a run computes; docs/metrics.md explains every key."""
import math
import sys
from decimal import Decimal, localcontext
from fractions import Fraction

import torch

from loop.data import EXACT_DIGITS, prompt_ids, resolve_instruction
from loop.embedded_task import CONFUSABLE_SHARE, credit_ground_truth, ground_truth
from loop.language_model import solution_logprob_gap, stop_ids, unfinished
from loop.report import peak_memory_mb
from loop.word_task import WORD_ROLES, credit_by_role, token_roles

TOP_SHARE = 0.4  # weight_top40_share: the share of a response's weight on its top 40% of tokens
HINT_CHECK_ROWS = 64  # held-out solutions CEPO's preflight scores


def step_metrics(batch, token_adv, model, tokenizer, cfg, device):
    """One RL step's statistics of the batch and its credit: reward, length, entropy (of the
    policy's own samples only: not Gold's references), mean |A| and |Â|, all-equal groups, peak
    memory, and the mean credit of each token role: against the ground truth on the embedded task
    (credit_ground_truth), by what the token holds on the words task (word_task.credit_by_role)."""
    valid, own, mask = batch.completion_mask > 0, batch.sampled, batch.completion_mask
    metrics = {"reward": batch.rewards[own].mean().item(), "response_length": mask[own].sum(1).mean().item(),
               "sampled_tokens": int(mask[own].sum()),
               "empty_responses": sum(not batch.texts[i].strip() for i in own.nonzero().squeeze(1).tolist()),
               "truncated": unfinished(batch.completion_ids, mask, stop_ids(model))[own].sum().item(),
               "entropy": ((batch.entropy * batch.completion_mask)[own].sum() / batch.completion_mask[own].sum()).item(),
               "adv_abs_mean": batch.advantages.abs().mean().item(),
               "token_adv_abs_mean": token_adv[valid].abs().mean().item(),
               "zero_adv_groups": (batch.advantages.view(-1, batch.group_size).abs().sum(1) == 0).sum().item(),
               "peak_mem_mb": peak_memory_mb(device)}
    if not (cfg.model or cfg.dataset):  # the embedded task knows which tokens decide the reward
        labels = ground_truth(batch.completion_ids, batch.completion_mask, batch.rows, tokenizer, CONFUSABLE_SHARE[cfg.task])
        metrics.update(credit_ground_truth(labels, batch.advantages, token_adv, batch.completion_mask, batch.entropy))
    elif not cfg.dataset:  # the words task: what each kind of token (sums, answer, operands, text) was credited
        roles = token_roles(tokenizer, batch.completion_ids, batch.completion_mask)
        metrics.update(credit_by_role(roles, batch.advantages, token_adv, batch.completion_mask))
    return metrics


def clip_stats(ratio, valid, is_clipped):
    """PPO-clip's statistics over the valid tokens of (N, L) tensors: the share where the clip is
    active (is_clipped: the gradient is 0 there), the mean and the largest ratio."""
    with torch.no_grad():
        n = valid.sum().clamp(min=1)
        return {"clip_frac": ((valid & is_clipped).sum() / n).item(),
                "ratio_mean": (torch.where(valid, ratio, 0.0).sum() / n).item(),
                "ratio_max": torch.where(valid, ratio, -math.inf).max().item() if valid.any() else 1.0}


def weight_diagnostics(d, weights, mask):
    """GCPO: divergence statistics, the share of weight on each response's top 40% of tokens, and
    the entropy of each response's weight distribution (log n when uniform), averaged.
    d, weights, mask (n, L)."""
    valid = mask > 0
    n = valid.sum(1)
    top_k = torch.ceil(TOP_SHARE * n).long()
    ranked = weights.sort(1, descending=True).values
    top_share = (ranked * (torch.arange(weights.shape[1], device=d.device)[None] < top_k[:, None])).sum(1) / n
    q = weights / n[:, None]
    entropy = -torch.where(valid & (q > 0), q * q.log(), 0.0).sum(1)
    return {"div_mean": d[valid].mean().item(), "div_max": d[valid].max().item(),
            "div_zero_frac": (d[valid] == 0).float().mean().item(),
            "weight_top40_share": top_share.mean().item(), "weight_entropy": entropy.mean().item(),
            "weight_entropy_uniform": n.float().log().mean().item()}


def evidence_diagnostics(adv, delta, mask, token_adv, lam, eps_w):
    """CEPO: mean Δ split by sign(A); the fraction of tokens the teachers argue against
    (sign(A) Δ < 0); how often w hits its clip; mean |Â| before and after the weighting.
    adv (n,); delta, mask, token_adv (n, L)."""
    valid = mask > 0
    signed = torch.sign(adv)[:, None] * delta
    raw_w = torch.exp(signed)
    stats = {"lambda": lam, "teacher_rows": len(adv),
             "against_frac": (signed[valid] < 0).float().mean().item(),
             "w_clip_frac": ((raw_w[valid] < 1 - eps_w) | (raw_w[valid] > 1 + eps_w)).float().mean().item(),
             "adv_abs_before": adv[:, None].expand_as(mask)[valid].abs().mean().item(),
             "adv_abs_after": token_adv[valid].abs().mean().item()}
    for name, sel in (("delta_mean_pos_adv", adv > 0), ("delta_mean_neg_adv", adv < 0)):
        if sel.any():
            stats[name] = delta[sel][valid[sel]].mean().item()
    return stats


def hint_contrast(model, tokenizer, rows, cfg, hint_ids):
    """Does the model read an answer hint? For each row, the log-likelihood of its reference
    solution under the correct-answer hint minus under a wrong-answer hint (wrong_hint).
    hint_ids(tokenizer, answer, cfg) -> token ids (cepo.hint_ids).
    Returns (mean difference per solution, fraction of rows where the correct hint wins)."""
    instruction = resolve_instruction(cfg)
    prompts = [prompt_ids(tokenizer, r["question"], instruction, r.get("example")) for r in rows]
    wrong = [wrong_hint(r["answer"]) for r in rows]
    diff = solution_logprob_gap(model, tokenizer, [r["solution"] for r in rows],
                                [p + hint_ids(tokenizer, r["answer"], cfg) for p, r in zip(prompts, rows)],
                                [p + hint_ids(tokenizer, w, cfg) for p, w in zip(prompts, wrong)], cfg)
    return diff.mean().item(), (diff > 0).float().mean().item()


def hint_check(model, tokenizer, eval_rows, cfg, hint_ids):
    """CEPO's preflight: hint_contrast on up to HINT_CHECK_ROWS held-out rows with a reference
    solution, printed, with a warning when the correct hint does not make the solutions more
    likely than a wrong one (then the teachers' Δ is noise, and CEPO re-weights at random)."""
    rows = [r for r in eval_rows if r.get("solution")][:HINT_CHECK_ROWS]
    if not rows:
        print("[cepo] hint check skipped: the held-out rows have no reference solutions")
        return {}
    nats, wins = hint_contrast(model, tokenizer, rows, cfg, hint_ids)
    print(f"[cepo] hint check on {len(rows)} held-out solutions: the correct-answer hint makes each {nats:+.2f} nats "
          f"more likely than a wrong one (wins on {wins:.0%})")
    if nats <= 0:
        print("warning: this model does not read CEPO's answer hints (the correct one does not make reference solutions "
              "more likely); the teachers' evidence will be noise. Try another --hint_template, or a model that reads it",
              file=sys.stderr)
    return {"hint_contrast_nats": nats, "hint_contrast_wins": wins}


def wrong_hint(answer):
    """hint_contrast's wrong answer: the right one plus 1, written as it is (an integer, a decimal,
    a fraction), or ' + 1' after any other answer (or a number too long to add 1 to exactly), so its
    value always differs."""
    for parse in (int, Decimal, Fraction):  # int first: exact at any length Python converts
        try:
            value = parse(answer)
        except (ValueError, ArithmeticError):
            continue
        if not isinstance(value, Decimal):
            return str(value + 1)
        digits = abs(value.adjusted()) + len(answer) + 2  # enough for value + 1 exactly: 1E+50 + 1, 1E-30 + 1
        if not value.is_finite() or digits > EXACT_DIGITS:
            break
        with localcontext() as exact:
            exact.prec = digits
            return str(value + 1)
    return answer + " + 1"


def contrast_by_role(model, tokenizer, rows, contexts_a, contexts_b, cfg):
    """On the words task, one scoring pass: the log-likelihood gap of each row's reference solution
    under contexts_a minus contexts_b (token-id lists, one per row), whole (n,) as
    solution_logprob_gap gives it, and its mean per token of each role (word_task.WORD_ROLES):
    where a context changes what the model predicts. (gaps, {role: nats per token})."""
    gap, ids, mask = solution_logprob_gap(model, tokenizer, [r["solution"] for r in rows], contexts_a, contexts_b, cfg,
                                          per_token=True)
    roles = token_roles(tokenizer, ids, mask)
    return (gap * mask).sum(1), {name: gap[roles == k].mean().item() for k, name in enumerate(WORD_ROLES) if (roles == k).any()}

def negative_contrast(model, tokenizer, rows, cfg, negative_prompt):
    """Does the model read GCPO's negative prompt? The log-likelihood of each row's reference
    solution under x minus under x- (negative_prompt(tokenizer, row, cfg) -> token ids),
    averaged: > 0 when x- makes it less likely, i.e. when the guidance GCPO contrasts guides."""
    instruction = resolve_instruction(cfg)
    return solution_logprob_gap(model, tokenizer, [r["solution"] for r in rows],
                                [prompt_ids(tokenizer, r["question"], instruction, r.get("example")) for r in rows],
                                [negative_prompt(tokenizer, r, cfg) for r in rows], cfg).mean().item()
