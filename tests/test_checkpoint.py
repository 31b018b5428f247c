"""A run's directory under a hostile or unlucky user: a file that is not our checkpoint, a crafted
pickle, a damaged or shortened metrics log, a kill at the worst moment, a second run in the same
directory, a checkpoint of another method or model. Each is a clear one-line error naming the file
(never a traceback, never code run, never a half-restored run), or the run goes on losing nothing."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

import cepo
import grpo_baseline as gb
from loop import job
from loop.checkpoint import make_dir, metrics_until, open_run, read_checkpoint, restore, save_checkpoint
from loop.report import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.AdamW(model.parameters())


@pytest.mark.parametrize("contents", [b"not a checkpoint at all\n", b"", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, contents):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=rf"--resume: {path} is not a checkpoint of this project .*--overwrite_output_dir"):
        read_checkpoint(str(path), gb.GRPOConfig())


def test_a_torch_file_of_something_else_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"is not a checkpoint of this project \(other contents\)"):
        read_checkpoint(str(path), gb.GRPOConfig())


class Payload:
    """Unpickling this runs os.makedirs(marker): what a crafted checkpoint.pt could do with any call."""
    marker = None

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_a_crafted_checkpoint_runs_no_code(tmp_path):
    path, Payload.marker = tmp_path / "checkpoint.pt", str(tmp_path / "pwned")
    torch.save({"step": 1, "config": {}, "model": {}, "optimizer": {}, "rng": Payload()}, path)
    with pytest.raises(ValueError, match="is not a checkpoint of this project"):
        read_checkpoint(str(path), gb.GRPOConfig())
    assert not os.path.exists(Payload.marker)


def test_a_real_checkpoint_round_trips(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    model, optimizer = tiny()
    save_checkpoint(path, model, optimizer, 7, gb.GRPOConfig())
    fresh, fresh_optimizer = tiny()
    state = read_checkpoint(path, gb.GRPOConfig())
    restore(state, fresh, fresh_optimizer)
    assert state["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_a_checkpoint_of_another_method_or_model_is_refused(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, *tiny(), 2, gb.GRPOConfig(output_dir="runs/x"))
    with pytest.raises(ValueError, match="is a GRPOConfig run, not a CEPOConfig one"):
        read_checkpoint(path, cepo.CEPOConfig(output_dir="runs/x"))
    state = read_checkpoint(path, gb.GRPOConfig(output_dir="runs/elsewhere"))  # a moved run directory resumes
    with pytest.raises(ValueError, match="the checkpoint does not fit this model .*size mismatch"):
        restore(state, torch.nn.Linear(2, 3), torch.optim.AdamW(torch.nn.Linear(2, 3).parameters()))


def test_method_options_are_compared_even_when_the_checkpoint_lacks_them(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, *tiny(), 2, gb.GRPOConfig())
    state = torch.load(path, weights_only=True)
    del state["method"]  # as written before the method was recorded
    state["config"].pop("seed")
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"options differ from the checkpoint's in \['seed'\]"):
        read_checkpoint(path, gb.GRPOConfig())


DAMAGES = {"step": [-1, 0, "2", 2.0, None, True], "torch": [torch.zeros(3, dtype=torch.uint8), "state", torch.zeros(2, 2)],
           "python": ["j", (3, (1, 2), None), (3,), 7]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edit=st.sampled_from([(key, value) for key, values in DAMAGES.items() for value in values]))
def test_an_edited_step_or_rng_state_is_refused_and_keeps_the_history(tmp_path, edit):
    """A checkpoint whose step or RNG state was edited (a step of -1 once resumed by emptying
    metrics.jsonl; a short RNG state was a RuntimeError): one line naming the file, and the
    history untouched."""
    cfg = gb.GRPOConfig(output_dir=str(tmp_path / "run"), resume=True)
    os.makedirs(cfg.output_dir, exist_ok=True)
    path = os.path.join(cfg.output_dir, "checkpoint.pt")
    save_checkpoint(path, *tiny(), 2, cfg)
    state = torch.load(path, weights_only=True)
    key, value = edit
    if key == "step":
        state["step"] = value
    else:
        state["rng"][key] = value
    torch.save(state, path)
    history = "".join(f'{{"step": {i}}}\n' for i in range(3))
    with open(os.path.join(cfg.output_dir, "metrics.jsonl"), "w") as f:
        f.write(history)
    with pytest.raises(ValueError, match=f"^--resume: {path} is damaged \\(its (step|random-number state) .*--overwrite_output_dir$"):
        open_run(cfg)
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        assert f.read() == history


@settings(max_examples=200, deadline=None)
@given(name=st.text(st.characters(exclude_characters="."), max_size=300) | st.sampled_from(["\ud800", "a\x00b", "x" * 300]))
def test_any_output_dir_string_gives_a_folder_or_one_line(tmp_path_factory, name):
    """Whatever --output_dir says (empty, a NUL byte, a lone surrogate, a name too long, a path
    through a file): a writable folder, or one ValueError line naming the flag."""
    root = tmp_path_factory.mktemp("out")
    (root / "afile").write_text("")
    for path in (f"{root}/{name}", f"{root}/afile/{name}"):
        try:
            make_dir(path)
        except ValueError as e:
            assert str(e).startswith("--output_dir ") and "\n" not in str(e)
        else:
            assert os.path.isdir(path) and os.path.realpath(path).startswith(os.path.realpath(root))


@pytest.mark.parametrize("name", ["checkpoint.pt", "metrics.jsonl"])
def test_a_pipe_planted_as_a_run_file_is_refused_not_waited_on(tmp_path, name):
    cfg = gb.GRPOConfig(output_dir=str(tmp_path / "run"), resume=True)
    os.makedirs(cfg.output_dir)
    os.mkfifo(os.path.join(cfg.output_dir, name))
    with pytest.raises(ValueError, match=f"{name} is not a regular file; remove it"):
        open_run(cfg)


def test_a_cut_off_last_metrics_line_is_dropped_and_a_damaged_one_before_it_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # killed while writing step 3
    assert metrics_until(str(path), 2) == [{"step": 0}, {"step": 1}, {"step": 2}]
    path.write_text('{"step": 0}\n{"step": 1, "rew\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{path} line 2 is not JSON"):
        metrics_until(str(path), 2)


@pytest.mark.parametrize("text, problem", [
    ('{"step": 0}\n[1, 2]\n{"step": 2}\n', "line 2 is not a metrics record"),
    ('{"step": 0}\n{}\n{"step": 2}\n', "line 2 is not a metrics record"),
    ('{"step": 0}\n{"step": 2}\n', "has no record of step 1"),
    ("", "has no record of step 0"),
    ('{"step": 0}\n{"step": 1}\n{"step": 1}\n{"step": 2}\n', "holds a step twice"),
    (None, "cannot be read"),
])
def test_a_metrics_log_that_is_not_ours_or_misses_steps_is_named(tmp_path, text, problem):
    path = tmp_path / "metrics.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=rf"--resume: {path} .*{problem}"):
        metrics_until(str(path), 2)


def test_a_second_run_in_a_live_runs_directory_is_refused_naming_it(tiny_cfg):
    cfg = tiny_cfg()
    with open_run(cfg):
        for other in (cfg, tiny_cfg(overwrite_output_dir=True)):
            with pytest.raises(ValueError, match=rf"is in use by another run \(pid {os.getpid()}\)"):
                gb.train(other)
    with open_run(cfg):  # released when the first run ends
        pass


def test_a_run_whose_directory_is_removed_and_taken_by_another_writes_nothing_into_it(tmp_path):
    """rm -rf of a live run's --output_dir removes its lock with it, so a second run may start there;
    the first stops at its next record, in one line, instead of appending its steps to the second's
    history (seen: steps 0, 1, 0, 1, 2, 2, 3)."""
    cfg = gb.GRPOConfig(output_dir=str(tmp_path / "run"))
    with open_run(cfg) as first:
        first.record({"step": 0})
        shutil.rmtree(cfg.output_dir)
        with open_run(cfg) as second:
            second.record({"step": 0})
            with pytest.raises(ValueError, match=f"--output_dir {cfg.output_dir} was removed or replaced while this run"):
                first.record({"step": 1})
    assert read_metrics(cfg.output_dir) == [{"step": 0}]


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """A checkpoint that cannot be written (a full disk; here a file-size limit, which fails the same
    write) stops the run in one line saying so, keeps the previous checkpoint, and leaves no half-
    written temp file to keep the disk full; torch's own error named no disk at all."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {ROOT!r})
        import grpo_baseline as gb
        from loop.checkpoint import save_checkpoint
        model = torch.nn.Linear(300, 300)
        optimizer = torch.optim.AdamW(model.parameters())
        path = {str(tmp_path / "checkpoint.pt")!r}
        save_checkpoint(path, model, optimizer, 1, gb.GRPOConfig())
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
        try:
            save_checkpoint(path, model, optimizer, 2, gb.GRPOConfig())
        except ValueError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"cannot write {tmp_path / 'checkpoint.pt'} (") and "free on its disk" in out.stdout
    assert "rerun with --resume" in out.stdout
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no checkpoint.pt.tmp
    assert read_checkpoint(str(tmp_path / "checkpoint.pt"), gb.GRPOConfig())["step"] == 1


def test_overwrite_removes_the_old_run_so_it_cannot_be_resumed(tiny_cfg):
    gb.train(tiny_cfg(max_steps=2))  # a finished run with its step-2 checkpoint

    def killed(*args):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # the new run dies before its first checkpoint
        gb.train(tiny_cfg(max_steps=2, overwrite_output_dir=True), credit=killed)
    with pytest.raises(ValueError, match="--resume: no checkpoint at"):
        gb.train(tiny_cfg(max_steps=2, resume=True))


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_its_checks(tiny_cfg, tmp_path):
    """--overwrite_output_dir with a dataset that is not there: the error, and the old run intact
    and resumable (its files used to go first, before the data was read)."""
    cfg = tiny_cfg(max_steps=2)
    gb.train(cfg)
    kept = {name: (tmp_path / "run" / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl")}
    with pytest.raises(ValueError, match="--dataset"):
        gb.train(tiny_cfg(max_steps=2, overwrite_output_dir=True, dataset=str(tmp_path / "none.jsonl"), model="m"))
    assert {name: (tmp_path / "run" / name).read_bytes() for name in kept} == kept
    gb.train(tiny_cfg(max_steps=3, resume=True))  # and it still resumes


def test_bad_directories_are_one_line_before_any_work(tiny_cfg, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="--cache_dir .* is a file"):  # (the warm start's first check)
        gb.train(tiny_cfg(cache_dir=str(tmp_path / "a_file")))
    monkeypatch.setattr(job, "warm_start", lambda *a: pytest.fail("the warm start ran before the check"))
    with pytest.raises(ValueError, match="--output_dir .* is a file"):
        gb.train(tiny_cfg(output_dir=str(tmp_path / "a_file")))
    cfg = tiny_cfg(resume=True)
    os.makedirs(cfg.output_dir, exist_ok=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="is not a checkpoint of this project"):
        gb.train(cfg)


KILLED_AT = textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C's, also where a background shell ignores SIGINT
    sys.path.insert(0, {root!r})
    import grpo_baseline as gb
    from loop import checkpoint, job
    calls = 0
    def at(real):
        def wrapper(*args, **kwargs):
            global calls
            calls += 1
            if calls == {nth}:
                if real.__name__ == "save_checkpoint":  # mid-write: half a temp file, then the signal
                    open(args[0] + ".tmp", "wb").write(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIG{signal})
            return real(*args, **kwargs)
        return wrapper
    {owner}.{name} = at({owner}.{name})
    gb.main(gb.GRPOConfig, {argv!r})
""")
def untimed(output_dir):
    """A run's metrics without the seconds and memory, which no two runs share."""
    return [{k: v for k, v in m.items() if not k.startswith("t_") and k != "peak_mem_mb"} for m in read_metrics(output_dir)]


PHASES = {"rollout": "gb", "update": "gb", "evaluate": "job", "save_checkpoint": "job", "record": "checkpoint.Run"}
RESUMED = {}  # the uninterrupted run's (metrics, weights), computed once


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["TERM", "INT", "KILL"]), st.sampled_from(sorted(PHASES)), st.integers(1, 3))
@example("KILL", "save_checkpoint", 2)  # mid-write of the second checkpoint
def test_a_run_killed_anywhere_and_resumed_equals_the_uninterrupted_run(tiny_cfg, tmp_path, signal, phase, nth):
    """Resume = uninterrupted: a run of 3 steps (a checkpoint after each) killed by SIGTERM, SIGINT or
    SIGKILL at the nth call of a phase (sampling, the update, an evaluation, a metrics record, a
    checkpoint half written), then resumed with --resume (or, killed before its first checkpoint,
    started again with --overwrite_output_dir), ends with the uninterrupted run's metrics and weights."""
    options = dict(max_steps=3, save_steps=1)
    if not RESUMED:
        full = tiny_cfg(**options, output_dir=str(tmp_path / "full"))
        gb.train(full)
        RESUMED.update(metrics=untimed(full.output_dir), weights=torch.load(
            os.path.join(full.output_dir, "checkpoint.pt"), weights_only=True)["model"])
    cfg = tiny_cfg(**options, output_dir=str(tmp_path / f"cut{len(os.listdir(tmp_path))}_{signal}_{phase}_{nth}"))
    argv = [item for k, v in vars(cfg).items() if v is not None and not isinstance(v, bool) for item in (f"--{k}", str(v))]
    code = KILLED_AT.format(root=ROOT, nth=nth, signal=signal, owner=PHASES[phase], name=phase, argv=argv)
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert killed.returncode == (-9 if signal == "KILL" else 1), killed.stderr[-2000:]  # killed there, not failed
    if signal != "KILL":
        assert killed.stderr.strip().splitlines()[-1].startswith("interrupted; rerun with --resume"), killed.stderr[-2000:]
    if os.path.exists(os.path.join(cfg.output_dir, "metrics.jsonl")):
        with pytest.raises(ValueError, match="already holds a run: pass --resume"):  # a plain restart clobbers nothing
            gb.train(cfg)
    started = os.path.exists(os.path.join(cfg.output_dir, "checkpoint.pt"))
    gb.train(tiny_cfg(**options, output_dir=cfg.output_dir, resume=started, overwrite_output_dir=not started))
    assert untimed(cfg.output_dir) == RESUMED["metrics"]
    weights = torch.load(os.path.join(cfg.output_dir, "checkpoint.pt"), weights_only=True)["model"]
    assert all(torch.equal(value, RESUMED["weights"][name]) for name, value in weights.items())


KILLED_IN_FIRST_STEP = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import grpo_baseline as gb
    def killed(*args):  # the first step of the resumed run, as a preemption would
        os.kill(os.getpid(), signal.SIG{signal})
    gb.train(gb.GRPOConfig(**{cfg!r}), credit=killed)
""")


@pytest.mark.parametrize("signal", ["KILL", "TERM"])
def test_a_resumed_run_killed_in_its_first_step_loses_no_history(tiny_cfg, signal):
    cfg = tiny_cfg(max_steps=3)
    gb.train(cfg)  # checkpoints at steps 2 and 3 (the last)
    before = read_metrics(cfg.output_dir)
    options = vars(tiny_cfg(max_steps=4, resume=True))
    code = KILLED_IN_FIRST_STEP.format(root=ROOT, signal=signal, cfg=options)
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0
    assert read_metrics(cfg.output_dir) == before  # steps 0-3: the history up to the checkpoint, whole
    summary = gb.train(tiny_cfg(max_steps=4, resume=True))  # and the run can still finish
    assert summary["steps"] == 4 and [m["step"] for m in read_metrics(cfg.output_dir)] == [0, 1, 2, 3, 4]
