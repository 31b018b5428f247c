"""GRPO, GCPO, CEPO or Gold with TRL's GRPOTrainer, on a Hugging Face model and math dataset, on as
many GPUs as accelerate gives it (trl_credit.py holds the trainers). Docs: docs/trl.md.

    accelerate launch --num_processes 8 train_trl.py --method cepo --model Qwen/Qwen2.5-1.5B-Instruct \\
        --dataset openai/gsm8k --dataset_config main --output_dir runs/trl-cepo --bf16 --lambda_init 0.5

Every GRPOConfig argument (--per_device_train_batch_size, --num_generations, --use_vllm, ...) and
the method's own options (see --method cepo --help) go on the same line. Rows are read as our
loop reads them (data.load_rows: the question, the final answer, the reference solution); the
prompt is the question plus the instruction, as one user turn when the tokenizer has a chat
template; the reward is 1 when the completion's final answer equals the reference (math-verify).
"""
import argparse
import gc
import os
import sys
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser
from transformers.hf_argparser import string_to_bool
from trl import GRPOConfig, GRPOTrainer

import grpo_baseline as gb
from loop.checkpoint import make_dir, remove
from loop.data import load_rows, prompt_ids, resolve_instruction, reward_fn
from loop.language_model import check_context, check_tokenizer, first_line
from trl_trainers.trl_credit import CEPOTrainer, GCPOTrainer, GoldTrainer

TRAINERS = {"grpo": GRPOTrainer, "gcpo": GCPOTrainer, "cepo": CEPOTrainer, "gold": GoldTrainer}


@dataclass
class Script:
    method: str = field(default="grpo", metadata={"help": "grpo, gcpo, cepo or gold", "choices": list(TRAINERS)})
    model: str = field(default="", metadata={"help": "causal LM id or local path"})
    dataset: str = field(default="", metadata={"help": "datasets id or local .json/.jsonl/.parquet file"})
    dataset_config: str = field(default="", metadata={"help": "dataset config name (GSM8K: 'main')"})
    dataset_split: str = field(default="train", metadata={"help": "split to train on"})
    question_field: str = field(default="question", metadata={"help": "row field with the question"})
    answer_field: str = field(default="answer", metadata={"help": "row field with the answer (a solution ending in '#### 42' "
                                                                   "or '\\boxed{42}', or the bare answer)"})
    instruction: str = field(default=None, metadata={"help": "text appended to every question; default our DEFAULT_INSTRUCTION"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace the run --output_dir holds (its "
                                                                       "checkpoints, model and trainer state)"})


def correct(completions, answer, **kwargs):
    """TRL reward function: 1.0 if the completion's final answer equals the reference, else 0.0."""
    return [reward_fn(c[-1]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]


def add_method_options(parser, trainer):
    """The method's own options (--lambda_init 0.5 ...). Options the trainer refuses (NOT_HERE) are
    parsed, so that the refusal says why, but not listed in the help."""
    for f in getattr(trainer, "options", list)():
        hidden = f.name in getattr(trainer, "NOT_HERE", {})
        parser.add_argument(f"--{f.name}", type=f.type, default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                            help=argparse.SUPPRESS if hidden else f.metadata["help"])
    return parser


def usage(trainer):
    """--help: this script's options and the method's, then where TRL's are."""
    parser = HfArgumentParser(Script, prog="train_trl.py", description=__doc__.split("\n\n")[0],
                              epilog="Every trl.GRPOConfig argument is accepted too (--per_device_train_batch_size, "
                              "--num_generations, --max_completion_length, --bf16, --use_vllm, ...): "
                              "python -c 'import trl; help(trl.GRPOConfig)' lists them."
                              + (" --method gcpo|cepo|gold --help lists a method's own options." if trainer is GRPOTrainer
                                 else ""))
    if trainer is not GRPOTrainer:
        add_method_options(parser.add_argument_group(f"{trainer.__name__}'s own options"), trainer)
    return parser.format_help()


def trl_parser():
    """HfArgumentParser over Script and GRPOConfig, where a bare boolean flag (--bf16, as TRL's
    docs write it) means True: HfArgumentParser gives fields typed `bool | None` with no default
    (GRPOConfig's bf16) no such form, and would stop at the next flag."""
    parser = HfArgumentParser((Script, GRPOConfig))
    for action in parser._actions:
        if action.type is string_to_bool and action.nargs is None:
            action.nargs, action.const = "?", True
    return parser


def trainer_of(argv):
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="grpo", choices=list(TRAINERS))
    return TRAINERS[method.parse_known_args(argv)[0].method]


def parse(argv):
    """(trainer class, Script, GRPOConfig, the method's options) of a command line; ValueError (or
    argparse's exit) on a bad one, before anything loads."""
    trainer = trainer_of(argv)
    options_parser = add_method_options(argparse.ArgumentParser(prog="train_trl.py --method ...", add_help=False), trainer)
    options = vars(options_parser.parse_known_args(argv)[0])
    parser = trl_parser()
    # anything that is neither TRL's nor the method's option is an error, said before GRPOConfig's own
    # checks run (bf16 without a GPU, ...), which would hide it
    options_parser.parse_args(parser.parse_known_args(argv)[1])
    script, args, _ = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if not script.model or not script.dataset:
        raise ValueError("--model and --dataset are required")
    if trainer is not GRPOTrainer:
        trainer.check_trl_config(args, trainer.method_config(**options))
    return trainer, script, args, options


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        return print(usage(trainer_of(argv)))
    try:
        failure = train(argv)
    finally:
        close_process_group()
    if failure:
        sys.exit(failure)


def train(argv):
    """Check the command line and the data, train, save: None, or bad input's one-line message."""
    try:
        trainer, script, args, options = parse(argv)
        stale = check_output_dir(args.output_dir, args.resume_from_checkpoint, script.overwrite_output_dir)
        cfg = gb.GRPOConfig(model=script.model, dataset=script.dataset, dataset_config=script.dataset_config,
                            dataset_split=script.dataset_split, question_field=script.question_field,
                            answer_field=script.answer_field, instruction=script.instruction,
                            eval_split=script.dataset_split, eval_size=1)  # no held-out rows: evaluation is TRL's
        rows, _ = load_rows(cfg)
        try:  # the model itself loads inside GRPOTrainer: its config and weights file are checked here first
            tokenizer = AutoTokenizer.from_pretrained(script.model)
            config = AutoConfig.from_pretrained(script.model)
        except (OSError, ValueError) as e:
            raise ValueError(f"--model {script.model}: cannot load its tokenizer and config ({first_line(e)})") from None
        check_tokenizer(script.model, tokenizer, getattr(config, "vocab_size", None))
        instruction = resolve_instruction(cfg)
        check_context(config, [prompt_ids(tokenizer, r["question"], instruction) for r in rows],
                      args.max_completion_length or 0, shorten="drop the dataset's prompts longer than {} tokens")
        chat = tokenizer.chat_template is not None
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"] + instruction}] if chat
                                      else r["question"] + instruction + "\n",  # data.prompt_ids' form, as our loop's
                                      "question": r["question"], "answer": r["answer"], "solution": r.get("solution")}
                                     for r in rows])
        try:
            run = trainer(model=script.model, reward_funcs=[correct], args=args, train_dataset=dataset,
                          processing_class=tokenizer, **options)
        except (OSError, SafetensorError) as e:  # no weights file, or a truncated one
            raise ValueError(f"--model {script.model}: cannot load its weights ({first_line(e)})") from None
        if args.should_save:  # --overwrite_output_dir: only now, every check passed; by the processes that save
            remove(stale)
        run.accelerator.wait_for_everyone()
        run.train(resume_from_checkpoint=args.resume_from_checkpoint)
        run.save_model()
        run.save_state()  # trainer_state.json: the logged metrics, step by step
    except ValueError as e:  # bad input: name the problem, no traceback
        return f"error: {e}"


RUN_FILES = ("model.safetensors", "trainer_state.json", "training_args.bin", "config.json")


def check_output_dir(out, resume, overwrite):
    """A writable --output_dir that holds no earlier run, unless --resume_from_checkpoint continues one
    or --overwrite_output_dir replaces it (TRL would write over it silently, checkpoints included).
    Returns the old run's files that --overwrite_output_dir replaces, to remove once the new run has
    passed its checks (a typo in --dataset must not cost the old run)."""
    if resume and overwrite:
        raise ValueError("--resume_from_checkpoint and --overwrite_output_dir contradict each other: pass one")
    make_dir(out)
    held = sorted(name for name in os.listdir(out) if name in RUN_FILES or name.startswith("checkpoint-"))
    if resume:
        if not os.path.isdir(resume):
            raise ValueError(f"--resume_from_checkpoint {resume}: no such checkpoint folder; pass one of "
                             f"{out}/checkpoint-N, or start afresh without it")
    elif overwrite:
        return [os.path.join(out, name) for name in held]
    elif held:
        checkpoints = sorted((n for n in held if n.startswith("checkpoint-")), key=lambda n: int(n.split("-")[1])
                             if n.split("-")[1].isdigit() else -1)
        hint = f"--resume_from_checkpoint {os.path.join(out, checkpoints[-1])} to continue it, " if checkpoints else ""
        raise ValueError(f"--output_dir {out} already holds a run ({', '.join(held[:4])}): pass {hint}"
                         "--overwrite_output_dir to replace it, or choose another --output_dir")
    return []


def close_process_group():
    """Destroy the process group once the trainer is gone. The trainer's DDP wrapper holds the group;
    if the wrapper drops its last reference, the group's destructor joins its worker threads while
    holding the GIL, and a worker still freeing a gathered tensor waits on that GIL forever (a
    two-process run that hung at exit). Dropped by destroy_process_group, the destructor releases the
    GIL; left to the interpreter's exit, the threads abort it ("terminate called without an active
    exception")."""
    gc.collect()  # the trainer's reference cycles, and so its DDP wrapper, go now, while the group is still registered
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

if __name__ == "__main__":
    main()
