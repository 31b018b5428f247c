"""Peak memory of scoring and of the update with a real vocabulary, with and without chunking.

    python -m benches.bench_memory      # also part of ./run.sh bench

A random 10 M-parameter Qwen2ForCausalLM with Qwen2.5's 151,936-token vocabulary (built from a
config: no download), 8 responses of 300 tokens in one micro-batch. Each case runs in its own
process, so that its peak (resident memory on a CPU, allocated memory on a GPU) is its own; the
table gives the peak above the process's memory after loading, as a multiple of one float32
logits tensor of the micro-batch (8 x 301 x 151,936 x 4 bytes = 1.46 GB).
"""
import json
import os
import subprocess
import sys

import torch

from loop.language_model import completion_logprobs
from loop.report import peak_memory_mb, reset_peak_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where this runs itself, as a module

N, PROMPT, LENGTH, VOCAB = 8, 20, 300, 151936


def random_qwen(device):
    """The benchmark's model: a random 10 M-parameter Qwen2 with Qwen2.5's vocabulary (benches/bench_trl.py's too)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                        max_position_embeddings=1024)).to(device)


def measure(phase, chunked):
    """Peak MB above the baseline of one `phase` ('score': no-grad log-probs and entropy as the
    rollout computes them; 'update': log-probs with grad and the backward)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = random_qwen(device)
    prompt_ids, completion_ids = torch.randint(0, VOCAB, (N, PROMPT), device=device), torch.randint(0, VOCAB, (N, LENGTH), device=device)
    ones = torch.ones(N, PROMPT, device=device), torch.ones(N, LENGTH, device=device)
    reset_peak_memory(device)
    base = peak_memory_mb(device)
    logp, _ = completion_logprobs(model, prompt_ids, ones[0], completion_ids, ones[1], 1.0, N, grad=phase == "update",
                                  entropy=phase == "score", chunked=chunked)
    if phase == "update":
        logp.sum().backward()
    return peak_memory_mb(device) - base


def main():
    logits_mb = N * (LENGTH + 1) * VOCAB * 4 / 2 ** 20
    print(f"\nreal vocabulary ({VOCAB:,} tokens), 10 M-parameter random Qwen2, {N} x {LENGTH} tokens in one micro-batch; "
          f"one float32 logits tensor = {logits_mb:.0f} MB")
    print("| phase | full log-softmax: peak MB (x logits) | chunked: peak MB (x logits) |\n|---|---|---|")
    for phase in ("score", "update"):
        cells = []
        for chunked in (False, True):
            out = subprocess.run([sys.executable, "-m", "benches.bench_memory", phase, str(chunked)], capture_output=True, text=True,
                                 check=True, cwd=ROOT)
            mb = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{mb:.0f} ({mb / logits_mb:.2f}x)")
        print(f"| {phase} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(measure(sys.argv[1], sys.argv[2] == "True")))
    elif sys.argv[1:] in (["-h"], ["--help"]):
        print(__doc__)
    elif sys.argv[1:]:
        sys.exit(f"error: {' '.join(sys.argv[1:])}: not an option; python -m benches.bench_memory takes none")
    else:
        main()
