"""Training at a mix of thinking budgets: one budget per prompt group, the same on every process."""

import pytest

from elastic_reasoning.training.config import ConfigError, RolloutConfig, from_dict
from elastic_reasoning.training.rollout import budgets_for


def test_a_group_shares_its_budget_and_the_mix_is_used():
    rollout = RolloutConfig(thinking_budget=32, solution_budget=16, thinking_budget_mix=[16, 24, 32])
    prompts = [f"problem {i}" for i in range(60) for _ in range(4)]  # TRL repeats each prompt num_generations times
    budgets = budgets_for(rollout, prompts, 160, seed=0, step=3)
    for g in range(60):
        assert len({b.thinking_budget for b in budgets[4 * g: 4 * g + 4]}) == 1
    assert {b.thinking_budget for b in budgets} == {16, 24, 32}
    assert all(b.solution_budget == 16 for b in budgets)
    # another process holding part of the same groups draws the same budgets; another step draws anew
    assert budgets_for(rollout, prompts[8:16], 160, seed=0, step=3) == budgets[8:16]
    assert budgets_for(rollout, prompts, 160, seed=0, step=4) != budgets


def test_no_mix_is_t_star_everywhere_and_a_bad_mix_is_a_config_error():
    rollout = RolloutConfig(thinking_budget=32, solution_budget=16)
    assert {b.thinking_budget for b in budgets_for(rollout, ["a", "b"], 160, seed=0, step=0)} == {32}
    with pytest.raises(ConfigError, match="thinking_budget_mix"):
        from_dict({"rollout": {"thinking_budget_mix": [8, -1]}})
    with pytest.raises(ConfigError, match="elastic only"):
        from_dict({"rollout": {"mode": "vanilla", "thinking_budget_mix": [8]}})
