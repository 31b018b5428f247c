"""The causal-LM plumbing every method shares: load a model, pad, sample, teacher-force log-probs.

Nothing here knows about rewards or advantages: these are the operations on token ids that
grpo_baseline.py's rollout and update (and the methods' extra scoring passes) are built from.
Shapes: N sequences, P prompt positions (left-padded), L completion positions (right-padded).
"""
import contextlib

import torch


def load_policy(path, cfg, device):
    """Model and tokenizer through the public Hugging Face APIs a user would call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--model {path}: the tokenizer has no EOS token, so responses cannot end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad = eos is handled: see completion_mask
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code).to(device)
    model.eval()  # dropout off (as TRL's disable_dropout): the trainer's log-probs must match the sampler's
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def pad_batch(prompts, completions, pad_id, device):
    """Prompts left-padded, completions right-padded. Returns (prompt_ids (N, P), prompt_mask,
    completion_ids (N, L), completion_mask (N, L) float)."""
    P, L = max(map(len, prompts)), max(1, max(map(len, completions)))
    ids = torch.full((len(prompts), P + L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), P + L)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P], mask[i, P - len(p):P] = torch.tensor(p), 1
        ids[i, P:P + len(c)], mask[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long), 1
    ids, mask = ids.to(device), mask.to(device)
    return ids[:, :P], mask[:, :P], ids[:, P:], mask[:, P:]


def completion_mask(completion_ids, eos_id):
    """1 up to and including the first EOS, 0 after. Found by position, not by `!= pad`, so the
    EOS stays in the mask when pad == eos. (N, L) -> (N, L) float."""
    is_eos = completion_ids == eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after_eos).float()


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def generate(model, tokenizer, prompts, cfg, device, greedy=False):
    """Sample one response per prompt (lists of token ids). Returns (completion_ids (N, L),
    completion_mask (N, L)); tokens after the first EOS are pad and masked out."""
    from transformers import GenerationConfig
    gen_cfg = GenerationConfig(  # a fresh config: the model's own (top_k, repetition penalty...) would bias sampling
        do_sample=not greedy, temperature=cfg.temperature if not greedy else None, top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None, max_new_tokens=cfg.max_completion_length,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    chunks = []
    for s in range(0, len(prompts), cfg.generation_batch_size):
        chunk = prompts[s:s + cfg.generation_batch_size]
        ids, mask, _, _ = pad_batch(chunk, [[]] * len(chunk), tokenizer.pad_token_id, device)
        with autocast(device):
            out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gen_cfg)
        chunks.append(out[:, ids.shape[1]:].cpu())
    L = max(c.shape[1] for c in chunks)
    completion = torch.cat([torch.nn.functional.pad(c, (0, L - c.shape[1]), value=tokenizer.pad_token_id)
                            for c in chunks])
    mask = completion_mask(completion, tokenizer.eos_token_id)
    completion = completion.masked_fill(mask == 0, tokenizer.pad_token_id)
    return completion.to(device), mask.to(device)


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                        micro_batch_size, grad=False, entropy=False):
    """log pi(y_t | context, y_<t) for every completion token, by teacher forcing.

    prompt_ids/prompt_mask (N, P) left-padded; completion_ids/completion_mask (N, L) right-padded.
    Returns (logp (N, L), entropy (N, L) or None), both 0 on padding. Position ids follow the
    mask so a left-padded row scores exactly as it would unpadded. Micro-batched for memory;
    only the L+1 last positions' logits are materialised.
    """
    L = completion_ids.shape[1]
    logps, entropies = [], []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(prompt_ids), micro_batch_size):
            e = s + micro_batch_size
            ids = torch.cat([prompt_ids[s:e], completion_ids[s:e]], 1)
            attn = torch.cat([prompt_mask[s:e], completion_mask[s:e]], 1).long()
            positions = (attn.cumsum(1) - 1).clamp(min=0)
            with autocast(ids.device):
                logits = model(input_ids=ids, attention_mask=attn, position_ids=positions,
                               logits_to_keep=L + 1).logits[:, :-1]
            logits = logits.float() / temperature
            logp_all = logits.log_softmax(-1)
            valid = completion_mask[s:e] > 0
            logp = logp_all.gather(-1, completion_ids[s:e, :, None]).squeeze(-1)
            logps.append(torch.where(valid, logp, 0.0))
            if entropy:
                ent = -(logp_all.exp() * logp_all).sum(-1)
                entropies.append(torch.where(valid, ent, 0.0).detach())
    return torch.cat(logps), (torch.cat(entropies) if entropy else None)
