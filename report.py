"""Collect the runs of `./run.sh` into one results table and one picture.

    python report.py RUNS_DIR RESULTS_DIR

reads RUNS_DIR/<method>/{summary.json, metrics.jsonl} and writes RESULTS_DIR/summary.md,
summary.json and curves.png; prints the table.
"""
import json
import os
import sys

from grpo_baseline import plot_curves

METHODS = {"grpo_baseline": "grpo", "gcpo": "gcpo", "cepo": "cepo", "gold": "gold"}


def main(runs_dir, results_dir):
    summaries, histories = {}, {}
    for method, name in METHODS.items():
        run = os.path.join(runs_dir, method)
        if os.path.exists(os.path.join(run, "summary.json")):
            with open(os.path.join(run, "summary.json")) as f:
                summaries[name] = json.load(f)
            with open(os.path.join(run, "metrics.jsonl")) as f:
                histories[name] = [json.loads(line) for line in f]
    if not summaries:
        sys.exit(f"error: no finished run under {runs_dir}/ (expected {runs_dir}/<method>/summary.json)")
    base = summaries.get("grpo", {}).get("sec_per_step")
    rows = ["| method | start acc | final acc | s/step (gen / score / credit / update) | vs GRPO | peak MB |",
            "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        ratio = f"{s['sec_per_step'] / base:.2f}x" if base else "-"
        rows.append(f"| {name} | {s['start_acc']:.3f} | {s['final_acc']:.3f} | {s['sec_per_step']:.3f} "
                    f"({s['t_generate']:.3f} / {s['t_score']:.3f} / {s['t_credit']:.3f} / {s['t_update']:.3f}) "
                    f"| {ratio} | {s['peak_mem_mb']:.0f} |")
    table = "\n".join(rows) + "\n"
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "summary.md"), "w") as f:
        f.write(table)
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump({"methods": summaries}, f, indent=1)
    plot_curves(histories, os.path.join(results_dir, "curves.png"))
    print(table)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
