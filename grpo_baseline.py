"""GRPO, the baseline every credit-assignment method here is a diff against. Docs: docs/grpo.md.

One RL step, as grpo_step runs it; a method file replaces the seams (n), numbered in run order,
through its METHOD dict:

    (0) contexts          the contexts a response is scored under in place of its prompt (GCPO's x-,
                          CEPO's prompt + hint), checked against the model's context at the start
    (1) preflight         once, before step 1 (CEPO: does the model read its hints?)
    prompts               B per step, a pure function of (seed, step)          loop.job.step_prompts
    responses, rewards    G samples per prompt, rewarded 0/1                   sample
    (2) edit_rollouts     on each group as drawn (Gold: a reference joins an all-wrong group)
    A_i                   group-normalised rewards                             (0.1)
    log pi_old            here, or the update's own pass                       score_pi_old
    (3) credit -> Â       GRPO: A_i on every token (0.2); GCPO, CEPO vary it by token
    (4) loss_fn           PPO-clip (0.3)-(0.4); Gold: a sequence ratio; GCPO: + its entropy term
    (5) recredit          GCPO: Â again after each optimizer step, when there are several
    reads_pi_old(cfg)     whether the credit reads log pi_old, so it must be scored before the update

Config, rollout, GRPO math (pure tensor functions), update, the step. The job around the step
(run directory, resume, evaluations, checkpoints) is loop/job.py's; logging is diagnostics.py's,
the command line options.py's. With no --model / --dataset it trains the embedded default: an
arithmetic task and a tiny Llama warm-started from scratch.
"""
import functools
import json
import math
import signal
import sys
import time
from dataclasses import dataclass

import torch

from loop.data import DataOptions, finite_rewards
from loop.diagnostics import step_metrics
from loop.dynamic_sampling import resample_informative
from loop.embedded_task import TaskOptions, task_reward
from loop.job import run_job
from loop.language_model import completion_logprobs, generate, pad_batch
from loop.options import OUTPUT_DIR_HELP, check_options, opt, parse_config


# =============================================================================================
# 1. Config: TRL's GRPOConfig names where the concept is the same. What to train on (--model,
#    --dataset, ...) is data.py's DataOptions; the embedded task's options, TaskOptions.
# =============================================================================================
@dataclass
class GRPOConfig(TaskOptions, DataOptions):
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
    micro_batch_size: int = opt(64, "sequences per forward pass: changes memory, not the gradient")
    generation_batch_size: int = opt(256, "sequences per generate() call")
    gradient_checkpointing: bool = opt(False, "trade compute for memory on large models")
    dynamic_sampling: bool = opt(False, "DAPO's dynamic sampling: resample groups that are all right or all wrong (dynamic_sampling.py)")
    max_resample_rounds: int = opt(3, "with --dynamic_sampling: extra sampling rounds per step, at most")
    # --- schedule, evaluation, checkpoints ---
    max_steps: int = opt(60, "RL steps")
    eval_steps: int = opt(10, "greedy held-out evaluation every this many steps, and at 0 and the end")
    eval_size: int = opt(200, "held-out problems to evaluate on")
    save_steps: int = opt(20, "checkpoint every this many steps")
    output_dir: str = opt("runs/grpo", OUTPUT_DIR_HELP)
    overwrite_output_dir: bool = opt(False, "start afresh even if output_dir holds a run")
    resume: bool = opt(False, "continue the run in output_dir from its last checkpoint")
    seed: int = opt(0, "seed for sampling (and for the prompt order unless --data_seed is given)")
    data_seed: int = opt(None, "seed for the prompt order (TRL's data_seed); default: --seed")

    def __post_init__(self):
        check_options(self)  # one ValueError naming every bad option (and method_problems')

    def method_problems(self):  # a method's own checks: ['--flag=value: why', ...]
        return []


# =============================================================================================
# 2. Rollout: sample G responses per prompt, reward them, and score log pi_old.
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
    old_logp: torch.Tensor = None  # (N, L) log pi_old: score_pi_old, or the update's first pass
    entropy: torch.Tensor = None   # (N, L) the policy's entropy, from the same pass
    ref_logp: torch.Tensor = None  # (N, L) log pi_ref when beta > 0
    group_size: int = 1
    sampled: torch.Tensor = None   # (N,) bool: False where the policy did not sample (Gold's)
    scored_under: list = None      # (N,) {what: text or token ids} a credit scored each response under


def sample(model, tokenizer, rows, prompts, cfg, device, stats):
    """G responses per prompt and their rewards (rows, prompts repeated G times); answer checks
    that ran out of time are counted in stats."""
    G = cfg.num_generations
    rows, prompts = [r for r in rows for _ in range(G)], [p for p in prompts for _ in range(G)]
    completion_ids, mask, texts = generate(model, tokenizer, prompts, cfg, device)
    reward_of = task_reward(cfg)
    checked = [reward_of(t, r) for t, r in zip(texts, rows)]
    stats["verify_timeouts"] = stats.get("verify_timeouts", 0) + sum(timed_out for _, timed_out in checked)
    rewards = torch.tensor(finite_rewards([reward for reward, _ in checked]), device=device)
    return rows, prompts, completion_ids, mask, texts, rewards


def rollout(model, tokenizer, rows, prompts, cfg, device, ref_model, edit_rollouts=None, more_prompts=None):
    """Sample, reward and baseline one step's groups -> (Rollouts, seconds per phase, stats). Seam 2,
    edit_rollouts(rows, ids, mask, texts, rewards, tokenizer, cfg) -> (ids, mask, texts, rewards,
    sampled, stats), edits each group as drawn. more_prompts(round): --dynamic_sampling's."""
    G = cfg.num_generations
    t0 = time.perf_counter()
    stats = {}
    def sample_and_edit(rows, prompts):  # edited before dynamic sampling judges the group (Gold's must be)
        rows, prompts, ids, mask, texts, rewards = sample(model, tokenizer, rows, prompts, cfg, device, stats)
        sampled = torch.ones_like(rewards, dtype=torch.bool)
        if edit_rollouts is not None:
            ids, mask, texts, rewards, sampled, edited = edit_rollouts(rows, ids, mask, texts, rewards, tokenizer, cfg)
            stats.update({k: stats.get(k, 0) + v for k, v in edited.items()})  # summed over sampling rounds
        return rows, prompts, ids, mask, texts, rewards, sampled

    drawn = sample_and_edit(rows, prompts)
    if cfg.dynamic_sampling:  # DAPO: resample until enough groups are informative
        drawn = resample_informative(drawn, sample_and_edit, more_prompts, len(prompts), cfg, tokenizer.pad_token_id, stats)
    rows, prompts, completion_ids, mask, texts, rewards, sampled = drawn
    times = {"t_generate": time.perf_counter() - t0, "t_score": 0.0}
    advantages = group_advantages(rewards, G, scale=cfg.scale_rewards == "group")
    p_ids, p_mask, _, _ = pad_batch(prompts, [[]] * len(prompts), tokenizer.pad_token_id, device)
    batch = Rollouts(rows, prompts, p_ids, p_mask, completion_ids, mask, texts, rewards, advantages, group_size=G,
                     sampled=sampled)
    if ref_model is not None:  # log pi_ref, for the KL term: the frozen model's teacher-forced pass
        t = time.perf_counter()
        batch.ref_logp = completion_logprobs(ref_model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                             batch.completion_mask, cfg.temperature, cfg.micro_batch_size)[0]
        times["t_score"] += time.perf_counter() - t
    return batch, times, stats


def score_pi_old(model, batch, cfg, times=None):
    """log pi_old (N, L): the sampling policy's log-probs of its tokens, teacher-forced at the
    sampling temperature, no grad; and the entropy (N, L). Seconds go to times["t_score"]."""
    t = time.perf_counter()
    out = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask,
                              cfg.temperature, cfg.micro_batch_size, entropy=True)
    if times is not None:
        times["t_score"] += time.perf_counter() - t
    return out


# =============================================================================================
# 3. GRPO math: pure tensor functions (no model, no I/O).
# =============================================================================================
def group_advantages(rewards, group_size, eps=1e-6, scale=True):
    """(0.1) A_i = (R_i - mean_g R) / (std_g R + eps), std unbiased. rewards (N,), groups
    contiguous -> (N,). scale=False: Dr. GRPO. A constant group gives exactly 0, never NaN."""
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
    """PPO-clip with clip-higher, (0.3)-(0.4). All inputs (N, L); advantages per token.
    Aggregated by `agg` (see aggregate); padding is excluded with `where`, so NaN/inf there cannot
    leak in. Returns (loss, stats)."""
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
    """Reduce an (N, L) per-token loss: 'token-mean' over every valid token (DAPO), or
    'seq-mean-token-mean', each response's token mean averaged (the original GRPO). `normalizer`
    overrides the denominator, so that micro-batches sum to the mini-batch's loss exactly."""
    if agg == "token-mean":
        return per_token.sum() / (mask.sum() if normalizer is None else normalizer)
    if agg == "seq-mean-token-mean":
        per_seq = per_token.sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / (len(per_seq) if normalizer is None else normalizer)
    raise ValueError(f"unknown loss aggregation {agg!r}: use 'token-mean' or 'seq-mean-token-mean'")


def kl_k3(logp, ref_logp):
    """(0.5) k3 estimate of KL(pi_theta || pi_ref) per token, >= 0; unclamped, as TRL."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1  # (0.5)


def grpo_credit(batch, model, tokenizer, cfg, step):
    """Seam 3: rolled-out batch -> (per-token advantages (N, L), metrics). GRPO's is uniform."""
    return grpo_token_advantages(batch.advantages, batch.completion_mask), {}


def grpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer):
    """Seam 4: the surrogate loss on one micro-batch -> (loss, stats)."""
    return policy_loss(logp, old_logp, token_adv, mask, cfg.epsilon, cfg.epsilon_high, cfg.loss_type, normalizer)


# The seams each method file replaces. A credit that reads batch.old_logp says so with reads_pi_old.
METHOD = {"credit": grpo_credit, "loss_fn": grpo_loss}


# =============================================================================================
# 4. Update: PPO epochs over the rolled-out batch.
# =============================================================================================
def update(model, optimizer, batch, token_adv, cfg, loss_fn=grpo_loss, recredit=None):
    """num_iterations PPO epochs of num_mini_batches optimizer steps each; a mini-batch with a
    non-finite loss or gradient is skipped and counted. Seam 5, recredit(indices) -> (n, L), gives
    the credit under the current policy for every mini-batch after the first."""
    N = len(batch.rows)
    size = N // cfg.num_mini_batches
    # log pi_old: batch.old_logp when it was scored before the update. Else (one optimizer step, the
    # default) pi_old is the policy as it stands, and this update's own pass, detached, is log pi_old
    # (ratio 1): one pass fewer, as TRL.
    own_pass = batch.old_logp is None
    if own_pass and cfg.num_iterations * cfg.num_mini_batches > 1:  # after the first step the policy has moved
        raise ValueError("score log pi_old (score_pi_old) before an update of several optimizer steps")
    own_logp, own_entropy = [], []  # with own_pass: log pi_old and the entropy from this pass, for the metrics
    logs, skipped, first = [], 0, True
    for _ in range(cfg.num_iterations):
        order = torch.randperm(N) if cfg.num_mini_batches > 1 else torch.arange(N)
        for m in range(cfg.num_mini_batches):
            idx = order[m * size:(m + 1) * size].to(batch.completion_mask.device)
            adv = token_adv[idx] if first or recredit is None else recredit(idx)  # seam 5 after the first step
            first = False
            mask = batch.completion_mask[idx]
            normalizer = mask.sum() if cfg.loss_type == "token-mean" else len(idx)
            optimizer.zero_grad()
            finite, stats_sum = True, {}
            for s in range(0, size, cfg.micro_batch_size):
                mb = idx[s:s + cfg.micro_batch_size]
                logp, entropy = completion_logprobs(model, batch.prompt_ids[mb], batch.prompt_mask[mb], batch.completion_ids[mb],
                                                    batch.completion_mask[mb], cfg.temperature, cfg.micro_batch_size,
                                                    grad=True, entropy=own_pass)
                old_logp = logp.detach() if own_pass else batch.old_logp[mb]
                if own_pass:
                    own_logp.append(old_logp)
                    own_entropy.append(entropy)
                loss, stats = loss_fn(logp, old_logp, adv[s:s + cfg.micro_batch_size], batch.completion_mask[mb], cfg,
                                      normalizer)
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
    if own_pass:  # a skipped step left pi_old unscored (the policy has not moved): score it for the metrics
        batch.old_logp, batch.entropy = (torch.cat(own_logp), torch.cat(own_entropy)) if logs else score_pi_old(model, batch, cfg)
    out = {k: sum(l[k] for l in logs) / len(logs) for k in logs[0]} if logs else {}
    return {**out, "skipped_updates": skipped}


# =============================================================================================
# 5. One RL step, the seams in order; the job around it (run directory, resume, evaluation,
#    checkpoints, timing, skips) is loop/job.py's.
# =============================================================================================
def grpo_step(job, rows, prompts, more_prompts, step, cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None,
              recredit=None, reads_pi_old=lambda cfg: False):
    """One RL step on this step's prompts -> (metrics, batch, Â). job: the model, optimizer,
    reference model, tokenizer and device (loop.job.Job); more_prompts(round): dynamic sampling's.
    update() leaves log pi_old and the entropy in the batch, which step_metrics reads."""
    model, tokenizer = job.model, job.tokenizer
    batch, times, stats = rollout(model, tokenizer, rows, prompts, cfg, job.device, job.ref_model, edit_rollouts,  # seam 2
                                  more_prompts)
    several_steps = cfg.num_iterations * cfg.num_mini_batches > 1
    if reads_pi_old(cfg) or several_steps:  # log pi_old scored here; else the update's own pass gives it
        batch.old_logp, batch.entropy = score_pi_old(model, batch, cfg, times)
    t0 = time.perf_counter()
    token_adv, credit_stats = credit(batch, model, tokenizer, cfg, step)  # seam 3
    t1 = time.perf_counter()
    upd = update(model, job.optimizer, batch, token_adv, cfg, loss_fn,  # seams 4 and 5
                 recredit and (lambda idx: recredit(batch, idx, model, tokenizer, cfg)))
    t2 = time.perf_counter()
    metrics = {"step": step, **stats, **credit_stats, **upd, **times, "t_credit": t1 - t0, "t_update": t2 - t1,
               **step_metrics(batch, token_adv, model, tokenizer, cfg, job.device)}
    return metrics, batch, token_adv


def train(cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None, recredit=None, preflight=None,
          reads_pi_old=lambda cfg: False, contexts=None):
    """Run RL with the given seams (a method file's METHOD); returns the run's summary. Seam 0,
    contexts(tokenizer, rows, prompts, cfg) -> (name, one token-id list per row); seam 1,
    preflight(model, tokenizer, eval_rows, cfg) -> metrics for the step-0 record; both run by the job."""
    one_step = functools.partial(grpo_step, cfg=cfg, credit=credit, loss_fn=loss_fn, edit_rollouts=edit_rollouts,
                                 recredit=recredit, reads_pi_old=reads_pi_old)
    return run_job(cfg, one_step, preflight, contexts)


def main(config_cls=GRPOConfig, argv=None, **method):
    """CLI entry point; `method`: the seams a method file replaces (its METHOD)."""
    cfg = parse_config(config_cls, argv)
    previous = signal.signal(signal.SIGTERM, stop_as_ctrl_c)  # a scheduler's preemption, `kill`
    try:
        summary = train(cfg, **method)
    except ValueError as e:  # bad input: name the problem, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted; rerun with --resume to continue {cfg.output_dir} from its last checkpoint")
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, indent=1))


def stop_as_ctrl_c(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main(GRPOConfig, **METHOD)