"""The benchmark's control arms: what says whether a credit method's result means anything.

Each is GRPO, GCPO or Gold with one seam changed, and runs like a method file (options as theirs):

    python controls.py oracle   [options]   GRPO with credit only where the task's ground truth says
                                            the reward was decided: the most token credit can buy
    python controls.py random   [options]   GCPO with its token weights shuffled within each
                                            response: does GCPO's placement matter, or its spread?
    python controls.py sft_gold [options]   GRPO plus Gold's reference solutions as a supervised
                                            term: Gold's imitation without its contrast

The A/A arm needs no code: GRPO again with another --seed and the same --data_seed (compare.py),
the noise floor. The oracle needs the embedded task's ground truth (embedded_task.ground_truth).
"""
import sys
from dataclasses import dataclass

import torch

import gcpo
import gold
import grpo_baseline as gb
from embedded_task import CONFUSABLE_SHARE, ground_truth
from options import OUTPUT_DIR_HELP, opt


def oracle_weights(advantages, mask, first_wrong, contested):
    """(N, L) token weights with GRPO's total per response (mean 1 over its tokens, as GCPO's): a
    failed response (A < 0) puts all of it on its first wrong token, a successful one (A > 0)
    spreads it over its contested digits, a response with neither gets none.
    advantages (N,); mask, first_wrong, contested (N, L)."""
    target = torch.where((advantages < 0)[:, None], first_wrong, (advantages > 0)[:, None] & contested) & (mask > 0)
    return torch.where(target, mask.sum(1, keepdim=True) / target.sum(1, keepdim=True).clamp(min=1), 0.0)


def oracle_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: Â = A_i * oracle_weights, from the ground truth of each response."""
    _, first_wrong, contested = ground_truth(batch.completion_ids, batch.completion_mask, batch.rows, tokenizer,
                                             CONFUSABLE_SHARE[cfg.task])
    weights = oracle_weights(batch.advantages, batch.completion_mask, first_wrong, contested)
    return batch.advantages[:, None] * weights, {}


def shuffle_within(token_adv, mask):
    """Each response's per-token credit, permuted at random among its own valid tokens: the same
    values (so the same spread and total), placed anywhere. (N, L) -> (N, L)."""
    out = token_adv.clone()
    for i in range(len(out)):
        valid = mask[i].nonzero().squeeze(1)
        out[i, valid] = token_adv[i, valid[torch.randperm(len(valid))]]
    return out


def random_credit(batch, model, tokenizer, cfg, step):
    """The credit seam: GCPO's, then shuffled within each response."""
    token_adv, stats = gcpo.gcpo_credit(batch, model, tokenizer, cfg, step)
    return shuffle_within(token_adv, batch.completion_mask), stats


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
        return [f"--dataset={self.dataset!r}: the oracle reads the embedded task's ground truth; leave --dataset empty"] \
            if self.dataset else []


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
        "random": (RandomConfig, {"credit": random_credit, "loss_fn": gcpo.gcpo_loss, "reads_pi_old": lambda cfg: True}),
        "sft_gold": (SFTGoldConfig, {**gold.METHOD, "credit": sft_gold_credit})}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ARMS:
        sys.exit(f"usage: python controls.py {{{','.join(ARMS)}}} [options]  (--help after the arm lists them)")
    config_cls, seams = ARMS[sys.argv[1]]
    gb.main(config_cls, sys.argv[2:], **seams)
