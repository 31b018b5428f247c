"""CEPO: Contrastive Evidence Policy Optimization (arXiv 2605.19436), explained in docs/cepo.md.

As a diff against grpo_baseline.py: a new token credit, and a preflight that checks the model
reads the hints. Two teachers, the current policy under no grad, score the sampled response y with
a hint between prompt x and y: the correct final answer r+, or r-, the final answer of a rejected
rollout of the same group (`--teacher rlsd`: P- is the student's own pi_old, arXiv 2604.03128).

  (2.1) Δ_t = sg(log P+_t - log P-_t),  P±_t = pi(y_t | x, hint(r±), y_<t)
  (2.2) w_t = clip(exp(sign(A_i) Δ_t), 1 - eps_w, 1 + eps_w)
  (2.3) Â_{i,t} = A_i ((1 - λ) + λ w_t) m_{i,t}, computed as A_i (1 + λ (w_t - 1)): exactly A_i where w_t = 1
  (2.4) λ_s = λ0 max(0, 1 - (s - 1) / W) at RL step s = 1, 2, ...; at λ = 0 no teacher runs
"""
import functools
from dataclasses import dataclass

import torch

import grpo_baseline as gb
from loop import diagnostics
from loop.data import extract_answer
from loop.embedded_task import ANSWER_HINT
from loop.language_model import completion_logprobs, model_context, pad_batch
from loop.options import OUTPUT_DIR_HELP, opt

REFERENCE_HINT = " {answer}"  # the reference's hint for real models: the bare answer


@dataclass
class CEPOConfig(gb.GRPOConfig):
    output_dir: str = opt("runs/cepo", OUTPUT_DIR_HELP)
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
    """λ at RL step `step`, counted from 1."""
    if cfg.lambda_schedule == "constant":
        return cfg.lambda_init
    return cfg.lambda_init * max(0.0, 1 - (step - 1) / cfg.lambda_decay_steps)  # (2.4)


def cepo_token_advantages(adv, logp_pos, logp_neg, mask, lam, eps_w):
    """Â (N, L) from the GRPO advantages adv (N,) and logp_pos, logp_neg, mask (N, L)."""
    delta = (logp_pos - logp_neg).detach()  # (2.1)
    w = torch.clamp(torch.exp(torch.sign(adv)[:, None] * delta), 1 - eps_w, 1 + eps_w)  # (2.2)
    return torch.where(mask > 0, adv[:, None] * (1 + lam * (w - 1)), 0.0)  # (2.3)


def wrong_answer_hints(texts, rewards, group_size):
    """r- of each group: the first parsable final answer among its rejected rollouts (reward < 1),
    lowest reward first; None if there is none. texts, rewards (N,) -> N/G answers."""
    r_minus = []
    for g in range(0, len(texts), group_size):
        rejected = sorted((r, i) for i, r in enumerate(rewards[g:g + group_size].tolist()) if r < 1)
        answers = (extract_answer(texts[g + i]) for _, i in rejected)
        r_minus.append(next((a for a in answers if a is not None), None))
    return r_minus


def hint_ids(tokenizer, answer, cfg):
    """Token ids of the hint for `answer`, tokenized alone (no special tokens): it follows the
    templated prompt, inside the assistant turn."""
    template = cfg.hint_template if cfg.hint_template is not None else (REFERENCE_HINT if cfg.model else ANSWER_HINT)
    return tokenizer(template.replace("{answer}", answer), add_special_tokens=False).input_ids


def teacher_logprobs(model, tokenizer, contexts, completion_ids, completion_mask, cfg):
    """log pi(y_t | context, y_<t) of each (context, response) pair, no grad, micro-batched;
    contexts: token-id lists, prompt ⊕ hint."""
    ids, mask, _, _ = pad_batch(contexts, [[]] * len(contexts), tokenizer.pad_token_id, completion_ids.device)
    return completion_logprobs(model, ids, mask, completion_ids, completion_mask, cfg.temperature,
                               cfg.micro_batch_size)[0]


def cepo_credit(batch, model, tokenizer, cfg, step):
    """The credit seam. Teachers score the responses with A != 0 whose group has an r- that fits the
    context (every A != 0 under --teacher rlsd)."""
    lam = lambda_at(step, cfg)
    token_adv = gb.grpo_token_advantages(batch.advantages, batch.completion_mask)
    G = batch.group_size
    rlsd = cfg.teacher == "rlsd"
    r_minus = None if rlsd else wrong_answer_hints(batch.texts, batch.rewards, G)
    hint_of = functools.lru_cache(maxsize=None)(lambda answer: hint_ids(tokenizer, answer, cfg))  # tokenized once each
    room = model_context(model.config)
    if lam and room and not rlsd:  # r+'s context was checked at the start (seam 0); a sampled r- can be any length
        r_minus = [a if a is None or len(batch.prompts[g * G]) + len(hint_of(a)) + batch.completion_ids.shape[1] <= room
                   else None for g, a in enumerate(r_minus)]  # one that does not fit: no r-, GRPO's credit
    batch.scored_under = [{"r+": batch.rows[i]["answer"], "r-": "the student (RLSD)" if rlsd else str(r_minus[i // G])}
                          for i in range(len(batch.rows))]
    scored = [i for i in range(len(batch.rows)) if batch.advantages[i] != 0 and (rlsd or r_minus[i // G] is not None)]
    if lam == 0 or not scored:  # (2.4): no teacher pass at all
        return token_adv, {"lambda": lam}
    contexts = [batch.prompts[i] + hint_of(batch.rows[i]["answer"]) for i in scored]  # P+
    if not rlsd:
        contexts += [batch.prompts[i] + hint_of(r_minus[i // G]) for i in scored]  # P-, in the same pass
    idx = torch.tensor(scored, device=token_adv.device)
    completion_ids, mask = batch.completion_ids[idx], batch.completion_mask[idx]
    n_teachers = 1 if rlsd else 2
    teacher_logp = teacher_logprobs(model, tokenizer, contexts, completion_ids.repeat(n_teachers, 1),
                                    mask.repeat(n_teachers, 1), cfg)
    logp_pos = teacher_logp[:len(scored)]
    logp_neg = batch.old_logp[idx] if rlsd else teacher_logp[len(scored):]  # RLSD: the student itself
    adv = batch.advantages[idx]
    token_adv[idx] = cepo_token_advantages(adv, logp_pos, logp_neg, mask, lam, cfg.epsilon_w)
    return token_adv, diagnostics.evidence_diagnostics(adv, logp_pos - logp_neg, mask, token_adv[idx], lam, cfg.epsilon_w)


def hint_preflight(model, tokenizer, eval_rows, cfg):
    """The preflight seam: does the model read the hints? (diagnostics.hint_check)"""
    return diagnostics.hint_check(model, tokenizer, eval_rows, cfg, hint_ids)


def hinted_prompts(tokenizer, rows, prompts, cfg):
    """The contexts seam: each prompt + the longer of its r+ hint and the hint check's wrong-answer
    hint (diagnostics.wrong_hint), which the job checks with a response against the model's context."""
    hints = ((hint_ids(tokenizer, r["answer"], cfg), hint_ids(tokenizer, diagnostics.wrong_hint(r["answer"]), cfg))
             for r in rows)
    return "CEPO's prompt + answer hint (--hint_template)", [p + max(h, key=len) for p, h in zip(prompts, hints)]


# the credit reads pi_old only as RLSD's P-
METHOD = {"credit": cepo_credit, "loss_fn": gb.grpo_loss, "preflight": hint_preflight,
          "reads_pi_old": lambda cfg: cfg.teacher == "rlsd", "contexts": hinted_prompts}

if __name__ == "__main__":
    gb.main(CEPOConfig, **METHOD)
