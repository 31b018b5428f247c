"""GRPO, the baseline every credit-assignment method in this repository is a diff against.

One RL step, with the seams (marked *) that gcpo.py, cepo.py and gold.py replace (and a
* preflight check before step 1: CEPO asks whether the model reads its hints):

    rows, prompts   = this step's B prompts                     (step_prompts)
    responses       = G samples per prompt, rewarded 0/1        (sample)
    * edit_rollouts(group)     -> Gold swaps in a reference solution
    A_i             = group-normalised rewards                  (0.1) group_advantages
    * credit(batch)            -> per-token advantages Â (N, L); GRPO: A_i on every token (0.2)
    * loss_fn(logp, Â, ...)    -> PPO-clip on the ratio (0.3)-(0.4); update() takes the steps
                                  (GCPO: * recredit recomputes Â after each optimizer step)

Reads top to bottom: config -> rollout -> GRPO math (pure tensor functions) -> update -> train
loop -> main. docs/grpo.md has the equations (numbered as in the comments), every logged metric
and the implementation details; the README says which module holds the rest.

Run `python grpo_baseline.py --help` for every option. With no --model / --dataset it trains
on the embedded default: a synthetic arithmetic task and a tiny Llama warm-started from scratch.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from checkpoint import open_run, restore, save_checkpoint
from data import answer_reward, encode_prompts, evaluate, load_rows, resolve_instruction
from embedded_task import CONFUSABLE_SHARE, chain_reward, credit_ground_truth, ground_truth, make_arithmetic_task, warm_start
from language_model import check_context, completion_logprobs, generate, load_policy, pad_batch, stop_ids, unfinished
from report import credit_examples, history_last, peak_memory_mb, reset_peak_memory, write_run_report


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
    trust_remote_code: bool = opt(False, "allow a model repo to run its own code")
    max_prompt_length: int = opt(512, "prompts longer than this (in tokens) are skipped, with a count")
    # --- rollout ---
    prompts_per_step: int = opt(8, "distinct prompts per RL step (B); a step has B * num_generations responses")
    num_generations: int = opt(8, "responses per prompt, the group size G")
    max_completion_length: int = opt(64, "max new tokens per response")
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
    max_steps: int = opt(60, "RL steps")
    eval_steps: int = opt(10, "greedy held-out evaluation every this many steps (and at 0 and the end)")
    eval_size: int = opt(200, "held-out problems to evaluate on")
    save_steps: int = opt(20, "checkpoint every this many steps")
    output_dir: str = opt("runs/grpo", OUTPUT_DIR_HELP)
    overwrite_output_dir: bool = opt(False, "start afresh even if output_dir holds a run")
    resume: bool = opt(False, "continue the run in output_dir from its last checkpoint")
    seed: int = opt(0, "seed for sampling (and for the prompt order unless --data_seed is given)")
    data_seed: int = opt(None, "seed for the prompt order (TRL's data_seed); default: --seed")
    # --- the embedded default ---
    cache_dir: str = opt("cache", "where the embedded warm start is cached, keyed by its config")
    task: str = opt("chain", "embedded task: 'chain' (free tags, 70% confusable facts: the benchmark's) or 'sum' (easier)",
                    choices=("chain", "sum"))
    task_operands: int = opt(4, "embedded task: numbers to add per problem")
    task_max_operand: int = opt(9, "embedded task: operands are drawn from 0..this")
    warm_start_steps: int = opt(500, "embedded task: supervised steps of the warm start")
    warm_start_seed: int = opt(0, "embedded task: seed of the warm start (each seed is an independent draw, cached)")

    # options that may differ when a run is resumed (everything else must match the checkpoint)
    RESUMABLE = ("resume", "max_steps", "eval_steps", "save_steps", "overwrite_output_dir", "output_dir")

    def __post_init__(self):
        bad = []
        def need(ok, flag, why):
            if not ok:
                bad.append(f"--{flag}={getattr(self, flag)!r}: {why}")
        need(self.num_generations >= 2, "num_generations", "a group needs at least 2 responses to have a baseline")
        need(math.isfinite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")
        need(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        need(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        need(self.epsilon_high > 0, "epsilon_high", "must be > 0")
        need(self.num_mini_batches >= 1 and (self.prompts_per_step * self.num_generations) % self.num_mini_batches == 0,
             "num_mini_batches", f"must divide prompts_per_step * num_generations = {self.prompts_per_step * self.num_generations}")
        for flag in ("prompts_per_step", "max_completion_length", "max_prompt_length", "num_iterations", "micro_batch_size",
                     "generation_batch_size", "max_steps", "eval_steps", "eval_size", "save_steps", "task_operands", "task_max_operand"):
            need(getattr(self, flag) >= 1, flag, "must be >= 1")
        for flag in ("weight_decay", "beta", "warm_start_steps", "max_resample_rounds", "warm_start_seed"):
            need(getattr(self, flag) >= 0, flag, "must be >= 0")
        for flag in ("seed", "warm_start_seed", "data_seed"):
            need(getattr(self, flag) is None or abs(getattr(self, flag)) < 2**31, flag, "must be between -2**31 and 2**31")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):  # inf or nan in any option makes every update a NaN, i.e. a no-op
                need(math.isfinite(value), f.name, "must be a finite number")
            if "choices" in f.metadata:
                need(value in f.metadata["choices"], f.name, f"must be one of {f.metadata['choices']}")
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
        kw = {"default": f.default, "help": f.metadata["help"].replace("%", "%%")}  # argparse %-formats help
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kw)
    args = parser.parse_args(negative_values_attached(sys.argv[1:] if argv is None else argv))
    try:
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))


def negative_values_attached(argv):
    """argparse reads '-1e-4' after a flag as another flag (its negative-number test has no
    exponent): write such a value as '--flag=-1e-4'."""
    out = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-") and is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# =============================================================================================
# 2. Rollout: sample G responses per prompt, reward them, teacher-force log pi_old.
# =============================================================================================
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
    score: object                  # () -> (log pi_old, entropy): the teacher-forced pass, run by pi_old()
    old_logp: torch.Tensor = None  # (N, L) log pi_old, teacher-forced with the trainer's code path; see pi_old
    ref_logp: torch.Tensor = None  # (N, L) log pi_ref when beta > 0
    group_size: int = 1
    sampled: torch.Tensor = None   # (N,) bool: False for responses the policy did not sample (gold's)
    entropy: torch.Tensor = None   # (N, L) the policy's entropy at each response position
    notes: list = None             # (N,) what the credit scored each response under, for the picture

    def pi_old(self):
        """(N, L) log pi_old, scored on first use. At one optimizer step per rollout nothing may
        ask before the update, which then takes it from its own forward pass, detached (as TRL)."""
        if self.old_logp is None:
            self.old_logp, self.entropy = self.score()
        return self.old_logp


def sample(model, tokenizer, rows, prompts, cfg, device, stats):
    """G responses for each of the given prompts, with their rewards; rows and prompts come back
    repeated G times, groups contiguous. Answer checks that ran out of time are counted in stats."""
    G = cfg.num_generations
    rows, prompts = [r for r in rows for _ in range(G)], [p for p in prompts for _ in range(G)]
    completion_ids, mask, texts = generate(model, tokenizer, prompts, cfg, device)
    reward_of = task_reward(cfg)
    checked = [reward_of(t, r) for t, r in zip(texts, rows)]
    stats["verify_timeouts"] = stats.get("verify_timeouts", 0) + sum(timed_out for _, timed_out in checked)
    rewards = torch.tensor([reward for reward, _ in checked], device=device)
    return rows, prompts, completion_ids, mask, texts, rewards


def informative_groups(rewards, G):
    """(N,) rewards -> (N/G,) bool: groups whose accuracy is strictly between 0.01 and 0.99 (DAPO)."""
    accuracy = rewards.view(-1, G).mean(1)
    return (accuracy > 0.01) & (accuracy < 0.99)


def keep_informative_groups(pool, num_groups, G, pad_id):
    """Dynamic sampling (DAPO): from several drawn (rows, prompts, ids, mask, texts, rewards,
    sampled) tuples, the first num_groups groups whose mean reward is strictly between 0.01 and
    0.99, topped up with the others if too few are."""
    L = max(p[2].shape[1] for p in pool)
    rows, prompts, texts = (sum((p[k] for p in pool), []) for k in (0, 1, 4))
    ids = torch.cat([torch.nn.functional.pad(p[2], (0, L - p[2].shape[1]), value=pad_id) for p in pool])
    mask = torch.cat([torch.nn.functional.pad(p[3], (0, L - p[3].shape[1])) for p in pool])
    rewards, sampled = (torch.cat([p[k] for p in pool]) for k in (5, 6))
    informative = informative_groups(rewards, G).tolist()
    order = [g for g in range(len(informative)) if informative[g]] + [g for g in range(len(informative)) if not informative[g]]
    keep = [g * G + k for g in order[:num_groups] for k in range(G)]
    width = int(mask[keep].sum(1).max())  # drop columns only the dropped groups used
    return ([rows[i] for i in keep], [prompts[i] for i in keep], ids[keep, :width], mask[keep, :width],
            [texts[i] for i in keep], rewards[keep], sampled[keep]), {
                "informative_groups": sum(informative[g] for g in order[:num_groups]),
                "reward_all_rounds": rewards[sampled].mean().item()}


def rollout(model, tokenizer, rows, prompts, cfg, device, ref_model, edit_rollouts=None, more_prompts=None):
    """Sample, reward and baseline one step's groups, then teacher-force log pi_old.
    Returns (Rollouts, seconds per phase, stats).

    With --dynamic_sampling, more_prompts(round) -> (rows, prompts) supplies further prompts until
    enough groups are informative (keep_informative_groups).
    Seam 3, `edit_rollouts(rows, completion_ids, mask, texts, rewards, tokenizer, cfg) ->
    (completion_ids, mask, texts, rewards, sampled, stats)` may change each group as it is drawn,
    before the dynamic-sampling filter and the advantages (gold.py swaps in reference solutions)."""
    G = cfg.num_generations
    t0 = time.perf_counter()
    stats = {}
    def draw(rows, prompts):  # the method edits each group before dynamic sampling judges it (Gold's must)
        rows, prompts, ids, mask, texts, rewards = sample(model, tokenizer, rows, prompts, cfg, device, stats)
        sampled = torch.ones_like(rewards, dtype=torch.bool)
        if edit_rollouts is not None:
            ids, mask, texts, rewards, sampled, edited = edit_rollouts(rows, ids, mask, texts, rewards, tokenizer, cfg)
            stats.update({k: stats.get(k, 0) + v for k, v in edited.items()})  # summed over sampling rounds
        return rows, prompts, ids, mask, texts, rewards, sampled

    pool = [draw(rows, prompts)]
    if cfg.dynamic_sampling:
        while sum(int(informative_groups(p[5], G).sum()) for p in pool) < len(prompts) and len(pool) <= cfg.max_resample_rounds:
            pool.append(draw(*more_prompts(len(pool))))
        kept, kept_stats = keep_informative_groups(pool, len(prompts), G, tokenizer.pad_token_id)
        stats.update(kept_stats)
        stats["sampling_rounds"] = len(pool)
        pool = [kept]
    rows, prompts, completion_ids, mask, texts, rewards, sampled = pool[0]
    times = {"t_generate": time.perf_counter() - t0, "t_score": 0.0}
    advantages = group_advantages(rewards, G, scale=cfg.scale_rewards == "group")
    p_ids, p_mask, _, _ = pad_batch(prompts, [[]] * len(prompts), tokenizer.pad_token_id, device)

    def score(policy=model, entropy=True):  # timed as the score phase, wherever it is first asked for
        t = time.perf_counter()
        out = completion_logprobs(policy, p_ids, p_mask, completion_ids, mask, cfg.temperature, cfg.micro_batch_size,
                                  entropy=entropy)
        times["t_score"] += time.perf_counter() - t
        return out
    batch = Rollouts(rows, prompts, p_ids, p_mask, completion_ids, mask, texts, rewards, advantages, score,
                     ref_logp=score(ref_model, False)[0] if ref_model is not None else None, group_size=G, sampled=sampled)
    if cfg.num_iterations * cfg.num_mini_batches > 1:  # the ratio needs pi_old before the first step moves pi
        batch.pi_old()
    own = sampled.nonzero().squeeze(1).tolist()  # metrics describe the policy's own samples only
    stats = {**stats, "reward": rewards[sampled].mean().item(), "response_length": mask[sampled].sum(1).mean().item(),
             "sampled_tokens": int(mask[sampled].sum()),
             "empty_responses": sum(not texts[i].strip() for i in own),
             "truncated": unfinished(completion_ids, mask, stop_ids(model))[sampled].sum().item()}
    return batch, times, stats


# =============================================================================================
# 3. GRPO math: pure tensor functions (no model, no I/O).
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
# 4. Update and training loop.
# =============================================================================================
def update(model, optimizer, batch, token_adv, cfg, loss_fn=grpo_loss, recredit=None):
    """num_iterations PPO epochs of num_mini_batches optimizer steps each. A mini-batch whose loss
    or gradient is not finite is skipped (and counted), never applied. Seam 4, recredit(indices)
    -> their (n, L) token advantages, recomputes the credit under the current policy for every
    mini-batch after the first optimizer step (gcpo.py, as its reference); else token_adv holds."""
    N = len(batch.rows)
    size = N // cfg.num_mini_batches
    logs, skipped, fresh = [], 0, batch.old_logp is None  # fresh: pi_old is the policy as it stands (one step)
    scored = ([], [])  # fresh: log pi_old and entropy from this pass, detached
    for _ in range(cfg.num_iterations):
        order = torch.randperm(N) if cfg.num_mini_batches > 1 else torch.arange(N)
        for m in range(cfg.num_mini_batches):
            idx = order[m * size:(m + 1) * size].to(batch.completion_mask.device)
            adv = recredit(idx) if recredit is not None and len(logs) + skipped else token_adv[idx]
            mask = batch.completion_mask[idx]
            normalizer = mask.sum() if cfg.loss_type == "token-mean" else len(idx)
            optimizer.zero_grad()
            finite, stats_sum = True, {}
            for s in range(0, size, cfg.micro_batch_size):
                mb = idx[s:s + cfg.micro_batch_size]
                logp, entropy = completion_logprobs(model, batch.prompt_ids[mb], batch.prompt_mask[mb], batch.completion_ids[mb],
                                                    batch.completion_mask[mb], cfg.temperature, cfg.micro_batch_size,
                                                    grad=True, entropy=fresh)
                if fresh:
                    scored[0].append(logp.detach())
                    scored[1].append(entropy)
                loss, stats = loss_fn(logp, scored[0][-1] if fresh else batch.old_logp[mb], adv[s:s + cfg.micro_batch_size],
                                      batch.completion_mask[mb], cfg, normalizer)
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
    if fresh and logs:  # every micro-batch ran, in order
        batch.old_logp, batch.entropy = (torch.cat(t) for t in scored)
    out = {k: sum(l[k] for l in logs) / len(logs) for k in logs[0]} if logs else {}
    return {**out, "skipped_updates": skipped}


def step_prompts(step, batch_size, n, seed):
    """Indices of the prompts for RL step `step` (1-based): epochs of seeded permutations, a pure
    function of the step, so a resumed run sees the same prompts."""
    out = []
    for k in range((step - 1) * batch_size, step * batch_size):
        epoch, pos = divmod(k, n)
        out.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))[pos].item())
    return out


def load_task(cfg):
    """(train rows, eval rows): --dataset's, or the embedded arithmetic task's when none is given."""
    return load_rows(cfg, None if cfg.dataset else make_arithmetic_task(cfg))


def task_reward(cfg):
    """reward(response, row) -> (0/1, timed_out): a dataset's final answer, or the embedded task's
    whole worked chain (a right answer reached through a wrong step earns 0 there)."""
    return answer_reward if cfg.dataset else chain_reward


def train(cfg, credit=grpo_credit, loss_fn=grpo_loss, edit_rollouts=None, recredit=None, preflight=None):
    """Run RL with the given method (the seams above); returns the run's summary dict. Seam 5,
    preflight(model, tokenizer, eval_rows, cfg) -> metrics for the step-0 record (cepo.py)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with open_run(cfg) as run:  # the directory's lock; with --resume the checkpoint, checked, and the history up to it
        return train_run(run, cfg, device, credit, loss_fn, edit_rollouts, recredit, preflight)


def train_run(run, cfg, device, credit, loss_fn, edit_rollouts, recredit, preflight):
    """train's body, in a run directory open_run has locked and prepared."""
    train_rows, eval_rows = load_task(cfg)
    if cfg.dataset and not cfg.model:
        raise ValueError(f"--dataset {cfg.dataset} needs --model: the embedded model knows only the embedded task")
    model_path = cfg.model or warm_start(cfg, train_rows, eval_rows, device)
    model, tokenizer = load_policy(model_path, cfg, device)
    instruction = resolve_instruction(cfg)
    train_rows, prompts = encode_prompts(tokenizer, train_rows, instruction, cfg.max_prompt_length)
    eval_rows, eval_prompts = encode_prompts(tokenizer, eval_rows, instruction, cfg.max_prompt_length)
    check_context(model.config, prompts + eval_prompts, cfg.max_completion_length)
    ref_model = load_policy(model_path, cfg, device)[0].requires_grad_(False) if cfg.beta > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    reset_peak_memory(device)
    start, history = run.start, run.history
    if run.state is not None:
        restore(run.state, model, optimizer)
        run.state = None  # (memory-mapped from the file the next checkpoint replaces)
    log = open(run.metrics_path, "a")  # open_run left the history up to the checkpoint there, whole

    def record(metrics):
        history.append(metrics)
        log.write(json.dumps(metrics) + "\n")
        log.flush()

    stop_tokens = tokenizer.convert_ids_to_tokens(stop_ids(model))
    print(f"[model] responses end at any of {stop_tokens}")
    if start == 0:
        checks = preflight(model, tokenizer, eval_rows, cfg) if preflight else {}
        record({"step": 0, "stop_tokens": stop_tokens, **checks,
                "eval_acc": evaluate(model, tokenizer, eval_rows, cfg, device, instruction, task_reward(cfg))})
    bar = tqdm(range(start + 1, cfg.max_steps + 1), desc=os.path.basename(cfg.output_dir), initial=start,
               total=cfg.max_steps, file=sys.stdout)
    for step in bar:
        def draw(round):  # round 0: this step's prompts; later rounds: fresh ones, for dynamic sampling
            data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
            idx = step_prompts(step, cfg.prompts_per_step, len(train_rows), data_seed + 1000003 * round)
            return [train_rows[i] for i in idx], [prompts[i] for i in idx]

        batch, times, stats = rollout(model, tokenizer, *draw(0), cfg, device, ref_model, edit_rollouts, draw)
        t0, scoring = time.perf_counter(), times["t_score"]
        token_adv, credit_stats = credit(batch, model, tokenizer, cfg, step)
        t1, scoring = time.perf_counter(), times["t_score"] - scoring  # a credit that asked for pi_old: score phase
        upd = update(model, optimizer, batch, token_adv, cfg, loss_fn,
                     recredit and (lambda idx: recredit(batch, idx, model, tokenizer, cfg)))
        t2 = time.perf_counter()
        batch.pi_old()  # a no-op, unless the update skipped its step (then the policy has not moved)
        valid, own = batch.completion_mask > 0, batch.sampled
        stats["entropy"] = ((batch.entropy * batch.completion_mask)[own].sum() / batch.completion_mask[own].sum()).item()
        metrics = {"step": step, **stats,
                   "adv_abs_mean": batch.advantages.abs().mean().item(),
                   "token_adv_abs_mean": token_adv[valid].abs().mean().item(),
                   "zero_adv_groups": (batch.advantages.view(-1, batch.group_size).abs().sum(1) == 0).sum().item(),
                   **credit_stats, **upd, **times, "t_credit": t1 - t0 - scoring, "t_update": t2 - t1,
                   "peak_mem_mb": peak_memory_mb(device)}
        if not (cfg.model or cfg.dataset):  # the embedded task knows which tokens decide the reward
            labels = ground_truth(batch.completion_ids, batch.completion_mask, batch.rows, tokenizer, CONFUSABLE_SHARE[cfg.task])
            metrics.update(credit_ground_truth(labels, batch.advantages, token_adv, batch.completion_mask, batch.entropy))
        if upd["skipped_updates"]:
            print(f"[train] step {step}: skipped {upd['skipped_updates']} update(s) with a non-finite loss or gradient",
                  file=sys.stderr)
        if step % cfg.eval_steps == 0 or step == cfg.max_steps:
            metrics["eval_acc"] = evaluate(model, tokenizer, eval_rows, cfg, device, instruction, task_reward(cfg))
        record(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", eval=f"{history_last(history, 'eval_acc'):.2f}")
        if step % cfg.save_steps == 0 or step == cfg.max_steps:
            save_checkpoint(run.ckpt_path, model, optimizer, step, cfg)
    log.close()
    model.save_pretrained(os.path.join(cfg.output_dir, "final"))
    tokenizer.save_pretrained(os.path.join(cfg.output_dir, "final"))
    last_credit = credit_examples(batch, token_adv, tokenizer) if start < cfg.max_steps else None
    return write_run_report(cfg.output_dir, history, last_credit)


def main(config_cls=GRPOConfig, argv=None, **method):
    """CLI entry point; `method` holds the seams an algorithm file replaces (its METHOD)."""
    cfg = parse_config(config_cls, argv)
    try:
        summary = train(cfg, **method)
    except ValueError as e:  # bad input: name the problem, no traceback
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted; rerun with --resume to continue {cfg.output_dir} from its last checkpoint")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(GRPOConfig, **METHOD)
