"""CEPO: Contrastive Evidence Policy Optimization (arXiv 2605.19436).

Self-distillation with two teachers, both the current policy under no grad, scoring the sampled
response with a hint placed between prompt and response: the correct final answer r+, and the
final answer of a rejected rollout of the same group r-. Tokens the correct-answer teacher likes
more than the wrong-answer teacher carry the evidence for the right answer; they get a little more
of a positive advantage (and a little less of a negative one). Docs: docs/cepo.md.
As a diff against grpo_baseline.py it replaces only the token credit:

  (2.1) Δ_t = sg(log P+_t - log P-_t),  P±_t = pi(y_t | x, hint(r±), y_<t)
  (2.2) w_t = clip(exp(sign(A_i) Δ_t), 1 - eps_w, 1 + eps_w)
  (2.3) Â_{i,t} = A_i ((1 - λ) + λ w_t) m_{i,t}     (computed as A_i (1 + λ (w_t - 1)), equal, and
        exactly A_i where w_t = 1)
  (2.4) λ_s = λ0 max(0, 1 - (s - 1) / W) at RL step s = 1, 2, ...; at λ = 0 the teachers are skipped

Â keeps the sign of A_i and stays within (1 ± λ eps_w)|A_i|: the teachers re-weight, never
reverse. The hints enter only as the stop-gradient Δ, so the gradient is the student's,
sum Â ∇ log pi(y_t | x, y_<t), with no hint in its context.
The hint is the bare answer " 42" right after the prompt's assistant header, as the reference
inserts it, for real models; the embedded task's is "Answer: #### 42\n", the form its warm start
teaches (--hint_template). Before step 1 a run checks that the model reads the hints (hint_check).
Departure from the reference code: when the chosen rejected rollout has no parsable answer, the
reference uses the literal string "None" as r-; we take the next rejected rollout with a
parsable answer, and use r- = r+ (Δ = 0: GRPO) if there is none. docs/cepo.md lists the rest.
`--teacher rlsd` replaces P- by the student's own P(y_t | x, y_<t) (RLSD, arXiv 2604.03128).
"""
import functools
import sys
from dataclasses import dataclass

import torch

import grpo_baseline as gb
from data import extract_answer, prompt_ids, resolve_instruction
from embedded_task import ANSWER_HINT
from grpo_baseline import opt
from language_model import completion_logprobs, pad_batch, solution_logprob_gap

REFERENCE_HINT = " {answer}"  # the reference's hint for real models: the bare answer
HINT_CHECK_ROWS = 64


@dataclass
class CEPOConfig(gb.GRPOConfig):
    output_dir: str = opt("runs/cepo", gb.OUTPUT_DIR_HELP)
    lambda_init: float = opt(0.5, "λ0, the weight of the teachers' evidence at step 1 (reference scripts: 0.5)")
    lambda_schedule: str = opt("linear", "'linear': λ decays to 0 over --lambda_decay_steps; 'constant': λ0 throughout",
                               choices=("linear", "constant"))
    lambda_decay_steps: int = opt(25, "W: steps over which λ decays linearly to 0 (reference scripts: 25)")
    epsilon_w: float = opt(0.2, "clip range of the token weight w (reference scripts: 0.2; its README: 0.5)")
    hint_template: str = opt(None, "the hint between prompt and response, '{answer}' replaced by r+ or r-; default "
                             "' {answer}' (the reference's bare answer) with --model, "
                             f"{ANSWER_HINT!r} on the embedded task (the form its warm start teaches)")
    teacher: str = opt("cepo", "'cepo': correct- vs wrong-answer teacher; 'rlsd': correct-answer teacher vs the "
                       "student itself (RLSD)", choices=("cepo", "rlsd"))

    def method_problems(self):
        bad = []
        if not 0 <= self.lambda_init <= 1:
            bad.append(f"--lambda_init={self.lambda_init!r}: must be in [0, 1]")
        if not 0 <= self.epsilon_w < 1:
            bad.append(f"--epsilon_w={self.epsilon_w!r}: must be in [0, 1)")
        if self.lambda_decay_steps < 1:
            bad.append(f"--lambda_decay_steps={self.lambda_decay_steps!r}: must be >= 1")
        if self.hint_template is not None and "{answer}" not in self.hint_template:
            bad.append(f"--hint_template={self.hint_template!r}: must contain '{{answer}}', where r+ or r- goes")
        return bad


def lambda_at(step, cfg):
    """(2.4) λ at RL step `step` (1-based)."""
    if cfg.lambda_schedule == "constant":
        return cfg.lambda_init
    return cfg.lambda_init * max(0.0, 1 - (step - 1) / cfg.lambda_decay_steps)


def cepo_token_advantages(adv, logp_pos, logp_neg, mask, lam, eps_w):
    """(2.1)-(2.3). adv (N,) the GRPO advantages; logp_pos, logp_neg, mask (N, L) -> Â (N, L)."""
    delta = (logp_pos - logp_neg).detach()  # (2.1)
    w = torch.clamp(torch.exp(torch.sign(adv)[:, None] * delta), 1 - eps_w, 1 + eps_w)  # (2.2)
    return torch.where(mask > 0, adv[:, None] * (1 + lam * (w - 1)), 0.0)  # (2.3)


def wrong_answer_hints(texts, rewards, group_size):
    """r- for each group (one per group, shared by its members): the final answer of its
    lowest-reward rejected rollout (reward < 1), skipping rollouts with no parsable answer; None
    when no rejected rollout has one (then r- = r+). texts, rewards (N,) -> list of N/G."""
    hints = []
    for g in range(0, len(texts), group_size):
        rejected = sorted((r, i) for i, r in enumerate(rewards[g:g + group_size].tolist()) if r < 1)
        answers = (extract_answer(texts[g + i]) for _, i in rejected)
        hints.append(next((a for a in answers if a is not None), None))
    return hints


def hint_ids(tokenizer, answer, cfg):
    """Token ids of the hint for `answer`, tokenized raw: it goes after the templated prompt,
    inside the assistant turn, where the reference puts it."""
    template = cfg.hint_template if cfg.hint_template is not None else (REFERENCE_HINT if cfg.model else ANSWER_HINT)
    return tokenizer(template.replace("{answer}", answer), add_special_tokens=False).input_ids


def teacher_logprobs(model, tokenizer, contexts, completion_ids, completion_mask, cfg):
    """log pi(y_t | context, y_<t) for each (context, response) pair in one no-grad, micro-batched
    pass. contexts: token-id lists, prompt ⊕ hint; the response tokens are the student's own,
    so the teacher's log-probs align with the student's token for token."""
    ids, mask, _, _ = pad_batch(contexts, [[]] * len(contexts), tokenizer.pad_token_id, completion_ids.device)
    return completion_logprobs(model, ids, mask, completion_ids, completion_mask, cfg.temperature,
                               cfg.micro_batch_size)[0]


def cepo_credit(batch, model, tokenizer, cfg, step):
    """The credit seam. Teachers score only the responses where they can change anything: A != 0
    and r- != r+ (elsewhere Δ = 0 or A = 0, and Â is GRPO's). Both teachers go in one call."""
    lam = lambda_at(step, cfg)
    token_adv = gb.grpo_token_advantages(batch.advantages, batch.completion_mask)
    G = batch.group_size
    rlsd = cfg.teacher == "rlsd"
    r_minus = None if rlsd else wrong_answer_hints(batch.texts, batch.rewards, G)  # one per group
    batch.notes = [f"r+ = {batch.rows[i]['answer']}, r- = " + ("the student (RLSD)" if rlsd else str(r_minus[i // G]))
                   for i in range(len(batch.rows))]
    live = [i for i in range(len(batch.rows)) if batch.advantages[i] != 0 and (rlsd or r_minus[i // G] is not None)]
    if lam == 0 or not live:  # (2.4): no teacher pass at all
        return token_adv, {"lambda": lam}
    hint = functools.lru_cache(maxsize=None)(lambda answer: hint_ids(tokenizer, answer, cfg))  # tokenized once each
    contexts = [batch.prompts[i] + hint(batch.rows[i]["answer"]) for i in live]  # P+
    if not rlsd:
        contexts += [batch.prompts[i] + hint(r_minus[i // G]) for i in live]  # P-, in the same pass
    scored_idx = torch.tensor(live, device=token_adv.device)
    completion_ids, mask = batch.completion_ids[scored_idx], batch.completion_mask[scored_idx]
    teachers = len(contexts) // len(live)
    scored = teacher_logprobs(model, tokenizer, contexts, completion_ids.repeat(teachers, 1), mask.repeat(teachers, 1), cfg)
    logp_pos = scored[:len(live)]
    logp_neg = batch.pi_old()[scored_idx] if rlsd else scored[len(live):]  # RLSD: the student itself
    adv = batch.advantages[scored_idx]
    token_adv[scored_idx] = cepo_token_advantages(adv, logp_pos, logp_neg, mask, lam, cfg.epsilon_w)
    return token_adv, evidence_diagnostics(adv, logp_pos - logp_neg, mask, token_adv[scored_idx], lam, cfg.epsilon_w)


def evidence_diagnostics(adv, delta, mask, token_adv, lam, eps_w):
    """Mean Δ split by sign(A); the fraction of tokens the teachers argue against (sign(A) Δ < 0);
    how often w hits its clip; mean |Â| before and after the weighting."""
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


def hint_contrast(model, tokenizer, rows, cfg):
    """Does the model read an answer hint? For each row, the log-likelihood of its reference
    solution under the correct-answer hint minus under a wrong-answer hint (answer + 1).
    Returns (mean difference per solution, fraction of rows where the correct hint wins)."""
    instruction = resolve_instruction(cfg)
    prompts = [prompt_ids(tokenizer, r["question"], instruction) for r in rows]
    wrong = [wrong_hint(r["answer"]) for r in rows]
    diff = solution_logprob_gap(model, tokenizer, [r["solution"] for r in rows],
                                [p + hint_ids(tokenizer, r["answer"], cfg) for p, r in zip(prompts, rows)],
                                [p + hint_ids(tokenizer, w, cfg) for p, w in zip(prompts, wrong)],
                                cfg.temperature, cfg.micro_batch_size)
    return diff.mean().item(), (diff > 0).float().mean().item()


def hint_check(model, tokenizer, eval_rows, cfg):
    """The preflight seam: hint_contrast on up to HINT_CHECK_ROWS held-out rows with a reference
    solution, printed, with a warning when the correct hint does not make the solutions more
    likely than a wrong one (then the teachers' Δ is noise, and CEPO re-weights at random)."""
    rows = [r for r in eval_rows if r.get("solution")][:HINT_CHECK_ROWS]
    if not rows:
        print("[cepo] hint check skipped: the held-out rows have no reference solutions")
        return {}
    nats, wins = hint_contrast(model, tokenizer, rows, cfg)
    print(f"[cepo] hint check on {len(rows)} held-out solutions: the correct-answer hint makes each {nats:+.2f} nats "
          f"more likely than a wrong one (wins on {wins:.0%})")
    if nats <= 0:
        print("warning: this model does not read CEPO's answer hints (the correct one does not make reference solutions "
              "more likely); the teachers' evidence will be noise. Try another --hint_template, or a model that reads it",
              file=sys.stderr)
    return {"hint_contrast_nats": nats, "hint_contrast_wins": wins}


def wrong_hint(answer):
    """hint_contrast's wrong answer for a row's answer: an integer answer plus one, any other answer
    (or an integer of more digits than Python converts) with a 0 appended. Only ASCII digits count:
    '²'.isdigit() is true but int('²') fails."""
    if answer.isascii() and answer.lstrip("-").isdigit():
        try:
            return str(int(answer) + 1)
        except ValueError:  # beyond sys.get_int_max_str_digits()
            pass
    return answer + "0"


METHOD = {"credit": cepo_credit, "loss_fn": gb.grpo_loss, "preflight": hint_check}  # only the credit changes

if __name__ == "__main__":
    gb.main(CEPOConfig, **METHOD)
