"""Budgeted GRPO rollouts through TRL's vLLM (colocate mode, in-process, on vLLM's CPU build)."""

import json

import pytest
import torch

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.record import SamplingConfig


def toy_recipe(toy_dir, out, **rollout):
    from elastic_reasoning.training.config import from_dict

    return from_dict({
        "model": {"name_or_path": str(toy_dir)},
        "data": {"dataset": "synthetic", "synthetic": {"num_problems": 64}},
        "rollout": {"mode": "elastic", "thinking_budget": 6, "solution_budget": 5, "engine": "vllm", **rollout},
        "rewards": ["synthetic"],
        "trainer": {"output_dir": str(out), "max_steps": 2, "learning_rate": 1e-3, "per_device_train_batch_size": 8,
                    "num_generations": 4, "temperature": 1.0, "top_p": 1.0, "max_completion_length": 64,
                    "save_strategy": "no", "logging_steps": 1, "report_to": "none", "seed": 0,
                    "vllm_max_model_length": 512, "disable_tqdm": True},
    })


@pytest.fixture(scope="module")
def colocate_trainer(toy_dir, tmp_path_factory):
    from elastic_reasoning.training.train import build_trainer

    return build_trainer(toy_recipe(toy_dir, tmp_path_factory.mktemp("colocate")))


def test_colocate_weight_sync_reaches_vllm(colocate_trainer):
    """After the trainer's weights change, a sync makes vLLM decode exactly as the changed model does."""
    from elastic_reasoning.generation.transformers_engine import TransformersEngine
    from elastic_reasoning.generation.vllm_engine import VLLMEngine

    trainer = colocate_trainer
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompts = ["what is the sum of 1 2 3 ?", "what is 4 + 5 ?"]
    budget = BudgetConfig(thinking_budget=6, solution_budget=5)
    greedy = SamplingConfig(temperature=0.0)
    engine = VLLMEngine(trainer.vllm_generation.llm)
    before = [c.completion_ids for c in engine.generate(prompts, budget, greedy)]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.down_proj.weight"):
                param.mul_(-3.0)
    trainer.vllm_generation.sync_weights()
    ours = engine.generate(prompts, budget, greedy)
    model.eval()
    ref = TransformersEngine(model, trainer.processing_class).generate(prompts, budget, greedy)
    model.train()
    assert [c.completion_ids for c in ours] != before  # the new weights reached vLLM
    # TRL's LLM may run the float32 checkpoint in a lower precision: compare the first tokens, where margins are wide
    assert [c.completion_ids[:3] for c in ours] == [c.completion_ids[:3] for c in ref]


def test_colocate_rollouts_hold_the_budgets(colocate_trainer):
    trainer = colocate_trainer
    trainer.train()
    with open(f"{trainer.args.output_dir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    steps = [r for r in rows if "rollout/thinking_tokens" in r]
    assert len(steps) == 2
    for r in steps:
        assert r["rollout/thinking_tokens"] <= 6 and r["rollout/solution_tokens"] <= 5
        assert r["rollout/cut_fraction"] > 0.5  # the random toy almost never closes its thinking within 6 tokens
