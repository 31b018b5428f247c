"""compare.py's records, statistics, tables and --recompute, on synthetic per-step metrics (real
runs take minutes; tests/test_paired_stats.py checks the statistics' calibration)."""
import json
import math
import os
import shutil
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import compare
import gold
import grpo_baseline as gb
from loop.embedded_task import warm_start_spec


def history(accs, sec=1.0, every=10, **credit):
    """A run's per-step metrics: evaluations every `every` steps with these accuracies; `credit`
    keys on every training step."""
    steps = [{"step": 0, "eval_acc": accs[0]}]
    for t in range(1, every * (len(accs) - 1) + 1):
        m = {"step": t, "peak_mem_mb": 100.0 + t, **{p: sec / 4 for p in compare.PHASES}, **credit}
        if t % every == 0:
            m["eval_acc"] = accs[t // every]
        steps.append(m)
    return steps


def test_run_record_auc_target_and_credit():
    r = compare.run_record(1, 0, history([0.2, 0.3, 0.4, 0.4], credit_pos_decisive=2.0, gold_injections=1, gold_tokens=9))
    assert math.isclose(r["auc"], (0.25 + 0.35 + 0.4) / 3)  # trapezoids over 3 intervals of 10 steps
    assert r["final_acc"] == 0.4 and r["start_acc"] == 0.2 and r["steps_to_target"] == 20  # first >= 0.2 + 0.15
    assert r["warm_start"] == 1 and r["seed"] == 0 and r["credit_pos_decisive"] == 2.0 and r["credit_neg_free"] is None
    assert r["references"] == 30 and r["reference_tokens"] == 270 and math.isclose(r["sec_per_step"], 1.0)
    never = compare.run_record(0, 0, history([0.2, 0.25, 0.3]))
    assert never["steps_to_target"] == 20 and not never["reached_target"]  # counted as the run's length


def benchmark(shift, noise=0.0, W=6, S=1):
    """Histories of grpo and an arm whose accuracy after step 0 is GRPO's + shift (+ noise per warm
    start): warm starts differ a lot, pairs move together."""
    out = {"grpo": {}, "gcpo": {}, "aa": {}}
    for w in range(W):
        for s in range(S):
            base = [0.2 + 0.05 * w, 0.3 + 0.05 * w, 0.35 + 0.05 * w]
            bump = shift + noise * (-1) ** w
            out["grpo"][w, s] = history(base)
            out["gcpo"][w, s] = history([base[0]] + [a + bump for a in base[1:]], sec=1.2, credit_pos_decisive=1.5)
            out["aa"][w, s] = history([base[0]] + [a + noise * (-1) ** (w // 2) for a in base[1:]])
    return out


CHECKS = {w: {"seed": w, "start_acc": 0.3, "hint_contrast_nats": 2.0, "negative_contrast_wrong_answer": 1.0,
              "negative_contrast_empty_prompt": 0.1, "failed_checks": ["negative_contrast_empty_prompt"]} for w in range(6)}


def test_paired_differences_holm_mde_tables_and_verdict():
    arms = compare.aggregate(benchmark(0.05, noise=0.01))
    g, c, a = arms["grpo"], arms["gcpo"], arms["aa"]
    assert g["auc_diff_vs_grpo"] == 0 and g["auc_diff_vs_grpo_ci"] == [0, 0]
    assert math.isclose(c["auc_diff_vs_grpo"], 0.05 * 0.75) and c["auc_diff_vs_grpo_ci"][0] > 0  # the pairing removes the spread
    assert c["auc_ci"][1] - c["auc_ci"][0] > 0.1  # unpaired, the warm starts' spread dominates
    assert c["p_sign_flip"] == 2 / 2 ** 6 and c["p_holm"] == 2 * c["p_sign_flip"]  # every warm start agrees; Holm over 2 arms
    assert a["p_sign_flip"] > 0.5 and a["mde"] > 0 and math.isclose(c["vs_grpo"], 1.2)
    assert c["credit_by_role"]["pos"]["decisive"] == 1.5 and set(c["credit_by_role"]) == {"pos", "neg"}
    text = compare.table(arms, CHECKS)
    assert "| gcpo |" in text and "| 1 | 0.300 | +2.00 | +1.00 | +0.10 | negative_contrast_empty_prompt |" in text
    lines = compare.verdict(arms)
    assert "- gcpo is not separated from GRPO" in lines  # 2/64 x 2 arms > 0.05: six warm starts cannot separate two arms
    assert "aa is not separated" in lines and "this rule cannot detect any effect at this number of warm starts" in lines
    assert f"its 90% interval [{compare.fmt(a['tost90'][0], True)}, {compare.fmt(a['tost90'][1], True)}]" in lines
    assert a["mde_holm"] is None and g["mde_holm"] is None
    one = compare.aggregate({k: v for k, v in benchmark(0.05, noise=0.01).items() if k != "aa"})
    assert "- gcpo beats GRPO: AUC difference +0.038" in compare.verdict(one)  # one comparison: 2/64 < 0.05


def test_the_controls_contrasts_are_the_paired_differences_of_their_arms():
    """gold − sft_gold and gcpo − random, on the same warm starts and seeds: with GRPO's runs shared,
    the difference of the two arms' differences from GRPO; absent when a control did not run."""
    histories = benchmark(0.05, noise=0.01, W=4, S=2)
    histories["random"] = {k: [{**m, "eval_acc": m["eval_acc"] - 0.02} if "eval_acc" in m and m["step"] else m for m in h]
                           for k, h in histories["gcpo"].items()}
    arms = compare.aggregate(histories)
    c = compare.contrasts(arms)["gcpo_vs_random"]
    assert math.isclose(c["auc_diff"], arms["gcpo"]["auc_diff_vs_grpo"] - arms["random"]["auc_diff_vs_grpo"])
    assert math.isclose(c["auc_diff"], 0.02 * 3 / 4) and c["auc_diff_ci"][1] - c["auc_diff_ci"][0] < 1e-9
    assert list(compare.contrasts(arms)) == ["gcpo_vs_random"]  # no sft_gold ran: no Gold contrast


def test_preamble_says_when_the_design_cannot_separate_any_arm():
    arms = compare.aggregate(benchmark(0.05, noise=0.01))
    assert "cannot separate any arm" in compare.preamble("default", arms, compare.BUDGET)
    arms16 = compare.aggregate(benchmark(0.05, noise=0.01, W=16))
    assert "cannot separate" not in compare.preamble("full", arms16, compare.BUDGET)
    assert compare.preamble("quick", arms, compare.BUDGET).startswith("Smoke run")


BUDGET20 = {**compare.BUDGET, "max_steps": 20}  # benchmark()'s histories: evaluations at 0, 10, 20


def test_summary_json_has_every_key_and_recompute_reproduces_it(tmp_path, monkeypatch, capsys):
    histories = benchmark(0.03, noise=0.02, W=3, S=2)
    arms = compare.aggregate(histories)
    mc = {a: {"start": {"corr": 0.1, "sign_agreement": 0.6, "n": 40}, "end": None} for a in arms}
    compare.write_metrics(tmp_path / "metrics.jsonl.gz", histories)
    compare.report(tmp_path, "quick", arms, dict(list(CHECKS.items())[:3]), BUDGET20, [0, 1], mc, 12.5)  # (MC: quick's)
    first = json.loads((tmp_path / "summary.json").read_text())
    task = first["tasks"]["chain"]
    assert task["interval"] == "t on warm-start means" and task["design"]["warm_starts"] == 3
    for name, m in task["methods"].items():
        assert {"p_holm", "mde", "mde_holm", "tost90", "credit_by_role", "first_error_credit", "mc_agreement",
                "auc_ci"} <= set(m)
        assert {"warm_start", "seed", "auc"} <= set(m["runs"][0]) and len(m["runs"]) == 6
        assert set(m["credit_by_role"]["neg"]) == set(compare.ROLE_NAMES)
    assert compare.read_metrics_file(tmp_path / "metrics.jsonl.gz") == {
        a: {k: hs[k] for k in sorted(hs)} for a, hs in histories.items()}
    monkeypatch.setattr("sys.argv", ["compare.py", "--recompute", str(tmp_path)])
    (tmp_path / "summary.json").write_text(json.dumps({**first, "tasks": {"chain": {**task, "methods": {
        a: {"mc_agreement": m["mc_agreement"]} for a, m in task["methods"].items()}}}}))  # numbers gone, from the metrics again
    compare.main()
    assert json.loads((tmp_path / "summary.json").read_text()) == first and "| gcpo |" in capsys.readouterr().out
    assert (tmp_path / "curves.png").stat().st_size > 0  # the curves are redrawn from the same metrics


@pytest.mark.parametrize("files, problem", [({}, "needs the summary.json"), ({"summary.json": "{"}, "needs the summary.json")])
def test_recompute_refuses_a_folder_without_a_run_in_one_line(tmp_path, monkeypatch, capsys, files, problem):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr("sys.argv", ["compare.py", "--recompute", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        compare.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and problem in err[-1] and str(tmp_path) in err[-1]


def recompute_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["compare.py", "--recompute", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        compare.main()
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.one_of(st.tuples(st.just("drop"), st.integers(0, 6 * 21 * 3 - 1)), st.tuples(st.just("cut"), st.floats(0.05, 0.95)),
                        st.sampled_from([("run", "gcpo"), ("run", "grpo"), ("arm", "grpo"), ("summary", '{"tasks": 3}'),
                                         ("summary", '{"preset": "default", "tasks": {"chain": {"seeds": 1}}}')])))
def test_recompute_refuses_damaged_or_incomplete_metrics_and_keeps_the_summary(tmp_path, monkeypatch, capsys, damage):
    """Any one record dropped (once: a silently changed AUC), the file cut short (EOFError), a run or
    an arm missing (a KeyError, or a summary over fewer warm starts), a summary.json of another shape:
    one line naming the file, and summary.json and summary.md left as they were."""
    histories = benchmark(0.03, noise=0.02, W=3, S=2)
    compare.report(tmp_path, "default", compare.aggregate(histories), dict(list(CHECKS.items())[:3]), BUDGET20, [0, 1],
                   {a: None for a in histories}, 12.5)
    kind, what = damage
    if kind == "drop":
        records = [(a, k, i) for a, hs in histories.items() for k, h in sorted(hs.items()) for i in range(len(h))]
        a, k, i = records[what]
        del histories[a][k][i]
    elif kind == "run":
        del histories[what][(1, 0)]
    elif kind == "arm":
        del histories[what]
    compare.write_metrics(tmp_path / "metrics.jsonl.gz", histories)
    if kind == "cut":
        data = (tmp_path / "metrics.jsonl.gz").read_bytes()
        (tmp_path / "metrics.jsonl.gz").write_bytes(data[:int(len(data) * what)])
    if kind == "summary":
        (tmp_path / "summary.json").write_text(what)
    before = {name: (tmp_path / name).read_text() for name in ("summary.json", "summary.md")}
    code, err = recompute_exit(tmp_path, monkeypatch, capsys)
    assert code == 2 and err[-1].startswith(f"compare.py: error: --recompute {tmp_path}: ")
    assert {name: (tmp_path / name).read_text() for name in before} == before


def test_a_credit_picture_without_examples_is_still_drawn(tmp_path):
    compare.render_credit_png(str(tmp_path / "c.png"), {"GRPO (uniform)": [], "GCPO": []})
    assert (tmp_path / "c.png").stat().st_size > 0


@pytest.mark.parametrize("arms", [2, 11, 25])
def test_every_arm_of_the_curves_has_a_line_of_its_own(tmp_path, arms):
    """Up to 30 arms (ten colours × three line styles; the ceiling study has 11), no two share a
    colour and a line style in any panel, so the legend names one line each."""
    runs = {f"arm{i}": [history([0.4, 0.5, 0.6], reward=0.5)] for i in range(arms)}
    with mock.patch("matplotlib.pyplot.close") as close:
        compare.plot_curves(runs, str(tmp_path / "curves.png"))
    for axis in close.call_args[0][0].axes:
        looks = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in axis.get_lines()}
        assert len(looks) == arms and len(set(looks.values())) == arms, looks


def test_every_arm_runs_from_the_same_prompts_and_aa_samples_differently():
    for w, s in ((0, 0), (3, 1)):
        seeds = {arm: compare.run_seeds(arm, w, s) for arm in compare.ARMS}
        assert len({data for _, data in seeds.values()}) == 1  # one prompt stream per (warm start, seed)
        assert seeds["aa"][0] != seeds["grpo"][0] and seeds["gcpo"] == seeds["grpo"]
    assert compare.run_seeds("grpo", 0, 0)[1] != compare.run_seeds("grpo", 1, 0)[1]  # nested: no stream shared


def test_gold_runs_with_grpos_loss_in_the_comparison():
    """compare isolates the injection: Gold's loss there is GRPO's on any input."""
    cfg, base = compare.method_config("gold"), gb.GRPOConfig()
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(6, 5, generator=g), -torch.rand(6, 5, generator=g)
    adv, mask = torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) > 0.3).float()
    ours, theirs = gold.gold_loss(logp, old, adv, mask, cfg, mask.sum()), gb.grpo_loss(logp, old, adv, mask, base, mask.sum())
    assert ours[0].item() == theirs[0].item() and ours[1] == theirs[1]
    assert gold.GoldConfig().loss_type != base.loss_type  # gold.py's own default is the paper's
    assert compare.method_config("sft_gold").loss_type == base.loss_type


def test_a_killed_benchmark_resumes_without_rerunning_what_finished(tmp_path, monkeypatch):
    """run_all runs a job only when its directory holds no done.json with the same options: a run
    killed before its end (no done.json) or one with other options runs again."""
    launched, weights = [], ["a"]

    class Finished:
        returncode = 0

        def __init__(self, cmd, **kwargs):
            launched.append(cmd)
            out = cmd[cmd.index("--output_dir") + 1]
            if "--check_warm_start" in cmd:
                (tmp_path / out / "checks.json").write_text(json.dumps({"seed": 0, "weights_sha256": weights[0]}))

        def poll(self):
            return 0
    monkeypatch.setattr(compare.subprocess, "Popen", Finished)
    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    monkeypatch.chdir(tmp_path)
    budget = {**compare.BUDGET, "max_steps": 2}
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget)
    assert len(launched) == 3 and all((tmp_path / "runs/warm0" / d / "done.json").exists() for d in ("checks", "grpo_seed0", "gcpo_seed0"))
    assert not any(os.path.isabs(a) for cmd in launched for a in cmd[1:])  # done.json is the same in a clone anywhere
    first = list(launched)
    launched.clear()
    model = tmp_path / warm_start_spec(gb.GRPOConfig(**budget, warm_start_seed=0))[1]
    model.mkdir(parents=True)
    (model / "warm_start.json").write_text("{}")  # the warm start the check built (the stand-in wrote none)
    (tmp_path / "runs/warm0/gcpo_seed0/done.json").unlink()  # killed before it finished
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget)
    assert launched == [first[2]]
    launched.clear()
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, {**budget, "max_steps": 3, "learning_rate": 1e-5})
    assert len(launched) == 2 and not any("--check_warm_start" in cmd for cmd in launched)  # RL options: the runs again
    launched.clear()
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, {**budget, "max_steps": 3, "learning_rate": 1e-5, "eval_size": 50})
    assert len(launched) == 3  # an option a check reads: the check too
    last = list(launched)
    launched.clear()
    shutil.rmtree(model)  # a fresh clone of the committed runs: no model survives
    budget = {**budget, "max_steps": 3, "learning_rate": 1e-5, "eval_size": 50}
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget)
    assert launched == []  # every run from it done: the warm start is not built again
    (tmp_path / "runs/warm0/gcpo_seed0/done.json").unlink()
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget)
    assert launched == [last[0], last[2]]  # a run left: its warm start is built (and checked) first
    launched.clear()
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget, finals=[0])
    assert launched == last  # the final models gone: the runs that must keep one run again, after their warm start
    launched.clear()
    (tmp_path / "runs/warm0/gcpo_seed0/done.json").unlink()
    weights[0] = "b"  # built again on another CPU, it comes out different: GRPO's run too starts from it again
    compare.run_all(["grpo", "gcpo"], [0], [0], "runs", 1, budget)
    assert launched == last


def test_with_one_pretrained_start_the_unit_is_the_rl_seed_and_the_summary_is_the_words_task(tmp_path):
    """The real tier (--real): one start, 8 RL seeds. Every statistic pairs and averages over the
    seeds, the summary is filed under the words task with the model named, and each arm's gain
    (final - start accuracy) has its interval."""
    histories = {"grpo": {}, "gcpo": {}}
    for s in range(8):
        base = [0.4, 0.45 + 0.01 * s, 0.5 + 0.01 * s]
        histories["grpo"][0, s] = history(base, credit_pos_sum=1.0)
        histories["gcpo"][0, s] = history([0.4] + [a + 0.02 * (-1) ** s for a in base[1:]], credit_pos_sum=1.5)
    arms = compare.aggregate(histories)
    d = compare.design(arms)
    assert d["unit"] == "seed" and d["warm_starts"] == 8 and d["smallest_p_sign_flip"] == 2 / 2 ** 8
    assert arms["gcpo"]["runs"][0]["credit_pos_sum"] == 1.5 and "credit_pos_sum" not in compare.run_record(0, 0, history([0.1, 0.2]))
    checks = {0: {**CHECKS[0], "seed": 0, "hint_contrast_by_role": {"sum": -0.04, "answer": -0.01},
                  "negative_contrast_by_role_wrong_answer": {"operand": 0.23}}}
    text = compare.report(tmp_path, "real", arms, checks, compare.REAL_BUDGET, list(range(8)), {}, 60.0)
    # the words task's roles replace the chain's (which the real runs do not log) in the credit table
    assert "| gcpo | 1.50 | — | — | — |" in text and "A>0 decisive" not in text
    assert "| 0 | 0.300 | CEPO hint | +2.000 | -0.040 | -0.010 | — | — |" in text
    assert "| 0 | 0.300 | GCPO wrong-answer x⁻ | +1.000 | — | — | +0.230 | — |" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    task = summary["tasks"]["words"]
    assert summary["preset"] == "real" and task["model"] == "smollm2-135m-instruct" and task["interval"] == "t on RL-seed means"
    gain = task["gains"]["grpo"]
    assert math.isclose(gain["gain"], 0.1 + 0.01 * 3.5) and gain["gain_ci"][0] > 0 and gain["units"] == 8
    assert text.startswith("One pretrained start x 8 RL seeds (the unit) x 2 arms")
    assert "- grpo learns: held-out accuracy +0.135 [" in text


def fake_runs(monkeypatch, tmp_path, accuracy):
    """run_all's subprocesses replaced: each run writes per-step metrics whose held-out accuracy is
    accuracy(arm file, options) (evaluations at 0 and at max_steps); each check, its checks.json."""
    launched = []

    class Finished:
        returncode = 0

        def __init__(self, cmd, **kwargs):
            launched.append(cmd)
            options = {k[2:]: v for k, v in zip(cmd[1:], cmd[2:]) if k.startswith("--")}
            out = tmp_path / options["output_dir"]
            if "--check_warm_start" in cmd:
                (out / "checks.json").write_text(json.dumps({**CHECKS[0], "seed": int(options["warm_start_seed"])}))
            else:
                acc = accuracy(" ".join(cmd[1:4]), options)
                steps = int(options["max_steps"])
                h = history([0.3, acc], every=steps)
                h[0]["learning_rate"] = float(options.get("learning_rate", gb.GRPOConfig.learning_rate))  # as a run logs it
                (out / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in h))
                (out / "checkpoint.pt").write_bytes(b"weights")
                (out / "final").mkdir(exist_ok=True)

        def poll(self):
            return 0
    monkeypatch.setattr(compare.subprocess, "Popen", Finished)
    monkeypatch.setattr(compare.time, "sleep", lambda s: None)
    monkeypatch.chdir(tmp_path)
    return launched


def test_the_ceiling_study_tunes_each_arm_on_its_pilots_then_runs_the_best_oracle_at_every_chain_length(
        tmp_path, monkeypatch, capsys):
    """run_ceiling: every arm at every learning rate on the pilot warm starts (the soft oracle also
    at every β); the confirmatory runs at the options with the highest pilot AUC; the sweep runs
    GRPO and the oracle best on the pilots (not on the confirmatory runs, where the hard oracle
    is), at each other chain length; the summary and --recompute agree."""
    def accuracy(arm, o):  # GRPO best at 1e-4; the soft oracle best at β 16, 2e-4, and more so with more operands
        lr, ops = float(o["learning_rate"]), int(o.get("task_operands", 4))
        if "soft_oracle" in arm:
            return 0.5 + float(o["decided_weight"]) / 400 + lr * 100 + 0.01 * ops + 0.001 * (int(o["seed"]) % 3)
        if "controls oracle" in arm:  # the best of all on the confirmatory warm starts, the worst oracle on the pilots
            return 0.9 if int(o["warm_start_seed"]) < 100 else 0.4
        return 0.5 - abs(lr - 1e-4) * 100 + 0.001 * (int(o["seed"]) % 2)
    launched = fake_runs(monkeypatch, tmp_path, accuracy)
    judged = []  # the Monte-Carlo agreement: the runs it reads, and how many had started when it ran

    def agreement(arms, runs, budget, warm_starts, sample, device, options, folder):
        judged.append((runs, len(launched)))
        os.makedirs(folder, exist_ok=True)
        for w in warm_starts[:sample[0]]:
            compare.kept(os.path.join(folder, f"warm{w}.json"), compare.mc_key(arms, runs, w, sample, options, budget), dict)
    monkeypatch.setattr(compare, "mc_agreement", agreement)
    monkeypatch.setitem(compare.MC_SAMPLE, "ceiling", (1, 13, 64))
    budget = {**compare.BUDGET, "max_steps": 4}
    checks, runs, pilots, grid, sweeps = compare.run_ceiling(["grpo", "soft_oracle", "oracle"], [0, 1, 2], [0], "results", 1,
                                                             budget, "cpu")
    rates, betas = compare.CEILING["learning_rates"], compare.CEILING["decided_weights"]
    assert len(grid) == len(rates) * (2 + len(betas)) and set(pilots) == set(grid) and all(len(h) == 2 for h in pilots.values())
    chosen = compare.choose(grid, pilots)
    assert chosen["grpo"]["options"] == {"learning_rate": 1e-4}
    assert chosen["soft_oracle"]["options"] == {"learning_rate": 2e-4, "decided_weight": 16.0}
    confirm = [c for c in launched if "runs/warm" in c[c.index("--output_dir") + 1] and "--check_warm_start" not in c]
    mc_runs, before = judged[0]  # judged right after the runs from its warm start, before any other confirmatory run
    out = [c[c.index("--output_dir") + 1] for c in launched]
    assert {w for rs in mc_runs.values() for w, _, _ in rs} == {0} and out.index("results/runs/warm1/checks") == before
    assert sum(o.startswith("results/runs/warm0/") for o in out[:before]) == 1 + 3
    assert all(c[c.index("--learning_rate") + 1] == ("0.0001" if c[1] == "grpo_baseline.py" else "0.0002")
               for c in confirm if c[3] != "oracle")
    assert sorted(sweeps) == [5, 6] and all(set(hs) == {"grpo", "soft_oracle"} for hs in sweeps.values())
    histories = {a: {(w, s): compare.read_metrics(out) for w, s, out in rs} for a, rs in runs.items()}
    arms = compare.aggregate(histories)
    ceiling = compare.ceiling_report(grid, pilots, sweeps, histories)
    part = ceiling[0]
    assert part["best_oracle"] == "soft_oracle" and part["learning_rates"] == {"grpo": 1e-4, "soft_oracle": 2e-4, "oracle": rates[0]}  # a tie: the first
    assert part["at_grid_edge"] == {"soft_oracle": ["learning_rate", "decided_weight"], "oracle": ["learning_rate"]}
    assert "| grpo | learning_rate 0.0001 |" in ceiling[1] and "| oracle | learning_rate 1e-05 (*edge*) |" in ceiling[1]
    assert sorted(part["operand_sweep"]) == [4, 5, 6] and math.isclose(part["operand_trend"]["slope"], 0.01 * 0.5, rel_tol=0.2)
    compare.write_metrics(tmp_path / "metrics.jsonl.gz", histories)
    compare.write_metrics(tmp_path / "pilot_metrics.jsonl.gz", pilots)
    for k, hs in sweeps.items():
        compare.write_metrics(tmp_path / f"operands{k}_metrics.jsonl.gz", hs)
    compare.report(tmp_path, "ceiling", arms, checks, budget, [0], {}, 1.0, None, ceiling)
    first = json.loads((tmp_path / "summary.json").read_text())
    assert first["tasks"]["chain"]["ceiling"]["chosen"]["soft_oracle"]["label"] == "soft_oracle_lr0.0002_b16"
    monkeypatch.setattr("sys.argv", ["compare.py", "--recompute", str(tmp_path)])
    compare.main()
    assert json.loads((tmp_path / "summary.json").read_text()) == first and "| soft_oracle |" in capsys.readouterr().out

    # a fresh clone of what was committed as it went: no model, no pilot run, only their file
    shutil.rmtree(tmp_path / "results/runs/pilot")
    for final in (tmp_path / "results/runs").glob("**/final"):
        shutil.rmtree(final)
    launched.clear()
    assert compare.run_ceiling(["grpo", "soft_oracle", "oracle"], [0, 1, 2], [0], "results", 1, budget, "cpu")[2] == pilots
    assert launched == []
    (tmp_path / "results/mc/warm0.json").write_text('{"key": "of other code", "value": {}}')  # stale: the runs it
    # judges train again (their final models are gone), and only they
    compare.run_ceiling(["grpo", "soft_oracle", "oracle"], [0, 1, 2], [0], "results", 1, budget, "cpu")
    assert sorted(c[c.index("--output_dir") + 1] for c in launched) == [
        f"results/runs/warm0/{d}" for d in ("checks", "grpo_seed0", "oracle_seed0", "soft_oracle_seed0")]


def test_the_ceiling_study_refuses_a_chain_length_it_cannot_build_before_any_run(tmp_path, monkeypatch, capsys):
    """3 operands of 0-9 make 1,000 distinct problems, too few for 4,000 training and 1,000 held-out
    ones: the sweep once reached that length six hours in and stopped there on every rerun. Now each
    length is built before the first run, and the shipped ones build and fit the response length."""
    compare.check_sweep_lengths({**compare.BUDGET, **compare.PRESETS["ceiling"][3]})
    monkeypatch.setitem(compare.CEILING, "operands", [3, 5])
    monkeypatch.setattr(compare.subprocess, "Popen", lambda *a, **k: pytest.fail("a run started"))
    monkeypatch.setattr("sys.argv", ["compare.py", "--ceiling", "--results_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        compare.main()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "chain-length sweep: --task_operands 3" in err and "too few distinct problems" in err


def test_a_finished_run_keeps_no_checkpoint_and_a_real_tier_run_no_final_model(tmp_path, monkeypatch):
    """The real tier kept 2.1 GB per run (checkpoint and final model) that nothing reads again:
    40 runs filled the disk. A finished run's checkpoint goes; its final model stays where the
    Monte-Carlo agreement reads it."""
    fake_runs(monkeypatch, tmp_path, lambda arm, o: 0.5)
    budget = {**compare.BUDGET, "max_steps": 2}
    for keep_final in (True, False):
        _, runs = compare.run_all(["grpo"], [0], [keep_final], f"runs{keep_final}", 1, budget, keep_final=keep_final)
        out = tmp_path / runs["grpo"][0][2]
        assert (out / "done.json").exists() and not (out / "checkpoint.pt").exists()
        assert (out / "final").exists() == keep_final


def test_each_warm_start_is_built_just_before_its_runs(tmp_path, monkeypatch):
    """A study that spans sessions loses its built models with each: building every warm start first
    spent the end of a session on some that no run of it used."""
    launched = fake_runs(monkeypatch, tmp_path, lambda arm, o: 0.5)
    compare.run_all(["grpo", "gcpo"], [0, 1], [0], "runs", 1, {**compare.BUDGET, "max_steps": 2})
    assert [c[c.index("--output_dir") + 1] for c in launched] == [
        f"runs/warm{w}/{d}" for w in (0, 1) for d in ("checks", "grpo_seed0", "gcpo_seed0")]


def test_a_sweep_length_whose_solutions_do_not_fit_the_response_is_refused():
    with pytest.raises(ValueError, match="^--task_operands 5: a reference solution takes 51 tokens, more than --max_completion_length 40$"):
        compare.check_sweep_lengths({**compare.BUDGET, "max_completion_length": 40})


def test_a_value_check_without_an_interval_is_reported_without_one(tmp_path):
    """The bootstrap gives no interval for a constant correlation: the summary says the correlation
    alone (it raised a TypeError at the end of the study)."""
    arms = compare.aggregate(benchmark(0.01, W=3))
    check = {"corr": 0.4, "corr_ci": None, "sign_agreement": None, "decided_tokens": 0}
    text = compare.report(tmp_path, "default", arms, {w: CHECKS[w] for w in range(3)}, compare.BUDGET,
                          [0], {}, 1.0, check)
    assert "correlation +0.400, sign agreement" in text


def test_kept_reads_a_value_back_only_while_its_key_is_unchanged(tmp_path):
    """The ceiling's Monte-Carlo stage is kept on disk: a stopped study does not redo it, and runs
    done again (another key) never meet the old value."""
    path, calls = tmp_path / "mc.json", []
    compute = lambda: calls.append(1) or [{"grpo": {"corr": 0.5}}, None]  # noqa: E731
    first = compare.kept(path, ["grpo", [1, 2]], compute)
    assert compare.kept(path, ["grpo", [1, 2]], compute) == first and len(calls) == 1
    compare.kept(path, ["grpo", [1, 3]], compute)
    path.write_text("{not json")
    assert compare.kept(path, ["grpo", [1, 3]], compute) == first and len(calls) == 3


@given(st.lists(st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.booleans()), min_size=1, max_size=6),
                min_size=2, max_size=6))
@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
def test_pooled_agreement_is_the_agreement_over_every_valid_token_whatever_each_response_length(responses):
    """Responses from different batches have different lengths (each batch is padded to its longest):
    pooling them stopped the ceiling study with a stack error. Pooled, they agree as their valid
    tokens do, concatenated."""
    rows = [tuple(torch.tensor(c, dtype=torch.float) for c in zip(*r)) for r in responses]
    rows = [(adv, mc, mask, torch.full_like(mc, 0.1)) for adv, mc, mask in rows]
    got = compare.pooled_agreement(rows, resamples=20)
    flat = compare.mc_advantage.agreement(*(torch.cat(c)[None] for c in zip(*rows)))
    assert {k: got[k] for k in flat if k != "responses"} == {k: v for k, v in flat.items() if k != "responses"}
    assert got["responses"] == sum(any(m for _, _, m in r) for r in responses)


def test_an_arm_whose_90_interval_lies_inside_the_declared_margin_is_called_equivalent():
    near, far = (compare.aggregate(benchmark(shift, noise=0.01, W=8)) for shift in (0.004, 0.05))
    assert near["gcpo"]["tost90"][0] > -0.02 and near["gcpo"]["tost90"][1] < 0.02 < far["gcpo"]["tost90"][1]
    line = compare.verdict(near, margin=0.02).split("\n")[0]
    assert line.startswith("- gcpo is not separated") and "equivalent to GRPO within the declared ±0.02" in line
    assert "equivalent" not in compare.verdict(near).split("\n")[0]  # no margin declared: no claim
    assert "equivalent" not in compare.verdict(far, margin=0.02).split("\n")[0]


def test_the_monte_carlo_agreement_judges_every_arm_on_the_same_responses_at_both_ends(tmp_path, warm_cache, monkeypatch):
    """mc_agreement: one response of A != 0 from each of `prompts` prompts; at the end each arm's
    final model is judged on those same responses (the same tokens counted), with bootstrap
    intervals, each credit at the options its runs were chosen at (the soft oracle's β was once its
    default whatever the pilots chose); the value oracle's exact A^π is checked against A_MC."""
    from loop.embedded_task import load_task, warm_start
    budget = dict(task="sum", cache_dir=warm_cache, warm_start_steps=250, prompts_per_step=4, num_generations=4,
                  max_completion_length=40, micro_batch_size=8)
    cfg = gb.GRPOConfig(**budget)
    path = warm_start(cfg, *load_task(cfg), torch.device("cpu"))
    runs, seen, config = {}, [], compare.method_config
    for arm in ("grpo", "soft_oracle"):  # a stand-in final model: the warm start itself
        shutil.copytree(path, tmp_path / arm / "final")
        runs[arm] = [(0, 0, str(tmp_path / arm))]
    monkeypatch.setattr(compare, "method_config", lambda name, **o: seen.append((name, o.get("decided_weight"))) or config(name, **o))
    for arm in runs:
        (tmp_path / arm / "metrics.jsonl").write_text(json.dumps({"step": 0, "eval_acc": 0.5}))
    mc, exact = compare.mc_agreement(["grpo", "soft_oracle"], runs, budget, [0], (1, 3, 4), torch.device("cpu"),
                                     {"soft_oracle": {"decided_weight": 16.0}}, tmp_path / "mc")
    for arm in runs:  # a fresh clone: the final models are gone, the kept numbers are read back
        shutil.rmtree(tmp_path / arm / "final")
    monkeypatch.setattr(compare, "load_policy", lambda *a: pytest.fail("a model was loaded"))
    assert compare.mc_agreement(["grpo", "soft_oracle"], runs, budget, [0], (1, 3, 4), torch.device("cpu"),
                                {"soft_oracle": {"decided_weight": 16.0}}, tmp_path / "mc") == (mc, exact)
    assert ("soft_oracle", 16.0) in seen and ("soft_oracle", None) not in seen
    for arm, by in mc.items():
        assert by["start"]["responses"] == by["end"]["responses"] == 3 and by["start"]["tokens"] == by["end"]["tokens"]
        assert by["start"]["corr"] == pytest.approx(by["end"]["corr"])  # the same model at both ends here
        assert by["start"]["corr_ci"] is None or by["start"]["corr_ci"][0] <= by["start"]["corr"] <= by["start"]["corr_ci"][1]
    assert exact["responses"] == 3 and exact["tokens"] == mc["grpo"]["start"]["tokens"]
