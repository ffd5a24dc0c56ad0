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
    sampling_top_p      float (0,1]  the request's real top-p, applied by the processor (see below)
    sampling_top_k      int >= 0     the request's real top-k (0: off), applied by the processor

``vllm serve`` passes ``vllm_xargs`` values as strings, numbers or lists, so integers given as digit strings,
numbers as numeric strings and booleans given as "true"/"false" are accepted too.

**Top-p / top-k go in the extra arguments, not in** ``SamplingParams``. vLLM's sampler applies a request's
temperature, then top-k/top-p, *after* every logits processor (``vllm/v1/sample/sampler.py``: logits processors,
penalties, then ``sample``: temperature, argmax-invariant processors, top-k/top-p). The budget rule for an EOS sampled
while thinking must act on the *filtered* distribution (the transformers engine draws from temperature + top-k/top-p,
then replaces an EOS), so a budgeted request asks vLLM for no filtering at all (``top_p=1``, ``top_k=0``: vLLM's
"off") and carries its real ``top_p``/``top_k`` here; the processor then builds the exact distribution itself and
hands vLLM logits that vLLM's own division by the temperature turns into it. :func:`vllm_sampling_kwargs` and
:func:`sampling_extra_args` (or ``budget_extra_args(..., sampling=...)``) produce both halves from a
:class:`~.record.SamplingConfig`. A request may not set top-p/top-k both ways (refused: it would filter twice).
A client that sets them only in ``SamplingParams`` still gets budgets; see the processor's doc for what is then
exact and what is approximate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..budget import BudgetConfig, BudgetTokens, EosInThinking, Phase
from .record import MIN_TOP_P, SamplingConfig

TOP_P_KEY, TOP_K_KEY = "sampling_top_p", "sampling_top_k"
"""Extra-argument keys of a budgeted request's real top-p / top-k (its ``SamplingParams`` carry vLLM's neutral)."""
BUDGET_KEYS = ("thinking_budget", "solution_budget", "end_thinking", "end_thinking_ids", "transition",
               "answer_prefix", "eos_in_thinking", "max_total_tokens", "budget_phase", "stop_after_thinking",
               TOP_P_KEY, TOP_K_KEY)
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
    top_p: float | None = None
    """The request's real top-p from the extra arguments (None: not given there)."""
    top_k: int | None = None
    """The request's real top-k from the extra arguments (None: not given there; 0: off)."""

    @property
    def filters_in_extra_args(self) -> bool:
        """Top-p/top-k were given in the extra arguments, so ``SamplingParams`` must carry vLLM's neutral ones."""
        return self.top_p is not None or self.top_k is not None


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


def _top_p(args: Mapping[str, Any]) -> float | None:
    value = args.get(TOP_P_KEY)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BudgetArgsError(f"{TOP_P_KEY} must be a number in (0, 1], got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise BudgetArgsError(f"{TOP_P_KEY} must be a number in (0, 1], got {value!r}")
    return max(float(value), MIN_TOP_P)  # SamplingConfig's clamp: a tiny nucleus keeps the most likely token


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
                         _bool(extra_args, "stop_after_thinking"), top_p=_top_p(extra_args),
                         top_k=_int(extra_args, TOP_K_KEY))


def check_filters(extra_args: Mapping[str, Any] | None, top_p: float, top_k: int | None) -> None:
    """Refuse a request whose top-p/top-k would be applied twice, or in the extra arguments of a request the processor
    does not track (vLLM would then sample with no filtering at all). ``top_p``/``top_k``: its ``SamplingParams``'."""
    if not extra_args or all(extra_args.get(k) is None for k in (TOP_P_KEY, TOP_K_KEY)):
        return
    if not budget_requested(extra_args):
        raise BudgetArgsError(f"{TOP_P_KEY}/{TOP_K_KEY} only apply to a request with budgets (thinking_budget, "
                              "solution_budget or max_total_tokens); set top_p/top_k in the sampling parameters "
                              "instead")
    if top_p < 1.0 or (top_k or 0) > 0:
        raise BudgetArgsError(f"top_p/top_k are set both in the sampling parameters (top_p={top_p}, top_k={top_k}) "
                              f"and in the budget arguments ({TOP_P_KEY}/{TOP_K_KEY}): they would filter twice. "
                              "Put them in the budget arguments only and leave the sampling parameters at "
                              "top_p=1, top_k=0 (vllm_sampling_kwargs does this)")


def vllm_sampling_kwargs(sampling: SamplingConfig) -> dict[str, Any]:
    """``temperature``/``top_p``/``top_k`` for a *budgeted* request's ``SamplingParams`` (or TRL's
    ``VLLMClient.generate`` keywords): the temperature, and vLLM's neutral top-p/top-k; the real ones go in the extra
    arguments (:func:`sampling_extra_args`), where the budget processor applies them exactly. Greedy: temperature 0."""
    return {"temperature": 0.0 if sampling.greedy else sampling.temperature, "top_p": 1.0, "top_k": 0}


def sampling_extra_args(sampling: SamplingConfig) -> dict[str, Any]:
    """The extra arguments that carry ``sampling``'s top-p/top-k to the processor (none when they are off or greedy)."""
    if sampling.greedy:
        return {}
    args: dict[str, Any] = {}
    if sampling.top_p < 1.0:
        args[TOP_P_KEY] = sampling.top_p
    if sampling.top_k > 0:
        args[TOP_K_KEY] = sampling.top_k
    return args


def request_max_tokens(config: BudgetConfig, tokens: BudgetTokens, room: int) -> int:
    """``max_tokens`` of a budgeted vLLM request with ``room`` tokens left in the context: the budgets' bound plus the
    one stop token the processor forces to end a request whose budget is spent (a safety net; the processor ends it)."""
    bound = config.max_new_tokens(tokens.forced_len)
    return max(1, min(room, bound + 1 if bound is not None else room))


def budget_extra_args(config: BudgetConfig, tokens: BudgetTokens | None = None, *, phase: Phase = Phase.THINKING,
                      stop_after_thinking: bool = False, sampling: SamplingConfig | None = None) -> dict[str, Any]:
    """The ``extra_args`` that ask the processor for ``config`` (ids included when already resolved). With
    ``sampling``, its top-p/top-k too: pair them with :func:`vllm_sampling_kwargs` in the request."""
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
    if sampling is not None:
        args.update(sampling_extra_args(sampling))
    return {k: v for k, v in args.items() if v is not None}
