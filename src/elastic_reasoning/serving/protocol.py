"""The OpenAI-compatible wire format, and how every budget name a client sends becomes one BudgetConfig.

Requests are pydantic models: a wrong type or range is a 400 naming the field, never a 5xx. Budget names accepted
(all map onto :class:`~elastic_reasoning.budget.BudgetConfig`):

==============================================  =================================================================
sent by the client                              becomes
==============================================  =================================================================
``thinking_budget``                             ``thinking_budget`` (t)
``thinking_token_budget`` (vLLM)                ``thinking_budget``
``thinking: {type: enabled, budget_tokens: N}``  ``thinking_budget = N`` (Anthropic); ``{type: disabled}``: 0
``reasoning_effort`` (OpenAI)                   a row of the server's effort table (thinking, optional solution)
``solution_budget``                             ``solution_budget`` (s)
``max_tokens`` / ``max_completion_tokens``      ``max_total_tokens`` (caps everything emitted; the smaller wins)
==============================================  =================================================================

Precedence: an explicit number beats ``reasoning_effort``, which beats the model's server-side default. Two explicit
thinking budgets that disagree are a 400. A budget the client asked for that cannot fit in the model's context next
to the prompt is a 400; budgets that come from the server (defaults, the effort table) are fitted instead: thinking
gives way first, so the solution keeps its own budget (the paper's principle).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..budget import BudgetConfig, EosInThinking
from ..generation.record import Completion, SamplingConfig


class APIError(Exception):
    """An error answered to the client as OpenAI's ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


# -- field types with messages a client can act on ---------------------------------------------------------------
def _non_negative_int(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a non-negative integer or null, got {value!r}")
    if value < 0:
        raise ValueError(f"must be a non-negative integer or null, got {value}")
    return value


def _positive_int(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be a positive integer or null, got {value!r}")
    return value


TokenBudget = Annotated[int | None, BeforeValidator(_non_negative_int)]
TokenCap = Annotated[int | None, BeforeValidator(_positive_int)]

ReasoningEffort = str
EFFORT_LEVELS = ("none", "minimal", "low", "medium", "high", "xhigh")


class ThinkingParam(BaseModel):
    """Anthropic's ``thinking`` block."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled"]
    budget_tokens: TokenBudget = None

    @model_validator(mode="after")
    def _enabled_needs_budget(self):
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking.type 'enabled' needs thinking.budget_tokens")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by both generation endpoints: the model, budgets, sampling, streaming."""

    model_config = ConfigDict(extra="ignore")  # other OpenAI fields (user, metadata, store ...) are accepted, unused

    model: str = Field(min_length=1)
    # budgets
    thinking_budget: TokenBudget = None
    solution_budget: TokenBudget = None
    thinking_token_budget: TokenBudget = None
    thinking: ThinkingParam | None = None
    reasoning_effort: ReasoningEffort | None = None
    max_tokens: TokenCap = None
    max_completion_tokens: TokenCap = None
    # sampling
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    # delivery
    stream: bool = False
    stream_options: StreamOptions | None = None
    # features with no meaning here: rejected rather than silently ignored
    logprobs: Any = None
    tools: list | None = None
    functions: list | None = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > 8 or any(not s for s in stops):
            raise ValueError("stop must be up to 8 non-empty strings")
        return stops

    def unsupported(self) -> str | None:
        if self.logprobs not in (None, False, 0):
            return "logprobs"
        if self.tools or self.functions:
            return "tools"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format"
        return None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise bad_request(f"message content of type {part.type!r} is not supported (text only)", "messages")
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)

    def chat(self) -> list[dict]:
        """Messages as the chat template wants them (developer turns become system turns)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise bad_request("prompt must not be empty", "prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo"
        if self.suffix:
            return "suffix"
        if self.best_of not in (None, 1):
            return "best_of"
        return super().unsupported()

    def asks_for_budgets(self) -> bool:
        """The completions endpoint is a plain decoder unless the request names a budget (see docs/serving.md)."""
        return any(v is not None for v in (self.thinking_budget, self.solution_budget, self.thinking_token_budget,
                                            self.thinking, self.reasoning_effort))


# -- server-side defaults per model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class EffortBudget:
    """One row of the reasoning-effort table."""

    thinking_budget: int | None
    solution_budget: int | None = None  # None: the model's default solution budget


DEFAULT_EFFORT_TABLE: dict[str, EffortBudget] = {
    "none": EffortBudget(0),
    "minimal": EffortBudget(256),
    "low": EffortBudget(1024),
    "medium": EffortBudget(4096),
    "high": EffortBudget(16384),
    "xhigh": EffortBudget(32768),
}


def parse_effort_table(text: str) -> dict[str, EffortBudget]:
    """``{"low": 512, "high": {"thinking_budget": 4096, "solution_budget": 1024}}`` -> table (merged over the default)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"effort table is not JSON: {err.msg}") from None
    if not isinstance(raw, dict):
        raise ValueError("effort table must be a JSON object: effort -> thinking budget or {thinking_budget, solution_budget}")
    table = dict(DEFAULT_EFFORT_TABLE)
    for name, row in raw.items():
        if isinstance(row, dict):
            unknown = set(row) - {"thinking_budget", "solution_budget"}
            if unknown:
                raise ValueError(f"effort {name!r}: unknown keys {sorted(unknown)}")
            t, s = row.get("thinking_budget"), row.get("solution_budget")
        else:
            t, s = row, None
        for what, v in (("thinking_budget", t), ("solution_budget", s)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"effort {name!r}: {what} must be a non-negative integer, got {v!r}")
        table[str(name)] = EffortBudget(t, s)
    return table


@dataclass(frozen=True)
class ModelDefaults:
    """What the server applies to a request that leaves something out. One per served model."""

    thinking_budget: int | None = None
    """Thinking budget when the request names none (None: unlimited, up to the context)."""
    solution_budget: int | None = None
    """Solution budget when the request names none."""
    max_tokens: int | None = None
    """Cap on all emitted tokens when the request sends no max_tokens / max_completion_tokens."""
    end_thinking: str = "</think>"
    start_thinking: str = "<think>"
    transition: str = ""
    answer_prefix: str = ""
    eos_in_thinking: str = EosInThinking.END_THINKING.value
    effort_table: Mapping[str, EffortBudget] = field(default_factory=lambda: dict(DEFAULT_EFFORT_TABLE))
    """reasoning_effort -> budgets."""
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0

    def public(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "effort_table"}
        out["effort_table"] = {k: {"thinking_budget": v.thinking_budget, "solution_budget": v.solution_budget}
                               for k, v in self.effort_table.items()}
        return out


# -- one request -> one BudgetConfig ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedBudget:
    budget: BudgetConfig
    sources: dict[str, str]  # budget field -> where its value came from (request field, effort, default, fitted)


def _thinking_from_request(req: _Common) -> tuple[int | None, str | None]:
    named: list[tuple[str, int]] = []
    if req.thinking_budget is not None:
        named.append(("thinking_budget", req.thinking_budget))
    if req.thinking_token_budget is not None:
        named.append(("thinking_token_budget", req.thinking_token_budget))
    if req.thinking is not None:
        named.append(("thinking.budget_tokens", req.thinking.budget_tokens if req.thinking.type == "enabled" else 0))
    if len({v for _, v in named}) > 1:
        listed = ", ".join(f"{k}={v}" for k, v in named)
        raise bad_request(f"conflicting thinking budgets ({listed}): send one", named[0][0])
    return (named[0][1], named[0][0]) if named else (None, None)


def resolve_budget(req: _Common, defaults: ModelDefaults, *, prompt_tokens: int, context_length: int | None,
                   forced_len: int = 0, plain: bool = False) -> ResolvedBudget:
    """The BudgetConfig of one request. ``plain``: the completions endpoint without budgets (a plain decoder).

    Three rules, each its own function: the total cap (:func:`_total_cap`, checked against the context by
    :func:`_context_room`), which budget wins (:func:`_budgets_by_precedence`: the request's own names, then its
    ``reasoning_effort``, then the server's defaults) and fitting to the context (:func:`_fit_to_context`: what the
    client asked for must fit, server-chosen budgets give way)."""
    max_total, total_src = _total_cap(req)
    room = _context_room(req, prompt_tokens, context_length, max_total, total_src)
    if plain:
        # A plain decoder: no thinking logic, EOS ends the completion, max_tokens (or the context) caps it.
        budget = BudgetConfig(end_thinking=defaults.end_thinking, start_thinking="", max_total_tokens=max_total,
                              eos_in_thinking=EosInThinking.STOP)
        return ResolvedBudget(budget, {"max_total_tokens": total_src or "context"})
    chosen = _budgets_by_precedence(req, defaults)
    if max_total is None and defaults.max_tokens is not None:
        max_total, total_src = defaults.max_tokens, "default"
    chosen.sources["max_total_tokens"] = total_src or "none"
    if room is not None:
        _fit_to_context(chosen, room, forced_len, max_total, total_src, prompt_tokens, context_length)
    budget = BudgetConfig(
        thinking_budget=chosen.thinking, solution_budget=chosen.solution, max_total_tokens=max_total,
        end_thinking=defaults.end_thinking, start_thinking=defaults.start_thinking, transition=defaults.transition,
        answer_prefix=defaults.answer_prefix, eos_in_thinking=defaults.eos_in_thinking,
    )
    return ResolvedBudget(budget, chosen.sources)


@dataclass
class _Chosen:
    """The budgets a request ends up with, where each came from, and which ones the client sent itself."""

    thinking: int | None
    solution: int | None
    sources: dict[str, str]
    explicit_thinking: bool
    explicit_solution: bool


def _total_cap(req: _Common) -> tuple[int | None, str | None]:
    """The smallest of ``max_tokens`` / ``max_completion_tokens`` the request sent, and its name."""
    caps = [(k, getattr(req, k)) for k in ("max_tokens", "max_completion_tokens") if getattr(req, k) is not None]
    if not caps:
        return None, None
    name, cap = min(caps, key=lambda kv: kv[1])
    return cap, name


def _context_room(req: _Common, prompt_tokens: int, context_length: int | None, max_total: int | None,
                  total_src: str | None) -> int | None:
    """Tokens the context leaves after the prompt (None: unknown); a 400 when none, or when the cap exceeds it."""
    if context_length is None:
        return None
    room = context_length - prompt_tokens
    if room <= 0:
        raise bad_request(f"the prompt is {prompt_tokens} tokens: it leaves no room in the model's context of "
                          f"{context_length} tokens", "messages" if isinstance(req, ChatCompletionRequest) else "prompt")
    if max_total is not None and max_total > room:
        raise bad_request(f"{total_src}={max_total} is beyond the context: the prompt is {prompt_tokens} tokens and "
                          f"the model's context {context_length}, so at most {room} can be generated", total_src)
    return room


def _budgets_by_precedence(req: _Common, defaults: ModelDefaults) -> _Chosen:
    """Thinking and solution budgets: the request's own fields, else its reasoning_effort's row, else the defaults."""
    sources: dict[str, str] = {}
    thinking, src = _thinking_from_request(req)
    solution = req.solution_budget
    if solution is not None:
        sources["solution_budget"] = "solution_budget"
    effort = None
    if req.reasoning_effort is not None:
        effort = defaults.effort_table.get(req.reasoning_effort)
        if effort is None:
            raise bad_request(f"unknown reasoning_effort {req.reasoning_effort!r}; this server knows: "
                              f"{', '.join(defaults.effort_table)}", "reasoning_effort")
    explicit_thinking = thinking is not None
    if thinking is not None:
        sources["thinking_budget"] = src
    elif effort is not None:
        thinking, sources["thinking_budget"] = effort.thinking_budget, f"reasoning_effort={req.reasoning_effort}"
    else:
        thinking, sources["thinking_budget"] = defaults.thinking_budget, "default"
    explicit_solution = solution is not None
    if solution is None:
        if effort is not None and effort.solution_budget is not None:
            solution, sources["solution_budget"] = effort.solution_budget, f"reasoning_effort={req.reasoning_effort}"
        else:
            solution, sources["solution_budget"] = defaults.solution_budget, "default"
    return _Chosen(thinking, solution, sources, explicit_thinking, explicit_solution)


def _fit_to_context(chosen: _Chosen, room: int, forced_len: int, max_total: int | None, total_src: str | None,
                    prompt_tokens: int, context_length: int | None) -> None:
    """What the client itself asked for must fit (a 400 otherwise; a total cap it sent bounds what it asked for);
    server-chosen budgets are fitted, thinking giving way first."""
    thinking, solution, sources = chosen.thinking, chosen.solution, chosen.sources
    asked_t = thinking if chosen.explicit_thinking else 0
    asked_s = solution if chosen.explicit_solution else 0
    asked = asked_t + (forced_len if chosen.explicit_thinking else 0) + asked_s
    capped = min(asked, max_total) if total_src not in (None, "default") else asked
    if (chosen.explicit_thinking or chosen.explicit_solution) and capped > room:
        parts = [f"{sources['thinking_budget']}={thinking}"] if chosen.explicit_thinking else []
        parts += [f"solution_budget={solution}"] if chosen.explicit_solution else []
        raise bad_request(f"{' + '.join(parts)} is beyond the context: the prompt is {prompt_tokens} tokens and "
                          f"the model's context {context_length}, so at most {room} can be generated",
                          sources["thinking_budget"] if chosen.explicit_thinking else "solution_budget")
    if thinking is not None and solution is not None and thinking + forced_len + solution > room:
        if not chosen.explicit_thinking:
            thinking = max(0, room - forced_len - solution)
            sources["thinking_budget"] += " (fitted to the context)"
        if not chosen.explicit_solution and thinking + forced_len + solution > room:
            solution = max(0, room - forced_len - thinking)
            sources["solution_budget"] += " (fitted to the context)"
    chosen.thinking, chosen.solution = thinking, solution


def resolve_sampling(req: _Common, defaults: ModelDefaults) -> SamplingConfig:
    temperature = defaults.temperature if req.temperature is None else req.temperature
    top_p = defaults.top_p if req.top_p is None else req.top_p
    top_k = defaults.top_k if req.top_k is None else max(0, req.top_k)  # vLLM's -1 = off
    seed = None if temperature == 0 else req.seed  # greedy needs no generator
    if seed is not None:
        seed %= 2**63  # torch generators take 63-bit seeds; OpenAI clients may send any integer
    return SamplingConfig(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)


# -- responses --------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int
    """Thinking content (the end-of-thinking sequence excluded), the count each thinking budget bounds."""
    solution_tokens: int
    forced_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails


def usage_of(prompt_tokens: int, completions: list[Completion]) -> Usage:
    completion_tokens = sum(_emitted(c) for c in completions)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(c.thinking_tokens for c in completions),
            solution_tokens=sum(c.solution_tokens for c in completions),
            forced_tokens=sum(c.forced_tokens for c in completions),
        ),
    )


def _emitted(c: Completion) -> int:
    """Tokens the completion emitted (an upstream engine may report them without ids)."""
    return c.extra.get("completion_tokens", len(c.completion_ids))


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    reasoning_content: str
    """The thinking (the vLLM / DeepSeek convention)."""


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str
    """``stop`` (EOS or a stop string), ``length`` (the solution budget or the total cap), ``abort``."""
    stop_reason: str | None = None
    thinking_truncated: bool
    """The thinking budget cut the thinking (the end of thinking was forced)."""
    thinking_end: str | None
    """``model`` | ``budget`` | ``eos`` | null (thinking never ended)."""
    logprobs: None = None


class AppliedBudget(BaseModel):
    """The budgets this response was generated under, and where each came from."""

    thinking_budget: int | None
    solution_budget: int | None
    max_total_tokens: int | None
    sources: dict[str, str]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    budget: AppliedBudget


class TextChoice(BaseModel):
    index: int
    text: str
    """The raw continuation: thinking, the end-of-thinking text, solution."""
    finish_reason: str
    stop_reason: str | None = None
    thinking_truncated: bool
    thinking_end: str | None
    reasoning_content: str | None
    """The thinking alone (null for a plain completion, which has no budgets)."""
    content: str | None
    """The solution alone (null for a plain completion)."""
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage
    budget: AppliedBudget


def applied_budget(resolved: ResolvedBudget) -> AppliedBudget:
    b = resolved.budget
    return AppliedBudget(thinking_budget=b.thinking_budget, solution_budget=b.solution_budget,
                         max_total_tokens=b.max_total_tokens, sources=resolved.sources)


def now() -> int:
    return int(time.time())
