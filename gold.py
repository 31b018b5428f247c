"""Gold: "GCPO: When Contrast Fails, Go Gold" (Hao Wu, Wei Liu, 2025, arXiv 2510.07790).

When every response of a group is wrong, GRPO's advantages are all 0 and the group teaches
nothing. Gold replaces one of those responses by the problem's reference solution, with reward 1,
so the group has a contrast again. Docs: docs/gold.md. As a diff against
grpo_baseline.py it changes two seams and keeps GRPO's uniform token credit:

  edit_rollouts  (3.1) all-wrong group with a reference: the last slot becomes the reference
                 solution, reward forced to 1 (not re-scored); the GRPO advantages (0.1) are then
                 computed as usual: (G-1)/sqrt(G) for the gold member, -1/sqrt(G) for the others.
  loss_fn        (3.2) sequence-level ratio, length-normalised in log space and clamped:
                     s_i = exp(min(c, (1/|y_i|) sum_t [log pi_theta - log pi_old]))
                 (3.3) loss_i = -min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i), mean over sequences.

The choices the paper leaves open are ours: the last slot is replaced; sequence-level clip
bounds default to GSPO's 3e-4 / 4e-4; a reference that must be truncated is used only if its
final answer survives the cut. The gold member's old log-probs come from the same teacher-forced
pass as every other member's (the shared rollout), never from elsewhere.

What the model is trained on in an injected slot, exactly (embedded task): x = '7+0+7+8\n', and the
response 'pq 7+0=7\nwv 7+7=14\nsp 14+8=22\n#### 22' then the end-of-turn token; a chat model gets
the dataset's solution (GSM8K's <<48/2=24>> annotations removed) after its assistant header.
`python gold.py` runs the paper's loss; the benchmark (compare.py) runs Gold with GRPO's token
loss, so that Gold vs GRPO is the injection alone:
    python gold.py --ratio_level token --loss_type token-mean --epsilon 0.2 --epsilon_high 0.28
"""
import re
from dataclasses import dataclass

import torch

import grpo_baseline as gb
from loop.data import reward_fn
from loop.diagnostics import clip_stats
from loop.language_model import end_of_turn_id
from loop.options import OUTPUT_DIR_HELP, opt


@dataclass
class GoldConfig(gb.GRPOConfig):
    output_dir: str = opt("runs/gold", OUTPUT_DIR_HELP)
    ratio_level: str = opt("sequence", "'sequence': GSPO-style ratio (the paper's); 'token': GRPO's token ratio "
                           "(then pass token-level clip ranges, e.g. --epsilon 0.2 --epsilon_high 0.28)",
                           choices=("sequence", "token"))
    epsilon: float = opt(3e-4, "lower clip range of the ratio (GSPO's sequence-level 3e-4)")
    epsilon_high: float = opt(4e-4, "upper clip range of the ratio (GSPO's sequence-level 4e-4)")
    loss_type: str = opt("seq-mean-token-mean", "aggregation; the sequence ratio needs 'seq-mean-token-mean' "
                         "(a long gold answer would dominate a token sum)", choices=("token-mean", "seq-mean-token-mean"))
    max_log_ratio: float = opt(10.0, "the sequence log-ratio is clamped to at most this before exp")

    def method_problems(self):
        if self.ratio_level == "sequence" and self.loss_type != "seq-mean-token-mean":
            return [f"--loss_type={self.loss_type!r}: the sequence-level ratio is averaged over sequences; "
                    "use 'seq-mean-token-mean' or --ratio_level token"]
        return []


def inject_gold(rewards, group_size, has_gold):
    """(3.1) rewards (N,) in contiguous groups, has_gold (N/G,) bool: whether each group's problem
    has a usable reference. Returns (new_rewards (N,), is_gold (N,) bool): in each group whose
    responses are all wrong (max reward <= 0) and that has a reference, the last slot is gold with
    reward 1. Every other reward is returned unchanged."""
    grouped = rewards.view(-1, group_size)
    trigger = (grouped.max(1).values <= 0) & has_gold.to(grouped.device)  # (3.1)
    is_gold = torch.zeros_like(grouped, dtype=torch.bool)
    is_gold[:, -1] = trigger
    return torch.where(is_gold, torch.ones_like(grouped), grouped).reshape(-1), is_gold.reshape(-1)


def sequence_ratio(logp, old_logp, mask, max_log=10.0):
    """(3.2) s_i = exp(min(max_log, mean over valid t of [logp - old_logp])). (N, L) -> (N,).
    Exactly 1 where logp == old_logp; padding (mask 0) never enters."""
    log_ratio = torch.where(mask > 0, logp - old_logp, 0.0).sum(1) / mask.sum(1).clamp(min=1)
    return torch.exp(log_ratio.clamp(max=max_log))  # (3.2)


def gold_loss(logp, old_logp, token_adv, mask, cfg, normalizer):
    """(3.3) PPO-clip on the sequence ratio, one term per sequence, summed / normalizer: the
    mini-batch's sequence count, which the update passes under 'seq-mean-token-mean' (hence
    GoldConfig's check; under 'token-mean' it would be a token count). --ratio_level token falls
    back to GRPO's token loss."""
    if cfg.ratio_level == "token":
        return gb.grpo_loss(logp, old_logp, token_adv, mask, cfg, normalizer)
    ratio = sequence_ratio(logp, old_logp, mask, cfg.max_log_ratio)
    adv = token_adv.sum(1) / mask.sum(1).clamp(min=1)  # A_i: the credit is uniform, so its token mean
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon_high) * adv
    loss = -torch.minimum(unclipped, clipped).sum() / normalizer  # (3.3)
    return loss, clip_stats(ratio, torch.ones_like(ratio, dtype=torch.bool), clipped < unclipped)


def reference_response(tokenizer, row, cfg):
    """(token ids, None) of the row's reference solution written as the policy's own response,
    or (None, reason). The response is the solution text, then the token that ends the model's
    turn (the chat template's, else EOS; the prompt already holds the assistant header). GSM8K's
    calculator annotations <<48/2=24>> are removed: the policy never writes them. A solution
    longer than --max_completion_length is cut there (its end token kept), and used only if its
    final answer survives the cut."""
    if not row.get("solution"):
        return None, "no_reference"
    text = re.sub(r"<<[^<>]*>>", "", row["solution"])
    if reward_fn(text, row["answer"]) != 1:
        return None, "unparsable_reference"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) >= cfg.max_completion_length:
        ids = ids[:cfg.max_completion_length - 1]
        if reward_fn(tokenizer.decode(ids, skip_special_tokens=True), row["answer"]) != 1:
            return None, "too_long"
    return ids + [end_of_turn_id(tokenizer)], None


def inject_reference_solutions(rows, completion_ids, mask, texts, rewards, tokenizer, cfg):
    """The edit_rollouts seam: swap the reference solution into the last slot of each all-wrong
    group that has one (inject_gold), with its tokens, mask and text."""
    G = cfg.num_generations
    refs = [reference_response(tokenizer, rows[g], cfg) for g in range(0, len(rows), G)]
    has_gold = torch.tensor([ids is not None for ids, _ in refs])
    new_rewards, is_gold = inject_gold(rewards, G, has_gold)
    gold_rows = is_gold.nonzero().squeeze(1).tolist()
    L = max([completion_ids.shape[1]] + [len(refs[i // G][0]) for i in gold_rows])
    completion_ids = torch.nn.functional.pad(completion_ids, (0, L - completion_ids.shape[1]), value=tokenizer.pad_token_id)
    mask = torch.nn.functional.pad(mask, (0, L - mask.shape[1]))
    texts = list(texts)
    for i in gold_rows:
        ids = torch.tensor(refs[i // G][0], device=completion_ids.device)
        completion_ids[i], mask[i] = tokenizer.pad_token_id, 0.0
        completion_ids[i, :len(ids)], mask[i, :len(ids)] = ids, 1.0
        texts[i] = tokenizer.decode(ids, skip_special_tokens=True)
    all_wrong = rewards.view(-1, G).max(1).values.cpu() <= 0
    stats = {"gold_injections": len(gold_rows), "gold_tokens": int(mask[gold_rows].sum()), "all_wrong_groups": int(all_wrong.sum()),
             **{f"gold_skipped_{why}": sum(1 for (ids, w), aw in zip(refs, all_wrong) if aw and w == why)
                for why in ("no_reference", "unparsable_reference", "too_long")}}
    return completion_ids, mask, texts, new_rewards, ~is_gold, stats


METHOD = {"credit": gb.grpo_credit, "loss_fn": gold_loss, "edit_rollouts": inject_reference_solutions}

if __name__ == "__main__":
    gb.main(GoldConfig, **METHOD)
