"""Reward of the synthetic task (``data/synthetic.py``): strict, so a tiny model cannot collect points by luck.

1.0 iff thinking ended, the completion ended with EOS (``finish_reason == "stop"``), and the solution's last two words
are ``answer <sum>``. Pure; the task's generator lives with the data, its grading here, and neither imports the other.
"""

from __future__ import annotations

from typing import Any


def score_synthetic(solution: str, answer: Any, *, thinking_ended: bool, stopped: bool) -> float:
    """1.0 iff thinking ended, the completion ended with EOS, and the solution ends with ``answer <sum>``."""
    if not thinking_ended or not stopped:
        return 0.0
    words = solution.split()
    if len(words) < 2 or words[-2] != "answer":
        return 0.0
    return 1.0 if words[-1] == str(answer).strip() else 0.0


def synthetic_reward():
    """TRL reward: ``fn(prompts, completions, completion_ids=None, **columns)``.

    Needs the columns ``answer``, ``solution``, ``thinking_ended`` and ``finish_reason`` (``"stop"`` when the
    completion ended with EOS), which the budget-constrained rollout passes; strict scoring needs all of them."""

    def synthetic_accuracy(prompts=None, completions=(), completion_ids=None, **columns) -> list[float | None]:
        missing = [c for c in ("answer", "solution", "thinking_ended", "finish_reason") if columns.get(c) is None]
        if missing:
            raise ValueError(f"the synthetic reward needs the columns {missing} (strict scoring: EOS required)")
        return [
            None if a is None else score_synthetic(s, a, thinking_ended=bool(e), stopped=(f == "stop"))
            for a, s, e, f in zip(columns["answer"], columns["solution"], columns["thinking_ended"],
                                  columns["finish_reason"])
        ]

    return synthetic_accuracy
