"""What a decoding call produced for one row, and how two calls make one completion. Shared by every engine.

The two-call mode runs phase 1 up to the end of thinking (``stop_after_thinking``), then a second call continues
prompt + thinking + end-of-thinking with a fresh solution row. Engines decode; this module says how the second
call's row starts and how both parts become one :class:`~.record.Completion`. No torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ..budget import BudgetConfig, BudgetRow, FinishReason, Phase
from .record import Completion


@dataclasses.dataclass
class Part:
    """What one decoding call produced for one row."""

    row: BudgetRow
    ids: list[int]
    mask: list[int]
    logprobs: list[float]


def solution_row(first: Part, budget: BudgetConfig) -> BudgetRow:
    """The row of the second call: a solution with its own budget ``s`` (and what is left of a total cap). Already
    finished when phase 1 ended the completion (EOS under the STOP rule, or the total cap)."""
    config = budget
    if budget.max_total_tokens is not None:
        config = dataclasses.replace(budget, max_total_tokens=max(0, budget.max_total_tokens - len(first.ids)))
    row = BudgetRow(config, first.row.tokens, phase=Phase.SOLUTION)
    if first.row.finish_reason != FinishReason.THINKING_DONE:
        row.finish_unfinished()
    return row


def completion_of(first: Part, second: Part | None, decode: Callable[..., str], *, prompt_index: int,
                  sample_index: int, prompt_ids: list[int]) -> Completion:
    """One completion from a single-pass part, or from both parts of the two-call mode."""
    row = first.row
    ids, mask, logprobs = list(first.ids), list(first.mask), list(first.logprobs)
    overrides: dict = {}
    if second is not None:  # two-call: the solution comes from the second call, if thinking ended in the first
        if row.finish_reason == FinishReason.THINKING_DONE:
            overrides = dict(solution_tokens=second.row.solution_tokens, finish_reason=second.row.finish_reason)
            ids += second.ids
            mask += second.mask
            logprobs += second.logprobs
        else:
            overrides = dict(solution_index=None)
    return Completion.from_row(row, ids, mask, logprobs, decode, prompt_index=prompt_index,
                               sample_index=sample_index, prompt_ids=prompt_ids, **overrides)
