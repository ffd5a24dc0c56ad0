"""Reward functions: verified math answers, code run against its tests, and the answer format.

Every reward is a plain function with the TRL contract::

    fn(prompts, completions, completion_ids=None, **columns) -> list[float | None]

``columns`` are the dataset's columns (one value per completion) plus whatever the rollout adds. Parameterised
rewards are small factories returning such a closure (``math_reward(timeout_s=2)``). ``None`` means "not applicable
to this row" (e.g. a code reward on a math row), which TRL ignores.

Only the **solution segment** is graded: the text after the end of thinking. The budget-constrained rollout passes
it as two extra columns, ``solution`` (text after the end of thinking) and ``thinking_ended`` (bool); both must be
present to be used (a dataset's own ``solution`` column, e.g. MATH's reference solution, is never mistaken for the
model's). Otherwise the completion text is split on the end-of-thinking text (default ``</think>``).

Names: :data:`REWARDS` maps short names to factories; :func:`get_reward` also loads a user function by dotted path
(``pkg.mod:fn`` or ``pkg.mod.fn``). :func:`compute_score` is the verl entry point. No torch, no transformers.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any, Callable, Sequence

RewardFn = Callable[..., "list[float | None]"]

END_OF_THINKING = "</think>"

REWARDS: dict[str, str] = {
    "math": "elastic_reasoning.rewards.math:math_reward",
    "code": "elastic_reasoning.rewards.code:code_reward",
    "format": "elastic_reasoning.rewards:format_reward",
    "synthetic": "elastic_reasoning.rewards.synthetic:synthetic_reward",
}
"""Short name -> factory (``module:attribute``), imported only when asked for."""

__all__ = [
    "END_OF_THINKING",
    "REWARDS",
    "completion_text",
    "compute_score",
    "format_reward",
    "get_reward",
    "load_object",
    "solution_segments",
    "split_solution",
]


# ------------------------------------------------------------------------------------------- the solution segment


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or a conversational completion (a list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Sequence):
        # TRL conversational format: [{"role": "assistant", "content": ...}, ...]; grade the assistant's turns.
        parts = [m.get("content", "") for m in completion if isinstance(m, dict) and m.get("role", "assistant")
                 == "assistant"]
        return "".join(p if isinstance(p, str) else "" for p in parts)
    return str(completion)


def split_solution(text: str, end_of_thinking: str = END_OF_THINKING) -> tuple[bool, str]:
    """``(thinking_ended, solution)``: the text after the first end of thinking, or the whole text if none."""
    _, sep, after = text.partition(end_of_thinking)
    return (True, after) if sep else (False, text)


def solution_segments(completions: Sequence[Any], columns: dict[str, Any],
                      end_of_thinking: str = END_OF_THINKING) -> list[tuple[bool, str]]:
    """``(thinking_ended, solution)`` per completion, from the rollout's columns when it passed both."""
    solutions, ended = columns.get("solution"), columns.get("thinking_ended")
    if solutions is not None and ended is not None and len(solutions) == len(ended) == len(completions):
        return [(bool(e), s if isinstance(s, str) else completion_text(s)) for e, s in zip(ended, solutions)]
    return [split_solution(completion_text(c), end_of_thinking) for c in completions]


def report(columns: dict[str, Any], metrics: dict[str, float], extra: dict[str, list]) -> None:
    """Hand reward components to TRL's logger when it passed ``log_metric`` / ``log_extra`` (TRL >= 0.26)."""
    log_metric, log_extra = columns.get("log_metric"), columns.get("log_extra")
    if callable(log_metric):
        for name, value in metrics.items():
            log_metric(name, value)
    if callable(log_extra):
        for name, values in extra.items():
            log_extra(name, values)


# ------------------------------------------------------------------------------------------- format reward

_FENCE = re.compile(r"```[^\n`]*\n.*?```", re.DOTALL)


def format_reward(end_of_thinking: str = END_OF_THINKING, answer: str = "boxed") -> RewardFn:
    """1.0 when the thinking was closed and the solution holds an answer, else 0.0.

    ``answer``: ``"boxed"`` (a ``\\boxed{}``/``\\fbox{}``), ``"code"`` (a fenced code block) or ``"any"`` (a
    non-empty solution).
    """
    if answer not in ("boxed", "code", "any"):
        raise ValueError(f"answer must be 'boxed', 'code' or 'any', not {answer!r}")

    def has_answer(solution: str) -> bool:
        if answer == "boxed":
            from .math import last_boxed

            return last_boxed(solution) is not None
        if answer == "code":
            return bool(_FENCE.search(solution))
        return bool(solution.strip())

    def format_ok(prompts=None, completions=(), completion_ids=None, **columns) -> list[float | None]:
        segments = solution_segments(completions, columns, end_of_thinking)
        scores = [1.0 if ended and has_answer(sol) else 0.0 for ended, sol in segments]
        report(columns, {"format/thinking_ended": _mean([e for e, _ in segments])}, {})
        return scores

    format_ok.__name__ = f"format_{answer}"
    return format_ok


def _mean(values: Sequence[float | bool]) -> float:
    return float(sum(values)) / len(values) if values else 0.0


# ------------------------------------------------------------------------------------------- names and paths


def load_object(path: str) -> Any:
    """Import ``pkg.mod:attr`` or ``pkg.mod.attr``; a clear error when it is not there."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"not a dotted path to a function: {path!r} (use 'pkg.module:function')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for reward {path!r}: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (reward {path!r})")
        obj = getattr(obj, part)
    return obj


def get_reward(name: str, **kwargs: Any) -> RewardFn:
    """A reward function by short name (:data:`REWARDS`) or dotted path.

    Short names are factories: ``get_reward("math", timeout_s=2)``. A dotted path may name a reward function
    (used as is) or, when ``kwargs`` are given, a factory called with them.
    """
    if name in REWARDS:
        return load_object(REWARDS[name])(**kwargs)
    if "." not in name and ":" not in name:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}, or a dotted path 'pkg.mod:fn'")
    obj = load_object(name)
    if not callable(obj):
        raise ValueError(f"reward {name!r} is not callable")
    return obj(**kwargs) if kwargs else obj


# ------------------------------------------------------------------------------------------- verl

_CODE_SOURCES = ("code", "livecodebench", "lcb", "taco", "apps", "humaneval", "codeforces", "leetcode",
                 "primeintellect", "mbpp")


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """verl's reward entry point: ``{"score": float, ...components}`` for one response.

    Code when ``data_source`` names a code benchmark or ``ground_truth`` holds tests; math otherwise.
    ``extra_info`` may carry ``end_of_thinking`` and per-row settings (``timeout_s``).
    """
    extra_info = dict(extra_info or {})
    end = extra_info.get("end_of_thinking", END_OF_THINKING)
    if _looks_like_code(data_source, ground_truth):
        from .code import CodeRewardConfig, score_code

        config = CodeRewardConfig(end_of_thinking=end, **{k: v for k, v in extra_info.items()
                                                          if k in ("timeout_s", "max_tests")})
        return score_code(solution_str, ground_truth, config=config).as_dict()
    from .math import MathRewardConfig, score_math

    config = MathRewardConfig(end_of_thinking=end, **{k: v for k, v in extra_info.items() if k in ("timeout_s",)})
    return score_math(solution_str, str(ground_truth), config=config).as_dict()


def _looks_like_code(data_source: str, ground_truth: Any) -> bool:
    source = (data_source or "").lower()
    if any(name in source for name in _CODE_SOURCES):
        return True
    if isinstance(ground_truth, str) and ground_truth.lstrip()[:1] in "{[":
        try:
            ground_truth = json.loads(ground_truth)
        except ValueError:
            return False
    if isinstance(ground_truth, dict):
        return bool({"inputs", "input_output", "test", "tests"} & set(ground_truth))
    if isinstance(ground_truth, list):  # LiveCodeBench: a list of {"input", "output", ...}
        return bool(ground_truth) and all(isinstance(t, dict) and "input" in t for t in ground_truth)
    return False
