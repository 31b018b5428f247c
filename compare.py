"""Compare GRPO, GCPO, CEPO and Gold: the benchmark `./run.sh` runs, and `./run.sh bench`.

    python compare.py              # the benchmark: 3 warm starts x 2 RL seeds x 4 methods -> results/
    python compare.py --quick      # the same pipeline on a small budget (a smoke run, not a result)
    python compare.py --bench      # seconds per step by phase and peak memory, one process

The unit of the benchmark is a (warm start, RL seed) pair. Each warm start is an independent draw
of the embedded model (--warm_start_seed), checked for what the methods rely on (does it read
CEPO's hints and GCPO's negative prompts?); every method then trains from it with each RL seed,
on the same prompts and budget (GRPOConfig's defaults). Gold runs with GRPO's loss
(SAME_LOSS_AS_GRPO), so its row measures the injection alone. Per method: final held-out accuracy,
the area under the held-out accuracy curve (AUC: the mean accuracy over training), steps to
+0.15 over the warm start, and the paired difference to GRPO, each with a 95% bootstrap interval
that resamples warm starts and then seeds within them (both vary from machine to machine). On the
chain task, credit is also measured against the ground truth: the share of |Â| on decisive tokens.
Runs go --jobs at a time, one thread each. Results: results/summary.md, summary.json, curves.png,
credit_embedded.html/png.
"""
import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

import bench_memory
import bench_trl
import cepo
import gcpo
import gold
import grpo_baseline as gb
from data import evaluate, prompt_ids
from embedded_task import warm_start
from language_model import load_policy
from report import PHASES, credit_examples, phase_means, plot_curves, read_metrics, render_credit_html, render_credit_png

METHODS = {"grpo": ("grpo_baseline.py", gb.GRPOConfig), "gcpo": ("gcpo.py", gcpo.GCPOConfig),
           "cepo": ("cepo.py", cepo.CEPOConfig), "gold": ("gold.py", gold.GoldConfig)}
SEAMS = {"grpo": gb.METHOD, "gcpo": gcpo.METHOD, "cepo": cepo.METHOD, "gold": gold.METHOD}
TARGET_GAIN = 0.15  # steps_to_target: the first evaluation at least this far above the warm start
# A warm start passes a check when the reference solutions are at least this many nats (per solution) more
# likely under the real context than under the contrasting one: e times for CEPO's right vs. wrong hint and
# GCPO's question vs. its blanked version; the wrong-answer request asks for one slip in ~3 steps, so less.
CHECKS = {"hint_contrast_nats": 1.0, "negative_contrast_wrong_answer": 0.25, "negative_contrast_empty_prompt": 1.0}
QUICK = {"warm_start_steps": 120, "max_steps": 12, "eval_steps": 4, "eval_size": 100}  # plus 2 warm starts x 1 seed
# Gold's own defaults (sequence ratio, seq-mean-token-mean, GSPO's clip) also change the loss of every
# group; here it takes GRPO's, so "Gold vs GRPO" is the injection alone. At one update per rollout the
# ratio is 1, and the sequence ratio's gradient equals the token ratio's: only the aggregation is lost.
SAME_LOSS_AS_GRPO = {"gold": {"ratio_level": "token", **{f: getattr(gb.GRPOConfig(), f)
                                                        for f in ("loss_type", "epsilon", "epsilon_high")}}}


def method_config(name, **overrides):
    """The config `name` runs with here: its defaults, GRPO's loss for Gold, then `overrides`."""
    return METHODS[name][1](**{**SAME_LOSS_AS_GRPO.get(name, {}), **overrides})


def cli(options):
    return [a for k, v in options.items() for a in (f"--{k}", str(v))]


def check_warm_start(cfg, out):
    """Build the warm start of cfg.warm_start_seed and check it: held-out accuracy, and whether it
    reads CEPO's hints and GCPO's two negative prompts (each a mean log-likelihood gap of the
    reference solutions, passed when above its CHECKS threshold). Written to out/checks.json."""
    device = torch.device("cpu")
    train_rows, eval_rows = gb.load_task(cfg)
    model, tokenizer = load_policy(warm_start(cfg, train_rows, eval_rows, device), cfg, device)
    rows = eval_rows[:100]
    checks = {"seed": cfg.warm_start_seed, "start_acc": evaluate(model, tokenizer, eval_rows, cfg, device, ""),
              "hint_contrast_nats": cepo.hint_contrast(model, tokenizer, rows, cepo.CEPOConfig(**vars(cfg)))[0]}
    for negative in ("wrong_answer", "empty_prompt"):
        checks[f"negative_contrast_{negative}"] = gcpo.negative_contrast(
            model, tokenizer, rows, gcpo.GCPOConfig(**vars(cfg), negative=negative))
    checks["failed_checks"] = [k for k, threshold in CHECKS.items() if not checks[k] > threshold]
    with open(os.path.join(out, "checks.json"), "w") as f:
        json.dump(checks, f, indent=1)


def run_all(methods, warm_starts, seeds, runs_dir, jobs, budget):
    """Build and check every warm start, then train every method from each with every seed:
    subprocesses, `jobs` at a time, one thread each (on a tiny model two single-threaded runs do
    more work than one two-threaded run). Returns ({warm start: checks}, {method: [(w, s, dir)]})."""
    queue = [("warm", w, None) for w in warm_starts] + [(m, w, s) for w in warm_starts for s in seeds for m in methods]
    cost = {"warm": 3}  # a warm start takes about as long as three runs: the progress bar's weights
    bar = tqdm(total=sum(cost.get(j[0], 1) for j in queue), desc="benchmark", unit="run", file=sys.stdout)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running, built, runs = {}, set(), {m: [] for m in methods}
    while queue or running:
        for job in [j for j in queue if j[0] == "warm" or j[1] in built][:jobs - len(running)]:
            queue.remove(job)
            kind, w, s = job
            out = os.path.join(runs_dir, f"warm{w}", "checks" if kind == "warm" else f"{kind}_seed{s}")
            os.makedirs(out, exist_ok=True)
            options = {**budget, "warm_start_seed": w, "output_dir": out}
            if kind == "warm":
                cmd = [sys.executable, __file__, "--check_warm_start", *cli(options)]
            else:
                options.update(seed=s, save_steps=budget["max_steps"], **SAME_LOSS_AS_GRPO.get(kind, {}))
                cmd = [sys.executable, METHODS[kind][0], *cli(options), "--overwrite_output_dir"]
                runs[kind].append((w, s, out))
            log = open(os.path.join(out, "log.txt"), "w")
            running[job] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, out)
        time.sleep(0.5)
        for job, (proc, log, out) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[job]
            if proc.returncode:
                for other, *_ in running.values():
                    other.kill()
                with open(os.path.join(out, "log.txt")) as f:
                    sys.exit(f"error: {job[0]} (warm start {job[1]}, seed {job[2]}) failed; the end of {out}/log.txt:\n"
                             + f.read()[-3000:])
            if job[0] == "warm":
                built.add(job[1])
            bar.update(cost.get(job[0], 1))
            bar.set_postfix(done=f"{job[0]} w{job[1]}" + (f" s{job[2]}" if job[2] is not None else ""))
    bar.close()
    checks = {}
    for w in warm_starts:
        with open(os.path.join(runs_dir, f"warm{w}", "checks", "checks.json")) as f:
            checks[w] = json.load(f)
    return checks, runs


def load_run(out):
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    return summary, read_metrics(out)


def run_record(w, s, out):
    """One run's numbers: final accuracy, AUC, steps to target, credit against the ground truth,
    cost. AUC is the trapezoid area under (step, held-out accuracy) over the run, divided by its
    length: the accuracy averaged over training, which rewards learning early."""
    summary, history = load_run(out)
    evals = [(m["step"], m["eval_acc"]) for m in history if "eval_acc" in m]
    auc = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(evals, evals[1:])) / (evals[-1][0] - evals[0][0])
    target = evals[0][1] + TARGET_GAIN
    steps = [m for m in history if m["step"] > 0]
    def mean_of(key):
        values = [m[key] for m in steps if m.get(key) is not None]
        return statistics.mean(values) if values else None
    tags = [m["free_tag_entropy"] for m in steps if "free_tag_entropy" in m]
    return {"warm_start": w, "seed": s, "start_acc": evals[0][1], "final_acc": evals[-1][1], "auc": auc,
            "steps_to_target": next((st for st, a in evals if a >= target), None),
            **{key: mean_of(key) for key in ("decisive_credit_share", "decisive_credit_share_uniform")},
            "free_tag_entropy_first": tags[0] if tags else None, "free_tag_entropy_last": tags[-1] if tags else None,
            "gold_injections_per_step": mean_of("gold_injections"), "sec_per_step": summary["sec_per_step"],
            "peak_mem_mb": summary["peak_mem_mb"], "dir": out}, history


def bootstrap_ci(by_warm_start, n=10000, seed=0):
    """95% percentile interval of the mean of {warm start: [value per seed]}, resampling warm starts
    with replacement and then seeds within each: both levels are random draws."""
    rng = random.Random(seed)
    groups = [v for v in by_warm_start.values() if v]
    means = []
    for _ in range(n):
        picked = [rng.choice(g) for g in (rng.choice(groups) for _ in groups) for _ in g]
        means.append(sum(picked) / len(picked))
    means.sort()
    return [means[int(0.025 * n)], means[int(0.975 * n) - 1]]


def summarize_method(records, base_records):
    """Means and intervals of one method's runs, and its paired differences to GRPO's."""
    def grouped(values):
        out = {}
        for r, v in zip(records, values):
            out.setdefault(r["warm_start"], []).append(v)
        return out
    base = {(r["warm_start"], r["seed"]): r for r in base_records}
    out = {"runs": records}
    for key in ("final_acc", "auc"):
        values = [r[key] for r in records]
        diffs = [r[key] - base[r["warm_start"], r["seed"]][key] for r in records]
        out.update({key: statistics.mean(values), f"{key}_ci": bootstrap_ci(grouped(values)),
                    f"{key}_diff_vs_grpo": statistics.mean(diffs), f"{key}_diff_vs_grpo_ci": bootstrap_ci(grouped(diffs))})
    reached = [r["steps_to_target"] for r in records if r["steps_to_target"] is not None]
    out.update({"steps_to_target": statistics.mean(reached) if reached else None, "reached_target": len(reached),
                "sec_per_step": statistics.mean(r["sec_per_step"] for r in records),
                "peak_mem_mb": max(r["peak_mem_mb"] for r in records)})
    for key in ("decisive_credit_share", "decisive_credit_share_uniform", "free_tag_entropy_first", "free_tag_entropy_last",
                "gold_injections_per_step"):
        values = [r[key] for r in records if r[key] is not None]
        out[key] = statistics.mean(values) if values else None
    return out


def aggregate(runs):
    """{method: summary} and {method: [histories]} from {method: [(warm start, seed, dir)]}."""
    records = {m: [run_record(*r) for r in rs] for m, rs in runs.items()}
    base = records.get("grpo") or next(iter(records.values()))
    methods = {m: summarize_method([r for r, _ in rs], [r for r, _ in base]) for m, rs in records.items()}
    grpo_sec = methods.get("grpo", {}).get("sec_per_step")
    for m in methods.values():
        m["vs_grpo"] = m["sec_per_step"] / grpo_sec if grpo_sec else None
    return methods, {m: [h for _, h in rs] for m, rs in records.items()}


def interval(m, key, signed=False):
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(m[key])} [{f.format(m[key + '_ci'][0])}, {f.format(m[key + '_ci'][1])}]"


def table(methods, checks):
    n = len(next(iter(methods.values()))["runs"])
    rows = [f"| method | final acc [95% CI] | AUC [95% CI] | AUC − GRPO's, paired [95% CI] | final − GRPO's [95% CI] | "
            f"steps to +{TARGET_GAIN} | decisive share of \\|Â\\| (uniform) | free-tag entropy first → last | s/step | "
            "vs GRPO | peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in methods.items():
        share = (f"{m['decisive_credit_share']:.3f} ({m['decisive_credit_share_uniform']:.3f})"
                 if m["decisive_credit_share"] is not None else "—")
        tags = (f"{m['free_tag_entropy_first']:.2f} → {m['free_tag_entropy_last']:.2f}"
                if m["free_tag_entropy_first"] is not None else "—")
        reached = f"{m['steps_to_target']:.0f} ({m['reached_target']}/{n} runs)" if m["steps_to_target"] else f"— (0/{n})"
        rows.append(f"| {name} | {interval(m, 'final_acc')} | {interval(m, 'auc')} | {interval(m, 'auc_diff_vs_grpo', True)} | "
                    f"{interval(m, 'final_acc_diff_vs_grpo', True)} | {reached} | {share} | {tags} | "
                    f"{m['sec_per_step']:.3f} | {m['vs_grpo']:.2f}x | {m['peak_mem_mb']:.0f} |")
    rows += ["", "| warm start | held-out acc | CEPO hint (nats) | GCPO wrong-answer x⁻ (nats) | GCPO empty x⁻ (nats) | "
             "failed checks |", "|---|---|---|---|---|---|"]
    for c in checks.values():
        rows.append(f"| {c['seed']} | {c['start_acc']:.3f} | {c['hint_contrast_nats']:+.2f} | "
                    f"{c['negative_contrast_wrong_answer']:+.2f} | {c['negative_contrast_empty_prompt']:+.2f} | "
                    f"{', '.join(c['failed_checks']) or 'none'} |")
    return "\n".join(rows) + "\n"


def verdict(methods):
    lines = []
    for name, m in methods.items():
        if name == "grpo":
            continue
        lo, hi = m["auc_diff_vs_grpo_ci"]
        word = "beats GRPO" if lo > 0 else "is worse than GRPO" if hi < 0 else "is not separated from GRPO"
        lines.append(f"- {name} {word}: AUC difference {interval(m, 'auc_diff_vs_grpo', True)}")
    return "\n".join(lines) + "\n"


def task_summary(budget, seeds, checks, methods):
    """One task's entry of results/summary.json."""
    return {"budget": budget, "seeds": seeds, "target_gain": TARGET_GAIN, "check_thresholds": CHECKS,
            "warm_starts": list(checks.values()), "methods": methods}


def credit_pictures(path, cfg, device):
    """One rolled-out batch of the first warm start, its token credit under GRPO, GCPO and CEPO side
    by side (CEPO at step 1, λ = λ0), so a reader sees which tokens each method calls decisive.
    Writes path.html and path.png."""
    train_rows, eval_rows = gb.load_task(cfg)
    model, tokenizer = load_policy(warm_start(cfg, train_rows, eval_rows, device), cfg, device)
    torch.manual_seed(0)
    rows = train_rows[:cfg.prompts_per_step]
    batch, _, _ = gb.rollout(model, tokenizer, rows, [prompt_ids(tokenizer, r["question"]) for r in rows], cfg,
                             device, None)
    columns = {}
    for name, credit, method_cfg in (("GRPO (uniform)", gb.grpo_credit, cfg), ("GCPO", gcpo.gcpo_credit, gcpo.GCPOConfig(**vars(cfg))),
                                     ("CEPO", cepo.cepo_credit, cepo.CEPOConfig(**vars(cfg)))):
        batch.notes = None
        token_adv, _ = credit(batch, model, tokenizer, method_cfg, 1)
        columns[name] = credit_examples(batch, token_adv, tokenizer, k=8)
    render_credit_html(path + ".html", columns)
    render_credit_png(path + ".png", {name: examples[:6] for name, examples in columns.items()})


@contextlib.contextmanager
def forward_seconds(modules):
    """Seconds spent inside completion_logprobs when `modules` call it: the credit phase's extra
    forward passes alone, its physical floor. Yields a one-element list that accumulates."""
    spent, originals = [0.0], {m: m.completion_logprobs for m in modules}

    def timed(forward):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return forward(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                spent[0] += time.perf_counter() - start
        return call
    for m, forward in originals.items():
        m.completion_logprobs = timed(forward)
    try:
        yield spent
    finally:
        for m, forward in originals.items():
            m.completion_logprobs = forward


def bench(steps=6):
    """Seconds per step by phase and peak memory of each method, in this one process, on the
    embedded default and on a larger batch (64 prompts x 16 responses); then the memory of
    scoring and update with a real vocabulary (bench_memory) and our GRPO against TRL's (bench_trl)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}; each row: {steps} RL steps after one warm-up step, from the same warm start")
    for label, overrides in (("embedded default (8 x 8)", {}),
                             ("larger batch (64 x 16)", {"prompts_per_step": 64, "num_generations": 16})):
        print(f"\n{label}\n| method | s/step | generate | score | credit | update | vs GRPO | peak MB | credit / its forwards |\n"
              "|---|---|---|---|---|---|---|---|---|")
        base = None
        for name in METHODS:
            out = os.path.join("runs", "bench", name)
            cfg = method_config(name, output_dir=out, overwrite_output_dir=True, max_steps=steps + 1, eval_steps=10**6,
                                eval_size=8, save_steps=10**6, **overrides)
            if name == "cepo":
                cfg.lambda_schedule = "constant"  # measure the teachers' cost on every step
            with contextlib.redirect_stdout(io.StringIO()), forward_seconds([gcpo, cepo]) as forwards:  # (the run's own
                gb.train(cfg, **SEAMS[name])                                                     # progress bar would break the table)
            steps_run = read_metrics(out)[1:]  # without step 0 (evaluation)
            timed = steps_run[1:]  # and the warm-up step
            mean = phase_means(timed)
            total = sum(mean.values())
            base = base or total
            credit = sum(m["t_credit"] for m in steps_run)  # the forwards are counted over the same steps
            print(f"| {name} | {total:.3f} | " + " | ".join(f"{mean[p]:.3f}" for p in PHASES)
                  + f" | {total / base:.2f}x | {max(m['peak_mem_mb'] for m in timed):.0f} | "
                  + (f"{credit / forwards[0]:.2f}x |" if forwards[0] else "no extra forward |"), flush=True)
    bench_memory.main()
    bench_trl.main()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="chain", choices=("chain", "sum"), help="the embedded task to compare on")
    parser.add_argument("--warm_starts", type=int, nargs="+", default=[0, 1, 2], help="warm-start seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RL seeds, each run from every warm start")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--quick", action="store_true", help=f"2 warm starts x 1 seed on a small budget {QUICK}")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--results_dir", default="results")
    parser.add_argument("--bench", action="store_true", help="time each method's phases instead")
    parser.add_argument("--check_warm_start", action="store_true", help=argparse.SUPPRESS)  # run_all's warm-start jobs
    args, rest = parser.parse_known_args()
    if args.check_warm_start:
        cfg = gb.parse_config(gb.GRPOConfig, rest)
        return check_warm_start(cfg, cfg.output_dir)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    if "grpo" not in args.methods:
        parser.error("--methods must include grpo: every method is reported against it")
    for flag in ("warm_starts", "seeds", "methods"):
        values = getattr(args, flag)
        if len(set(values)) < len(values):
            parser.error(f"--{flag} {' '.join(map(str, values))}: a value is repeated (two runs would share one directory)")
    if args.bench:
        return bench()
    defaults = gb.GRPOConfig()
    budget = {k: getattr(defaults, k) for k in ("warm_start_steps", "max_steps", "eval_steps", "eval_size")}
    if args.quick:
        budget.update(QUICK)
        args.warm_starts, args.seeds = args.warm_starts[:2], args.seeds[:1]
        args.runs_dir, args.results_dir = args.runs_dir + "/quick", args.results_dir + "/quick"
    budget["task"] = args.task
    start = time.time()
    runs_dir = os.path.join(args.runs_dir, args.task)
    checks, runs = run_all(args.methods, args.warm_starts, args.seeds, runs_dir, args.jobs, budget)
    methods, histories = aggregate(runs)
    os.makedirs(args.results_dir, exist_ok=True)
    credit_pictures(os.path.join(args.results_dir, "credit_embedded"),
                    gb.GRPOConfig(**budget, warm_start_seed=args.warm_starts[0]), torch.device("cpu"))
    plot_curves(histories, os.path.join(args.results_dir, "curves.png"))
    minutes = (time.time() - start) / 60
    text = table(methods, checks) + "\n" + verdict(methods)
    if args.quick:
        text = f"Smoke run (--quick: {QUICK}, 2 warm starts x 1 seed): the pipeline works; these are not results.\n\n" + text
    with open(os.path.join(args.results_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.results_dir, "summary.json"), "w") as f:
        json.dump({"tasks": {args.task: task_summary(budget, args.seeds, checks, methods)}, "wall_minutes": minutes},
                  f, indent=1)
    print(text + f"\n{len(args.warm_starts)} warm starts and {sum(map(len, runs.values()))} runs in {minutes:.1f} min; "
          f"results in {args.results_dir}/")


if __name__ == "__main__":
    main()
