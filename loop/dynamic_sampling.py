"""DAPO's dynamic sampling (--dynamic_sampling, off by default; GCPO's reference trains with it):
a group whose responses are all right or all wrong has A = 0 and teaches nothing, so such groups
are dropped and more prompts are sampled, up to --max_resample_rounds extra rounds; then
uninformative groups fill the batch, so its size never changes. grpo_baseline.rollout calls it."""
import torch


def resample_informative(drawn, draw, more_prompts, num_prompts, cfg, pad_id, stats):
    """Draw more rounds (draw(*more_prompts(round)) -> a tuple like `drawn`: rows, prompts, ids,
    mask, texts, rewards, sampled) until num_prompts groups are informative or the rounds run
    out; returns the kept groups as one such tuple, with its statistics added to stats."""
    G = cfg.num_generations
    pool = [drawn]
    while sum(int(informative_groups(p[5], G).sum()) for p in pool) < num_prompts and len(pool) <= cfg.max_resample_rounds:
        pool.append(draw(*more_prompts(len(pool))))
    kept, kept_stats = keep_informative_groups(pool, num_prompts, G, pad_id)
    stats.update(kept_stats)
    stats["sampling_rounds"] = len(pool)
    return kept


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
