"""compare.py's aggregation over seeds, on synthetic runs (the real ones take minutes)."""
import json
import math

import torch

import compare
import gold
import grpo_baseline as gb


def fake_run(tmp_path, name, accs, sec):
    out = tmp_path / name
    out.mkdir(parents=True)
    history = [{"step": 20 * k, "eval_acc": a, **({"reward": a} if k else {})} for k, a in enumerate(accs)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    summary = {"start_acc": accs[0], "final_acc": accs[-1], "peak_mem_mb": 100.0, "sec_per_step": sec,
               **{p: sec / 4 for p in compare.PHASES}}
    (out / "summary.json").write_text(json.dumps(summary))
    return str(out)


def test_aggregate_means_stds_steps_to_target_and_ratios(tmp_path):
    runs = {"grpo": [fake_run(tmp_path, "g0", [0.6, 0.85, 0.92], 1.0), fake_run(tmp_path, "g1", [0.6, 0.91, 0.95], 1.0)],
            "cepo": [fake_run(tmp_path, "c0", [0.6, 0.82, 0.84], 1.5), fake_run(tmp_path, "c1", [0.6, 0.95, 0.96], 1.5)]}
    methods, histories = compare.aggregate(runs)
    g, c = methods["grpo"], methods["cepo"]
    assert math.isclose(g["final_acc"], 0.935) and math.isclose(g["final_acc_std"], math.sqrt(2) * 0.015)
    assert g["steps_to_target"] == 30 and g["reached_target"] == 2  # steps 40 and 20
    assert c["steps_to_target"] is None and c["reached_target"] == 1
    assert g["vs_grpo"] == 1.0 and c["vs_grpo"] == 1.5
    text = compare.table(methods)
    assert "| cepo | 0.600 | 0.900 ± 0.085 | not reached (1/2 seeds did) | 1.500" in text
    assert len(histories["grpo"]) == 2


def test_gold_runs_with_grpos_loss_in_the_comparison():
    """compare isolates the injection: Gold's loss there is GRPO's on any input."""
    cfg, base = compare.method_config("gold"), gb.GRPOConfig()
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(6, 5, generator=g), -torch.rand(6, 5, generator=g)
    adv, mask = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.3).float()
    ours, theirs = gold.gold_loss(logp, old, adv, mask, cfg, mask.sum()), gb.grpo_loss(logp, old, adv, mask, base, mask.sum())
    assert ours[0].item() == theirs[0].item() and ours[1] == theirs[1]
    assert gold.GoldConfig().loss_type != base.loss_type  # gold.py's own default is the paper's
