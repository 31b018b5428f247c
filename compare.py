"""Compare GRPO, GCPO, CEPO and Gold on the embedded default: what `./run.sh` and `./run.sh bench` run.

    python compare.py [--seeds 0 1 2] [--methods grpo gcpo cepo gold]   # train all, write results/
    python compare.py --bench                                          # seconds per phase, one process

Every method starts from the same cached warm start with the same seeds and the same budget (the
defaults of GRPOConfig); Gold runs with GRPO's loss (SAME_LOSS_AS_GRPO), so its row measures the
injection alone. Each run is its own process, so each reports its own peak memory; its
files are in runs/<method>/seed<k>/. Results: results/summary.md, summary.json, curves.png and
credit_embedded.html (the same responses coloured by each method's token credit).
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

import cepo
import gcpo
import gold
import grpo_baseline as gb
from data import prompt_ids
from embedded_task import warm_start
from language_model import load_policy
from report import credit_examples, plot_curves, render_credit_html, render_credit_png

METHODS = {"grpo": ("grpo_baseline.py", gb.GRPOConfig), "gcpo": ("gcpo.py", gcpo.GCPOConfig),
           "cepo": ("cepo.py", cepo.CEPOConfig), "gold": ("gold.py", gold.GoldConfig)}
SEAMS = {"grpo": gb.METHOD, "gcpo": gcpo.METHOD, "cepo": cepo.METHOD, "gold": gold.METHOD}
TARGET_ACC = 0.9  # steps_to_target: the first evaluation at or above this held-out accuracy
PHASES = ("t_generate", "t_score", "t_credit", "t_update")
# Gold's own defaults (sequence ratio, seq-mean-token-mean, GSPO's clip) also change the loss of every
# group; here it takes GRPO's, so "Gold vs GRPO" is the injection alone. At one update per rollout the
# ratio is 1, and the sequence ratio's gradient equals the token ratio's: only the aggregation is lost.
SAME_LOSS_AS_GRPO = {"gold": {"ratio_level": "token", **{f: getattr(gb.GRPOConfig(), f)
                                                        for f in ("loss_type", "epsilon", "epsilon_high")}}}


def method_config(name, **overrides):
    """The config `name` runs with here: its defaults, GRPO's loss for Gold, then `overrides`."""
    return METHODS[name][1](**{**SAME_LOSS_AS_GRPO.get(name, {}), **overrides})


def run_all(methods, seeds, runs_dir):
    """Train every method with every seed, each in a subprocess; returns {method: [run dirs]}."""
    cfg = gb.GRPOConfig()
    warm_start(cfg, *gb.load_task(cfg), torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # once, first
    runs = {m: [] for m in methods}
    bar = tqdm([(m, s) for s in seeds for m in methods], desc="runs", file=sys.stdout)
    for method, seed in bar:
        bar.set_postfix(method=method, seed=seed)
        out = os.path.join(runs_dir, method, f"seed{seed}")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "log.txt"), "w") as log:
            same_loss = [a for k, v in SAME_LOSS_AS_GRPO.get(method, {}).items() for a in (f"--{k}", str(v))]
            done = subprocess.run([sys.executable, METHODS[method][0], "--seed", str(seed), "--output_dir", out,
                                   "--overwrite_output_dir", *same_loss], stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            with open(os.path.join(out, "log.txt")) as log:
                sys.exit(f"error: {method} seed {seed} failed; the end of {out}/log.txt:\n{log.read()[-3000:]}")
        runs[method].append(out)
    return runs


def load_run(out):
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return summary, [json.loads(line) for line in f]


def steps_to_target(history):
    return next((m["step"] for m in history if m.get("eval_acc", 0) >= TARGET_ACC), None)


def aggregate(runs):
    """{method: {start_acc, final_acc (mean), final_acc_std, steps_to_target, sec_per_step, ...}}."""
    methods, histories = {}, {}
    for method, outs in runs.items():
        loaded = [load_run(out) for out in outs]
        summaries, histories[method] = [s for s, _ in loaded], [h for _, h in loaded]
        finals = [s["final_acc"] for s in summaries]
        reached = [steps_to_target(h) for h in histories[method]]
        methods[method] = {
            "seeds": len(outs), "start_acc": summaries[0]["start_acc"],
            "final_acc": statistics.mean(finals), "final_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "final_accs": finals,
            "steps_to_target": statistics.mean(reached) if None not in reached else None,
            "reached_target": sum(r is not None for r in reached),
            **{p: statistics.mean(s[p] for s in summaries) for p in (*PHASES, "sec_per_step")},
            "peak_mem_mb": max(s["peak_mem_mb"] for s in summaries)}
        if method == "gold":
            methods[method]["gold_injections_per_step"] = statistics.mean(
                m["gold_injections"] for h in histories[method] for m in h if "gold_injections" in m)
    base = methods.get("grpo", {}).get("sec_per_step")
    for m in methods.values():
        m["vs_grpo"] = m["sec_per_step"] / base if base else None
    return methods, histories


def table(methods):
    rows = [f"| method | warm-start acc | final acc (mean ± std) | steps to {TARGET_ACC:.0%} | s/step "
            "(generate / score / credit / update) | vs GRPO | peak MB |", "|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        reached = (f"{m['steps_to_target']:.0f}" if m["steps_to_target"] is not None
                   else f"not reached ({m['reached_target']}/{m['seeds']} seeds did)")
        rows.append(f"| {name} | {m['start_acc']:.3f} | {m['final_acc']:.3f} ± {m['final_acc_std']:.3f} | {reached} | "
                    f"{m['sec_per_step']:.3f} ({' / '.join(f'{m[p]:.3f}' for p in PHASES)}) | "
                    f"{m['vs_grpo']:.2f}x | {m['peak_mem_mb']:.0f} |")
    return "\n".join(rows) + "\n"


def credit_pictures(path, device):
    """One rolled-out batch of the warm start, its token credit under GRPO, GCPO and CEPO side by
    side (CEPO at step 1, λ = λ0), so a reader sees which tokens each method calls decisive.
    Writes path.html and path.png; returns CEPO's hint check on the held-out problems."""
    cfg = gb.GRPOConfig()
    train_rows, eval_rows = gb.load_task(cfg)
    model, tokenizer = load_policy(warm_start(cfg, train_rows, eval_rows, device), cfg, device)
    torch.manual_seed(0)
    rows = train_rows[:cfg.prompts_per_step]
    batch, _, _ = gb.rollout(model, tokenizer, rows, [prompt_ids(tokenizer, r["question"]) for r in rows], cfg,
                             device, None)
    columns = {}
    for name, credit, method_cfg in (("GRPO (uniform)", gb.grpo_credit, cfg), ("GCPO", gcpo.gcpo_credit, gcpo.GCPOConfig()),
                                     ("CEPO", cepo.cepo_credit, cepo.CEPOConfig())):
        batch.notes = None
        token_adv, _ = credit(batch, model, tokenizer, method_cfg, 1)
        columns[name] = credit_examples(batch, token_adv, tokenizer, k=8)
    render_credit_html(path + ".html", columns)
    render_credit_png(path + ".png", {name: examples[:6] for name, examples in columns.items()})
    gap, wins = cepo.hint_contrast(model, tokenizer, eval_rows, cepo.CEPOConfig())
    return {"mean_logp_gap": gap, "correct_hint_wins": wins}


def bench(steps=6):
    """Seconds per step by phase and peak memory of each method, in this one process, on the
    embedded default and on a larger batch (64 prompts x 16 responses)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}; each row: {steps} RL steps after one warm-up step, from the same warm start")
    for label, overrides in (("embedded default (16 x 8)", {}),
                             ("larger batch (64 x 16)", {"prompts_per_step": 64, "num_generations": 16})):
        print(f"\n{label}\n| method | s/step | generate | score | credit | update | vs GRPO | peak MB |\n|---|---|---|---|---|---|---|---|")
        base = None
        for name in METHODS:
            out = os.path.join("runs", "bench", name)
            cfg = method_config(name, output_dir=out, overwrite_output_dir=True, max_steps=steps + 1, eval_steps=10**6,
                                eval_size=8, save_steps=10**6, **overrides)
            if name == "cepo":
                cfg.lambda_schedule = "constant"  # measure the teachers' cost on every step
            with contextlib.redirect_stdout(io.StringIO()):  # the run's own progress bar would break the table
                gb.train(cfg, **SEAMS[name])
            with open(os.path.join(out, "metrics.jsonl")) as f:
                timed = [json.loads(line) for line in f][2:]  # drop step 0 (eval) and the warm-up step
            mean = {p: statistics.mean(m[p] for m in timed) for p in PHASES}
            total = sum(mean.values())
            base = base or total
            print(f"| {name} | {total:.3f} | " + " | ".join(f"{mean[p]:.3f}" for p in PHASES)
                  + f" | {total / base:.2f}x | {max(m['peak_mem_mb'] for m in timed):.0f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per method and seed")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--bench", action="store_true", help="time each method's phases instead")
    args = parser.parse_args()
    if args.bench:
        return bench()
    start = time.time()
    runs = run_all(args.methods, args.seeds, args.runs_dir)
    methods, histories = aggregate(runs)
    os.makedirs(args.results_dir, exist_ok=True)
    text = table(methods)
    with open(os.path.join(args.results_dir, "summary.md"), "w") as f:
        f.write(text)
    plot_curves(histories, os.path.join(args.results_dir, "curves.png"))
    hint_check = credit_pictures(os.path.join(args.results_dir, "credit_embedded"),
                                 torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    with open(os.path.join(args.results_dir, "summary.json"), "w") as f:
        json.dump({"config": {"seeds": args.seeds, "target_acc": TARGET_ACC, **vars(gb.GRPOConfig())},
                   "methods": methods, "cepo_hint_check": hint_check}, f, indent=1)
    print(text + f"\nCEPO hint check on the warm start: log P(reference | right hint) - log P(reference | wrong hint) = "
          f"{hint_check['mean_logp_gap']:+.2f} nats on average; the right hint wins on "
          f"{hint_check['correct_hint_wins']:.0%} of {len(gb.load_task(gb.GRPOConfig())[1])} held-out problems")
    print(f"{len(args.seeds) * len(args.methods)} runs in {(time.time() - start) / 60:.1f} min; results in {args.results_dir}/")


if __name__ == "__main__":
    main()
