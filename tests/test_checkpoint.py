"""Resuming from something that is not a checkpoint, or from a damaged metrics log, is a clear
error naming the file, never a traceback or a half-restored run."""
import pytest
import torch

from checkpoint import load_checkpoint, metrics_until, save_checkpoint
from grpo_baseline import GRPOConfig


def tiny():
    model = torch.nn.Linear(2, 2)
    return model, torch.optim.AdamW(model.parameters())


@pytest.mark.parametrize("contents", [b"not a checkpoint at all\n", b"", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path, contents):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match=rf"--resume: {path} is not a checkpoint of this project .*--overwrite_output_dir"):
        load_checkpoint(str(path), *tiny(), GRPOConfig())


def test_a_torch_file_of_something_else_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=r"is not a checkpoint of this project \(other contents\)"):
        load_checkpoint(str(path), *tiny(), GRPOConfig())


def test_a_real_checkpoint_round_trips(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    model, optimizer = tiny()
    save_checkpoint(path, model, optimizer, 7, GRPOConfig())
    fresh, fresh_optimizer = tiny()
    assert load_checkpoint(path, fresh, fresh_optimizer, GRPOConfig()) == 7
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_a_cut_off_last_metrics_line_is_dropped_and_a_damaged_one_before_it_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "rew')  # killed while writing step 3
    assert metrics_until(str(path), 2) == [{"step": 0}, {"step": 1}, {"step": 2}]
    path.write_text('{"step": 0}\n{"step": 1, "rew\n{"step": 2}\n')
    with pytest.raises(ValueError, match=rf"{path} line 2 is not JSON"):
        metrics_until(str(path), 2)
