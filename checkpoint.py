"""A run's directory: atomic checkpoints (model, optimizer, RNG states, step), loading them for --resume,
and the checks that keep one run from overwriting another."""
import dataclasses
import json
import os
import random

import torch

from language_model import first_line


def save_checkpoint(path, model, optimizer, step, cfg):
    """Atomic: write to a temp file, then rename; a model with non-finite weights is never saved."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RuntimeError(f"step {step}: the model has non-finite weights; not overwriting {path}")
    state = {"step": step, "config": dataclasses.asdict(cfg), "model": model.state_dict(),
             "optimizer": optimizer.state_dict(),
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, model, optimizer, cfg):
    """Restore model, optimizer and RNG states; returns the step. A file that is not a checkpoint
    this code wrote is a clear error, not a traceback."""
    try:
        state, why = torch.load(path, map_location="cpu", weights_only=False), "other contents"
    except Exception as e:  # not a torch file, truncated, corrupt
        state, why = None, first_line(e)
    if not (isinstance(state, dict) and {"step", "config", "model", "optimizer", "rng"} <= set(state)):
        raise ValueError(f"--resume: {path} is not a checkpoint of this project ({why}); start afresh with "
                         "--overwrite_output_dir")
    changed = [k for k, v in state["config"].items()
               if k not in cfg.RESUMABLE and getattr(cfg, k, None) != v]
    if changed:
        raise ValueError(f"--resume: options differ from the checkpoint's in {changed}; resume with the same options")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def run_paths(cfg):
    """(checkpoint path, metrics path) in --output_dir, created if needed. A directory that holds a
    run is refused unless --resume or --overwrite_output_dir says what to do with it."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.output_dir, "checkpoint.pt")
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if os.path.exists(metrics_path) and not (cfg.resume or cfg.overwrite_output_dir):
        raise ValueError(f"--output_dir {cfg.output_dir} already holds a run: pass --resume to continue it "
                         "or --overwrite_output_dir to start afresh")
    if cfg.resume and not os.path.exists(ckpt_path):
        raise ValueError(f"--resume: no checkpoint at {ckpt_path}")
    return ckpt_path, metrics_path


def metrics_until(path, step):
    """The metrics logged in path up to `step` (those after a checkpoint are dropped: the resumed run
    logs them again). A cut-off last line (a kill mid-write) is dropped too; a damaged line before
    it is an error naming the line."""
    with open(path) as f:
        lines = f.read().splitlines()
    history = []
    for n, line in enumerate(lines, 1):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(f"--resume: {path} line {n} is not JSON; repair or delete the line, or start afresh "
                             "with --overwrite_output_dir") from None
        if m["step"] <= step:
            history.append(m)
    return history
