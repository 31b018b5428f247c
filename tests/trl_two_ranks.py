"""Two CPU processes (torchrun, gloo), run by tests/test_trl_credit.py: two CEPO steps and two Gold
steps in which a group spans both ranks. Each rank writes what it saw and what it used to
OUT/rank{r}.json; the test checks it against the single-process result.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/trl_two_ranks.py MODEL DATA OUT
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import load_from_disk  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from loop.data import reward_fn  # noqa: E402
from train_trl import close_process_group  # noqa: E402
from trl_trainers.trl_credit import CEPOTrainer, GoldTrainer  # noqa: E402

RANK = int(os.environ["RANK"])
PER_RANK, G = 6, 4  # 12 completions a step, 3 groups: group 1 is rows 4-5 on rank 0 and 6-7 on rank 1


def reward(completions, answer, **kwargs):
    """Rank 0's completions score 0.5 above their accuracy, rank 1's score 0. The group that spans
    the ranks is then never all wrong, though rank 1's half of it is, and its lowest-reward wrong
    answers are rank 1's: a rank that looked only at its own rows would decide differently."""
    return [0.5 + reward_fn(c, a) if RANK == 0 else 0.0 for c, a in zip(completions, answer)]


def watched(cls, record):
    class Watched(cls):
        def _calculate_rewards(self, *args):
            rewards = super()._calculate_rewards(*args)
            record.setdefault("rewards", []).append(rewards[:, 0].tolist())  # every call, all ranks' rows
            return rewards

        def wrong_answers(self, out):
            r_minus, share = super().wrong_answers(out)
            record.setdefault("texts", []).append(self.processing_class.batch_decode(out["completion_ids"], skip_special_tokens=True))
            record.setdefault("r_minus", []).append(r_minus)
            return r_minus, share

        def gold_rows(self, inputs, *args):
            rows, refs = super().gold_rows(inputs, *args)
            record.setdefault("gold_rows", []).append(rows)
            record.setdefault("has_ref", []).append([r is not None for r in refs])
            return rows, refs
    return Watched


def main(model_path, data_path, out):
    tokenizer, dataset, records = AutoTokenizer.from_pretrained(model_path), load_from_disk(data_path), {}
    for cls, level, loss in ((CEPOTrainer, "token", "dapo"), (GoldTrainer, "sequence", "grpo")):
        record = records.setdefault(cls.__name__, {})
        args = GRPOConfig(output_dir=os.path.join(out, cls.__name__), per_device_train_batch_size=PER_RANK, num_generations=G,
                          max_completion_length=40, beta=0.0, importance_sampling_level=level, loss_type=loss, max_steps=2,
                          use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", save_strategy="no",
                          disable_tqdm=True, seed=0)
        watched(cls, record)(model=AutoModelForCausalLM.from_pretrained(model_path), reward_funcs=[reward], args=args,
                             train_dataset=dataset, processing_class=tokenizer).train()
    with open(os.path.join(out, f"rank{RANK}.json"), "w") as f:
        json.dump(records, f)


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    finally:  # as train_trl does: left to the interpreter's exit, the gloo threads abort it
        close_process_group()
