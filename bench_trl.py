"""Our GRPO step against TRL's GRPOTrainer, same process, same model, tokenizer, prompts and shapes;
then the peak memory of each one's update pass with a real vocabulary.

    python bench_trl.py            # also part of ./run.sh bench
    python bench_trl.py --memory   # only the memory comparison

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

import bench_memory
import grpo_baseline as gb
from data import check_answer, prompt_ids
from embedded_task import char_tokenizer
from language_model import completion_logprobs
from report import peak_memory_mb, phase_means, read_metrics, reset_peak_memory

SHAPES = ((8, 8, 32), (16, 8, 64), (16, 16, 64), (16, 16, 128))  # prompts, responses per prompt, new tokens


def random_llama(tokenizer, path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 bos_token_id=None)).save_pretrained(path)
    tokenizer.save_pretrained(path)


def ours(path, P, G, T, steps, out):
    cfg = gb.GRPOConfig(model=path, instruction="", task="sum", prompts_per_step=P, num_generations=G,
                        max_completion_length=T, max_steps=steps + 1, eval_steps=10**6, eval_size=8, save_steps=10**6,
                        output_dir=out, overwrite_output_dir=True)
    with contextlib.redirect_stdout(io.StringIO()):
        gb.train(cfg)
    phases = phase_means(read_metrics(out)[2:])  # without step 0 (evaluation) and the warm-up step
    return sum(phases.values()), phases


def trl_grpo(path, P, G, T, steps, out):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    tokenizer = AutoTokenizer.from_pretrained(path)
    rows, _ = gb.load_task(gb.GRPOConfig(task="sum"))
    dataset = Dataset.from_list([{"prompt": tokenizer.decode(prompt_ids(tokenizer, r["question"], "")), "answer": r["answer"]}
                                 for r in rows])

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
    args = GRPOConfig(output_dir=out, per_device_train_batch_size=64, gradient_accumulation_steps=P * G // 64,
                      num_generations=G, max_completion_length=T, temperature=1.0, top_k=0, top_p=1.0, beta=0.0,
                      num_iterations=1, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, learning_rate=1e-4,
                      lr_scheduler_type="constant", max_steps=steps + 1, gradient_checkpointing=False, use_cpu=True,
                      bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path), reward_funcs=[reward], args=args,
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
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures",
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
    peaks = [json.loads(subprocess.run([sys.executable, __file__, "--memory", side], capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1]) for side in ("ours", "trl")]
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory"] and len(sys.argv) == 3:
        print(json.dumps(update_peak_mb(sys.argv[2])))
    elif sys.argv[1:] == ["--memory"]:
        memory()
    else:
        main()
