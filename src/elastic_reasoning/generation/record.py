"""What every backend returns for one completion, and the sampling settings every backend accepts. No torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..budget import BudgetConfig, BudgetRow, FinishReason

_FROM_ROW = object()


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. ``temperature == 0`` means greedy."""

    temperature: float = 0.6
    """Softmax temperature; 0 = greedy (argmax). Paper default 0.6."""
    top_p: float = 0.95
    """Nucleus sampling mass; 1.0 disables it. Paper default 0.95."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables it."""
    seed: int | None = None
    """Seed of the sampler's own generator: the same seed gives the same tokens."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def budgets_per_prompt(prompts: Sequence, budget: "BudgetConfig | Sequence[BudgetConfig]",
                       num_samples: int) -> list[BudgetConfig]:
    """The budget of each prompt of a ``generate`` call (one for all, or one each), after the checks every backend
    makes of the call."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    budgets = [budget] * len(prompts) if isinstance(budget, BudgetConfig) else list(budget)
    if len(budgets) != len(prompts):
        raise ValueError(f"{len(budgets)} budgets for {len(prompts)} prompts")
    return budgets


@dataclass
class Completion:
    """One budgeted completion. ``completion_ids``, ``sampled_mask`` and ``logprobs`` always have the same length.

    ``logprobs[i]`` is the log-prob of ``completion_ids[i]`` under the distribution it was sampled from (temperature,
    top-k, top-p applied; greedy reports the model's plain log-prob). For a forced token (``sampled_mask[i] == 0``)
    it is the model's own log-prob of that token at that position (at the sampling temperature, before top-k/top-p),
    so importance ratios computed from it are never polluted.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    sampled_mask: list[int]  # 1 = sampled by the model, 0 = forced by the budget
    logprobs: list[float]
    thinking_tokens: int  # thinking content, end-of-thinking sequence excluded (<= thinking budget)
    solution_tokens: int  # sampled after thinking ended, EOS included (<= solution budget)
    forced_tokens: int
    thinking_truncated: bool  # the thinking budget cut the thinking
    thinking_end: str | None  # "model" | "budget" | "eos" | None (thinking never ended)
    finish_reason: str  # "stop" (EOS) | "length" (budget or cap) | "thinking_done" (two-call phase 1)
    end_thinking_index: int | None  # where the end-of-thinking sequence starts in completion_ids
    solution_index: int | None  # where the solution starts in completion_ids
    thinking: str = ""
    solution: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if not (n == len(self.sampled_mask) == len(self.logprobs)):
            raise AssertionError(
                f"unaligned completion: {n} ids, {len(self.sampled_mask)} mask entries, {len(self.logprobs)} logprobs"
            )

    @classmethod
    def from_row(
        cls,
        row: BudgetRow,
        ids: list[int],
        mask: list[int],
        logprobs: list[float],
        decode: Callable[..., str],
        *,
        prompt_index: int,
        sample_index: int,
        prompt_ids: list[int],
        solution_tokens: int | None = None,
        finish_reason: FinishReason | str | None = None,
        forced_tokens: int | None = None,
        solution_index: int | None = _FROM_ROW,  # type: ignore[assignment]
    ) -> "Completion":
        """The record of a completion whose thinking ``row`` tracked. A solution decoded by a later call (two-call
        mode, shared-thinking sweeps) overrides the solution fields; ``decode`` is the tokenizer's decode."""
        end = row.end_thinking_index
        start = row.solution_index if solution_index is _FROM_ROW else solution_index
        finish = finish_reason if finish_reason is not None else row.finish_reason
        return cls(
            prompt_index=prompt_index,
            sample_index=sample_index,
            prompt_ids=list(prompt_ids),
            completion_ids=ids,
            sampled_mask=mask,
            logprobs=logprobs,
            thinking_tokens=row.thinking_tokens,
            solution_tokens=row.solution_tokens if solution_tokens is None else solution_tokens,
            forced_tokens=row.forced_tokens if forced_tokens is None else forced_tokens,
            thinking_truncated=row.thinking_truncated,
            thinking_end=row.thinking_end.value if row.thinking_end else None,
            finish_reason=FinishReason(finish).value if finish else FinishReason.LENGTH.value,
            end_thinking_index=end,
            solution_index=start,
            thinking=decode(ids[:end] if end is not None else ids, skip_special_tokens=True),
            solution=decode(ids[start:], skip_special_tokens=True) if start is not None else "",
        )

    @property
    def total_tokens(self) -> int:
        return len(self.completion_ids)

    def to_dict(self) -> dict:
        return asdict(self)
