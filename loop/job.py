"""The job around one RL step (grpo_baseline.grpo_step): the run directory and resume, the model
and the data, the checks before step 1, the prompt schedule, evaluations, checkpoints, the
progress bar, the run's report and the command line, and the optimizer step that a non-finite loss
or gradient skips. Nothing else here changes what a step computes.
"""
import json
import os
import random
import signal
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from loop.checkpoint import open_run, restore, save_checkpoint, written
from loop.data import encode_prompts, evaluate, resolve_instruction
from loop.embedded_task import load_task, task_reward, warm_start
from loop.language_model import check_context, load_policy, stop_ids
from loop.options import OUTPUT_DIR_HELP, opt, parse_config
from loop.report import credit_examples, history_last, reset_peak_memory, write_run_report


@dataclass
class JobOptions:
    """The job's options, part of GRPOConfig: steps, evaluation, checkpoints, seeds and memory."""
    max_steps: int = opt(60, "RL steps")
    eval_steps: int = opt(10, "greedy held-out evaluation every this many steps, and at 0 and the end")
    eval_size: int = opt(200, "held-out problems to evaluate on")
    save_steps: int = opt(20, "checkpoint every this many steps")
    output_dir: str = opt("runs/grpo", OUTPUT_DIR_HELP)
    overwrite_output_dir: bool = opt(False, "start afresh even if output_dir holds a run")
    resume: bool = opt(False, "continue the run in output_dir from its last checkpoint")
    seed: int = opt(0, "seed for sampling (and for the prompt order unless --data_seed is given)")
    data_seed: int = opt(None, "seed for the prompt order (TRL's data_seed); default: --seed")
    micro_batch_size: int = opt(64, "sequences per forward pass: changes memory, not the gradient")
    generation_batch_size: int = opt(256, "sequences per generate() call")
    gradient_checkpointing: bool = opt(False, "trade compute for memory on large models")


@dataclass
class Job:
    """What every step works on."""
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    ref_model: torch.nn.Module  # the frozen initial model when beta > 0, else None
    device: torch.device


def step_prompts(step, batch_size, n, seed):
    """Indices of step `step`'s prompts (1-based): seeded permutations, so a resumed run sees the same."""
    out = []
    for k in range((step - 1) * batch_size, step * batch_size):
        epoch, pos = divmod(k, n)
        out.append(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))[pos].item())
    return out


def step_if_finite(model, optimizer, max_grad_norm, loss_finite):
    """The optimizer step on the accumulated gradient, clipped to max_grad_norm -> its norm (float);
    None, with the gradient zeroed and no step, where the loss or the gradient's norm is not finite."""
    if loss_finite:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if torch.isfinite(grad_norm):
            optimizer.step()
            return grad_norm.item()
    optimizer.zero_grad()
    return None


def run_job(cfg, one_step, preflight=None, contexts=None):
    """Train cfg.max_steps steps of one_step(job, rows, prompts, more_prompts, step) -> (metrics,
    batch, Â), in cfg.output_dir (locked; with --resume, from its last checkpoint); returns the
    run's summary. contexts and preflight: seams 0 and 1 (grpo_baseline.train)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with open_run(cfg) as run_dir:  # with --resume, the checkpoint and the history up to it
        return run_in(run_dir, cfg, device, one_step, preflight, contexts)


def run_in(run, cfg, device, one_step, preflight, contexts):
    """run_job's body, in the run directory open_run prepared."""
    train_rows, eval_rows = load_task(cfg)
    if cfg.dataset and not cfg.model:
        raise ValueError(f"--dataset {cfg.dataset} needs --model: the embedded model knows only the embedded task")
    if cfg.dataset and cfg.eval_split == cfg.dataset_split:
        print(f"warning: --eval_split {cfg.eval_split} is the training split: the held-out accuracy is measured on rows "
              "the run trains on; name a split the dataset lacks to hold --eval_size rows out of training", file=sys.stderr)
    model_path = cfg.model or warm_start(cfg, train_rows, eval_rows, device)
    model, tokenizer = load_policy(model_path, cfg, device)
    instruction = resolve_instruction(cfg)
    train_rows, prompts = encode_prompts(tokenizer, train_rows, instruction, cfg.max_prompt_length)
    eval_rows, eval_prompts = encode_prompts(tokenizer, eval_rows, instruction, cfg.max_prompt_length)
    check_context(model.config, prompts + eval_prompts, cfg.max_completion_length,  # seam 0
                  scored=contexts and contexts(tokenizer, train_rows + eval_rows, prompts + eval_prompts, cfg),
                  rows=train_rows + eval_rows)
    ref_model = load_policy(model_path, cfg, device)[0].requires_grad_(False) if cfg.beta > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    job = Job(model, tokenizer, optimizer, ref_model, device)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    reset_peak_memory(device)
    start = run.start  # 0, or with --resume the checkpoint's step (open_run kept the history up to it)
    if run.state is not None:
        restore(run.state, model, optimizer)
        run.state = None  # (memory-mapped from the file the next checkpoint replaces)
    stop_tokens = tokenizer.convert_ids_to_tokens(stop_ids(model))
    print(f"[model] responses end at any of {stop_tokens}")
    if start == 0:
        checks = preflight(model, tokenizer, eval_rows, cfg) if preflight else {}  # seam 1
        run.clear()  # --overwrite_output_dir: the old run goes only now, when the new one has passed every check
        run.record({"step": 0, "stop_tokens": stop_tokens, "learning_rate": cfg.learning_rate,
                    "max_grad_norm": cfg.max_grad_norm, **checks,
                    "eval_acc": evaluate(model, tokenizer, eval_rows, cfg, device, instruction, task_reward(cfg))})
    bar = tqdm(range(start + 1, cfg.max_steps + 1), desc=os.path.basename(cfg.output_dir), initial=start,
               total=cfg.max_steps, file=sys.stdout)
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    for step in bar:
        def prompts_of_round(round):  # round 0: this step's prompts; later ones: more, for dynamic sampling
            idx = step_prompts(step, cfg.prompts_per_step, len(train_rows), data_seed + 1000003 * round)
            return [train_rows[i] for i in idx], [prompts[i] for i in idx]

        metrics, batch, token_adv = one_step(job, *prompts_of_round(0), prompts_of_round, step)
        if metrics["skipped_updates"]:
            print(f"[train] step {step}: skipped {metrics['skipped_updates']} update(s) with a non-finite loss or gradient",
                  file=sys.stderr)
        if step % cfg.eval_steps == 0 or step == cfg.max_steps:
            metrics["eval_acc"] = evaluate(model, tokenizer, eval_rows, cfg, device, instruction, task_reward(cfg))
        run.record(metrics)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", eval=f"{history_last(run.history, 'eval_acc'):.2f}")
        if step % cfg.save_steps == 0 or step == cfg.max_steps:
            save_checkpoint(run.ckpt_path, model, optimizer, step, cfg)
    last_credit = credit_examples(batch, token_adv, tokenizer) if start < cfg.max_steps else None
    with written(os.path.join(cfg.output_dir, "final")):  # a full disk here: rerun with --resume to write it again
        return write_run_report(cfg.output_dir, run.history, last_credit, model, tokenizer)


def run_cli(config_cls, train, argv=None, **method):
    """A training script's command line: parse config_cls's options, train(cfg, **method), print
    the summary. Bad input exits with one line naming it; Ctrl-C or a SIGTERM, with how to resume."""
    cfg = parse_config(config_cls, argv)
    previous = signal.signal(signal.SIGTERM, stop_as_ctrl_c)  # a scheduler's preemption, `kill`
    try:
        summary = train(cfg, **method)
    except ValueError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"interrupted; rerun with --resume to continue {cfg.output_dir} from its last checkpoint")
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary, indent=1))


def stop_as_ctrl_c(signum, frame):
    raise KeyboardInterrupt
