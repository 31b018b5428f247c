"""compare.py's statistics and tables, on synthetic runs (the real ones take minutes)."""
import json
import math

import hypothesis.strategies as st
import torch
from hypothesis import given

import compare
import gold
import grpo_baseline as gb


def fake_run(tmp_path, name, accs, sec, share=None):
    """A finished run's files: evaluations every 10 steps with these accuracies."""
    out = tmp_path / name
    out.mkdir(parents=True)
    history = [{"step": 10 * k, "eval_acc": a, **({"reward": a, "decisive_credit_share": share,
                                                    "decisive_credit_share_uniform": 0.2} if k and share else {})}
               for k, a in enumerate(accs)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    (out / "summary.json").write_text(json.dumps({"peak_mem_mb": 100.0, "sec_per_step": sec}))
    return str(out)


def test_run_record_auc_target_and_credit(tmp_path):
    r, _ = compare.run_record(1, 0, fake_run(tmp_path, "r", [0.2, 0.3, 0.4, 0.4], 1.0, share=0.5))
    assert math.isclose(r["auc"], (0.25 + 0.35 + 0.4) / 3)  # trapezoids over 3 intervals of 10 steps
    assert r["final_acc"] == 0.4 and r["start_acc"] == 0.2 and r["steps_to_target"] == 20  # first >= 0.2 + 0.15
    assert r["decisive_credit_share"] == 0.5 and r["decisive_credit_share_uniform"] == 0.2 and r["free_tag_entropy_first"] is None


def test_paired_differences_tables_and_verdict(tmp_path):
    runs = {"grpo": [], "gcpo": []}
    for w in (0, 1, 2):
        for s in (0, 1):
            base = [0.2 + 0.1 * w, 0.3 + 0.1 * w, 0.35 + 0.1 * w]  # warm starts differ a lot, pairs move together
            runs["grpo"].append((w, s, fake_run(tmp_path, f"g{w}{s}", base, 1.0, 0.2)))
            runs["gcpo"].append((w, s, fake_run(tmp_path, f"c{w}{s}", [base[0]] + [a + 0.05 for a in base[1:]], 1.2, 0.4)))
    methods, histories = compare.aggregate(runs)
    g, c = methods["grpo"], methods["gcpo"]
    assert g["auc_diff_vs_grpo"] == 0 and g["auc_diff_vs_grpo_ci"] == [0, 0]
    assert math.isclose(c["auc_diff_vs_grpo"], 0.05 * 0.75) and c["auc_diff_vs_grpo_ci"][0] > 0  # the pairing removes the spread
    assert c["auc_ci"][1] - c["auc_ci"][0] > 0.1  # unpaired, the warm starts' spread dominates
    assert math.isclose(c["vs_grpo"], 1.2) and c["decisive_credit_share"] == 0.4 and len(histories["gcpo"]) == 6
    checks = {w: {"seed": w, "start_acc": 0.3, "hint_contrast_nats": 2.0, "negative_contrast_wrong_answer": 1.0,
                  "negative_contrast_empty_prompt": 0.1, "failed_checks": ["negative_contrast_empty_prompt"]} for w in (0, 1)}
    text = compare.table(methods, checks)
    assert "| gcpo |" in text and "| 1 | 0.300 | +2.00 | +1.00 | +0.10 | negative_contrast_empty_prompt |" in text
    assert "- gcpo beats GRPO: AUC difference +0.038" in compare.verdict(methods)
    summary = json.loads(json.dumps(compare.task_summary({"max_steps": 20}, [0, 1], checks, methods)))
    assert {"warm_starts", "methods"} <= set(summary) and summary["warm_starts"][0]["seed"] == 0
    for m in summary["methods"].values():
        assert {"runs", "final_acc", "final_acc_ci", "auc", "auc_ci", "auc_diff_vs_grpo", "auc_diff_vs_grpo_ci",
                "decisive_credit_share", "sec_per_step", "peak_mem_mb"} <= set(m)
        assert {"warm_start", "seed", "final_acc", "auc"} <= set(m["runs"][0])


@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=3), min_size=1, max_size=4))
def test_bootstrap_interval_lies_within_the_data_and_is_a_point_for_constant_data(groups):
    lo, hi = compare.bootstrap_ci(dict(enumerate(groups)), n=500)
    values = [v for g in groups for v in g]
    assert min(values) - 1e-12 <= lo <= hi <= max(values) + 1e-12
    const = compare.bootstrap_ci(dict(enumerate([[0.5] * len(g) for g in groups])), n=200)
    assert const == [0.5, 0.5]


def test_gold_runs_with_grpos_loss_in_the_comparison():
    """compare isolates the injection: Gold's loss there is GRPO's on any input."""
    cfg, base = compare.method_config("gold"), gb.GRPOConfig()
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(6, 5, generator=g), -torch.rand(6, 5, generator=g)
    adv, mask = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.3).float()
    ours, theirs = gold.gold_loss(logp, old, adv, mask, cfg, mask.sum()), gb.grpo_loss(logp, old, adv, mask, base, mask.sum())
    assert ours[0].item() == theirs[0].item() and ours[1] == theirs[1]
    assert gold.GoldConfig().loss_type != base.loss_type  # gold.py's own default is the paper's
