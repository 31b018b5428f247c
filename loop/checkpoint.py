"""A run's directory: the lock that keeps two runs out of it, atomic checkpoints (model, optimizer,
RNG states, step, method and options), and what --resume and --overwrite_output_dir do with them.

What is guaranteed (tests/test_checkpoint.py):
- one run at a time in a directory (an flock, released when the process ends, however it ends);
- a killed run loses nothing before its last checkpoint: checkpoints and the resumed history are
  written to a temp file, flushed and renamed, before anything else runs;
- a checkpoint is loaded as data (weights_only): a file we did not write cannot run code;
- --resume continues only the run that wrote the checkpoint: same method, same options;
- --overwrite_output_dir removes the old run's files, so nothing of it can be resumed later.
"""
import contextlib
import dataclasses
import fcntl
import json
import os
import random
import shutil
import tempfile

import torch

from loop.language_model import first_line

CHECKPOINT, METRICS, LOCK = "checkpoint.pt", "metrics.jsonl", ".lock"
# options that may differ when a run is resumed (everything else must match the checkpoint)
RESUMABLE = ("resume", "max_steps", "eval_steps", "save_steps", "overwrite_output_dir", "output_dir")
RUN_FILES = (CHECKPOINT, CHECKPOINT + ".tmp", METRICS, METRICS + ".tmp", "summary.json", "curves.png", "credit.html", "final")


@dataclasses.dataclass
class Run:
    """An open run directory: the paths, the step to start from, the kept history and (on
    --resume) the checkpoint's state, loaded and checked but not yet applied to a model."""
    ckpt_path: str
    metrics_path: str
    start: int
    history: list
    state: dict
    lock: object
    stale: list = dataclasses.field(default_factory=list)  # --overwrite_output_dir: the old run's files, until clear()

    def clear(self):
        """Remove the old run's files (--overwrite_output_dir), once the new run has passed its checks."""
        remove(self.stale)
        self.stale = []

    def record(self, metrics):
        """One step's metrics: appended to the history and, as a line, to metrics.jsonl, if the run
        still holds its directory (a folder removed or replaced under it may hold another run now)."""
        held = os.path.dirname(self.lock.name)
        try:
            holds = os.path.samestat(os.stat(self.lock.name), os.fstat(self.lock.fileno()))
        except OSError:
            holds = False
        if not holds:
            raise ValueError(f"--output_dir {held} was removed or replaced while this run was writing to it; stopped "
                             "before writing into it (what it holds now is not this run's)")
        self.history.append(metrics)
        with written(self.metrics_path):
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")

    def close(self):
        self.lock.close()  # releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_run(cfg):
    """Lock --output_dir and prepare it for cfg's run: refuse a directory that holds another run
    unless --resume or --overwrite_output_dir says what to do with it; with --resume, load and check
    the checkpoint and rewrite the history up to it atomically; with --overwrite_output_dir, list
    the old run's files, which Run.clear removes once the new run has passed its checks. Every
    check here needs no model, so a bad directory fails in a second."""
    out = cfg.output_dir
    if cfg.resume and cfg.overwrite_output_dir:
        raise ValueError("--resume and --overwrite_output_dir contradict each other: pass one")
    make_dir(out)
    lock = take_lock(out)
    try:
        ckpt_path, metrics_path = os.path.join(out, CHECKPOINT), os.path.join(out, METRICS)
        for path in (ckpt_path, metrics_path):  # a pipe or device there would block the read forever
            if os.path.exists(path) and not os.path.isfile(path):
                raise ValueError(f"--output_dir {out}: {path} is not a regular file; remove it or choose another "
                                 "--output_dir")
        if cfg.overwrite_output_dir:  # removed by Run.clear, after the data and model checks
            return Run(ckpt_path, metrics_path, 0, [], None, lock, [os.path.join(out, name) for name in RUN_FILES])
        if not cfg.resume and (os.path.exists(metrics_path) or os.path.exists(ckpt_path)):
            raise ValueError(f"--output_dir {out} already holds a run: pass --resume to continue it "
                             "or --overwrite_output_dir to start afresh")
        if not cfg.resume:
            return Run(ckpt_path, metrics_path, 0, [], None, lock)
        if not os.path.exists(ckpt_path):
            raise ValueError(f"--resume: no checkpoint at {ckpt_path}; start afresh without --resume")
        state = read_checkpoint(ckpt_path, cfg)
        history = metrics_until(metrics_path, state["step"])
        write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in history))
        return Run(ckpt_path, metrics_path, state["step"], history, state, lock)
    except BaseException:
        lock.close()
        raise


def remove(paths):
    """Delete each path that exists: a folder with its contents, a file or a link (not its target)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def make_dir(path, flag="--output_dir"):
    """Create the folder `path` if needed and check that a file can be written in it; otherwise one
    ValueError naming the flag, the path and the reason (empty, a file, a link to nothing, a
    read-only place, a name too long), before any work."""
    if not path:
        raise ValueError(f"{flag} is empty; name a folder")
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"{flag} {path} is a link to {os.readlink(path)}, which does not exist; create that "
                         f"folder or choose another {flag}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a directory; choose another {flag}")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (OSError, ValueError) as e:  # ValueError: a NUL byte, or text the file system cannot encode
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise ValueError(f"{flag} {path!r}: cannot write there ({why}); choose another {flag}") from None


def take_lock(out):
    """An exclusive flock on out/.lock holding our pid, or a ValueError naming the run that holds it."""
    f = open(os.path.abspath(os.path.join(out, LOCK)), "a+")  # absolute: Run.record finds it after a chdir
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise ValueError(f"--output_dir {out} is in use by another run (pid {holder}); wait for it to end, "
                         "or choose another --output_dir") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def write_atomic(path, text):
    """Write text to path so that a kill at any moment leaves either the old file or the new one."""
    with written(path):
        with open(path + ".tmp", "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)


@contextlib.contextmanager
def written(path, by_torch=False):
    """A write to path that fails (a full disk most often) is one ValueError saying so, with the
    free space; a half-written path.tmp is removed, not left to fill the disk. Checkpoints are
    replaced only by a rename, so the last one is always whole. by_torch: torch.save's writer
    reports a full disk as a RuntimeError ("unexpected pos ..."), caught too."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and not by_torch:
            raise
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        try:
            why += f"; {shutil.disk_usage(os.path.dirname(path) or '.').free // 2 ** 20} MiB free on its disk"
        except OSError:  # the folder itself is gone
            pass
        raise ValueError(f"cannot write {path} ({why}); the last checkpoint is kept: free some space, then rerun "
                         "with --resume") from None


def save_checkpoint(path, model, optimizer, step, cfg):
    """Atomic: write to a temp file, then rename; a model with non-finite weights is never saved."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError(f"step {step}: the model has non-finite weights; not overwriting {path} (lower "
                         "--learning_rate, or resume from it with --resume)")
    state = {"step": step, "method": type(cfg).__name__, "config": dataclasses.asdict(cfg), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    with written(path, by_torch=True):
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)


def read_checkpoint(path, cfg):
    """The checkpoint's contents, loaded as data only (weights_only: tensors, numbers, strings;
    a pickle that would build any other object is refused before it runs), and checked against
    cfg: the same method and the same options, except those in RESUMABLE."""
    try:
        state, why = torch.load(path, map_location="cpu", weights_only=True, mmap=True), "other contents"
    except Exception as e:  # not a torch file, truncated, corrupt, or objects that are not data
        state, why = None, first_line(e)
    if not (isinstance(state, dict) and {"step", "config", "model", "optimizer", "rng"} <= set(state)
            and isinstance(state["config"], dict)):
        raise ValueError(f"--resume: {path} is not a checkpoint of this project ({why}); start afresh with "
                         "--overwrite_output_dir")
    damaged = damage(state)
    if damaged:
        raise ValueError(f"--resume: {path} is damaged ({damaged}); start afresh with --overwrite_output_dir")
    method = state.get("method", type(cfg).__name__)
    if method != type(cfg).__name__:
        raise ValueError(f"--resume: {path} is a {method} run, not a {type(cfg).__name__} one; resume it with the "
                         "method that wrote it, or start afresh with --overwrite_output_dir")
    ours = dataclasses.asdict(cfg)
    changed = sorted(k for k in set(state["config"]) | set(ours)
                     if k not in RESUMABLE and state["config"].get(k) != ours.get(k))
    if changed:
        raise ValueError(f"--resume: options differ from the checkpoint's in {changed}; resume with the same options")
    return state


def damage(state):
    """What makes a loaded checkpoint unusable before any of it is applied, or "". The loop saves only
    after a step, so the step is an int >= 1 (a step of -1 would resume by emptying the history); the
    RNG states must be ones torch and Python accept (tried on throwaway generators)."""
    if type(state["step"]) is not int or state["step"] < 1:
        return f"its step is {state['step']!r}, not a step number >= 1"
    rng = state["rng"]
    try:
        torch.Generator().set_state(rng["torch"])
        random.Random().setstate(rng["python"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        return f"its random-number state is not one torch and Python accept: {first_line(e)}"
    return ""


def restore(state, model, optimizer):
    """Apply a checkpoint read by read_checkpoint to the model and optimizer, and restore the RNGs."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # another shape, foreign keys
        why = " ".join(str(e).split())[:300]  # torch puts the mismatch itself on the second line
        raise ValueError(f"--resume: the checkpoint does not fit this model ({why}); resume with the "
                         "model it was trained from, or start afresh with --overwrite_output_dir") from None
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def metrics_until(path, step):
    """The metrics logged in path for steps 0..step (those after a checkpoint are dropped: the
    resumed run logs them again). A cut-off last line (a kill mid-write) is dropped too; a damaged
    line before it, or a history that misses a step up to `step`, is an error naming the file."""
    fix = "repair it, or start afresh with --overwrite_output_dir"
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"--resume: {path} cannot be read ({e.strerror}); {fix}") from None
    history = []
    for n, line in enumerate(lines, 1):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(f"--resume: {path} line {n} is not JSON; repair or delete the line, or start afresh "
                             "with --overwrite_output_dir") from None
        if not (isinstance(m, dict) and isinstance(m.get("step"), int)):
            raise ValueError(f"--resume: {path} line {n} is not a metrics record of this project (no integer 'step'); {fix}")
        if m["step"] <= step:
            history.append(m)
    steps = [m["step"] for m in history]
    if steps != list(range(step + 1)):
        missing = sorted(set(range(step + 1)) - set(steps))
        what = f"has no record of step {missing[0]}" if missing else "holds a step twice"
        raise ValueError(f"--resume: {path} {what} (the checkpoint is at step {step}): the history is incomplete; {fix}")
    return history
