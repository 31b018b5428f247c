"""Ground-truth token advantages by Monte Carlo, to judge a method's token credit Â against.

For a response y to prompt x, the state after t response tokens is s_t = x ⊕ y_<t, and its value
under the current policy (sampling at cfg.temperature) is

    V(s_t) = P(reward 1 | x, y_<t),

estimated as the mean reward of K continuations of x ⊕ y_<t sampled to their end, with the budget
the response itself had left there (cfg.max_completion_length - t new tokens). Emitting y_t moves
the state to s_{t+1}, so Q(s_t, y_t) = V(s_{t+1}) and the token's advantage is

    A_MC(t) = V(s_{t+1}) - V(s_t).

After the response's last token (its stop token, or the last token of a response cut at the
length limit) nothing is left to sample: V(s_len) is the response's own reward, exactly. The
advantages telescope, Σ_t A_MC(t) = R - V(s_0), and a method's Â can be compared with them
token by token (agreement).

Cost: N responses of up to L tokens, K continuations of every prefix, i.e. N·L·K continuations of
up to L tokens each, sampled in ⌈N·L·K / cfg.generation_batch_size⌉ calls of
language_model.generate, and as many reward calls (fewer where continuations coincide).
Every V(s_t) < V(s_len) is a binomial estimate with standard error sqrt(p(1-p)/K)
(mc_standard_errors): K = 8 resolves an advantage of about 0.5, not one of 0.1.
"""
import dataclasses

import torch

from loop.language_model import generate, stop_ids


@torch.no_grad()
def prefix_values(model, tokenizer, prompts, completion_ids, completion_mask, rows, reward, cfg, device,
                  continuations=8, seed=0):
    """Monte-Carlo values of every prefix of every response: (N, L+1) float tensor V, on
    completion_ids' device, with V[i, t] ≈ V(s_t) (the prefix of t response tokens) for
    t = 0..len_i - 1, V[i, len_i] = reward of the whole response (exact), and NaN past len_i
    (no such state: NaN makes any use of it visible; mc_token_advantages masks it out).

    prompts: (N,) prompt token-id lists, unpadded; completion_ids, completion_mask (N, L) as
    language_model.generate returns them (the mask includes the stop token); rows (N,) task rows;
    reward(text, row) -> float, text being the response before its stop token as generate decodes
    it. The reward must be deterministic: it is cached per response and text, since continuations
    of late prefixes often end alike. cfg: the dataclass config (GRPOConfig or a method's) the
    responses were sampled with: max_completion_length (each prefix continues with the budget its
    response had left), temperature and generation_batch_size. continuations: K.

    Sampling uses torch's RNG seeded with `seed`, inside fork_rng: the same inputs give the same V,
    and the caller's RNG stream (a training run's next samples) is left where it was.
    """
    device = torch.device(device)
    stop = set(stop_ids(model))
    N, L = completion_ids.shape
    lengths = completion_mask.sum(1).long().tolist()
    if max(lengths, default=0) > cfg.max_completion_length:
        raise ValueError(f"a response of {max(lengths)} tokens is longer than max_completion_length "
                         f"{cfg.max_completion_length}: its prefixes would have no budget left to continue")
    responses = [ids[:n] for ids, n in zip(completion_ids.tolist(), lengths)]
    cache = {}

    def rewards(indices, token_lists):
        texts = tokenizer.batch_decode([ids[:-1] if ids and ids[-1] in stop else ids for ids in token_lists],
                                       skip_special_tokens=True)  # as generate decodes its texts
        for i, text in zip(indices, texts):
            if (i, text) not in cache:
                cache[i, text] = float(reward(text, rows[i]))
        return [cache[i, text] for i, text in zip(indices, texts)]

    values = torch.full((N, L + 1), float("nan"))
    values[torch.arange(N), lengths] = torch.tensor(rewards(range(N), responses))
    totals = torch.zeros(N, L + 1)
    # One job per continuation, ordered by prefix length: each generate call then holds prefixes
    # with nearly the same budget and length, and samples only as far as its longest budget.
    jobs = [(i, t) for t in range(max(lengths, default=0)) for i in range(N) if t < lengths[i]
            for _ in range(continuations)]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for s in range(0, len(jobs), cfg.generation_batch_size):
            chunk = jobs[s:s + cfg.generation_batch_size]
            budget = cfg.max_completion_length - chunk[0][1]  # the chunk's shortest prefix has the most left
            ids, mask, _ = generate(model, tokenizer, [prompts[i] + responses[i][:t] for i, t in chunk],
                                    dataclasses.replace(cfg, max_completion_length=budget), device)
            # Cut each continuation to its own prefix's budget: the first b tokens of a sample drawn
            # with a larger budget are distributed exactly as a sample drawn with budget b.
            ends = [min(n, cfg.max_completion_length - t) for (_, t), n in zip(chunk, mask.sum(1).long().tolist())]
            full = [responses[i][:t] + c[:e] for (i, t), c, e in zip(chunk, ids.tolist(), ends)]
            for (i, t), r in zip(chunk, rewards([i for i, _ in chunk], full)):
                totals[i, t] += r
    prefixes = torch.arange(L + 1) < torch.tensor(lengths)[:, None]
    values[prefixes] = totals[prefixes] / continuations
    return values.to(completion_ids.device)


def mc_token_advantages(values, completion_mask):
    """A_MC(t) = V(s_{t+1}) - V(s_t) on valid positions, 0 elsewhere. values (N, L+1) from
    prefix_values, completion_mask (N, L) -> (N, L). Σ_t A_MC(t) = R - V(s_0), up to float
    rounding (exactly for 0/1 rewards and K a power of two: every V and partial sum is then a
    float of a few bits)."""
    return torch.where(completion_mask > 0, values[:, 1:] - values[:, :-1], 0.0)


def mc_standard_errors(values, completion_mask, continuations):
    """Standard error of each A_MC(t), (N, L), 0 on padding: V(s_t) and V(s_{t+1}) are independent
    means of K rewards, each with the binomial error sqrt(p(1-p)/K) (an upper bound for rewards in
    [0, 1] that are not 0/1), except V(s_len), the response's own reward, which has none.
    values (N, L+1) from prefix_values, completion_mask (N, L)."""
    p = values.nan_to_num(0.0)
    variance = p * (1 - p) / continuations
    lengths = completion_mask.sum(1).long()
    variance[torch.arange(len(p), device=p.device), lengths] = 0.0
    return torch.where(completion_mask > 0, (variance[:, 1:] + variance[:, :-1]).sqrt(), 0.0)


def agreement(token_adv, mc_adv, completion_mask, standard_error=None):
    """How a method's token credit Â agrees with A_MC over the valid (i, t) of a response set
    (choose the set with the mask, e.g. only responses with A_i != 0). All inputs (N, L).

    Returns a dict:
    - corr: Pearson correlation of Â and A_MC over the valid tokens; None if either is constant there.
    - sign_agreement: the share of decided tokens where sign(Â) == sign(A_MC); None if none is decided.
      A token is decided when |A_MC| > 2 standard_error (mc_standard_errors), or, with
      standard_error=None, when A_MC != 0. Â = 0 on a decided token counts as disagreement
      (no credit where the outcome moved); zero_credit_decided says how many such tokens there are.
    - tokens, decided_tokens, zero_credit_decided, responses (rows with a valid token): the sample sizes.
    """
    valid = completion_mask > 0
    a, m = token_adv[valid].double(), mc_adv[valid].double()
    corr = None if constant(a) or constant(m) else torch.corrcoef(torch.stack([a, m]))[0, 1].item()
    threshold = 0.0 if standard_error is None else 2 * standard_error[valid].double()
    decided = m.abs() > threshold
    agree = torch.sign(a[decided]) == torch.sign(m[decided])
    return {"corr": corr, "sign_agreement": agree.double().mean().item() if decided.any() else None,
            "tokens": int(valid.sum()), "decided_tokens": int(decided.sum()),
            "zero_credit_decided": int((a[decided] == 0).sum()), "responses": int(valid.any(1).sum())}


def constant(x):
    """Whether a 1-D tensor holds one value (or none). Exact: a float std can miss 0 by an ulp."""
    return not len(x) or bool((x == x[0]).all())
