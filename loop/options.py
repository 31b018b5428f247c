"""The command line of every training script: the `opt` field helper, one check that names every
bad option, and the argparse CLI built from a config dataclass's fields (`--help` lists them)."""
import argparse
import dataclasses
import math
import sys

OUTPUT_DIR_HELP = "metrics.jsonl, curves.png, credit.html, checkpoint.pt and the final model go here"


def opt(default, help, **kw):
    """A config field with its --help text (and argparse `choices`, if given)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def check_options(cfg):
    """Raise one ValueError naming every bad option of a GRPOConfig (or a method's subclass, whose
    method_problems() adds its own), as '--flag=value: why'."""
    bad = []

    def need(ok, flag, why):
        if not ok:
            bad.append(f"--{flag}={getattr(cfg, flag)!r}: {why}")
    need(cfg.num_generations >= 2, "num_generations", "a group needs at least 2 responses to have a baseline")
    need(math.isfinite(cfg.temperature) and cfg.temperature > 0, "temperature", "must be > 0")
    need(math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0, "learning_rate", "must be > 0")
    need(cfg.max_grad_norm > 0, "max_grad_norm", "must be > 0")
    need(0 < cfg.epsilon < 1, "epsilon", "must be in (0, 1)")
    need(cfg.epsilon_high > 0, "epsilon_high", "must be > 0")
    need(cfg.num_mini_batches >= 1 and (cfg.prompts_per_step * cfg.num_generations) % cfg.num_mini_batches == 0,
         "num_mini_batches", f"must divide prompts_per_step * num_generations = {cfg.prompts_per_step * cfg.num_generations}")
    for flag in ("prompts_per_step", "max_completion_length", "max_prompt_length", "num_iterations", "micro_batch_size",
                 "generation_batch_size", "max_steps", "eval_steps", "eval_size", "save_steps", "task_operands", "task_max_operand"):
        need(getattr(cfg, flag) >= 1, flag, "must be >= 1")
    for flag in ("weight_decay", "beta", "warm_start_steps", "max_resample_rounds", "warm_start_seed"):
        need(getattr(cfg, flag) >= 0, flag, "must be >= 0")
    for flag in ("seed", "warm_start_seed", "data_seed"):
        need(getattr(cfg, flag) is None or abs(getattr(cfg, flag)) < 2**31, flag, "must be between -2**31 and 2**31")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float):  # inf or nan in any option makes every update a NaN, i.e. a no-op
            need(math.isfinite(value), f.name, "must be a finite number")
        if "choices" in f.metadata:
            need(value in f.metadata["choices"], f.name, f"must be one of {f.metadata['choices']}")
    bad.extend(cfg.method_problems())
    if bad:
        raise ValueError("bad option: " + "; ".join(bad))


def parse_config(config_cls, argv=None):
    """Build an argparse CLI from the dataclass fields; bad values exit with the flag named."""
    parser = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_cls):
        kw = {"default": f.default, "help": f.metadata["help"].replace("%", "%%")}  # argparse %-formats help
        if f.type in (bool, "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(f"--{f.name}", **kw)
    args = parser.parse_args(negative_values_attached(sys.argv[1:] if argv is None else argv))
    try:
        return config_cls(**vars(args))
    except ValueError as e:
        parser.error(str(e))


def negative_values_attached(argv):
    """argparse reads '-1e-4' after a flag as another flag (its negative-number test has no
    exponent): write such a value as '--flag=-1e-4'."""
    out = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-") and is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False
