"""The benchmark `./run.sh` runs (and `./run.sh bench`): the credit methods against GRPO and
against controls that say what a difference means, on the embedded `chain` task.

    python compare.py              # 6 warm starts x 1 RL seed x 6 arms -> results/      (~30 min, 2 cores)
    python compare.py --full       # 16 warm starts x 1 seed x 8 arms -> results/full/  (~85 min, 2 cores)
    python compare.py --ceiling    # tuned oracles and methods, 16 x 100 steps -> results/ceiling/ (~16 h)
    python compare.py --real       # SmolLM2-135M-Instruct on sums in words -> results/smollm2/ (~5 h)
    python compare.py --quick      # the same pipeline on a tiny budget (a smoke run, not a result)
    python compare.py --recompute results/   # every number again, from the committed per-step metrics
    python compare.py --bench      # seconds per step by phase and peak memory, one process

Arms: the methods (gcpo, cepo, gold), cepo_const (CEPO with λ held at λ0), gcpo_mean (GCPO's
divergences weighed by size, not rank) and the controls
(controls.py): `aa`, GRPO again with another sampling seed on the same prompts (the noise floor);
`oracle`, credit only where the task's ground truth says the reward was decided (a hard placement,
not a ceiling); `value_oracle`, credit from the true token advantage (the ceiling); `soft_oracle`
and `shuffled_oracle`, the oracle softened and shuffled; `random`, GCPO's weights shuffled within
each response; `sft_gold`, Gold's references as a supervised term without its contrast. Gold and
sft_gold take GRPO's loss (ARM_OPTIONS), so they differ by the edit alone.

Design. The unit is the warm start (an independent draw of the embedded model); RL seeds are nested
in it (run seed = 1000 * warm start + seed, so no two warm starts share a prompt stream). Every arm
trains from the same warm starts with the same seeds, so each run pairs with GRPO's. Primary metric:
AUC, the mean held-out accuracy over training (1,000 problems, every eval_steps). Per arm against
GRPO: the mean paired difference, a 95% t-interval on warm-start means (df = W - 1), an exact
sign-flip p over the warm-start means, Holm-adjusted over the arms, and the minimum detectable
effect at 80% power (paired_stats). An arm is separated from GRPO when its Holm-adjusted p < 0.05.
Credit is measured against the ground truth on every step (embedded_task.credit_ground_truth); the
ceiling study also against a Monte-Carlo token advantage on fixed responses (mc_advantage). Runs go
--jobs at a time, one thread each.
"""
import argparse
import contextlib
import gzip
import hashlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
import zlib

import numpy
import scipy.stats
import torch
from tqdm import tqdm

import cepo
import gcpo
import gold
import grpo_baseline as gb
from benches import bench_memory, bench_trl
from benchmark import controls, mc_advantage, paired_stats
from loop import diagnostics
from loop.checkpoint import make_dir, remove
from loop.data import evaluate, prompt_ids, resolve_instruction
from loop.embedded_task import ROLE_NAMES, is_built, load_task, make_arithmetic_task, task_reward, warm_start, warm_start_spec
from loop.language_model import first_line, load_policy
from loop.options import parse_config
from loop.report import PHASES, credit_examples, phase_means, plot_curves, read_metrics, render_credit_html, render_credit_png
from loop.word_task import WORD_ROLES

METHODS = {"grpo": ("grpo_baseline.py", gb.GRPOConfig), "gcpo": ("gcpo.py", gcpo.GCPOConfig),
           "cepo": ("cepo.py", cepo.CEPOConfig), "gold": ("gold.py", gold.GoldConfig)}
SEAMS = {"grpo": gb.METHOD, "gcpo": gcpo.METHOD, "cepo": cepo.METHOD, "gold": gold.METHOD}
# arm: (command after the interpreter, config class, seams)
ARMS = {**{m: ([file], cfg, SEAMS[m]) for m, (file, cfg) in METHODS.items()},
        "aa": (["grpo_baseline.py"], gb.GRPOConfig, gb.METHOD),
        "cepo_const": (["cepo.py"], cepo.CEPOConfig, cepo.METHOD),  # λ = λ0 on every step (ARM_OPTIONS)
        "gcpo_mean": (["gcpo.py"], gcpo.GCPOConfig, gcpo.METHOD),  # w = d / mean d (ARM_OPTIONS)
        **{a: (["-m", "benchmark.controls", a], cfg, seams) for a, (cfg, seams) in controls.ARMS.items()}}
AA_SEED_OFFSET = 500  # aa samples with seed + this, on GRPO's prompts (data_seed = seed)
TARGET_GAIN = 0.15  # steps_to_target: the first evaluation at least this far above the warm start
# A warm start passes a check when the reference solutions are at least this many nats (per solution) more
# likely under the real context than under the contrasting one: e times for CEPO's right vs. wrong hint and
# GCPO's question vs. its blanked version; the wrong-answer request asks for one slip in ~3 steps, so less.
CHECKS = {"hint_contrast_nats": 1.0, "negative_contrast_wrong_answer": 0.25, "negative_contrast_empty_prompt": 1.0}
BUDGET = {"warm_start_steps": 500, "max_steps": 30, "eval_steps": 10, "eval_size": 1000}
# The real-model tier (--real): SmolLM2-135M-Instruct on the words task (word_task.py), one pretrained
# start, so the unit is the RL seed. Sized for a 2-core CPU, one run at a time on both cores: see README.
REAL_BUDGET = {"model": "smollm2-135m-instruct", "max_steps": 12, "eval_steps": 6, "eval_size": 200,
               "prompts_per_step": 2, "num_generations": 8, "max_completion_length": 48, "temperature": 0.7,
               "learning_rate": 1e-5, "micro_batch_size": 16}
REAL_CHECK_SIZE = 500
PRESETS = {  # warm starts, RL seeds, arms, budget overrides, results folder
    "default": (range(6), [0], ["grpo", "aa", "oracle", "gcpo", "cepo", "gold"], {}, ""),
    "full": (range(16), [0], ["grpo", "aa", "oracle", "random", "gcpo", "cepo", "gold", "sft_gold"], {}, "full"),
    "quick": (range(2), [0], list(ARMS), {"warm_start_steps": 300, "max_steps": 6, "eval_steps": 3, "eval_size": 100}, "quick"),
    "real": ([0], range(8), ["grpo", "aa", "gcpo", "cepo", "gold"], REAL_BUDGET, "smollm2"),
    "ceiling": (range(16), [0], ["grpo", "value_oracle", "soft_oracle", "shuffled_oracle", "oracle", "random", "gcpo",
                                 "gcpo_mean", "cepo", "cepo_const", "gold"], {"max_steps": 100}, "ceiling"),
}
TASKS = {"default": "chain", "full": "chain", "quick": "chain", "real": "words", "ceiling": "chain"}  # each summary's task
# The ceiling study (--ceiling), fixed before its runs: pilots on warm starts of their own run every arm
# at every learning rate (the soft oracle also at every β); each arm then runs at its options with the
# highest mean pilot AUC (ties: the first in grid order). The oracle with the highest pilot AUC at
# its options is run again at other chain lengths beside GRPO. An arm is equivalent to GRPO when its
# 90% interval lies within ±EQUIVALENCE_MARGIN. 3 operands is not a length: 10^3 distinct problems
# cannot fill 4,000 training and 1,000 held-out ones (check_sweep_lengths refuses it before any run).
# 1e-5 joined the rates after the first pilots, before any confirmatory run: every arm but Gold chose
# 3e-5, the grid's edge, so a smaller rate had to be tried for each choice to be bracketed.
CEILING = {"pilot_warm_starts": [100, 101], "learning_rates": [1e-5, 3e-5, 1e-4, 2e-4], "decided_weights": [1.0, 4.0, 16.0],
           "oracles": ["value_oracle", "soft_oracle", "oracle"], "operands": [5, 6], "sweep_warm_starts": list(range(6))}
EQUIVALENCE_MARGIN = 0.02
MC_SAMPLE = {"ceiling": (4, 13, 64), "quick": (1, 2, 4)}  # warm starts, prompts per warm start, continuations per prefix
# Gold's own defaults (sequence ratio, seq-mean-token-mean, GSPO's clip) also change the loss of every
# group; here it takes GRPO's, so "Gold vs GRPO" is the injection alone. At one update per rollout the
# ratio is 1, and the sequence ratio's gradient equals the token ratio's: only the aggregation is lost.
SAME_LOSS = {"ratio_level": "token", **{f: getattr(gb.GRPOConfig(), f) for f in ("loss_type", "epsilon", "epsilon_high")}}
# What an arm changes from its file's defaults: Gold's loss; CEPO's λ held at λ0 (its linear decay
# reaches 0 by step 26, after which CEPO is GRPO); GCPO's divergences weighed by size, the reference's
# option that does not lift the free tags (the paper's rank weights give them about 1.9x).
ARM_OPTIONS = {"gold": SAME_LOSS, "sft_gold": SAME_LOSS, "cepo_const": {"lambda_schedule": "constant"},
               "gcpo_mean": {"weight_norm": "mean"}}


def method_config(name, **overrides):
    """The config arm `name` runs with here: its defaults, its ARM_OPTIONS, then `overrides`."""
    return ARMS[name][1](**{**ARM_OPTIONS.get(name, {}), **overrides})


def run_seeds(arm, w, s):
    """(seed, data_seed) of arm's run with RL seed s from warm start w: distinct per warm start."""
    seed = 1000 * w + s
    return (seed + AA_SEED_OFFSET if arm == "aa" else seed), seed


def cli(options):
    return [a for k, v in options.items() for a in (f"--{k}", str(v))]


def check_warm_start(cfg, out):
    """Build the warm start of cfg.warm_start_seed and check it: held-out accuracy, and whether it
    reads CEPO's hints and GCPO's two negative prompts (each a mean log-likelihood gap of the
    reference solutions, passed when above its CHECKS threshold), and the sha256 of its weights (a warm
    start built again elsewhere may differ). Written to out/checks.json."""
    device = torch.device("cpu")
    if cfg.model:  # the pretrained model's start accuracy on at least REAL_CHECK_SIZE problems (its runs' held-out
        cfg.eval_size = max(cfg.eval_size, REAL_CHECK_SIZE)  # rows are the first eval_size of these)
    train_rows, eval_rows = load_task(cfg)
    path = cfg.model or warm_start(cfg, train_rows, eval_rows, device)
    model, tokenizer = load_policy(path, cfg, device)
    rows, cepo_cfg = eval_rows[:100], cepo.CEPOConfig(**vars(cfg))
    checks = {"seed": cfg.warm_start_seed, "start_acc": evaluate(model, tokenizer, eval_rows, cfg, device,
                                                                 resolve_instruction(cfg), task_reward(cfg))}
    negatives = {n: gcpo.GCPOConfig(**vars(cfg), negative=n) for n in ("wrong_answer", "empty_prompt")}
    if not cfg.model:
        checks["hint_contrast_nats"] = diagnostics.hint_contrast(model, tokenizer, rows, cepo_cfg, cepo.hint_ids)[0]
        for n, gcpo_cfg in negatives.items():
            checks[f"negative_contrast_{n}"] = diagnostics.negative_contrast(model, tokenizer, rows, gcpo_cfg,
                                                                               gcpo.negative_prompt_ids)
    else:  # the same gaps, each from one per-token pass that also says where it acts, by token role (word_task.WORD_ROLES)
        prompts = [prompt_ids(tokenizer, r["question"], resolve_instruction(cfg), r.get("example")) for r in rows]
        gaps, checks["hint_contrast_by_role"] = diagnostics.contrast_by_role(  # diagnostics.hint_contrast's contexts
            model, tokenizer, rows, [p + cepo.hint_ids(tokenizer, r["answer"], cepo_cfg) for p, r in zip(prompts, rows)],
            [p + cepo.hint_ids(tokenizer, diagnostics.wrong_hint(r["answer"]), cepo_cfg) for p, r in zip(prompts, rows)], cfg)
        checks["hint_contrast_nats"], checks["hint_contrast_wins"] = gaps.mean().item(), (gaps > 0).float().mean().item()
        for n, gcpo_cfg in negatives.items():  # diagnostics.negative_contrast's contexts
            gaps, checks[f"negative_contrast_by_role_{n}"] = diagnostics.contrast_by_role(
                model, tokenizer, rows, prompts, [gcpo.negative_prompt_ids(tokenizer, r, gcpo_cfg) for r in rows], cfg)
            checks[f"negative_contrast_{n}"] = gaps.mean().item()
    checks["failed_checks"] = [k for k, threshold in CHECKS.items() if not checks[k] > threshold]
    if not cfg.model:
        with open(os.path.join(path, "model.safetensors"), "rb") as f:
            checks["weights_sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(out, "checks.json"), "w") as f:
        json.dump(checks, f, indent=1)


RL_ONLY = ("learning_rate", "max_steps", "eval_steps", "prompts_per_step", "num_generations")


def run_all(arms, warm_starts, seeds, runs_dir, jobs, budget, threads=1, variants=None, keep_final=True, finals=()):
    """Build and check every warm start, then train every arm from each with every seed:
    subprocesses, `jobs` at a time, `threads` each (on the tiny model two single-threaded runs do
    more work than one two-threaded run). variants: {label: (arm, options)} for labels in `arms`
    that run an arm with options of their own (a learning rate of the ceiling study's grid). A job
    that finished before with the same options (its done.json) is not run again: a killed benchmark
    resumes, and --full reuses the default's runs (remove runs/ after changing the code). A finished
    run's checkpoint is deleted (it never resumes again; 1.6 GB on the real model), and its final
    model too unless keep_final (the Monte-Carlo agreement reads it). A study committed part by part
    resumes in a fresh clone, where no model survives: a checked warm start is built again only
    while a run from it is left (and if its weights come out different, on another CPU, every run
    from it runs again, so that each arm still starts where GRPO did), and a run from a warm start
    in `finals` that lost its final model runs again.
    Returns ({warm start: checks}, {label: [(w, s, dir)]})."""
    variants = variants or {}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def command(kind, w, s):  # (output folder, command) of a job
        out = os.path.join(runs_dir, f"warm{w}", "checks" if kind == "warm" else f"{kind}_seed{s}")
        options = {**budget, "warm_start_seed": w, "output_dir": out}
        if kind == "warm":  # without the RL options, which no check reads: a new learning rate reruns no check
            checked = {k: v for k, v in options.items() if k not in RL_ONLY}
            return out, [sys.executable, "compare.py", "--check_warm_start", *cli(checked)]  # relative, as the runs':
            # done.json holds it, and a committed run must resume in a clone anywhere
        arm, own = variants.get(kind, (kind, {}))
        seed, data_seed = run_seeds(arm, w, s)
        options.update(seed=seed, data_seed=data_seed, save_steps=budget["max_steps"], **ARM_OPTIONS.get(arm, {}), **own)
        return out, [sys.executable, *ARMS[arm][0], *cli(options), "--overwrite_output_dir"]
    # each warm start just before its runs: a session that ends builds no warm start it did not use
    queue = [job for w in warm_starts for job in [("warm", w, None)] + [(a, w, s) for s in seeds for a in arms]]
    commands = {job: command(*job) for job in queue}
    runs = {a: [(w, s, commands[a, w, s][0]) for w in warm_starts for s in seeds] for a in arms}

    def finished(job):
        out, cmd = commands[job]
        if job[0] == "warm":
            cfg = gb.GRPOConfig(**budget, warm_start_seed=job[1])
            model_kept = bool(cfg.model) or is_built(warm_start_spec(cfg)[1])
            return done(out) == cmd[1:] and (model_kept or all(finished(j) for j in queue if j[0] != "warm" and j[1] == job[1]))
        return done(out) == cmd[1:] and (job[1] not in finals or os.path.exists(os.path.join(out, "final")))
    cost = {"warm": 5}  # a warm start takes about as long as five runs: the progress bar's weights
    bar = tqdm(total=sum(cost.get(j[0], 1) for j in queue), desc="benchmark", unit="run", file=sys.stdout)
    running, built = {}, set()

    def finish(job):
        if job[0] == "warm":
            built.add(job[1])
        bar.update(cost.get(job[0], 1))
        bar.set_postfix(done=f"{job[0]} w{job[1]}" + (f" s{job[2]}" if job[2] is not None else ""))
    for job in [j for j in queue if j[0] == "warm" and finished(j)]:
        queue.remove(job)
        finish(job)
    while queue or running:
        for job in [j for j in queue if j[0] == "warm" or j[1] in built]:
            if len(running) == jobs:
                break
            queue.remove(job)
            if job[0] != "warm" and finished(job):  # judged now, after its warm start (which may have changed)
                finish(job)
                continue
            out, cmd = commands[job]
            os.makedirs(out, exist_ok=True)
            weights = read_checks(out).get("weights_sha256", "none") if job[0] == "warm" else None
            if os.path.exists(os.path.join(out, "done.json")):
                os.remove(os.path.join(out, "done.json"))
            log = open(os.path.join(out, "log.txt"), "w")
            running[job] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, out, cmd, weights)
        time.sleep(0.5)
        for job, (proc, log, out, cmd, weights) in list(running.items()):
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
            with open(os.path.join(out, "done.json"), "w") as f:
                json.dump(cmd[1:], f)
            if job[0] == "warm" and weights not in (None, read_checks(out).get("weights_sha256", "none")):
                for j in [j for j in queue if j[0] != "warm" and j[1] == job[1]]:  # built again, not the same weights
                    remove([os.path.join(commands[j][0], "done.json")])
            if job[0] != "warm":
                remove([os.path.join(out, "checkpoint.pt")] + ([] if keep_final else [os.path.join(out, "final")]))
            finish(job)
    bar.close()
    return {w: read_checks(commands["warm", w, None][0]) for w in warm_starts}, runs


def read_checks(out):
    """The checks.json in out ({} where there is none)."""
    try:
        with open(os.path.join(out, "checks.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def done(out):
    """The options a run in `out` finished with (run_all writes them last), or None."""
    try:
        with open(os.path.join(out, "done.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


CREDIT_KEYS = [f"credit_{side}_{role}" for side in ("pos", "neg") for role in ROLE_NAMES] + [
    "credit_pos_contested", "first_error_credit", "decisive_credit_share", "decisive_credit_share_uniform"]


WORD_CREDIT_KEYS = [f"credit_{side}_{role}" for side in ("pos", "neg") for role in WORD_ROLES]


def run_record(w, s, history):
    """One run's numbers from its per-step metrics: final accuracy, AUC, steps to target, credit
    against the ground truth (step means), what it consumed, cost. AUC is the trapezoid area under
    (step, held-out accuracy) divided by the run's length: the accuracy averaged over training,
    which rewards learning early. steps_to_target counts a run that never got there as its length
    (a restricted mean: dropping such runs would flatter an arm that often fails)."""
    evals = [(m["step"], m["eval_acc"]) for m in history if "eval_acc" in m]
    auc = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(evals, evals[1:])) / (evals[-1][0] - evals[0][0])
    target = evals[0][1] + TARGET_GAIN
    steps = [m for m in history if m["step"] > 0]
    reached = next((st for st, a in evals if a >= target), None)

    def mean_of(key):
        values = [m[key] for m in steps if m.get(key) is not None]
        return statistics.mean(values) if values else None
    tags = [m["free_tag_entropy"] for m in steps if "free_tag_entropy" in m]
    clip_at = history[0].get("max_grad_norm", gb.GRPOConfig.max_grad_norm)  # (runs from before it was recorded: the default)
    norms = [m["grad_norm"] for m in steps if m.get("grad_norm") is not None]
    return {"warm_start": w, "seed": s, "learning_rate": history[0].get("learning_rate"), "start_acc": evals[0][1],
            "final_acc": evals[-1][1], "auc": auc, "plateau": plateau(evals),
            "steps_to_target": reached if reached is not None else evals[-1][0], "reached_target": reached is not None,
            "grad_norm": statistics.mean(norms) if norms else None,
            "clip_rate": statistics.mean(n > clip_at for n in norms) if norms else None,
            **{key: mean_of(key) for key in CREDIT_KEYS + ["zero_adv_groups"]},
            "free_tag_entropy_first": tags[0] if tags else None, "free_tag_entropy_last": tags[-1] if tags else None,
            "references": sum(m.get("gold_injections", 0) for m in steps),
            "reference_tokens": sum(m.get("gold_tokens", 0) for m in steps),
            "sampled_tokens": sum(m.get("sampled_tokens", 0) for m in steps),
            "sec_per_step": statistics.mean(sum(m[p] for p in PHASES) for m in steps),
            "peak_mem_mb": max(m["peak_mem_mb"] for m in steps),
            **{key: mean_of(key) for key in WORD_CREDIT_KEYS if any(key in m for m in steps)}}  # the words task's


def plateau(evals, last=3):
    """The held-out accuracy a run settled at: the mean of its last `last` evaluations (beside the AUC,
    which rewards learning early). evals: [(step, accuracy)]."""
    return statistics.mean(a for _, a in evals[-last:])


def unit_of(records):
    """The unit of replication: the warm start; with a single warm start (the real tier's one
    pretrained model), the RL seed."""
    return "warm_start" if len({r["warm_start"] for r in records}) > 1 else "seed"


def by_unit(records, values):
    """{unit: [value of each of its runs]}: what the statistics average within, then compare across."""
    unit, out = unit_of(records), {}
    for r, v in zip(records, values):
        out.setdefault(r[unit], []).append(v)
    return out


def summarize_arm(records, base_records):
    """One arm's means, t-intervals on warm-start means, and paired comparison to GRPO's runs."""
    base = {(r["warm_start"], r["seed"]): r for r in base_records}
    out = {"runs": records}
    for key in ("auc", "final_acc", "plateau"):
        own = paired_stats.paired_comparison(by_unit(records, [r[key] for r in records]))
        diff = paired_stats.paired_comparison(by_unit(
            records, [r[key] - base[r["warm_start"], r["seed"]][key] for r in records]))
        out.update({key: own["mean"], f"{key}_ci": own["ci"], f"{key}_diff_vs_grpo": diff["mean"],
                    f"{key}_diff_vs_grpo_ci": diff["ci"]})
        if key == "auc":
            out.update(p_t=diff["p_t"], p_sign_flip=diff["p_sign_flip"], sd_w=diff["sd_w"], tost90=diff["ci90"],
                       mde=paired_stats.mde(diff["sd_w"], diff["W"]), W=diff["W"])
    def mean(key):
        values = [r[key] for r in records if r.get(key) is not None]
        return statistics.mean(values) if values else None
    out["credit_by_role"] = {side: {role: mean(f"credit_{side}_{role}") for role in ROLE_NAMES} for side in ("pos", "neg")}
    out["credit_by_role"]["pos"]["contested"] = mean("credit_pos_contested")
    if WORD_CREDIT_KEYS[0] in records[0]:  # the words task (the real tier): its own token roles
        out["credit_by_word_role"] = {side: {role: mean(f"credit_{side}_{role}") for role in WORD_ROLES}
                                      for side in ("pos", "neg")}
    for key in ("first_error_credit", "decisive_credit_share", "decisive_credit_share_uniform", "free_tag_entropy_first",
                "free_tag_entropy_last", "zero_adv_groups", "references", "reference_tokens", "sampled_tokens",
                "sec_per_step", "steps_to_target", "grad_norm", "clip_rate"):
        out[key] = mean(key)
    out["learning_rate"] = sorted({r["learning_rate"] for r in records if r.get("learning_rate") is not None}) or None
    out.update(reached_target=sum(r["reached_target"] for r in records), peak_mem_mb=max(r["peak_mem_mb"] for r in records))
    return out


def aggregate(histories):
    """{arm: summary} from {arm: {(warm start, seed): per-step metrics}}; p_holm adjusts the arms'
    sign-flip p-values (AUC against GRPO) for their number, and mde_holm is that rule's MDE."""
    records = {a: [run_record(w, s, h) for (w, s), h in sorted(hs.items())] for a, hs in histories.items()}
    arms = {a: summarize_arm(rs, records["grpo"]) for a, rs in records.items()}
    others = [a for a in arms if a != "grpo"]
    adjusted = paired_stats.holm({a: arms[a]["p_sign_flip"] for a in others}) if others else {}
    for a, m in arms.items():
        W = m.pop("W")
        m["p_holm"] = adjusted.get(a)
        m["mde_holm"] = paired_stats.mde_holm(m["sd_w"], W, len(others)) if a in adjusted else None
        m["vs_grpo"] = m["sec_per_step"] / arms["grpo"]["sec_per_step"]
    return arms


def fmt(x, signed=False, digits=3):
    return "—" if x is None else f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def bounds(ci, signed=False):
    return f"[{fmt(ci[0], signed)}, {fmt(ci[1], signed)}]"


def interval(m, key, signed=False):
    ci = m[key + "_ci"]
    return fmt(m[key], signed) + (f" {bounds(ci, signed)}" if ci else "")


def table(arms, checks):
    n = len(next(iter(arms.values()))["runs"])
    rows = [f"| arm | AUC [95% t] | AUC − GRPO's, paired [95% t] | 90% (TOST) | p sign-flip (Holm) | MDE t / Holm | "
            f"final acc [95% t] | plateau [95% t] | steps to +{TARGET_GAIN} | references (tokens) per run | s/step | vs GRPO | "
            "peak MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in arms.items():
        p = "—" if name == "grpo" else f"{m['p_sign_flip']:.3f} ({m['p_holm']:.3f})"
        refs = f"{m['references']:.0f} ({m['reference_tokens']:.0f})" if m["references"] else "0"
        tost = "—" if name == "grpo" or not m["tost90"] else bounds(m["tost90"], True)
        mdes = "—" if name == "grpo" else f"{fmt(m['mde'])} / {fmt(m['mde_holm'])}"
        rows.append(f"| {name} | {interval(m, 'auc')} | {interval(m, 'auc_diff_vs_grpo', True)} | {tost} | {p} | "
                    f"{mdes} | {interval(m, 'final_acc')} | {interval(m, 'plateau')} | "
                    f"{m['steps_to_target']:.1f} ({m['reached_target']}/{n} reached) | {refs} | {m['sec_per_step']:.3f} | "
                    f"{m['vs_grpo']:.2f}x | {m['peak_mem_mb']:.0f} |")
    if "credit_by_word_role" in next(iter(arms.values())):
        return "\n".join(rows + words_credit_table(arms, checks)) + "\n"
    has_mc = any(m.get("mc_agreement") for m in arms.values())
    rows += ["", "Token credit against the ground truth: the mean multiplier Â/A on each role's tokens (GRPO: 1), for "
             "A > 0 and A < 0 responses; the first wrong token's Â/|A| (GRPO: −1); the share of steps whose gradient "
             "was clipped, and its mean norm before clipping" + ("; Monte-Carlo agreement on fixed responses at the "
             "warm start and at the end (correlation of Â with Q − V [95% bootstrap over prompts], sign agreement on "
             f"decided tokens; each credit as at step 1, so CEPO's at λ0, not the 0 its λ falls to by step "
             f"{cepo.CEPOConfig().lambda_decay_steps + 1})."
             if has_mc else "."), "",
             "| arm | A>0 decisive | A>0 contested | A>0 copied | A>0 free | A>0 structure | A<0 decisive | A<0 copied | "
             "A<0 free | A<0 structure | first wrong token | clipped (pre-clip norm) | "
             + ("MC corr (start → end) | MC sign (start → end) | " if has_mc else "")
             + "decisive share (uniform) | free-tag entropy first → last |", "|" + "---|" * (14 + 2 * has_mc)]
    for name, m in arms.items():
        pos, neg, mc = m["credit_by_role"]["pos"], m["credit_by_role"]["neg"], m.get("mc_agreement") or {}
        corr = " → ".join(fmt((mc.get(k) or {}).get("corr"), True, 2) + (
            f" {bounds((mc.get(k) or {})['corr_ci'], True)}" if (mc.get(k) or {}).get("corr_ci") else "") for k in ("start", "end"))
        sign = " → ".join(fmt((mc.get(k) or {}).get("sign_agreement"), False, 2) for k in ("start", "end"))
        rows.append(f"| {name} | " + " | ".join(fmt(pos[r], False, 2) for r in ("decisive", "contested", "copied", "free", "structure"))
                    + " | " + " | ".join(fmt(neg[r], False, 2) for r in ("decisive", "copied", "free", "structure"))
                    + f" | {fmt(m['first_error_credit'], True, 2)} | {fmt(m['clip_rate'], False, 2)} ({fmt(m['grad_norm'], False, 2)}) | "
                    + (f"{corr} | {sign} | " if has_mc else "")
                    + f"{fmt(m['decisive_credit_share'])} ({fmt(m['decisive_credit_share_uniform'])}) | "
                    f"{fmt(m['free_tag_entropy_first'], False, 2)} → {fmt(m['free_tag_entropy_last'], False, 2)} |")
    rows += ["", "| warm start | held-out acc | CEPO hint (nats) | GCPO wrong-answer x⁻ (nats) | GCPO empty x⁻ (nats) | "
             "failed checks |", "|---|---|---|---|---|---|"]
    for c in checks.values():
        rows.append(f"| {c['seed']} | {c['start_acc']:.3f} | {c['hint_contrast_nats']:+.2f} | "
                    f"{c['negative_contrast_wrong_answer']:+.2f} | {c['negative_contrast_empty_prompt']:+.2f} | "
                    f"{', '.join(c['failed_checks']) or 'none'} |")
    return "\n".join(rows) + "\n"


def words_credit_table(arms, checks):
    """The real tier's credit and check tables: no ground truth of which tokens decide, so the
    multiplier Â/A per token role of the words task (word_task.WORD_ROLES), and each context's
    log-likelihood gap by role at the start."""
    rows = ["", "Token credit per role of the words task: the mean multiplier Â/A on each role's tokens (GRPO: 1), for "
            "A > 0 and A < 0 responses.", "",
            "| arm | " + " | ".join(f"A>0 {r}" for r in WORD_ROLES) + " | " + " | ".join(f"A<0 {r}" for r in WORD_ROLES)
            + " |", "|" + "---|" * (1 + 2 * len(WORD_ROLES))]
    for name, m in arms.items():
        by = m["credit_by_word_role"]
        rows.append(f"| {name} | " + " | ".join(fmt(by[side][r], False, 2) for side in ("pos", "neg") for r in WORD_ROLES)
                    + " |")
    contexts = (("hint_contrast", "CEPO hint"), ("negative_contrast_wrong_answer", "GCPO wrong-answer x⁻"),
                ("negative_contrast_empty_prompt", "GCPO empty x⁻"))
    rows += ["", "At the start: each context's log-likelihood gap of the reference solutions (nats per solution), and "
             "per token of each role (nats per token).", "",
             "| start | held-out acc | context | per solution | " + " | ".join(WORD_ROLES) + " |",
             "|" + "---|" * (4 + len(WORD_ROLES))]
    for c in checks.values():
        for key, name in contexts:
            whole = c[key + "_nats"] if key == "hint_contrast" else c[key]
            by = c.get(key.replace("negative_contrast", "negative_contrast_by_role") if key != "hint_contrast"
                       else "hint_contrast_by_role") or {}
            rows.append(f"| {c['seed']} | {c['start_acc']:.3f} | {name} | {whole:+.3f} | "
                        + " | ".join(fmt(by.get(r), True, 3) for r in WORD_ROLES) + " |")
    return rows


def design(arms):
    """What this design can detect: warm starts, seeds, the median MDE over the arms, and the warm
    starts an MDE of 0.05 and of 0.03 would take at the median sd of warm-start means."""
    runs = arms["grpo"]["runs"]
    unit = unit_of(runs)
    W = len({r[unit] for r in runs})
    S = len(runs) // max(1, W)
    sds = [m["sd_w"] for a, m in arms.items() if a != "grpo" and m["sd_w"]]
    sd = statistics.median(sds) if sds else None
    mdes = [m["mde"] for a, m in arms.items() if a != "grpo" and m["mde"] is not None]
    holm_mdes = [m["mde_holm"] for a, m in arms.items() if a != "grpo" and m["mde_holm"] is not None]
    return {"unit": unit, "warm_starts": W, "seeds_per_warm_start": S, "median_sd_of_warm_start_means": sd,
            "median_mde": statistics.median(mdes) if mdes else None,
            "median_mde_holm": statistics.median(holm_mdes) if holm_mdes else None,
            "smallest_p_sign_flip": 2 / 2 ** W, "arms_compared": len(arms) - 1,
            **{f"warm_starts_for_mde_{t}": paired_stats.warm_starts_for(t, sd) if sd else None for t in (0.05, 0.03)}}


CONTRASTS = (("gold", "sft_gold", "Gold's contrast beyond its supervision"),
             ("gcpo", "random", "GCPO's placement of its weights beyond their spread"))


def contrasts(arms):
    """The questions the controls exist for, each a paired AUC difference on the same warm starts and
    seeds, when both arms ran: secondary, outside the Holm family (every arm against GRPO)."""
    out = {}
    for a, b, question in CONTRASTS:
        if a in arms and b in arms:
            other = {(r["warm_start"], r["seed"]): r["auc"] for r in arms[b]["runs"]}
            d = paired_stats.paired_comparison(by_unit(
                arms[a]["runs"], [r["auc"] - other[r["warm_start"], r["seed"]] for r in arms[a]["runs"]]))
            out[f"{a}_vs_{b}"] = {"question": question, "auc_diff": d["mean"], "auc_diff_ci": d["ci"], "tost90": d["ci90"],
                                  "p_sign_flip": d["p_sign_flip"], "mde": paired_stats.mde(d["sd_w"], d["W"])}
    return out


def verdict(arms, margin=None):
    """One line per arm: separated from GRPO (Holm-adjusted sign-flip p < 0.05) or not, with the
    MDE beside every 'not separated'; with a margin declared before the runs, an arm whose 90%
    interval lies within ±margin is equivalent to GRPO (TOST at 5%)."""
    lines = []
    for name, m in arms.items():
        if name == "grpo":
            continue
        diff = interval(m, "auc_diff_vs_grpo", True)
        if m["p_holm"] is not None and m["p_holm"] < 0.05:
            word = "beats GRPO" if m["auc_diff_vs_grpo"] > 0 else "is worse than GRPO"
            lines.append(f"- {name} {word}: AUC difference {diff}, p = {m['p_holm']:.3f} (Holm)")
        else:
            lines.append(f"- {name} is not separated from GRPO: AUC difference {diff}, p = {m['p_holm']:.3f} (Holm); " + (
                f"this rule detects {fmt(m['mde_holm'])} or more 80% of the time" if m["mde_holm"] is not None else
                "this rule cannot detect any effect at this number of warm starts" if m["sd_w"] else
                "what this design could detect is unknown (fewer than 2 warm starts, or every difference equal)")
                + (f"; its 90% interval {bounds(m['tost90'], True)} bounds the effect "
                   "for an equivalence claim" if m["tost90"] and m["tost90"][0] < 0 < m["tost90"][1] else ""))
        if margin is not None and m["tost90"] and -margin < m["tost90"][0] and m["tost90"][1] < margin:
            lines[-1] += f"; equivalent to GRPO within the declared ±{margin:g} (90% interval {bounds(m['tost90'], True)})"
    return "\n".join(lines) + "\n"


SHORT = {"learning_rate": "lr", "decided_weight": "b"}


def pilot_grid(arms):
    """{label: (arm, options)}: every arm at every CEILING learning rate, the soft oracle also at every β."""
    out = {}
    for arm in arms:
        for lr in CEILING["learning_rates"]:
            for beta in CEILING["decided_weights"] if arm == "soft_oracle" else [None]:
                options = {"learning_rate": lr, **({"decided_weight": beta} if beta is not None else {})}
                out[arm + "".join(f"_{SHORT[k]}{v:g}" for k, v in options.items())] = (arm, options)
    return out


def choose(grid, pilots):
    """The rule: per arm, the options of the grid label whose pilot runs have the highest mean AUC
    (ties: the first in grid order). pilots: {label: {(warm start, seed): per-step metrics}}.
    Returns {arm: {"options": ..., "label": ..., "pilot_auc": {label: mean AUC}}}."""
    out = {}
    for label, (arm, options) in grid.items():
        auc = statistics.mean(run_record(w, s, h)["auc"] for (w, s), h in pilots[label].items())
        best = out.setdefault(arm, {"options": options, "label": label, "pilot_auc": {}})
        best["pilot_auc"][label] = auc
        if auc > best["pilot_auc"][best["label"]]:
            best.update(options=options, label=label)
    return out


def operand_sweep(sweeps, best):
    """GRPO against the best oracle at each chain length: {operands: {"grpo": AUC, best: AUC, "diff":
    paired mean, "diff_ci", "W"}} from {operands: {arm: {(warm start, seed): per-step metrics}}}, and
    the trend: the least-squares slope of the per-warm-start differences on the number of operands,
    with its 95% interval (scipy.stats.linregress over the runs). Warm start w at each length is its own
    model from the same seed: what w shares across lengths cancels from the slope (each w sits at
    every length) and only widens the residuals, so the interval errs wide, not narrow."""
    out, points = {}, []
    for k, histories in sorted(sweeps.items()):
        arms = aggregate({a: histories[a] for a in ("grpo", best)})
        m = arms[best]
        out[k] = {"grpo": arms["grpo"]["auc"], best: m["auc"], "diff": m["auc_diff_vs_grpo"],
                  "diff_ci": m["auc_diff_vs_grpo_ci"], "W": len(m["runs"])}
        base = {(r["warm_start"], r["seed"]): r["auc"] for r in arms["grpo"]["runs"]}
        points += [(k, r["auc"] - base[r["warm_start"], r["seed"]]) for r in m["runs"]]
    fit = scipy.stats.linregress(*zip(*points))
    half = scipy.stats.t.ppf(0.975, len(points) - 2) * fit.stderr
    return out, {"slope": fit.slope, "slope_ci": [fit.slope - half, fit.slope + half], "p": fit.pvalue, "points": len(points)}


def ceiling_report(grid, pilots, sweeps, histories):
    """The ceiling study's own part of the summary (dict) and of summary.md (text): each arm's
    chosen options and its pilots' AUC, the oracle best on the pilots, and the chain-length sweep, whose
    default length is the confirmatory runs (histories) of its warm starts."""
    chosen = choose(grid, pilots)
    best = best_oracle(chosen)
    default = {a: {(w, s): h for (w, s), h in histories[a].items() if w in CEILING["sweep_warm_starts"]} for a in ("grpo", best)}
    sweep, trend = operand_sweep({**sweeps, gb.GRPOConfig.task_operands: default}, best)
    tried = {}  # each arm's values of each option on its pilots
    for arm, options in grid.values():
        for k, v in options.items():
            tried.setdefault((arm, k), set()).add(v)
    # a choice at either end of what was tried brackets nothing: the best value may lie beyond it
    edges = {arm: [k for k, v in c["options"].items() if v in (min(tried[arm, k]), max(tried[arm, k]))]
             for arm, c in chosen.items()}
    text = ["", f"Options chosen on the pilot warm starts {CEILING['pilot_warm_starts']} (mean pilot AUC of each; "
            "*edge*: the first or last value of its grid, so the best may lie beyond it):", "",
            "| arm | chosen | pilots |", "|---|---|---|"]
    for arm, c in chosen.items():
        text.append(f"| {arm} | " + ", ".join(f"{k} {v:g}" + (" (*edge*)" if k in edges[arm] else "")
                                             for k, v in c["options"].items()) + " | "
                    + ", ".join(f"{label.removeprefix(arm + '_')} {auc:.3f}" for label, auc in c["pilot_auc"].items()) + " |")
    text += ["", f"Chain length (operands) and the best oracle, {best}, against GRPO (AUC; paired over warm starts "
             f"{CEILING['sweep_warm_starts'][0]}-{CEILING['sweep_warm_starts'][-1]}, each length its own warm starts):", "",
             f"| operands | GRPO | {best} | difference [95% t] |", "|---|---|---|---|"]
    for k, row in sweep.items():
        text.append(f"| {k} | {row['grpo']:.3f} | {row[best]:.3f} | {fmt(row['diff'], True)} {bounds(row['diff_ci'], True)} |")
    text += ["", f"Trend: the difference changes by {fmt(trend['slope'], True)} {bounds(trend['slope_ci'], True)} per "
             f"operand (least squares over {trend['points']} runs, p = {trend['p']:.3f}).", ""]
    return ({"grid": grid, "pilot_warm_starts": CEILING["pilot_warm_starts"], "chosen": chosen,
             "learning_rates": {a: c["options"]["learning_rate"] for a, c in chosen.items()},
             "at_grid_edge": {a: ks for a, ks in edges.items() if ks},
             "equivalence_margin": EQUIVALENCE_MARGIN, "best_oracle": best, "operand_sweep": sweep, "operand_trend": trend},
            "\n".join(text) + "\n")


def best_oracle(chosen):
    """The ceiling candidate: the oracle (CEILING["oracles"]) with the highest mean pilot AUC at its
    chosen options (choose's). Decided on the pilots, as every other choice is: picked on the
    confirmatory runs, its winner's luck would also sit in the sweep's 4-operand point."""
    return max((a for a in CEILING["oracles"] if a in chosen), key=lambda a: chosen[a]["pilot_auc"][chosen[a]["label"]])


def check_sweep_lengths(budget):
    """Before any run: at each chain length of the sweep the task builds (enough distinct problems)
    and its longest reference solution, one token per character and the end token, fits
    max_completion_length; else a ValueError naming the length."""
    for k in CEILING["operands"]:
        cfg = gb.GRPOConfig(**budget, task_operands=k)
        task = make_arithmetic_task(cfg)
        longest = max(len(answer) for split in task.values() for answer in split["answer"]) + 1
        if longest > cfg.max_completion_length:
            raise ValueError(f"--task_operands {k}: a reference solution takes {longest} tokens, more than "
                             f"--max_completion_length {cfg.max_completion_length}")


def read_histories(runs):
    """{label: {(warm start, seed): per-step metrics}} of run_all's {label: [(w, s, dir)]}."""
    return {a: {(w, s): read_metrics(out) for w, s, out in rs} for a, rs in runs.items()}


def run_ceiling(arms, warm_starts, seeds, results_dir, jobs, budget, device):
    """The ceiling study's runs, in order: pilots; the confirmatory runs at each arm's chosen options,
    first from the warm starts the Monte-Carlo agreement reads, which it judges then (while their
    final models exist), then from the others; then the chain-length sweep (GRPO and the best oracle,
    each at its options). Each part is kept in results_dir as it ends and resumes from there in a
    fresh clone, where no model survives: the pilots in pilot_metrics.jsonl.gz, each run's per-step
    metrics in runs/, the agreement in mc/ (all committed while the study goes on).
    Returns (checks, confirmatory runs, {label: pilot histories}, grid, {operands: sweep histories})."""
    runs_dir, grid = os.path.join(results_dir, "runs"), pilot_grid(arms)
    pilots_file = os.path.join(results_dir, "pilot_metrics.jsonl.gz")
    pilots = committed_pilots(pilots_file, grid, seeds, budget)
    if pilots is None:
        _, pilot_runs = run_all(list(grid), CEILING["pilot_warm_starts"], seeds, os.path.join(runs_dir, "pilot"), jobs,
                                budget, variants=grid, keep_final=False)
        pilots = read_histories(pilot_runs)
        write_metrics(pilots_file, pilots)  # the choices below rest on it, committed before any confirmatory run
    chosen = choose(grid, pilots)
    variants = {a: (a, chosen[a]["options"]) for a in arms}
    sample, mc_dir, options = MC_SAMPLE["ceiling"], os.path.join(results_dir, "mc"), credit_options(chosen)
    checks, runs = {}, {a: [] for a in arms}
    for w in warm_starts[:sample[0]]:  # each judged right after its runs, while their final models exist
        part = run_all(arms, [w], seeds, runs_dir, jobs, budget, variants=variants)
        if kept(os.path.join(mc_dir, f"warm{w}.json"), mc_key(arms, part[1], w, sample, options, budget)) is None:
            part = run_all(arms, [w], seeds, runs_dir, jobs, budget, variants=variants, finals=[w])  # a lost final trains again
        mc_agreement(arms, part[1], budget, [w], sample, device, options, mc_dir)
        checks.update(part[0])
        runs = {a: runs[a] + part[1][a] for a in arms}
    more_checks, more_runs = run_all(arms, warm_starts[sample[0]:], seeds, runs_dir, jobs, budget, variants=variants,
                                     keep_final=False)
    checks.update(more_checks)
    runs = {a: runs[a] + more_runs[a] for a in arms}
    best = best_oracle(chosen)
    sweeps = {}
    for k in CEILING["operands"]:
        _, sweep_runs = run_all(["grpo", best], CEILING["sweep_warm_starts"], seeds, os.path.join(runs_dir, f"operands{k}"),
                                jobs, {**budget, "task_operands": k}, variants=variants, keep_final=False)
        sweeps[k] = read_histories(sweep_runs)
    return checks, runs, pilots, grid, sweeps


def committed_pilots(path, grid, seeds, budget):
    """The grid's pilots from path (write_metrics' file) when it holds every label of the grid from
    every pilot warm start and seed, each run whole at the label's learning rate; else None (they run)."""
    try:
        pilots = read_metrics_file(path)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, zlib.error, ValueError) as e:
        print(f"{path}: {first_line(e) or type(e).__name__}; the pilots run again", flush=True)
        return None
    runs = sorted((w, s) for w in CEILING["pilot_warm_starts"] for s in seeds)
    steps = list(range(budget["max_steps"] + 1))
    whole = set(grid) <= set(pilots) and all(
        sorted(pilots[label]) == runs and all([m.get("step") for m in h] == steps and h[0].get("learning_rate")
                                              == options["learning_rate"] for h in pilots[label].values())
        for label, (_, options) in grid.items())
    if not whole:
        print(f"{path} does not hold this grid's pilots whole; they run", flush=True)
    return {label: pilots[label] for label in grid} if whole else None


def credit_options(chosen):
    """{arm: its chosen options but the learning rate}: what shapes its credit (mc_agreement's options)."""
    return {a: {k: v for k, v in c["options"].items() if k != "learning_rate"} for a, c in chosen.items()}


def informative_batch(model, tokenizer, train_rows, cfg, device, tries=20, first=0):
    """A rolled-out batch of the training prompts from block `first` on with some response of A != 0
    (the next block is tried when a batch has none; the block it came from is returned with it),
    sampled with seed 0: the same for every caller; log pi_old scored, for the credits that read it.
    Returns (batch, block)."""
    torch.manual_seed(0)
    for k in range(first, first + tries):
        rows = train_rows[k * cfg.prompts_per_step:(k + 1) * cfg.prompts_per_step]
        prompts = [prompt_ids(tokenizer, r["question"], resolve_instruction(cfg), r.get("example")) for r in rows]
        batch, _, _ = gb.rollout(model, tokenizer, rows, prompts, cfg, device, None)
        if (batch.advantages != 0).any():
            break
    batch.old_logp, batch.entropy = gb.score_pi_old(model, batch, cfg)
    return batch, k


def mc_agreement(arms, runs, budget, warm_starts, sample, device, options, folder):
    """Each arm's token credit Â against the Monte-Carlo token advantage A_MC = V(s_{t+1}) - V(s_t)
    (mc_advantage) on one fixed set of responses: from each warm start, one response with A != 0 of
    each of `prompts` prompts, sampled by the warm start. At the start, every arm's credit and A_MC
    under the warm start; at the end, each arm's credit and A_MC under its own final model (its run
    from that warm start), on the same responses. sample = (warm starts, prompts per warm start,
    continuations per prefix K). Also the exact A^π of the value oracle (controls.chain_advantages)
    against A_MC at the start: how far the ceiling's critic is from the truth it stands for.
    options: {arm: the options its runs were chosen at (the ceiling's; a learning rate changes no
    credit)}, so each credit is the one trained. Each warm start's numbers are kept in
    folder/warm{w}.json (kept), so a study resumed where its final models are gone needs them no more.
    Returns ({arm: {"start": pooled, "end": pooled}}, value check), each pooled over the responses
    with 95% bootstrap intervals over prompts (pooled_agreement)."""
    rows = {a: {"start": [], "end": []} for a in arms}
    exact = []
    os.makedirs(folder, exist_ok=True)
    for w in warm_starts[:sample[0]]:
        got = kept(os.path.join(folder, f"warm{w}.json"), mc_key(arms, runs, w, sample, options, budget),
                   lambda: mc_rows(arms, runs, budget, w, sample, device, options))
        for name, by in got["arms"].items():
            for when, rs in by.items():
                rows[name][when] += [tuple(map(torch.tensor, r)) for r in rs]
        exact += [tuple(map(torch.tensor, r)) for r in got["exact"]]
    return ({name: {when: pooled_agreement(rs) for when, rs in by.items()} for name, by in rows.items()},
            pooled_agreement(exact))


def mc_key(arms, runs, w, sample, options, budget):
    """What mc_agreement's numbers from warm start w rest on: the arms, the sample, their options, the
    code and every metric of each arm's run from w (its first seed's, whose final model is judged)."""
    return [sorted(arms), sample, w, options, budget, code_digest(), {a: read_metrics(final_of(runs, a, w)) for a in arms}]


def final_of(runs, arm, w):
    """The folder of arm's first run from warm start w in run_all's {label: [(w, s, dir)]}."""
    return next(out for v, _, out in runs[arm] if v == w)


def mc_rows(arms, runs, budget, w, sample, device, options):
    """mc_agreement's numbers from warm start w, as lists: {"arms": {arm: {"start"|"end": [(Â, A_MC,
    mask, standard error) per response]}}, "exact": [(A^π, A_MC, mask, standard error)]}."""
    _, prompts, continuations = sample
    print(f"Monte-Carlo agreement, warm start {w} (fixed responses, at the warm start and at each arm's end)...", flush=True)
    for arm in arms:
        if not os.path.exists(os.path.join(final_of(runs, arm, w), "final")):
            sys.exit(f"error: the Monte-Carlo agreement reads {final_of(runs, arm, w)}/final, which is gone: run the study "
                     "again (a study trains such a run again before it judges it)")
    cfg = gb.GRPOConfig(**budget, warm_start_seed=w)
    train_rows, eval_rows = load_task(cfg)
    reward = task_reward(cfg)
    model, tokenizer = load_policy(warm_start(cfg, train_rows, eval_rows, device), cfg, device)
    batches, block = [], 0  # (batch, the first A != 0 response of each group that has one)
    while sum(len(p) for _, p in batches) < prompts:
        batch, block = informative_batch(model, tokenizer, train_rows, cfg, device, first=block)
        block += 1
        nonzero = (batch.advantages != 0).view(-1, batch.group_size)
        picks = [g * batch.group_size + int(nonzero[g].nonzero()[0]) for g in range(len(nonzero)) if nonzero[g].any()]
        batches.append((batch, picks[:prompts - sum(len(p) for _, p in batches)]))
    got = {"arms": {a: {"start": [], "end": []} for a in arms}, "exact": []}

    def judge(model, names, when):
        for batch, picks in batches:
            batch.old_logp, batch.entropy = gb.score_pi_old(model, batch, cfg)  # this model's pi_old
            pick = torch.tensor(picks)
            values = mc_advantage.prefix_values(model, tokenizer, [batch.prompts[i] for i in picks],
                                                batch.completion_ids[pick], batch.completion_mask[pick],
                                                [batch.rows[i] for i in picks], lambda t, r: reward(t, r)[0], cfg,
                                                device, continuations=continuations)
            mask = batch.completion_mask[pick]
            mc = mc_advantage.mc_token_advantages(values, mask)
            errors = mc_advantage.mc_standard_errors(values, mask, continuations)
            for name in names:
                batch.scored_under = None
                token_adv, _ = ARMS[name][2]["credit"](batch, model, tokenizer,
                                                       method_config(name, **budget, **(options or {}).get(name, {})), 1)
                got["arms"][name][when] += [[t.tolist() for t in (token_adv[i], mc[k], mask[k], errors[k])]
                                            for k, i in enumerate(picks)]
            if when == "start":
                truth, _ = controls.chain_advantages(batch, model, tokenizer, cfg, 1)
                got["exact"] += [[t.tolist() for t in (truth[i].float(), mc[k], mask[k], errors[k])] for k, i in enumerate(picks)]
    judge(model, list(arms), "start")
    for name in arms:
        judge(load_policy(os.path.join(final_of(runs, name, w), "final"), cfg, device)[0], [name], "end")
    return got


def code_digest():
    """sha256 of the code a credit or a Monte-Carlo value depends on: the method files, the
    benchmark's arms and estimators, the loop."""
    root = os.path.dirname(os.path.abspath(__file__))
    files = sorted(["grpo_baseline.py", "gcpo.py", "cepo.py", "gold.py"] + [os.path.join(d, f) for d in ("benchmark", "loop")
                    for f in os.listdir(os.path.join(root, d)) if f.endswith(".py")])
    digest = hashlib.sha256()
    for f in files:
        with open(os.path.join(root, f), "rb") as fh:
            digest.update(f.encode() + fh.read())
    return digest.hexdigest()


def kept(path, key, compute=None):
    """compute()'s value, kept in path (JSON) with the sha256 of key and read back while key is the
    same (the arms, options, the code and the runs' every metric), so a study stopped after its
    Monte-Carlo stage does not redo it, and runs or code changed since never meet a stale one.
    Without compute: the kept value, or None where there is none for this key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    try:
        with open(path) as f:
            old = json.load(f)
        if old["key"] == digest:
            return old["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if compute is None:
        return None
    value = compute()
    with open(path, "w") as f:
        json.dump({"key": digest, "value": value}, f)
    return value


def pooled_agreement(rows, resamples=2000):
    """mc_advantage.agreement over every response of `rows` [(Â (L,), A_MC (L,), mask (L,), standard
    error (L,))], one per prompt, with 95% percentile-bootstrap intervals over the prompts for the
    correlation and the sign agreement (scipy.stats.bootstrap, seed 0). Responses from different
    batches differ in L: each is padded with masked tokens to the longest."""
    stack = [torch.nn.utils.rnn.pad_sequence(x, batch_first=True) for x in zip(*rows)]

    def of(idx, key):
        got = mc_advantage.agreement(*(t[torch.as_tensor(idx)] for t in stack))[key]
        return float("nan") if got is None else got
    out = mc_advantage.agreement(*stack)
    for key in ("corr", "sign_agreement"):
        ci = scipy.stats.bootstrap((numpy.arange(len(rows)),), lambda idx: of(idx, key), vectorized=False,
                                   n_resamples=resamples, method="percentile", random_state=0).confidence_interval
        out[f"{key}_ci"] = None if out[key] is None or math.isnan(ci.low) else [ci.low, ci.high]
    return out


def credit_pictures(path, cfg, device):
    """One rolled-out batch of the first warm start (or the pretrained --model), its token credit
    under GRPO, GCPO, CEPO and the oracle (the embedded task's alone) side by side (CEPO at step 1,
    λ = λ0), so a reader sees which tokens each calls decisive. Writes path.html and path.png."""
    train_rows, eval_rows = load_task(cfg)
    model, tokenizer = load_policy(cfg.model or warm_start(cfg, train_rows, eval_rows, device), cfg, device)
    batch, _ = informative_batch(model, tokenizer, train_rows, cfg, device)
    columns = {}
    for name, arm in (("GRPO (uniform)", "grpo"), ("GCPO", "gcpo"), ("CEPO", "cepo"), ("oracle", "oracle"))[:3 if cfg.model else 4]:
        batch.scored_under = None
        token_adv, _ = ARMS[arm][2]["credit"](batch, model, tokenizer, method_config(arm, **vars(cfg)), 1)
        columns[name] = credit_examples(batch, token_adv, tokenizer, k=8)
    render_credit_html(path + ".html", columns)
    render_credit_png(path + ".png", {name: examples[:6] for name, examples in columns.items()})


def write_metrics(path, histories):
    """Every run's per-step metrics in one gzipped JSON-lines file: each line one step of one run,
    with its arm, warm start and seed (what --recompute reads back)."""
    with gzip.open(path, "wt") as f:
        for arm, hs in histories.items():
            for (w, s), history in sorted(hs.items()):
                for m in history:
                    f.write(json.dumps({"arm": arm, "warm_start": w, "seed": s, **m}) + "\n")


def read_metrics_file(path):
    """write_metrics' file back as {arm: {(warm start, seed): per-step metrics}}; a ValueError naming
    the line that is not one of its records."""
    histories = {}
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f, 1):
            try:
                m = json.loads(line)
                arm, w, s = m.pop("arm"), m.pop("warm_start"), m.pop("seed")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"line {i} is not a benchmark record ({type(e).__name__}: {first_line(e)})") from None
            histories.setdefault(arm, {}).setdefault((w, s), []).append(m)
    return histories


def check_histories(histories, task):
    """A ValueError naming the first run the summary could not rest on: every arm needs the same
    runs (every warm start by every seed of the summary), each with every step from 0 to max_steps
    in order and an evaluation at the first and last (else an AUC or a pairing silently changes)."""
    runs = sorted((c["seed"], s) for c in task["warm_starts"] for s in task["seeds"])
    steps = list(range(task["budget"]["max_steps"] + 1))
    if "grpo" not in histories:
        raise ValueError("it has no grpo runs to compare against")
    for arm, hs in histories.items():
        if sorted(hs) != runs:
            raise ValueError(f"{arm} has runs (warm start, seed) {sorted(hs)}, not the summary's {runs}")
        for (w, s), h in hs.items():
            if [m.get("step") for m in h] != steps or "eval_acc" not in h[0] or "eval_acc" not in h[-1]:
                raise ValueError(f"{arm} warm start {w} seed {s}: its records are not steps 0 to {steps[-1]} in order "
                                 "with an evaluation at both ends")


def report(results_dir, preset, arms, checks, budget, seeds, mc, minutes, value_check=None, ceiling=None):
    """results_dir/summary.md and summary.json from the aggregated arms of a `preset`'s run; mc
    (mc_agreement's) and value_check where it ran, the ceiling study's part (ceiling_report) where it is one."""
    for name, m in arms.items():
        if mc:
            m["mc_agreement"] = mc.get(name)
    secondary = contrasts(arms)
    margin = EQUIVALENCE_MARGIN if preset == "ceiling" else None
    text = preamble(preset, arms, budget) + table(arms, checks) + "\n" + verdict(arms, margin) + "".join(
        f"- {name.replace('_vs_', ' − ')} ({c['question']}): AUC difference {interval(c, 'auc_diff', True)}, "
        f"sign-flip p = {c['p_sign_flip']:.3f} (secondary, not adjusted); this design detects {fmt(c['mde'])} or more"
        + (f"; 90% interval {bounds(c['tost90'], True)}" if c["tost90"] else "") + "\n"
        for name, c in secondary.items())
    task = {"budget": budget, "seeds": seeds, "target_gain": TARGET_GAIN, "check_thresholds": CHECKS,
            "interval": "t on warm-start means", "design": design(arms),
            "warm_starts": list(checks.values()), "methods": arms, "contrasts": secondary}
    if value_check:
        task["mc_value_check"] = value_check
        text += ("- the value oracle's exact A^π against A_MC at the start: correlation "
                 f"{fmt(value_check['corr'], True)}" + (f" {bounds(value_check['corr_ci'], True)}" if value_check["corr_ci"] else "")
                 + ", sign agreement "
                 f"{fmt(value_check['sign_agreement'])} on {value_check['decided_tokens']} decided tokens\n")
    if ceiling:
        task["ceiling"] = ceiling[0]
        text += ceiling[1]
    if preset == "real":  # one pretrained start: the checks are the model's, the unit the RL seed
        gains = learning(arms)
        text += "".join(f"- {name} learns: held-out accuracy {interval(g, 'gain', True)} from step 0 to the end "
                        f"(paired over {g['units']} RL seeds; sign-flip p = {g['p_sign_flip']:.3f})\n" for name, g in gains.items())
        task.update(model=budget["model"], interval="t on RL-seed means", gains=gains)
    with open(os.path.join(results_dir, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump({"preset": preset, "tasks": {TASKS[preset]: task}, "wall_minutes": minutes}, f, indent=1)
    return text


def learning(arms):
    """Each arm's held-out accuracy gain, final - start, paired within runs: the real tier's first
    question is whether RL moves a pretrained model at all."""
    out = {}
    for name, m in arms.items():
        d = paired_stats.paired_comparison(by_unit(m["runs"], [r["final_acc"] - r["start_acc"] for r in m["runs"]]))
        out[name] = {"gain": d["mean"], "gain_ci": d["ci"], "p_sign_flip": d["p_sign_flip"], "units": d["W"]}
    return out


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


def preamble(preset, arms, budget):
    """What a reader must know before the table: the design, and what it can and cannot separate."""
    d = design(arms)
    floor = d["smallest_p_sign_flip"] * d["arms_compared"]
    units, unit = ("warm starts", "warm-start") if d["unit"] == "warm_start" else ("RL seeds", "RL-seed")
    text = (f"{d['warm_starts']} warm starts x {d['seeds_per_warm_start']} RL seed(s) x {len(arms)} arms; budget {budget}. "
            if d["unit"] == "warm_start" else
            f"One pretrained start x {d['warm_starts']} RL seeds (the unit) x {len(arms)} arms; budget {budget}. ")
    text += (f"Primary metric: AUC. Intervals: 95% t on {unit} means (df = {d['warm_starts'] - 1}). "
             f"MDE: the smallest effect detected with 80% power by a paired t-test, and by the verdict's rule at Holm's "
             f"strictest threshold (a sign-flip p at most 0.05/{d['arms_compared']}; simulated; an upper bound). "
             f"The smallest sign-flip p with {d['warm_starts']} {units} is {d['smallest_p_sign_flip']:.4f}")
    if floor > 0.05:
        text += (f", {floor:.3f} after Holm over {d['arms_compared']} arms: this design cannot separate any arm from GRPO, "
                 "whatever the data; it shows the effects and their intervals" + (", and `--full` decides." if preset != "real" else "."))
    text += "\n\n"
    if preset == "quick":
        text = "Smoke run (--quick): the pipeline works; these are not results. " + text
    return text


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--full", action="store_true", help="16 warm starts x 1 seed x every arm, into results/full/ (~1.5 h)")
    parser.add_argument("--quick", action="store_true", help="2 warm starts x 1 seed x every arm on a tiny budget, into results/quick/")
    parser.add_argument("--real", action="store_true", help="the real-model tier: SmolLM2-135M-Instruct on sums in words, "
                        "8 RL seeds x 5 arms, one run at a time, into results/smollm2/ (~5 h on 2 cores; resumable)")
    parser.add_argument("--ceiling", action="store_true", help="the ceiling study: pilots pick each arm's learning rate, "
                        "then 16 warm starts x 11 arms x 100 steps, a chain-length sweep and Monte-Carlo agreement, into "
                        "results/ceiling/ (~16 h on 2 cores; resumable)")
    parser.add_argument("--warm_starts", type=int, nargs="+", help="warm-start seeds (default: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", help="RL seeds, each run from every warm start (default: the preset's)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="arms to run (default: the preset's; grpo is required)")
    parser.add_argument("--jobs", type=int, help="runs at once, one thread each (default 2; --real: 1 run on every core)")
    parser.add_argument("--runs_dir", default="runs", help="where each run's checkpoints and metrics go")
    parser.add_argument("--results_dir", default="results", help="where the summary goes (a preset adds its folder)")
    parser.add_argument("--recompute", metavar="DIR", help="rewrite DIR's summary and curves from its committed metrics.jsonl.gz")
    parser.add_argument("--bench", action="store_true", help="time each method's phases instead")
    parser.add_argument("--check_warm_start", action="store_true", help=argparse.SUPPRESS)  # run_all's warm-start jobs
    args, rest = parser.parse_known_args()
    if args.check_warm_start:
        cfg = parse_config(gb.GRPOConfig, rest)
        return check_warm_start(cfg, cfg.output_dir)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.full + args.quick + args.real + args.ceiling > 1:
        parser.error("--full, --quick, --real, --ceiling: choose one preset")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be >= 1")
    # the real model's runs take every core each (a 30-layer model: one two-threaded run beats two single-threaded
    # ones), and keep their runs beside the results so that the tier resumes in any clone
    if args.real and args.jobs not in (None, 1):
        parser.error(f"--jobs {args.jobs}: --real runs one run at a time on every core; leave --jobs out")
    if (args.real or args.ceiling) and args.runs_dir != "runs":
        parser.error(f"--runs_dir: --{'real' if args.real else 'ceiling'} keeps its runs in results/"
                     f"{PRESETS['real' if args.real else 'ceiling'][4]}/runs/ (committed, to resume anywhere); "
                     "leave --runs_dir out, or move it with --results_dir")
    if args.bench:
        return bench()
    if args.recompute:
        return recompute(args.recompute, parser)
    preset = "full" if args.full else "quick" if args.quick else "real" if args.real else "ceiling" if args.ceiling else "default"
    warm_starts, seeds, arms, overrides, folder = PRESETS[preset]
    warm_starts, seeds, arms = list(args.warm_starts or warm_starts), list(args.seeds or seeds), list(args.arms or arms)
    if "grpo" not in arms:
        parser.error("--arms must include grpo: every arm is reported against it")
    for flag, values in (("warm_starts", warm_starts), ("seeds", seeds), ("arms", arms)):
        if len(set(values)) < len(values):
            parser.error(f"--{flag} {' '.join(map(str, values))}: a value is repeated (two runs would share one directory)")
    if min(warm_starts + seeds) < 0 or max(seeds) >= AA_SEED_OFFSET:
        parser.error(f"--warm_starts and --seeds must be >= 0, and seeds < {AA_SEED_OFFSET} (aa samples with seed + {AA_SEED_OFFSET})")
    if preset == "ceiling" and set(warm_starts) & set(CEILING["pilot_warm_starts"]):
        parser.error(f"--warm_starts: the ceiling study's pilots use warm starts {CEILING['pilot_warm_starts']}; "
                     "its confirmatory ones must be others")
    if preset == "ceiling" and not set(arms) & set(CEILING["oracles"]):
        parser.error(f"--arms: the ceiling study needs one of {', '.join(CEILING['oracles'])} (its chain-length sweep runs the best)")
    budget = {**BUDGET, **overrides}
    if preset == "ceiling":
        try:  # a chain length that cannot be built would stop the study hours in
            check_sweep_lengths(budget)
        except ValueError as e:
            parser.error(f"the ceiling study's chain-length sweep: {e}")
    # the default's runs are --full's first ones (same budget, seeds and warm starts): one folder, reused
    results_dir = os.path.normpath(os.path.join(args.results_dir, folder))
    runs_dir = os.path.join(results_dir, "runs") if preset in ("real", "ceiling") else \
        os.path.join(args.runs_dir, "chain", preset if preset == "quick" else "")
    for flag, folder in (("--results_dir", results_dir), ("--runs_dir", runs_dir)):
        try:  # before any run: a folder that cannot be written would fail only after the benchmark
            make_dir(folder, flag)
        except ValueError as e:
            parser.error(str(e))
    start, device = time.time(), torch.device("cpu")
    jobs = 1 if preset == "real" else args.jobs or 2
    if preset == "ceiling":
        checks, runs, pilots, grid, sweeps = run_ceiling(arms, warm_starts, seeds, results_dir, jobs, budget, device)
    else:
        checks, runs = run_all(arms, warm_starts, seeds, runs_dir, jobs, budget, threads=os.cpu_count() if preset == "real" else 1,
                               keep_final=preset != "real")
    histories = read_histories(runs)
    summary = aggregate(histories)
    os.makedirs(results_dir, exist_ok=True)
    write_metrics(os.path.join(results_dir, "metrics.jsonl.gz"), histories)  # first: what the runs made is kept
    ceiling, options = None, None
    if preset == "ceiling":
        for k, hs in sweeps.items():
            write_metrics(os.path.join(results_dir, f"operands{k}_metrics.jsonl.gz"), hs)
        ceiling = ceiling_report(grid, pilots, sweeps, histories)
        options = credit_options(ceiling[0]["chosen"])
    mc, value_check = {}, None
    if preset in MC_SAMPLE:  # the words task has no exact token values; K continuations per prefix of a 135M model do not fit
        mc, value_check = mc_agreement(arms, runs, budget, warm_starts, MC_SAMPLE[preset], device, options,
                                       os.path.join(results_dir, "mc"))
    credit_pictures(os.path.join(results_dir, "credit_smollm2" if preset == "real" else "credit_embedded"),
                    gb.GRPOConfig(**budget, warm_start_seed=warm_starts[0]), device)
    plot_curves({a: list(hs.values()) for a, hs in histories.items()}, os.path.join(results_dir, "curves.png"))
    minutes = (time.time() - start) / 60
    text = report(results_dir, preset, summary, checks, budget, seeds, mc, minutes, value_check, ceiling)
    print(text + f"\n{len(warm_starts) * len(seeds)} units and {sum(map(len, runs.values()))} runs in {minutes:.1f} min; "
          f"results in {results_dir}/")


def recompute(results_dir, parser):
    """Every number of results_dir's summary again from its metrics.jsonl.gz; what needs the models
    (the warm-start checks, the Monte-Carlo agreement) and the wall time are read from its summary.json."""
    metrics = os.path.join(results_dir, "metrics.jsonl.gz")
    try:
        with open(os.path.join(results_dir, "summary.json")) as f:
            old = json.load(f)
        task = old["tasks"][TASKS[old["preset"]]]
        task["budget"]["max_steps"], task["seeds"], task["warm_starts"][0]["seed"], old["wall_minutes"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        parser.error(f"--recompute {results_dir}: needs the summary.json a benchmark run wrote there "
                     f"({type(e).__name__}: {first_line(e)})")
    try:
        histories = read_metrics_file(metrics)
        check_histories(histories, task)
    except (OSError, EOFError, zlib.error, ValueError) as e:  # missing, not gzip, cut short, damaged, incomplete
        parser.error(f"--recompute {results_dir}: {metrics}: {first_line(e) or type(e).__name__}; rewrite it with the "
                     "benchmark run (summary.json and summary.md are left as they were)")
    summary = aggregate(histories)
    ceiling = None
    if old["preset"] == "ceiling":  # its pilots and chain-length sweep, from their own files
        try:
            grid = {label: tuple(v) for label, v in task["ceiling"]["grid"].items()}
            pilots = read_metrics_file(os.path.join(results_dir, "pilot_metrics.jsonl.gz"))
            sweeps = {k: read_metrics_file(os.path.join(results_dir, f"operands{k}_metrics.jsonl.gz"))
                      for k in task["ceiling"]["operand_sweep"] if int(k) != gb.GRPOConfig.task_operands}
        except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as e:
            parser.error(f"--recompute {results_dir}: the ceiling study's pilot or sweep metrics: "
                         f"{first_line(e) or type(e).__name__}; rewrite them with the study (summary.json is left as it was)")
        ceiling = ceiling_report(grid, pilots, {int(k): hs for k, hs in sweeps.items()}, histories)
    mc = {a: m["mc_agreement"] for a, m in task["methods"].items() if m.get("mc_agreement")} if old["preset"] in MC_SAMPLE else {}
    text = report(results_dir, old["preset"], summary, {c["seed"]: c for c in task["warm_starts"]}, task["budget"],
                  task["seeds"], mc, old["wall_minutes"], task.get("mc_value_check"), ceiling)
    plot_curves({a: list(hs.values()) for a, hs in histories.items()}, os.path.join(results_dir, "curves.png"))
    print(text)


if __name__ == "__main__":
    main()
