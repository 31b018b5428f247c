"""What a run reports: peak memory, the per-run summary, reward/accuracy curves and the token
credit pictures (HTML and PNG). Read-only with respect to training: nothing here changes a run.
"""
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time

import torch

PHASES = ("t_generate", "t_score", "t_credit", "t_update")  # seconds of each RL step, by phase (grpo_baseline.train)


@contextlib.contextmanager
def timed(times, phase):
    """Adds the seconds the block takes to times[phase]; times None: nothing."""
    t = time.perf_counter()
    yield
    if times is not None:
        times[phase] = times.get(phase, 0.0) + time.perf_counter() - t


def read_metrics(output_dir):
    """A run's metrics.jsonl, one record per line; step 0 (the evaluation before training) first."""
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def phase_means(records):
    """Mean seconds of each phase over the given step records."""
    return {p: statistics.mean(m[p] for m in records) for p in PHASES}


def peak_memory_mb(device):
    """Peak GPU memory allocated, or on CPU the process's peak resident set (since the last reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def reset_peak_memory(device):
    """So that several runs in one process each report their own peak."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # Linux: reset the peak resident set (VmHWM)
        except OSError:
            pass


def credit_examples(batch, token_adv, tokenizer, k=6, per_group=2):
    """The first k sampled responses with A != 0 (at most per_group from a group), each token with
    its credit multiplier Â/A."""
    examples, taken = [], {}
    for i in range(len(batch.rows)):
        a = batch.advantages[i].item()
        group = i // batch.group_size
        if not batch.sampled[i] or a == 0 or taken.get(group, 0) == per_group:
            continue
        taken[group] = taken.get(group, 0) + 1
        n = int(batch.completion_mask[i].sum())
        examples.append({"question": batch.rows[i]["question"], "answer": batch.rows[i]["answer"],
                         "note": scored_under(batch, i, tokenizer), "advantage": a,
                         "tokens": [tokenizer.decode([t]) for t in batch.completion_ids[i, :n].tolist()],
                         "multipliers": (token_adv[i, :n] / a).tolist()})
        if len(examples) == k:
            break
    return examples


def scored_under(batch, i, tokenizer):
    """The picture's note: what the credit scored response i under (a negative prompt, the hints),
    token ids decoded; '' for a credit that reads only the response."""
    under = (batch.scored_under or [{}] * (i + 1))[i]
    return ", ".join(f"{k}: " + (repr(tokenizer.decode(v, skip_special_tokens=True)) if isinstance(v, list) else f"{v}")
                     for k, v in under.items())


def credit_colour(multiplier):
    """RGB in [0, 1] for a credit multiplier Â/A: white at 1 (GRPO), green above, red below;
    x3 or /3 and beyond saturate."""
    v = max(-1.0, min(1.0, math.log(max(multiplier, 1e-3)) / math.log(3)))
    return (1.0, 1 + v, 1 + v) if v < 0 else (1 - v, 1.0, 1 - v)


def render_credit_html(path, columns):
    """An HTML page colouring each response token by its credit multiplier Â/A: white = 1 (GRPO's
    uniform credit), green > 1 (more credit), red < 1 (less). columns: {method: credit_examples},
    shown side by side, row by row, so the same response can be compared across methods."""
    import html

    def cell(ex):
        spans = []
        for tok, m in zip(ex["tokens"], ex["multipliers"]):
            rgb = tuple(int(255 * c) for c in credit_colour(m))
            text = html.escape(tok).replace("\n", "&#9166;<br>") or "&nbsp;"
            spans.append(f'<span title="{m:.3f}" style="background:rgb{rgb}">{text}</span>')
        return (f"<b>{html.escape(ex['question'])}</b> (answer {html.escape(ex['answer'])}, A = {ex['advantage']:+.2f})"
                f"<br><small>{html.escape(ex['note'])}</small><pre>{''.join(spans)}</pre>")

    rows = max(1, *map(len, columns.values()))  # a batch with no response of A != 0 still gets its (empty) picture
    body = "".join("<tr>" + "".join(f"<td>{cell(v[r]) if r < len(v) else ''}</td>" for v in columns.values()) + "</tr>"
                   for r in range(rows))
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    with open(path, "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>token credit</title><style>td{vertical-align:top;"
                "padding:8px;border:1px solid #ddd}pre{font-size:15px;white-space:pre-wrap}span{padding:1px}</style>"
                "<p>Each response token coloured by its credit multiplier Â/A (hover for the value): white = 1, "
                f"as GRPO gives every token; green = more credit, red = less.</p><table><tr>{head}</tr>{body}</table>")


def render_credit_png(path, columns):
    """The picture of render_credit_html as a PNG, for short responses (one character wide per
    character of a token, lines broken at newlines)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = max(1, *map(len, columns.values()))  # a batch with no response of A != 0 still gets its (empty) picture
    fig, axes = plt.subplots(rows, len(columns), figsize=(4.2 * len(columns), 1.3 * rows), squeeze=False)
    for c, (name, examples) in enumerate(columns.items()):
        axes[0][c].set_title(name, fontsize=11, fontweight="bold")
        for r in range(rows):
            ax = axes[r][c]
            ax.axis("off")
            if r >= len(examples):
                continue
            ex = examples[r]
            ax.text(0, 1, f"{ex['question']}  (A = {ex['advantage']:+.2f})", fontsize=7, color="gray", va="top",
                    transform=ax.transAxes)
            col, line = 0, 1
            for tok, m in zip(ex["tokens"], ex["multipliers"]):
                for k, piece in enumerate(tok.split("\n")):
                    if k:
                        col, line = 0, line + 1
                    if piece:
                        ax.text(0.024 * col, 1 - 0.2 * line, piece, family="monospace", fontsize=9, va="top",
                                transform=ax.transAxes, bbox={"facecolor": credit_colour(m), "edgecolor": "none", "pad": 0.8})
                        col += len(piece)
    fig.text(0.5, 0.005, "token credit multiplier Â/A: white = 1 (GRPO), green = more, red = less", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def history_last(history, key):
    return next((m[key] for m in reversed(history) if key in m), float("nan"))


def summarize(history):
    steps = [m for m in history if m["step"] > 0]
    phases = ("t_generate", "t_score", "t_credit", "t_update")
    return {"start_acc": history[0]["eval_acc"], "final_acc": history_last(history, "eval_acc"),
            "final_reward": sum(m["reward"] for m in steps[-10:]) / max(1, len(steps[-10:])),
            "steps": len(steps), **{p: sum(m[p] for m in steps) / max(1, len(steps)) for p in phases},
            "sec_per_step": sum(m[p] for m in steps for p in phases) / max(1, len(steps)),
            "peak_mem_mb": max((m["peak_mem_mb"] for m in steps), default=0.0)}


PANELS = {"reward": "sampled reward", "eval_acc": "held-out greedy accuracy",
          "decisive_credit_share": "share of |Â| on decisive tokens", "free_tag_entropy": "entropy on the free tags (nats)"}


def training_seconds(history):
    """{step: seconds of training (every phase of every step) up to the end of that step}."""
    total, out = 0.0, {}
    for m in history:
        total += sum(m.get(p, 0.0) for p in PHASES)
        out[m["step"]] = total
    return out


def plot_curves(runs, path):
    """Each of PANELS that the runs logged, against step: {name: [metrics of each run]}, one line
    per name (the mean over its runs) with a band of one standard deviation. Noisy per-step
    metrics are shown as a 10-step moving average. Last, the held-out accuracy against training
    seconds (their mean over the runs at each evaluation): a method that costs more per step pays
    for it there."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in PANELS if any(k in m for hs in runs.values() for h in hs for m in h)]
    timed = "eval_acc" in keys
    # Ten colours, then dashed, then dotted (30 distinct lines): the ceiling study's eleventh arm
    # drew GRPO's colour and line.
    style = {name: {"color": f"C{i % 10}", "linestyle": ("-", "--", ":")[i // 10 % 3]} for i, name in enumerate(runs)}
    fig, ax = plt.subplots(1, len(keys) + timed, figsize=(5.5 * (len(keys) + timed), 4), squeeze=False)
    for axis, key in zip(ax[0], keys):
        for name, histories in runs.items():
            steps = sorted({m["step"] for h in histories for m in h if m.get(key) is not None})
            per_step = [[m[key] for h in histories for m in h if m["step"] == s and m.get(key) is not None] for s in steps]
            mean = torch.tensor([sum(v) / len(v) for v in per_step])
            std = torch.tensor([torch.tensor(v).std().item() if len(v) > 1 else 0.0 for v in per_step])
            smooth = key != "eval_acc" and len(mean) >= 10
            if smooth:
                mean, std = (torch.nn.functional.avg_pool1d(t[None], 10, 1)[0] for t in (mean, std))
                steps = steps[9:]
            axis.plot(steps, mean.tolist(), label=name, marker=None if smooth else "o", **style[name])
            axis.fill_between(steps, (mean - std).tolist(), (mean + std).tolist(), color=style[name]["color"], alpha=0.2)
        axis.set(title=PANELS[key], xlabel="step")
    if timed:
        for name, histories in runs.items():
            steps = sorted({m["step"] for h in histories for m in h if "eval_acc" in m})
            clocks = [training_seconds(h) for h in histories]
            seconds = [sum(c[s] for c in clocks) / len(clocks) for s in steps]
            acc = [statistics.mean(m["eval_acc"] for h in histories for m in h if m["step"] == s and "eval_acc" in m)
                   for s in steps]
            ax[0][-1].plot(seconds, acc, label=name, marker="o", **style[name])
        ax[0][-1].set(title=PANELS["eval_acc"], xlabel="training seconds (mean over runs)")
    ax[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_report(output_dir, history, last_credit=None, model=None, tokenizer=None):
    """A finished run's summary.json and curves.png, its credit.html (the last step's responses
    coloured by their credit, credit_examples) when given, and the final model and tokenizer in
    output_dir/final when given. Returns the summary."""
    name = os.path.basename(output_dir)
    if model is not None:
        model.save_pretrained(os.path.join(output_dir, "final"))
        tokenizer.save_pretrained(os.path.join(output_dir, "final"))
    if last_credit is not None:
        render_credit_html(os.path.join(output_dir, "credit.html"), {name: last_credit})
    summary = summarize(history)
    with open(os.path.join(output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot_curves({name: [history]}, os.path.join(output_dir, "curves.png"))
    return summary
