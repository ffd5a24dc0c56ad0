"""The budget methods the paper compares, each mapped onto a :class:`BudgetConfig` and a prompt change.

For a sweep value ``t`` (``--thinking-budgets``) and the solution budget ``s`` (``--solution-budget``):

========== ===================================================================== ==========================
method     budget config                                                         prompt
========== ===================================================================== ==========================
elastic    ``thinking_budget=t, solution_budget=s`` (separate budgeting)          unchanged
truncate   ``BudgetConfig.plain(t+s)``: one total budget, whatever was produced  unchanged
           when it runs out is the answer; an EOS anywhere ends it (training's
           truncate baseline decodes the same way)
s1         ``thinking_budget=t, solution_budget=s, answer_prefix="Final           unchanged
           Answer:"``: budget forcing, the answer prefix forced after the cut
l1         ``max_total_tokens=2N`` with ``N = t+s``: L1's hard cap of twice the   ``"Think for N tokens."``
           length it is asked for (L1-Exact; ``--l1-prompt`` for L1-Max)          appended to the user turn
none       no budget (``max_total_tokens=--max-tokens`` when given, else the      unchanged
           model's context); a single point, budget ``None``
========== ===================================================================== ==========================

Departures, and why: s1's "Wait" extension (suppressing the end of thinking to think *longer*) is not part of a
budget sweep that only caps thinking, so it is left out. L1's ``N`` counts the whole response in L1's training, so it
is set to the same total ``t+s`` that elastic and truncate get.

**Shared thinking** is valid where the model is not told its budget and the budgets differ in one dimension only:
elastic and s1 (the thinking budget) and truncate (the total cap). l1 tells the model its budget in the prompt, so
its budgets are always run independently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..budget import BudgetConfig

METHODS = ("elastic", "truncate", "s1", "l1", "none")
SHAREABLE = ("elastic", "s1", "truncate")
S1_ANSWER_PREFIX = "Final Answer:"
L1_EXACT_PROMPT = "Think for {n} tokens."
L1_MAX_PROMPT = "Think for maximum {n} tokens."


@dataclass(frozen=True)
class MethodPoint:
    """One point of a sweep: the method, its sweep value, the budget config and the prompt change."""

    method: str
    budget: int | None
    """The sweep value ``t`` (``None``: the no-budget point)."""
    config: BudgetConfig
    prompt_suffix: str = ""
    """Text appended to the user turn (L1), separated by a blank line."""


def method_points(method: str, thinking_budgets: list[int] | tuple[int, ...], solution_budget: int, *,
                  base: BudgetConfig = BudgetConfig(), answer_prefix: str = S1_ANSWER_PREFIX,
                  l1_prompt: str = L1_EXACT_PROMPT, max_tokens: int | None = None) -> list[MethodPoint]:
    """The sweep points of ``method``, ascending. ``base`` carries the texts (end of thinking, transition...)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if method == "none":
        return [MethodPoint("none", None, dataclasses.replace(
            base, thinking_budget=None, solution_budget=None, max_total_tokens=max_tokens, answer_prefix=""))]
    budgets = sorted(set(thinking_budgets))
    if not budgets:
        raise ValueError("at least one thinking budget is needed")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in budgets):
        raise ValueError(f"thinking budgets must be non-negative integers, got {list(thinking_budgets)}")
    if solution_budget is None or solution_budget < 0:
        raise ValueError(f"the solution budget must be a non-negative integer, got {solution_budget!r}")
    if method == "l1" and "{n}" not in l1_prompt:
        raise ValueError(f"the L1 prompt must contain {{n}} (the asked length), got {l1_prompt!r}")
    points = []
    for t in budgets:
        if method == "elastic":
            config = dataclasses.replace(base, thinking_budget=t, solution_budget=solution_budget,
                                         max_total_tokens=None, answer_prefix="")
            points.append(MethodPoint(method, t, config))
        elif method == "s1":
            config = dataclasses.replace(base, thinking_budget=t, solution_budget=solution_budget,
                                         max_total_tokens=None, answer_prefix=answer_prefix)
            points.append(MethodPoint(method, t, config))
        elif method == "truncate":  # plain decoding under t + s: the same config as training's truncate baseline
            config = BudgetConfig.plain(t + solution_budget, end_thinking=base.end_thinking,
                                        start_thinking=base.start_thinking)
            points.append(MethodPoint(method, t, config))
        else:  # l1: plain decoding with L1's hard cap of twice the asked length
            n = t + solution_budget
            config = BudgetConfig.plain(2 * n, end_thinking=base.end_thinking, start_thinking=base.start_thinking)
            points.append(MethodPoint(method, t, config, prompt_suffix=l1_prompt.format(n=n)))
    return points


def with_prompt(prompt: str, point: MethodPoint) -> str:
    return f"{prompt}\n\n{point.prompt_suffix}" if point.prompt_suffix else prompt
