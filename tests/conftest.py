import os
import sys

import pytest
from hypothesis import settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a model hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpo_baseline as gb  # noqa: E402
from loop.embedded_task import load_task, warm_start  # noqa: E402
from loop.language_model import load_policy  # noqa: E402

# No deadline: the first call of a torch op can take far longer than the next ones.
settings.register_profile("project", max_examples=60, deadline=None)
settings.load_profile("project")


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory):
    """One tiny warm start shared by every end-to-end test (cached like the real one)."""
    return str(tmp_path_factory.mktemp("warm_cache"))


@pytest.fixture
def tiny_cfg(tmp_path, warm_cache):
    """A few-second configuration of the embedded default."""
    def make(config_cls=gb.GRPOConfig, **overrides):
        kw = dict(task="sum", cache_dir=warm_cache, output_dir=str(tmp_path / "run"), warm_start_steps=250, eval_size=16,
                  prompts_per_step=4, num_generations=4, max_completion_length=40, max_steps=3, eval_steps=2,
                  save_steps=2, micro_batch_size=8)
        kw.update(overrides)
        return config_cls(**kw)
    return make


@pytest.fixture
def tiny_policy():
    """(model, tokenizer, train rows, eval rows) of a config's warm start, on the CPU."""
    def make(cfg):
        train_rows, eval_rows = load_task(cfg)
        cpu = gb.torch.device("cpu")
        model, tok = load_policy(warm_start(cfg, train_rows, eval_rows, cpu), cfg, cpu)
        return model, tok, train_rows, eval_rows
    return make
