"""The command lines as a careless user or an adversary meets them: --help works, and any value of
any option either parses into a config or exits with one line naming the flag; compare.py refuses,
before any training, what would hang it or crash it after the training."""
import contextlib
import dataclasses
import io
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import cepo
import compare
import gcpo
import gold
import grpo_baseline as gb
from loop import job
from loop.options import parse_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [gb.GRPOConfig, gcpo.GCPOConfig, cepo.CEPOConfig, gold.GoldConfig]


def test_help_of_an_entry_point_as_the_readme_prints_it():
    out = subprocess.run([sys.executable, "gcpo.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--weight_norm" in out.stdout and "70% confusable" in out.stdout


@pytest.mark.parametrize("config_cls", CONFIGS)
def test_help_lists_every_option(config_cls, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(config_cls, ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(f"--{f.name}" in text for f in dataclasses.fields(config_cls))


def test_compare_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare.py", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        compare.main()
    assert exit_info.value.code == 0 and "--warm_starts" in capsys.readouterr().out


@pytest.mark.parametrize("argv, flag, problem", [
    (["--beta", "inf"], "--beta", "finite"),
    (["--weight_decay", "inf"], "--weight_decay", "finite"),
    (["--learning_rate", "nan"], "--learning_rate", "finite"),
    (["--learning_rate", "-1e-4"], "--learning_rate", "must be > 0"),  # a negative value after its flag is a value
    (["--seed", "99999999999999999999"], "--seed", "2\\*\\*31"),
])
def test_values_that_would_make_a_run_a_no_op_or_crash_are_refused_at_parse_time(argv, flag, problem, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(gb.GRPOConfig, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag in err and problem.replace("\\", "") in err.replace("\\", "")


@pytest.mark.parametrize("config_cls, argv, flag", [
    (gcpo.GCPOConfig, ["--entropy_coef", "nan"], "--entropy_coef"),
    (gold.GoldConfig, ["--max_log_ratio", "nan"], "--max_log_ratio"),
    (cepo.CEPOConfig, ["--lambda_init", "inf"], "--lambda_init"),
])
def test_method_options_are_checked_the_same_way(config_cls, argv, flag, capsys):
    with pytest.raises(SystemExit):
        parse_config(config_cls, argv)
    assert f"{flag}=" in capsys.readouterr().err


def test_a_dataset_without_a_model_is_one_line_before_any_work(tmp_path, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"question": "{a}+1", "answer": "{a + 1}"}}\n' for a in range(300)))
    monkeypatch.setattr(job, "warm_start", lambda *a: pytest.fail("the warm start ran"))
    with pytest.raises(SystemExit, match=f"error: --dataset {data} needs --model"):
        gb.main(gb.GRPOConfig, ["--dataset", str(data), "--output_dir", str(tmp_path / "run")])


def test_a_negative_value_after_its_flag_parses():
    assert parse_config(gb.GRPOConfig, ["--seed", "-3"]).seed == -3
    assert parse_config(gold.GoldConfig, ["--max_log_ratio", "-1e-1"]).max_log_ratio == -0.1


JUNK = st.one_of(st.text(max_size=30), st.sampled_from(["nan", "inf", "-inf", "-1e-4", "1e308", "-0", "0x10", "",
                                                        "99999999999999999999", "1_000", " 3 ", "--", "-"]),
                 st.integers().map(str), st.floats().map(str))


@settings(max_examples=300)
@given(config_cls=st.sampled_from(CONFIGS), data=st.data(), value=JUNK)
def test_any_value_of_any_option_parses_or_is_one_line_naming_the_flag(config_cls, data, value):
    """The argument parser under junk: either a config whose every number is finite, or exit code 2
    with one error line that names the flag, never a traceback."""
    field = data.draw(st.sampled_from([f for f in dataclasses.fields(config_cls)]))
    argv = [f"--{field.name}", value] if field.type not in (bool, "bool") else [f"--{field.name}={value}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cfg = parse_config(config_cls, argv)
    except SystemExit as e:
        lines = [line for line in err.getvalue().splitlines() if ": error:" in line]
        assert e.code == 2 and len(lines) == 1 and f"--{field.name}" in lines[0], err.getvalue()
    else:
        assert all(not isinstance(v, float) or v == v and abs(v) != float("inf") for v in vars(cfg).values())


@pytest.mark.parametrize("argv, problem", [
    (["--quick", "--jobs", "0"], "--jobs 0: must be >= 1"),
    (["--quick", "--jobs", "-1"], "--jobs -1: must be >= 1"),
    (["--quick", "--arms", "gcpo", "cepo"], "--arms must include grpo"),
    (["--quick", "--arms", "grpo", "gcpo", "gcpo"], "--arms grpo gcpo gcpo: a value is repeated"),
    (["--quick", "--full"], "--full, --quick, --real, --ceiling: choose one preset"),
    (["--quick", "--real"], "--full, --quick, --real, --ceiling: choose one preset"),
    (["--quick", "--seeds", "500"], "seeds < 500"),
    (["--quick", "--warm_starts", "-1"], "must be >= 0"),
    (["--quick", "--seeds", "0", "0"], "--seeds 0 0: a value is repeated"),
    (["--quick", "--warm_starts", "1", "1"], "--warm_starts 1 1: a value is repeated"),
    (["--ceiling", "--warm_starts", "0", "100"], "the ceiling study's pilots use warm starts [100, 101]"),
    (["--ceiling", "--arms", "grpo", "gcpo"], "--arms: the ceiling study needs one of value_oracle, soft_oracle, oracle"),
    (["--real", "--jobs", "2"], "--jobs 2: --real runs one run at a time on every core; leave --jobs out"),
    (["--real", "--runs_dir", "elsewhere"], "--runs_dir: --real keeps its runs in results/smollm2/runs/"),
    (["--ceiling", "--runs_dir", "elsewhere"], "--runs_dir: --ceiling keeps its runs in results/ceiling/runs/"),
])
def test_compare_refuses_before_training_what_would_hang_or_crash_it(argv, problem, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare.py", *argv])
    monkeypatch.setattr(compare, "run_all", lambda *a, **kw: pytest.fail("training started"))
    with pytest.raises(SystemExit) as exit_info:
        compare.main()
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err


def test_compare_checks_its_folders_before_any_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(compare, "run_all", lambda *a, **kw: pytest.fail("training started"))
    for flag, problem in (("--results_dir", f"--results_dir '{tmp_path}/afile/quick': cannot write there (Not a directory)"),
                          ("--runs_dir", f"--runs_dir '{tmp_path}/afile/chain/quick': cannot write there (Not a directory)")):
        monkeypatch.setattr(sys, "argv", ["compare.py", "--quick", "--results_dir", str(tmp_path), flag, f"{tmp_path}/afile"])
        with pytest.raises(SystemExit) as exit_info:
            compare.main()
        assert exit_info.value.code == 2 and problem in capsys.readouterr().err


SCRIPTS = {"grpo_baseline.py": gb.GRPOConfig, "gcpo.py": gcpo.GCPOConfig, "cepo.py": cepo.CEPOConfig, "gold.py": gold.GoldConfig}


def printed_method_commands():
    """Every `python <method>.py ...` and `./run.sh <method>.py ...` line in a bash block of the
    README and docs/: (page, script, argv), continuation lines joined and comments dropped."""
    import re
    import shlex
    pages = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs"))) if f.endswith(".md")]
    for page in pages:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
        for line in "\n".join(blocks).replace("\\\n", " ").split("\n"):
            words = shlex.split(line, comments=True)
            for launcher in (["python"], ["./run.sh"]):
                if words[:1] == launcher and len(words) > 1 and words[1] in SCRIPTS:
                    yield page, words[1], words[2:]


def test_every_method_command_the_docs_print_parses():
    """The commands a reader copies (the README's first screen, each page's Usage) are valid options."""
    commands = list(printed_method_commands())
    assert ("README.md", "gcpo.py", ["--max_steps", "20"]) in commands
    assert {script for _, script, _ in commands} == set(SCRIPTS)
    for page, script, argv in commands:
        if argv != ["--help"]:
            parse_config(SCRIPTS[script], argv)  # exits with the flag named if it does not parse


def test_run_sh_runs_a_method_file_as_the_readme_prints_it():
    out = subprocess.run(["bash", "run.sh", "gcpo.py", "--max_steps", "20", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--weight_norm" in out.stdout


@pytest.mark.parametrize("bench, argv, code, says", [
    ("bench_trl", ["--help"], 0, "python -m benches.bench_trl --real"),
    ("bench_trl", ["--rael"], 1, "error: --rael: not an option"),
    ("bench_memory", ["--help"], 0, "python -m benches.bench_memory"),
    ("bench_memory", ["--full"], 1, "error: --full: not an option")])
def test_a_bench_answers_help_and_a_typo_at_once_instead_of_starting_to_time(bench, argv, code, says):
    out = subprocess.run([sys.executable, "-m", f"benches.{bench}", *argv], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == code and says in out.stdout + out.stderr
