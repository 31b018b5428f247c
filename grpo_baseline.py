"""GRPO, the baseline every credit-assignment method here is a diff against. Docs: docs/grpo.md.

A run, step by step; a method file replaces the seams (n), numbered in the order they first run, through its
METHOD dict. The job runs (0) and (1) once, before step 1; grpo_step runs the rest every step:

    (0) contexts          the token ids a method scores a response under instead of its prompt
                          (GCPO's negative prompt, CEPO's prompt + hint): the job checks they fit
    (1) preflight         CEPO: does the model read its hints?
    prompts               B per step, a pure function of (seed, step): loop/job.py's step_prompts
    responses, rewards    G samples per prompt, rewarded 0/1                   sample
    (2) edit_rollouts     each group as drawn (Gold: a reference joins an all-wrong group)
    A_i                   group-normalised rewards                             (0.1)
    log pi_old            scored here if reads_pi_old(cfg) (the credit reads it) or the update
                          takes several optimizer steps; else the update's own pass   score_pi_old
    (3) credit -> Â       GRPO: A_i on every token (0.2); GCPO, CEPO vary it by token
    (4) loss_fn           PPO-clip (0.3)-(0.4); Gold: a sequence ratio; GCPO: + its entropy term
    (5) recredit          GCPO: Â again for each optimizer step after the first

The job around the step (run directory, resume, evaluations, checkpoints, its options) is
loop/job.py's.
"""
import functools
from dataclasses import dataclass

import torch

from loop.data import DataOptions
from loop.diagnostics import clip_stats, step_metrics
from loop.dynamic_sampling import resample_informative
from loop.embedded_task import TaskOptions, verified_rewards
from loop.job import JobOptions, run_cli, run_job, step_if_finite
from loop.language_model import completion_logprobs, generate, pad_batch
from loop.options import check_options, opt
from loop.report import timed


# =============================================================================================
# 1. Config: TRL's GRPOConfig names where the concept is the same. The bases hold the job's
#    options (steps, evaluation, checkpoints, seeds), the embedded task's and the data's.
# =============================================================================================
@dataclass
class GRPOConfig(JobOptions, TaskOptions, DataOptions):
    # --- rollout ---
    prompts_per_step: int = opt(8, "prompts per RL step (B)")
    num_generations: int = opt(8, "responses per prompt, the group size G")
    max_completion_length: int = opt(64, "max new tokens per response")
    temperature: float = opt(1.0, "sampling temperature (log-probs use it too)")
    # --- GRPO loss ---
    learning_rate: float = opt(1e-4, "AdamW learning rate (the embedded model collapses at >= 3e-4)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    beta: float = opt(0.0, "KL coefficient (k3, to the initial model, frozen); 0: no reference model")
    epsilon: float = opt(0.2, "lower clip range eps_low")
    epsilon_high: float = opt(0.28, "upper clip range eps_high (DAPO's clip-higher; = epsilon: classic PPO)")
    scale_rewards: str = opt("group", "'group': divide by the group std (GRPO); 'none': Dr. GRPO", choices=("group", "none"))
    loss_type: str = opt("token-mean", "'token-mean' (DAPO, TRL's 'dapo') or 'seq-mean-token-mean' (the original GRPO, TRL's 'grpo')",
                         choices=("token-mean", "seq-mean-token-mean"))
    num_iterations: int = opt(1, "PPO epochs over each rolled-out batch (TRL's num_iterations, mu)")
    num_mini_batches: int = opt(1, "optimizer steps per PPO epoch; must divide B * num_generations")
    dynamic_sampling: bool = opt(False, "DAPO's dynamic sampling: resample groups that are all right or all wrong")
    max_resample_rounds: int = opt(3, "with --dynamic_sampling: extra sampling rounds per step, at most")

    def __post_init__(self):
        check_options(self)  # one ValueError naming every bad option

    def method_problems(self):  # a method's own checks: ['--flag=value: why', ...]
        return []


# =============================================================================================
# 2. Rollout: sample G responses per prompt, reward them, score log pi_old.
# =============================================================================================
@dataclass
class Rollouts:
    """One RL step's batch: N = B * G responses, each group's G rows contiguous."""
    rows: list              # (N,) task rows, one per response
    prompts: list           # (N,) prompt token ids, unpadded
    prompt_ids: torch.Tensor       # (N, P) left-padded
    prompt_mask: torch.Tensor      # (N, P)
    completion_ids: torch.Tensor   # (N, L)
    completion_mask: torch.Tensor  # (N, L) float, includes the EOS
    texts: list                    # (N,) decoded responses
    rewards: torch.Tensor          # (N,)
    advantages: torch.Tensor       # (N,) A_i, eq. (0.1)
    old_logp: torch.Tensor = None  # (N, L) log pi_old: score_pi_old's, or the update's own pass
    entropy: torch.Tensor = None   # (N, L) from the same pass
    ref_logp: torch.Tensor = None  # (N, L) log pi_ref when beta > 0
    group_size: int = 1
    sampled: torch.Tensor = None   # (N,) bool: False where the policy did not sample (Gold's)
    scored_under: list = None      # (N,) what a credit scored each response under, for the report


def sample(model, tokenizer, rows, prompts, cfg, device, stats, edit_rollouts=None):
    """G responses per prompt, rewarded -> (rows, prompts, ids, mask, texts, rewards, sampled), rows
    and prompts repeated G times. Seam 2 edits each group as drawn (Gold)."""
    G = cfg.num_generations
    rows, prompts = [r for r in rows for _ in range(G)], [p for p in prompts for _ in range(G)]
    ids, mask, texts = generate(model, tokenizer, prompts, cfg, device)
    rewards = torch.tensor(verified_rewards(texts, rows, cfg, stats), device=device)
    sampled = torch.ones_like(rewards, dtype=torch.bool)
    if edit_rollouts is not None:
        ids, mask, texts, rewards, sampled, counts = edit_rollouts(rows, ids, mask, texts, rewards, tokenizer, cfg)
        stats.update({k: stats.get(k, 0) + v for k, v in counts.items()})  # summed over sampling rounds
    return rows, prompts, ids, mask, texts, rewards, sampled


def rollout(model, tokenizer, rows, prompts, cfg, device, ref_model, edit_rollouts=None, more_prompts=None):
    """Sample, reward and baseline one step's groups -> (Rollouts, seconds per phase, stats).
    more_prompts(round): --dynamic_sampling's."""
    stats, times = {}, {"t_generate": 0.0, "t_score": 0.0}
    draw = functools.partial(sample, model, tokenizer, cfg=cfg, device=device, stats=stats, edit_rollouts=edit_rollouts)
    with timed(times, "t_generate"):
        drawn = draw(rows, prompts)
        if cfg.dynamic_sampling:  # DAPO: resample until enough groups are informative
            drawn = resample_informative(drawn, draw, more_prompts, len(prompts), cfg, tokenizer.pad_token_id, stats)
    rows, prompts, completion_ids, mask, texts, rewards, sampled = drawn
    advantages = group_advantages(rewards, cfg.num_generations, scale=cfg.scale_rewards == "group")  # A_i, (0.1)
    p_ids, p_mask, _, _ = pad_batch(prompts, [[]] * len(prompts), tokenizer.pad_token_id, device)
    batch = Rollouts(rows, prompts, p_ids, p_mask, completion_ids, mask, texts, rewards, advantages,
                     group_size=cfg.num_generations, sampled=sampled)
    if ref_model is not None:  # log pi_ref, for the KL term
        with timed(times, "t_score"):
            batch.ref_logp = completion_logprobs(ref_model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                                 batch.completion_mask, cfg.temperature, cfg.micro_batch_size)[0]
    return batch, times, stats


def score_pi_old(model, batch, cfg, times=None):
    """log pi_old (N, L), teacher-forced at the sampling temperature without grad, and the entropy."""
    with timed(times, "t_score"):
        return completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                   batch.completion_mask, cfg.temperature, cfg.micro_batch_size, entropy=True)


# =============================================================================================
# 3. GRPO math: pure tensor functions.
# =============================================================================================
def group_advantages(rewards, group_size, eps=1e-6, scale=True):
    """(0.1) A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased. rewards (N,), groups
    contiguous -> (N,). scale=False: Dr. GRPO."""
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
    """PPO-clip with clip-higher, (0.3)-(0.4); inputs (N, L), advantages per token -> (loss, stats:
    clip_frac, the share of valid tokens where the clip is active, and the ratio's mean and max).
    Padding is excluded with `where`, so NaN or inf there cannot leak in."""
    valid = mask > 0
    log_ratio = torch.where(valid, logp - old_logp, 0.0)  # TRL does not clamp the log-ratio; neither do we
    ratio = torch.exp(log_ratio)  # (0.3)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    per_token = torch.where(valid, -torch.minimum(unclipped, clipped), 0.0)  # (0.4)
    return aggregate(per_token, mask, agg, normalizer), clip_stats(ratio, valid, clipped < unclipped)


def aggregate(per_token, mask, agg, normalizer=None):
    """(N, L) per-token loss -> scalar: 'token-mean' over every valid token (DAPO), or each
    response's token mean averaged (the original GRPO). `normalizer` replaces the denominator, so
    that micro-batches sum to the mini-batch's loss exactly."""
    if agg == "token-mean":
        return per_token.sum() / (mask.sum() if normalizer is None else normalizer)
    if agg == "seq-mean-token-mean":
        per_seq = per_token.sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / (len(per_seq) if normalizer is None else normalizer)
    raise ValueError(f"unknown loss aggregation {agg!r}: use 'token-mean' or 'seq-mean-token-mean'")


def kl_k3(logp, ref_logp):
    """(0.5) k3 estimate of KL(pi_theta || pi_ref) per token; unclamped, as TRL."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1  # (0.5)


def grpo_credit(batch, model, tokenizer, cfg, step):
    """Seam 3: batch -> (Â (N, L), metrics). GRPO's is uniform."""
    return grpo_token_advantages(batch.advantages, batch.completion_mask), {}


def grpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer):
    """Seam 4: the loss on one micro-batch -> (loss, stats)."""
    return policy_loss(logp, old_logp, token_adv, mask, cfg.epsilon, cfg.epsilon_high, cfg.loss_type, normalizer)


# The seams a method file replaces; a credit that reads batch.old_logp also puts reads_pi_old here.
METHOD = {"credit": grpo_credit, "loss_fn": grpo_loss}


# =============================================================================================
# 4. Update: PPO epochs over the rolled-out batch.
# =============================================================================================
def several_optimizer_steps(cfg):
    """More than one optimizer step per update: log pi_old must be scored before it."""
    return cfg.num_iterations * cfg.num_mini_batches > 1


def update(model, optimizer, batch, token_adv, cfg, loss_fn=grpo_loss, recredit=None):
    """num_iterations PPO epochs of num_mini_batches optimizer steps; a mini-batch with a non-finite
    loss or gradient takes no step (its gradient is zeroed) and is counted. recredit(indices) ->
    (n, L), seam 5 bound to this batch: the credit under the current policy, for every optimizer
    step after the first."""
    N = len(batch.rows)
    size = N // cfg.num_mini_batches
    # Unscored: one optimizer step, so pi_old is the policy as it stands and this pass, detached, is log pi_old.
    own_pass = batch.old_logp is None
    if own_pass and several_optimizer_steps(cfg):  # the policy moves after the first step
        raise ValueError("score log pi_old (score_pi_old) before an update of several optimizer steps")
    own_logp, own_entropy = [], []  # with own_pass: kept for the metrics
    logs, skipped = [], 0
    for epoch in range(cfg.num_iterations):
        order = torch.randperm(N) if cfg.num_mini_batches > 1 else torch.arange(N)
        for m in range(cfg.num_mini_batches):
            idx = order[m * size:(m + 1) * size].to(batch.completion_mask.device)
            adv = recredit(idx) if recredit and (epoch, m) != (0, 0) else token_adv[idx]  # seam 5 after the first step
            normalizer = batch.completion_mask[idx].sum() if cfg.loss_type == "token-mean" else len(idx)
            optimizer.zero_grad()
            stats_sum = {}
            for s in range(0, size, cfg.micro_batch_size):
                mb = idx[s:s + cfg.micro_batch_size]
                mb_mask = batch.completion_mask[mb]
                logp, entropy = completion_logprobs(model, batch.prompt_ids[mb], batch.prompt_mask[mb], batch.completion_ids[mb],
                                                    mb_mask, cfg.temperature, cfg.micro_batch_size, grad=True, entropy=own_pass)
                old_logp = logp.detach() if own_pass else batch.old_logp[mb]
                if own_pass:
                    own_logp.append(old_logp)
                    own_entropy.append(entropy)
                loss, stats = loss_fn(logp, old_logp, adv[s:s + cfg.micro_batch_size], mb_mask, cfg, normalizer)
                if cfg.beta > 0:
                    kl = torch.where(mb_mask > 0, kl_k3(logp, batch.ref_logp[mb]), 0.0)
                    loss = loss + cfg.beta * aggregate(kl, mb_mask, cfg.loss_type, normalizer)
                    stats["kl"] = (kl.sum() / mb_mask.sum()).item()
                if not torch.isfinite(loss):
                    break
                loss.backward()
                w = len(mb) / size
                stats["loss"] = loss.item() / w  # report the mini-batch-scale loss
                for k, v in stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + w * v
            grad_norm = step_if_finite(model, optimizer, cfg.max_grad_norm, torch.isfinite(loss))  # a break leaves loss non-finite
            if grad_norm is None:
                skipped += 1
            else:
                logs.append({**stats_sum, "grad_norm": grad_norm})
    if own_pass:  # a skipped step left pi_old unscored (the policy has not moved): score it for the metrics
        batch.old_logp, batch.entropy = (torch.cat(own_logp), torch.cat(own_entropy)) if logs else score_pi_old(model, batch, cfg)
    out = {k: sum(l[k] for l in logs) / len(logs) for k in logs[0]} if logs else {}
    return {**out, "skipped_updates": skipped}


# =============================================================================================
# 5. One RL step, the seams in order.
# =============================================================================================
def grpo_step(job, rows, prompts, more_prompts, step, cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None,
              recredit=None, reads_pi_old=lambda cfg: False):
    """One RL step on this step's prompts -> (metrics, batch, Â). job: model, optimizer, reference
    model, tokenizer, device (loop.job.Job); more_prompts(round): dynamic sampling's."""
    model, tokenizer = job.model, job.tokenizer
    batch, times, stats = rollout(model, tokenizer, rows, prompts, cfg, job.device, job.ref_model, edit_rollouts,
                                  more_prompts)  # responses, rewards (seam 2 edits them), A_i
    if reads_pi_old(cfg) or several_optimizer_steps(cfg):
        batch.old_logp, batch.entropy = score_pi_old(model, batch, cfg, times)
    with timed(times, "t_credit"):
        token_adv, credit_stats = credit(batch, model, tokenizer, cfg, step)  # seam 3
    with timed(times, "t_update"):
        upd = update(model, job.optimizer, batch, token_adv, cfg, loss_fn,  # seams 4 and 5
                     recredit and (lambda idx: recredit(batch, idx, model, tokenizer, cfg)))
    metrics = {"step": step, **stats, **credit_stats, **upd, **times,
               **step_metrics(batch, token_adv, model, tokenizer, cfg, job.device)}
    return metrics, batch, token_adv


def train(cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None, recredit=None, preflight=None,
          reads_pi_old=lambda cfg: False, contexts=None):
    """Run RL with a method file's seams (its METHOD) -> the run's summary. The job runs seam 0,
    contexts(tokenizer, rows, prompts, cfg) -> (name, token ids per row), and seam 1,
    preflight(model, tokenizer, eval_rows, cfg) -> metrics for the step-0 record."""
    one_step = functools.partial(grpo_step, cfg=cfg, credit=credit, loss_fn=loss_fn, edit_rollouts=edit_rollouts,
                                 recredit=recredit, reads_pi_old=reads_pi_old)
    return run_job(cfg, one_step, preflight, contexts)


def main(config_cls=GRPOConfig, argv=None, **method):
    """The command line, with a method file's METHOD."""
    run_cli(config_cls, train, argv, **method)


if __name__ == "__main__":
    main(GRPOConfig, **METHOD)