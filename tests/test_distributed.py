"""Scale-out with the transformers engine: GRPO on two processes (`accelerate launch --num_processes 2`, gloo on this
CPU) through recipes/toy.yaml. Every rank's completions keep t*/s*, forced tokens are masked, the logged metrics are
those of both ranks' completions, and the first step sees the prompts and budgets of a one-process run with the same
global batch. Runs in .venv and in .venv-vllm alike (`pytest -m distributed`)."""

from __future__ import annotations

import pytest

from .distributed_checks import check_run, check_same_first_step, launch


@pytest.mark.distributed
def test_two_processes_transformers_engine(toy_dir, tmp_path):
    two = launch(tmp_path / "two", toy_dir, 2)
    assert two.returncode == 0, two.stderr[-4000:]
    many = check_run(tmp_path / "two", 2, engine="transformers")
    one = launch(tmp_path / "one", toy_dir, 1, "--max_steps", "1")
    assert one.returncode == 0, one.stderr[-4000:]
    check_same_first_step(many, check_run(tmp_path / "one", 1, engine="transformers", steps=1), 2)
    assert (tmp_path / "two" / "run" / "final" / "config.json").exists()


def test_budgets_beyond_the_models_context_stop_the_launch_before_anything_is_written(toy_dir, tmp_path):
    """A bad launch fails at start-up with one clear message, and leaves no output directory behind."""
    from elastic_reasoning.training.config import ConfigError, load_config
    from elastic_reasoning.training.train import build_trainer

    from .distributed_checks import TOY_RECIPE

    out = tmp_path / "out"
    cfg = load_config(TOY_RECIPE, ["--model.name_or_path", str(toy_dir), "--thinking_budget", "2000",
                                   "--solution_budget", "100", "--output_dir", str(out)])
    with pytest.raises(ConfigError, match="2100 tokens per completion does not fit in the model's "
                                          "max_position_embeddings = 2048"):
        build_trainer(cfg)
    assert not out.exists()


def test_a_server_error_on_the_main_process_becomes_one_error_on_every_process(toy_engine):
    """Server mode: the main process generates for everyone; if that fails, the error is broadcast in place of the
    completions (every process raises it) instead of leaving the other processes waiting in the broadcast."""
    from types import SimpleNamespace

    from elastic_reasoning.budget import BudgetConfig
    from elastic_reasoning.training.rollout import _server_rollouts

    class FailingClient:
        def get_server_info(self):
            return {"model_config": {"logprobs_mode": "processed_logprobs", "max_model_len": 512}}

        def generate(self, **request):
            raise ConnectionError("the server went away")

    trainer = SimpleNamespace(accelerator=SimpleNamespace(is_main_process=True, process_index=0, num_processes=1),
                              state=SimpleNamespace(global_step=3), processing_class=toy_engine.tokenizer,
                              args=SimpleNamespace(temperature=1.0, top_p=1.0, top_k=0))
    generation = SimpleNamespace(vllm_client=FailingClient(), max_model_length=None)
    with pytest.raises(RuntimeError, match="server-mode rollout failed on the main process: ConnectionError: the "
                                           "server went away"):
        _server_rollouts(trainer, {}, generation, ["what is 1 + 2 ?"] * 2, [BudgetConfig(4, 3)] * 2, seed=0)
