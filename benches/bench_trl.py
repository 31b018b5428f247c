"""Our GRPO step against TRL's GRPOTrainer, same process, same model, tokenizer, prompts and shapes;
then the peak memory of each one's update pass with a real vocabulary.

    python -m benches.bench_trl            # also part of ./run.sh bench
    python -m benches.bench_trl --memory   # only the memory comparison
    python -m benches.bench_trl --real     # on SmolLM2-135M-Instruct and the words task, and its generation options

A random 4-layer, 128-wide Llama (the embedded model's architecture, the same seed for both), the
character tokenizer and the embedded task's prompts and reward; one PPO epoch, token-mean loss,
clip 0.2 / 0.28, learning rate 1e-4, temperature 1 with no top-k / top-p, no KL, responses end at
EOS (a random model rarely samples it, so both generate the full length). Seconds per optimizer
step after one warm-up step: ours split by phase from metrics.jsonl; TRL's from a TrainerCallback,
its generation from TRL's own profiling spans.

Memory: bench_memory.py's shapes (a random 10 M-parameter Qwen2 with Qwen2.5's 151,936-token
vocabulary, 8 responses of 300 tokens in one micro-batch); the update pass as each trainer runs
it (log-probs and entropy with grad, then the backward): ours through completion_logprobs (its
chunked LM head), TRL's through GRPOTrainer._get_per_token_logps_and_entropies (TRL 1.16's fused
LM head). Each in its own process; the peak above the process's memory after loading (resident
memory on a CPU, allocated memory on a GPU).

--real: the same step comparison on a pretrained model, SmolLM2-135M-Instruct (the packaged GGUF,
dequantized to float32), the words task's prompts through its chat template (a worked example,
then the question), temperature 0.7, peak memory of each whole run beside its seconds; then the
generation options transformers offers, each on the same prompts, greedy: the dynamic KV cache
(the default), a static cache, one thread against all, and torch.compile of the forward.
"""
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import grpo_baseline as gb
from benches import bench_memory
from loop.data import check_answer, prompt_ids, resolve_instruction
from loop.embedded_task import char_tokenizer, load_task
from loop.language_model import PACKAGED_MODELS, completion_logprobs, first_line, load_policy, pad_batch, stop_ids
from loop.report import peak_memory_mb, phase_means, read_metrics, reset_peak_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where this runs itself, as a module

SHAPES = ((8, 8, 32), (16, 8, 64), (16, 16, 64), (16, 16, 128))  # prompts, responses per prompt, new tokens


def random_llama(tokenizer, path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 bos_token_id=None)).save_pretrained(path)
    tokenizer.save_pretrained(path)


def ours(path, P, G, T, steps, out, **options):
    cfg = gb.GRPOConfig(**{"instruction": "", "task": "sum", **options}, model=path, prompts_per_step=P, num_generations=G,
                        max_completion_length=T, max_steps=steps + 1, eval_steps=10**6, eval_size=8, save_steps=10**6,
                        output_dir=out, overwrite_output_dir=True)
    with contextlib.redirect_stdout(io.StringIO()):
        gb.train(cfg)
    phases = phase_means(read_metrics(out)[2:])  # without step 0 (evaluation) and the warm-up step
    return sum(phases.values()), phases


def task_prompts(tokenizer, cfg):
    """(rows, prompt texts) of cfg's task as our loop prompts them (template, instruction, worked
    example), decoded, so TRL tokenizes the same ids from a plain-text prompt column."""
    rows, _ = load_task(cfg)
    instruction = resolve_instruction(cfg)
    return rows, [tokenizer.decode(prompt_ids(tokenizer, r["question"], instruction, r.get("example"))) for r in rows]


def trl_grpo(path, P, G, T, steps, out, temperature=1.0):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    real = path in PACKAGED_MODELS
    if real:
        model, tokenizer = load_policy(path, gb.GRPOConfig(model=path), torch.device("cpu"))
        rows, prompts = task_prompts(tokenizer, gb.GRPOConfig(model=path))
    else:
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        rows, prompts = task_prompts(tokenizer, gb.GRPOConfig(task="sum", instruction=""))
    dataset = Dataset.from_list([{"prompt": p, "answer": r["answer"]} for p, r in zip(prompts, rows)])

    def reward(completions, answer, **kwargs):
        return [check_answer(c, a)[0] for c, a in zip(completions, answer)]

    step_times, generate = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.t0)

    log_metrics = profiling.ProfilingContext._log_metrics

    def spy(self, duration):  # TRL's profiling spans otherwise go only to wandb / mlflow / trackio
        if self.name.endswith("transformers.generate"):
            generate[self.step] = generate.get(self.step, 0.0) + duration
        return log_metrics(self, duration)

    profiling.ProfilingContext._log_metrics = spy
    batch = min(64, P * G)
    args = GRPOConfig(output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=P * G // batch,
                      num_generations=G, max_completion_length=T, temperature=temperature, top_k=0, top_p=1.0, beta=0.0,
                      num_iterations=1, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, learning_rate=1e-4,
                      lr_scheduler_type="constant", max_steps=steps + 1, gradient_checkpointing=False, use_cpu=True,
                      bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=[Timer()])
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    try:
        trainer.train()
    finally:
        profiling.ProfilingContext._log_metrics = log_metrics
    return statistics.mean(step_times[1:]), statistics.mean(generate.get(k, 0.0) for k in range(1, steps + 1))


def update_peak_mb(side):
    """Peak MB above the loaded baseline of one update pass, `side` 'ours' or 'trl' (see above)."""
    N, P, L = bench_memory.N, bench_memory.PROMPT, bench_memory.LENGTH
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = bench_memory.random_qwen(device)
    prompt_ids, completion_ids = (torch.randint(0, bench_memory.VOCAB, (N, n), device=device) for n in (P, L))
    if side == "trl":
        from datasets import Dataset
        from transformers import AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(ROOT, "tests", "fixtures",
                                                               "qwen2.5-tokenizer"))
        with tempfile.TemporaryDirectory() as out:
            trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                                  args=GRPOConfig(output_dir=out, per_device_train_batch_size=N, num_generations=N,
                                                  max_completion_length=L, use_cpu=device.type == "cpu", bf16=False,
                                                  gradient_checkpointing=False, report_to="none"),
                                  train_dataset=Dataset.from_list([{"prompt": "1+1="}] * N), processing_class=tokenizer)
        model = trainer.model
    reset_peak_memory(device)
    base = peak_memory_mb(device)
    if side == "trl":
        ids = torch.cat([prompt_ids, completion_ids], 1)
        logp, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, torch.ones_like(ids), L, batch_size=N,
                                                                compute_entropy=True)
    else:
        ones = torch.ones(N, P, device=device), torch.ones(N, L, device=device)
        logp, _ = completion_logprobs(model, prompt_ids, ones[0], completion_ids, ones[1], 1.0, N, grad=True, entropy=True)
    logp.sum().backward()
    return peak_memory_mb(device) - base


def memory():
    print(f"\nupdate pass, peak memory: random 10 M-parameter Qwen2, {bench_memory.VOCAB:,}-token vocabulary, "
          f"{bench_memory.N} x {bench_memory.LENGTH} tokens in one micro-batch")
    print("| ours MB | TRL MB | ours / TRL |\n|---|---|---|")
    peaks = [json.loads(subprocess.run([sys.executable, "-m", "benches.bench_trl", "--memory", side], capture_output=True,
                                       text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1]) for side in ("ours", "trl")]
    print(f"| {peaks[0]:.0f} | {peaks[1]:.0f} | {peaks[0] / peaks[1]:.2f} |", flush=True)


def main(steps=4):
    try:
        import trl
    except ImportError:
        return print("\nTRL comparison skipped: trl is not installed (it is in requirements.txt)")
    print(f"\nours vs TRL {trl.__version__} GRPOTrainer: random 4-layer 128-wide Llama, character tokenizer, "
          f"{torch.get_num_threads()} threads; {steps} timed steps after one warm-up step")
    print("| prompts x responses x tokens | ours s/step (generate / score / update) | TRL s/step (generate) | ours / TRL |\n"
          "|---|---|---|---|")
    tmp = tempfile.mkdtemp(prefix="bench_trl_")
    try:
        random_llama(char_tokenizer(), os.path.join(tmp, "model"))
        for P, G, T in SHAPES:
            total, phases = ours(os.path.join(tmp, "model"), P, G, T, steps, os.path.join(tmp, "ours"))
            theirs, their_generate = trl_grpo(os.path.join(tmp, "model"), P, G, T, steps, os.path.join(tmp, "trl"))
            print(f"| {P} x {G} x {T} | {total:.3f} ({phases['t_generate']:.3f} / {phases['t_score']:.3f} / "
                  f"{phases['t_update']:.3f}) | {theirs:.3f} ({their_generate:.3f}) | {total / theirs:.2f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    memory()


REAL_SHAPES = ((2, 8, 48), (4, 8, 48))  # the real tier's batch, and twice the prompts


def real(steps=2):
    """Ours against TRL on SmolLM2-135M-Instruct (seconds per step; peak resident memory of each
    whole run, in its own process), then the generation options on our sampler's prompts."""
    name = "smollm2-135m-instruct"
    print(f"\nours vs TRL GRPOTrainer on {name} (float32), the words task, temperature 0.7, "
          f"{torch.get_num_threads()} threads; {steps} timed steps after one warm-up step; each run in its own process")
    print("| prompts x responses x tokens | ours s/step (generate / update) | TRL s/step (generate) | ours / TRL | "
          "ours peak MB | TRL peak MB |\n|---|---|---|---|---|---|")
    for P, G, T in REAL_SHAPES:
        runs = [json.loads(subprocess.run([sys.executable, "-m", "benches.bench_trl", "--real-run", side, str(P), str(G), str(T),
                                           str(steps)], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1])
                for side in ("ours", "trl")]
        (total, phases, ours_mb), (theirs, their_generate, trl_mb) = runs
        print(f"| {P} x {G} x {T} | {total:.1f} ({phases['t_generate']:.1f} / {phases['t_update']:.1f}) | {theirs:.1f} "
              f"({their_generate:.1f}) | {total / theirs:.2f} | {ours_mb:.0f} | {trl_mb:.0f} |", flush=True)
    generation_options(name)


def real_run(side, P, G, T, steps):
    """One side of real(), in this process: [seconds, phases or generate seconds, peak MB]."""
    reset_peak_memory(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        if side == "ours":
            out = ours("smollm2-135m-instruct", P, G, T, steps, tmp, instruction=None, temperature=0.7)
        else:
            out = trl_grpo("smollm2-135m-instruct", P, G, T, steps, tmp, temperature=0.7)
    return [*out, peak_memory_mb(torch.device("cpu"))]


def generation_options(name, n=16, T=48):
    """Greedy generation of n words-task prompts, T new tokens at most, under each option."""
    from transformers import GenerationConfig
    cfg = gb.GRPOConfig(model=name)
    model, tokenizer = load_policy(name, cfg, torch.device("cpu"))
    rows, _ = load_task(cfg)
    prompts = [prompt_ids(tokenizer, r["question"], resolve_instruction(cfg), r.get("example")) for r in rows[:n]]
    ids, mask, _, _ = pad_batch(prompts, [[]] * n, tokenizer.pad_token_id, torch.device("cpu"))
    threads = torch.get_num_threads()

    def timed(label, cache=None, compiled=False, threads_now=threads):
        torch.set_num_threads(threads_now)
        gen = GenerationConfig(do_sample=False, max_new_tokens=T, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=stop_ids(model), cache_implementation=cache)
        forward = model.forward
        if compiled:
            model.forward = torch.compile(forward)
        try:
            seconds = []
            for _ in range(2):  # the first call includes compiling (and the cache's set-up)
                start = time.perf_counter()
                with torch.no_grad():
                    out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gen)
                seconds.append(time.perf_counter() - start)
        finally:
            model.forward = forward
            torch.set_num_threads(threads)
        print(f"| {label} | {seconds[0]:.1f} | {seconds[1]:.1f} | {out.shape[1] - ids.shape[1]} |", flush=True)
        return out
    print(f"\ngeneration, greedy, {n} prompts of the words task, at most {T} new tokens ({name}, float32)\n"
          "| option | first call s | second call s | new tokens |\n|---|---|---|---|")
    reference = timed("dynamic cache (transformers' default, ours)")
    for label, kw in (("static cache", {"cache": "static"}), ("1 thread", {"threads_now": 1}),
                      ("torch.compile of the forward", {"compiled": True})):
        try:
            same = torch.equal(timed(label, **kw), reference)
        except Exception as e:  # an option this transformers or torch build refuses is a finding, not a crash
            print(f"| {label} | failed: {first_line(e)} | | |")
            continue
        if not same:
            print(f"  ({label}: greedy tokens differ from the default's)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--real-run"]:
        side, P, G, T, steps = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(real_run(side, P, G, T, steps)))
    elif sys.argv[1:] == ["--real"]:
        real()
    elif sys.argv[1:2] == ["--memory"] and len(sys.argv) == 3:
        print(json.dumps(update_peak_mb(sys.argv[2])))
    elif sys.argv[1:] == ["--memory"]:
        memory()
    elif sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
    elif sys.argv[1:]:  # before minutes of timing, not after
        sys.exit(f"error: {' '.join(sys.argv[1:])}: not an option; python -m benches.bench_trl [--memory | --real | --help]")
    else:
        main()
