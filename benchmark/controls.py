"""The benchmark's control arms: what says whether a credit method's result means anything, and
what bounds it. Each is GRPO or GCPO with one seam changed, and runs like a method file:

    python -m benchmark.controls oracle          [options]  GRPO with all credit where the task's ground truth says
                                                  the reward was decided (a hard oracle, not a ceiling:
                                                  one token carries a whole response's credit)
    python -m benchmark.controls soft_oracle     [options]  the same tokens weighted 1 + β, the others 1 (--decided_weight)
    python -m benchmark.controls value_oracle    [options]  credit from the true token advantage A^π(s_t, y_t), exact
                                                  along the worked chain: what a perfect critic would give
    python -m benchmark.controls shuffled_oracle [options]  the oracle's weights permuted within each response
    python -m benchmark.controls random          [options]  GCPO with its token weights shuffled within each
                                                  response: does GCPO's placement matter, or its spread?
    python -m benchmark.controls sft_gold        [options]  GRPO plus Gold's reference solutions as a supervised
                                                  term: Gold's imitation without its contrast

Every oracle keeps each response's credit at GRPO's size (its |Â| sums to |A_i| |o_i|) and needs
the embedded task's ground truth (embedded_task). The shuffles draw from a generator of their own,
so an arm samples the batches GRPO samples (common random numbers). The A/A arm needs no code:
GRPO again with another --seed and the same --data_seed (compare.py), the noise floor.
"""
import random
import sys
from dataclasses import dataclass

import torch

import gcpo
import gold
import grpo_baseline as gb
from loop.embedded_task import CONFUSABLE_SHARE, END, chain_path, characters, free_tags, ground_truth, token_roles
from loop.language_model import completion_logprobs, pad_batch
from loop.options import OUTPUT_DIR_HELP, opt


def oracle_target(advantages, mask, first_wrong, contested):
    """(N, L) bool, where the ground truth says each response's reward was decided: a failed
    response's (A < 0) first wrong token, a successful one's (A > 0) contested digits.
    advantages (N,); mask, first_wrong, contested (N, L)."""
    return torch.where((advantages < 0)[:, None], first_wrong, (advantages > 0)[:, None] & contested) & (mask > 0)


def oracle_weights(advantages, mask, first_wrong, contested):
    """(N, L) token weights with GRPO's total per response (mean 1 over its tokens, as GCPO's), all
    on oracle_target's tokens; a response with none gets none. Inputs as oracle_target's."""
    target = oracle_target(advantages, mask, first_wrong, contested)
    return torch.where(target, mask.sum(1, keepdim=True) / target.sum(1, keepdim=True).clamp(min=1), 0.0)


def soft_oracle_weights(advantages, mask, first_wrong, contested, beta):
    """(N, L) weights 1 + β on oracle_target's tokens and 1 on the others, renormalised to mean 1
    over each response's tokens (GRPO's total): β = 0 is GRPO's credit, β -> ∞ the oracle's where
    a response has a target. Inputs as oracle_target's."""
    weights = (1 + beta * oracle_target(advantages, mask, first_wrong, contested).float()) * mask
    return weights * mask.sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1e-12)


def labels(batch, tokenizer, cfg):
    """embedded_task.ground_truth of a batch: (roles, first_wrong, contested), each (N, L)."""
    return ground_truth(batch.completion_ids, batch.completion_mask, batch.rows, tokenizer, CONFUSABLE_SHARE[cfg.task])


def oracle_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: Â = A_i * oracle_weights, from the ground truth of each response."""
    _, first_wrong, contested = labels(batch, tokenizer, cfg)
    return batch.advantages[:, None] * oracle_weights(batch.advantages, batch.completion_mask, first_wrong, contested), {}


def soft_oracle_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: Â = A_i * soft_oracle_weights, β = --decided_weight."""
    _, first_wrong, contested = labels(batch, tokenizer, cfg)
    weights = soft_oracle_weights(batch.advantages, batch.completion_mask, first_wrong, contested, cfg.decided_weight)
    return batch.advantages[:, None] * weights, {}


def path_values(logp, mask, counted, fits):
    """V(s_t) along each worked-chain path (embedded_task.chain_path): the probability that the
    policy writes the rest of the path from t on, the product of π(path_u | path_<u) over its
    counted tokens u >= t (every one but the free tags, whose letters the reward never reads: taken
    as certain); 1 at the path's end, 0 everywhere on a path longer than the response budget (fits
    False). logp, mask, counted (N, Lp), fits (N,) bool -> (N, Lp + 1) float64."""
    terms = torch.where((mask > 0) & counted, logp.double(), 0.0)
    suffix = torch.cat([terms.flip(1).cumsum(1).flip(1), terms.new_zeros(len(terms), 1)], 1)  # Σ_{u >= t}
    return suffix.exp() * fits[:, None].to(terms.device)


def true_token_advantages(values, mask, first_wrong):
    """A^π(s_t, y_t) = V(s_{t+1}) - V(s_t) on a response's tokens before its first wrong one (there
    its prefix is its path's), -V(s_t) on that token (no continuation after it earns the reward: V
    falls to 0), 0 after it. They telescope: Σ_t = R - V(s_0). values (N, Lp + 1) from path_values;
    mask, first_wrong (N, L) -> (N, L) float64."""
    L = mask.shape[1]
    values = torch.cat([values, values.new_ones(len(values), max(0, L + 1 - values.shape[1]))], 1)  # (unread)
    before = (mask > 0) & (first_wrong.long().cumsum(1) == 0)
    return torch.where(before, values[:, 1:L + 1] - values[:, :L], torch.where(first_wrong, -values[:, :L], 0.0))


def grpo_sized(advantages, mask, token_values):
    """Credit placed and signed as token_values, each response's |Â| summing to GRPO's |A_i| |o_i|
    (0 where token_values are all 0). Matching the signed total instead would divide by
    R - V(s_0), near 0 for a confident policy. advantages (N,); mask, token_values (N, L)."""
    total = token_values.abs().sum(1, keepdim=True)
    scale = (advantages.abs() * mask.sum(1))[:, None] / total.clamp(min=1e-300)
    return torch.where(total > 0, token_values * scale, 0.0).float()


def chain_advantages(batch, model, tokenizer, cfg, step):
    """(A^π (N, L) float64 from true_token_advantages, V(s_0) (N,)) of a batch of the embedded task's
    responses, under `model`: each response's worked-chain path (embedded_task.chain_path: the
    response until its first wrong token, then the chain, new lines tagged from a generator of its
    own) scored in one teacher-forced pass."""
    tags = free_tags(random.Random(cfg.seed * 1_000_003 + step))
    tag = (lambda: tags(0)) if cfg.task == "chain" else None
    n = batch.completion_mask.sum(1).long().tolist()
    wrong, paths = zip(*(chain_path(characters(ids[:k], tokenizer), row, tag)
                         for ids, k, row in zip(batch.completion_ids.tolist(), n, batch.rows)))
    ids = [tokenizer.convert_tokens_to_ids([tokenizer.eos_token if c == END else c for c in p]) for p in paths]
    prompt_ids, prompt_mask, path_ids, path_mask = pad_batch(batch.prompts, ids, tokenizer.pad_token_id,
                                                             batch.completion_ids.device)
    logp, _ = completion_logprobs(model, prompt_ids, prompt_mask, path_ids, path_mask, cfg.temperature, cfg.micro_batch_size)
    counted = torch.zeros_like(path_mask, dtype=torch.bool)
    for i, p in enumerate(paths):
        counted[i, :len(p)] = torch.tensor([r != "f" for r in token_roles("".join(p).replace(END, "\n"))])
    values = path_values(logp, path_mask, counted, torch.tensor([len(p) <= cfg.max_completion_length for p in paths]))
    first_wrong = torch.zeros_like(batch.completion_mask, dtype=torch.bool)
    for i, w in enumerate(wrong):
        if w is not None:
            first_wrong[i, w] = True
    return true_token_advantages(values, batch.completion_mask, first_wrong), values[:, 0]


def value_oracle_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: the true token advantage (chain_advantages), sized as GRPO's (grpo_sized)."""
    token_values, start = chain_advantages(batch, model, tokenizer, cfg, step)
    return grpo_sized(batch.advantages, batch.completion_mask, token_values), {"value_at_start": start.mean().item()}


def shuffle_within(token_adv, mask, generator):
    """Each response's per-token credit, permuted at random among its own valid tokens: the same
    values (so the same spread and total), placed anywhere. (N, L) -> (N, L)."""
    out = token_adv.clone()
    for i in range(len(out)):
        valid = mask[i].nonzero().squeeze(1)
        out[i, valid] = token_adv[i, valid[torch.randperm(len(valid), generator=generator)]]
    return out


def own_generator(cfg, step):
    """The shuffles' random numbers, apart from the run's: the arm samples the batches GRPO samples."""
    return torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)


def shuffled_oracle_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: the oracle's, then shuffled within each response."""
    token_adv, stats = oracle_credit(batch, model, tokenizer, cfg, step)
    return shuffle_within(token_adv, batch.completion_mask, own_generator(cfg, step)), stats


def random_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: GCPO's, then shuffled within each response."""
    token_adv, stats = gcpo.gcpo_credit(batch, model, tokenizer, cfg, step)
    return shuffle_within(token_adv, batch.completion_mask, own_generator(cfg, step)), stats


def supervised_only(advantages, group_size, sampled):
    """Advantages (N,) with the sampled members of every group that holds a reference (sampled
    False) set to 0, GRPO's value for a group that was all wrong: the reference keeps its gold
    advantage (G-1)/sqrt(G), i.e. a supervised term weighted as Gold weighs it, and nothing else
    changes. sampled (N,) bool."""
    grouped, own = advantages.view(-1, group_size), sampled.view(-1, group_size)
    has_reference = (~own).any(1, keepdim=True)
    return torch.where(has_reference & own, 0.0, grouped).reshape(-1)


def sft_gold_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: GRPO's uniform credit on supervised_only's advantages."""
    advantages = supervised_only(batch.advantages, batch.group_size, batch.sampled)
    return gb.grpo_token_advantages(advantages, batch.completion_mask), {}


@dataclass
class OracleConfig(gb.GRPOConfig):
    output_dir: str = opt("runs/oracle", OUTPUT_DIR_HELP)

    def method_problems(self):
        return [f"--dataset={self.dataset!r}: the oracles read the embedded task's ground truth; leave --dataset empty"] \
            if self.dataset else []


@dataclass
class SoftOracleConfig(OracleConfig):
    output_dir: str = opt("runs/soft_oracle", OUTPUT_DIR_HELP)
    decided_weight: float = opt(4.0, "β: the decided tokens weigh 1 + β, the others 1, renormalised to GRPO's total")

    def method_problems(self):
        return super().method_problems() + ([f"--decided_weight={self.decided_weight!r}: must be >= 0"]
                                            if not self.decided_weight >= 0 else [])


@dataclass
class ValueOracleConfig(OracleConfig):
    output_dir: str = opt("runs/value_oracle", OUTPUT_DIR_HELP)


@dataclass
class ShuffledOracleConfig(OracleConfig):
    output_dir: str = opt("runs/shuffled_oracle", OUTPUT_DIR_HELP)


@dataclass
class RandomConfig(gcpo.GCPOConfig):
    output_dir: str = opt("runs/random", OUTPUT_DIR_HELP)

    def method_problems(self):
        return super().method_problems() + ([f"--num_mini_batches={self.num_mini_batches}: the shuffled credit is drawn "
                                             "once per rollout; use 1"] if self.num_mini_batches > 1 else [])


@dataclass
class SFTGoldConfig(gold.GoldConfig):
    output_dir: str = opt("runs/sft_gold", OUTPUT_DIR_HELP)


ARMS = {"oracle": (OracleConfig, {**gb.METHOD, "credit": oracle_credit}),
        "soft_oracle": (SoftOracleConfig, {**gb.METHOD, "credit": soft_oracle_credit}),
        "value_oracle": (ValueOracleConfig, {**gb.METHOD, "credit": value_oracle_credit}),
        "shuffled_oracle": (ShuffledOracleConfig, {**gb.METHOD, "credit": shuffled_oracle_credit}),
        "random": (RandomConfig, {"credit": random_credit, "loss_fn": gcpo.gcpo_loss, "reads_pi_old": lambda cfg: True}),
        "sft_gold": (SFTGoldConfig, {**gold.METHOD, "credit": sft_gold_credit})}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ARMS:
        sys.exit(f"usage: python -m benchmark.controls {{{','.join(ARMS)}}} [options]  (--help after the arm lists them)")
    config_cls, seams = ARMS[sys.argv[1]]
    gb.main(config_cls, sys.argv[2:], **seams)
