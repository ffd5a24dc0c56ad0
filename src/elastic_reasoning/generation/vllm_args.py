"""The wire format of budgets inside vLLM requests: ``SamplingParams.extra_args`` (offline ``LLM``) or the
``vllm_xargs`` field of an OpenAI-compatible request to ``vllm serve``. Pure: no vLLM, no torch.

Keys (all optional; a request that carries none of :data:`BUDGET_KEYS` is left untouched by the processor)::

    thinking_budget     int >= 0     t: tokens the model may sample while thinking
    solution_budget     int >= 0     s: tokens sampled after thinking ended (EOS included)
    end_thinking        str          end-of-thinking text (default "</think>"), tokenized by the model's tokenizer
    end_thinking_ids    list[int]    ... or its ids directly (wins over the text; no tokenizer needed)
    transition          str          text forced before the end-of-thinking text at a cut
    answer_prefix       str          text forced after the end-of-thinking text at a cut
    eos_in_thinking     str          "end_thinking" (default) | "suppress" | "stop"
    max_total_tokens    int >= 0     cap on all emitted tokens
    budget_phase        str          "thinking" (default) | "solution": the prompt already ends its thinking
    stop_after_thinking bool         end the request as soon as thinking has ended (two-call mode, phase 1)

``vllm serve`` passes ``vllm_xargs`` values as strings, numbers or lists, so integers given as digit strings and
booleans given as "true"/"false" are accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..budget import BudgetConfig, BudgetTokens, EosInThinking, Phase

BUDGET_KEYS = ("thinking_budget", "solution_budget", "end_thinking", "end_thinking_ids", "transition",
               "answer_prefix", "eos_in_thinking", "max_total_tokens", "budget_phase", "stop_after_thinking")
_ACTIVATING = ("thinking_budget", "solution_budget", "max_total_tokens", "stop_after_thinking", "budget_phase")


class BudgetArgsError(ValueError):
    """Budget arguments of a request that cannot be honoured (an HTTP 400 under ``vllm serve``)."""


@dataclass(frozen=True)
class RequestBudget:
    """What one request asks of the processor."""

    config: BudgetConfig
    end_thinking_ids: tuple[int, ...] | None
    phase: Phase = Phase.THINKING
    stop_after_thinking: bool = False


def budget_requested(extra_args: Mapping[str, Any] | None) -> bool:
    """Whether a request asks for budgets at all (the processor leaves every other request untouched)."""
    return bool(extra_args) and any(k in extra_args and extra_args[k] is not None for k in _ACTIVATING)


def _int(args: Mapping[str, Any], key: str) -> int | None:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BudgetArgsError(f"{key} must be an integer, got {value!r}")
    if value < 0:
        raise BudgetArgsError(f"{key} must be >= 0, got {value}")
    return value


def _bool(args: Mapping[str, Any], key: str) -> bool:
    value = args.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if not isinstance(value, (bool, int)):
        raise BudgetArgsError(f"{key} must be a boolean, got {value!r}")
    return bool(value)


def _text(args: Mapping[str, Any], key: str, default: str) -> str:
    value = args.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BudgetArgsError(f"{key} must be a string, got {value!r}")
    return value


def parse_budget_args(extra_args: Mapping[str, Any]) -> RequestBudget:
    """Validate and convert a request's budget arguments; :class:`BudgetArgsError` on any bad value."""
    unknown_phase = extra_args.get("budget_phase", "thinking")
    if unknown_phase not in ("thinking", "solution"):
        raise BudgetArgsError(f"budget_phase must be 'thinking' or 'solution', got {unknown_phase!r}")
    eos_rule = _text(extra_args, "eos_in_thinking", EosInThinking.END_THINKING.value)
    try:
        EosInThinking(eos_rule)
    except ValueError:
        raise BudgetArgsError(f"eos_in_thinking must be one of {[e.value for e in EosInThinking]}, got {eos_rule!r}")
    ids = extra_args.get("end_thinking_ids")
    if ids is not None:
        if (not isinstance(ids, (list, tuple)) or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            raise BudgetArgsError(f"end_thinking_ids must be a non-empty list of token ids, got {ids!r}")
        ids = tuple(ids)
    try:
        config = BudgetConfig(
            thinking_budget=_int(extra_args, "thinking_budget"),
            solution_budget=_int(extra_args, "solution_budget"),
            end_thinking=_text(extra_args, "end_thinking", "</think>") or "</think>",
            transition=_text(extra_args, "transition", ""),
            answer_prefix=_text(extra_args, "answer_prefix", ""),
            eos_in_thinking=eos_rule,
            max_total_tokens=_int(extra_args, "max_total_tokens"),
        )
    except ValueError as exc:  # BudgetConfig's own checks
        raise BudgetArgsError(str(exc)) from exc
    return RequestBudget(config, ids, Phase.SOLUTION if unknown_phase == "solution" else Phase.THINKING,
                         _bool(extra_args, "stop_after_thinking"))


def request_max_tokens(config: BudgetConfig, tokens: BudgetTokens, room: int) -> int:
    """``max_tokens`` of a budgeted vLLM request with ``room`` tokens left in the context: the budgets' bound plus the
    one stop token the processor forces to end a request whose budget is spent (a safety net; the processor ends it)."""
    bound = config.max_new_tokens(tokens.forced_len)
    return max(1, min(room, bound + 1 if bound is not None else room))


def budget_extra_args(config: BudgetConfig, tokens: BudgetTokens | None = None, *, phase: Phase = Phase.THINKING,
                      stop_after_thinking: bool = False) -> dict[str, Any]:
    """The ``extra_args`` that ask the processor for ``config`` (ids included when already resolved)."""
    args: dict[str, Any] = {
        "thinking_budget": config.thinking_budget,
        "solution_budget": config.solution_budget,
        "end_thinking": config.end_thinking,
        "eos_in_thinking": EosInThinking(config.eos_in_thinking).value,
    }
    if tokens is not None:
        args["end_thinking_ids"] = list(tokens.end_thinking_ids)
    if config.transition:
        args["transition"] = config.transition
    if config.answer_prefix:
        args["answer_prefix"] = config.answer_prefix
    if config.max_total_tokens is not None:
        args["max_total_tokens"] = config.max_total_tokens
    if phase == Phase.SOLUTION:
        args["budget_phase"] = "solution"
    if stop_after_thinking:
        args["stop_after_thinking"] = True
    return {k: v for k, v in args.items() if v is not None}
