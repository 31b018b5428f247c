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
import sys
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoTokenizer, HfArgumentParser
from trl import GRPOConfig, GRPOTrainer

import grpo_baseline as gb
from data import load_rows, resolve_instruction, reward_fn
from language_model import first_line
from trl_credit import CEPOTrainer, GCPOTrainer, GoldTrainer

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


def correct(completions, answer, **kwargs):
    """TRL reward function: 1.0 if the completion's final answer equals the reference, else 0.0."""
    return [reward_fn(c[-1]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]


def method_options(trainer, argv):
    """The method's own options (--lambda_init 0.5 ...), from what HfArgumentParser left over."""
    parser = argparse.ArgumentParser(prog="train_trl.py --method ...", description=f"{trainer.__name__}'s own options; "
                                     "every trl.GRPOConfig argument is accepted too")
    for f in getattr(trainer, "options", list)():
        parser.add_argument(f"--{f.name}", type=f.type, default=argparse.SUPPRESS, help=f.metadata["help"],
                            choices=f.metadata.get("choices"))
    return parser, vars(parser.parse_known_args(argv)[0])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="grpo", choices=list(TRAINERS))
    trainer = TRAINERS[method.parse_known_args(argv)[0].method]
    options_parser, options = method_options(trainer, argv)
    try:
        script, args, rest = HfArgumentParser((Script, GRPOConfig)).parse_args_into_dataclasses(argv, return_remaining_strings=True)
        options_parser.parse_args(rest)  # anything left that is not the method's option is an error
        if not script.model or not script.dataset:
            raise ValueError("--model and --dataset are required")
        if trainer is not GRPOTrainer:
            trainer.method_config(**options)  # a bad option fails before anything loads
        cfg = gb.GRPOConfig(model=script.model, dataset=script.dataset, dataset_config=script.dataset_config,
                            dataset_split=script.dataset_split, question_field=script.question_field,
                            answer_field=script.answer_field, instruction=script.instruction,
                            eval_split=script.dataset_split, eval_size=1)  # no held-out rows: evaluation is TRL's
        rows, _ = load_rows(cfg)
        try:
            tokenizer = AutoTokenizer.from_pretrained(script.model)
        except OSError as e:
            raise ValueError(f"--model {script.model}: cannot load its tokenizer ({first_line(e)})") from None
        instruction = resolve_instruction(cfg)
        chat = tokenizer.chat_template is not None
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"] + instruction}] if chat
                                      else r["question"] + instruction + "\n",  # data.prompt_ids' form, as our loop's
                                      "answer": r["answer"], "solution": r.get("solution")} for r in rows])
        run = trainer(model=script.model, reward_funcs=[correct], args=args, train_dataset=dataset, processing_class=tokenizer,
                      **options)
        run.train()
        run.save_model()
        run.save_state()  # trainer_state.json: the logged metrics, step by step
    except ValueError as e:  # bad input: name the problem, no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
