"""Separate thinking and solution budgets: the pure phase state machine every backend shares.

No torch here (nor any other heavy import): the transformers engine, the vLLM logits processor and the remote
two-call mode all drive the same :class:`BudgetRow`, one per completion, over plain token ids.

Phases of one completion::

    THINKING --(model writes the end-of-thinking sequence itself)---------------------> SOLUTION --> DONE
        |----(thinking budget spent: [transition +] end-of-thinking forced)--> FORCING -^            ^
        |----(EOS sampled while thinking, rule END_THINKING: end-of-thinking forced)-> FORCING        |
    SOLUTION --(EOS sampled, or solution budget spent)-----------------------------------------------'

What counts against which budget (tested in tests/test_budget.py):

* ``thinking_budget`` (``t``) bounds the tokens the model *samples* before thinking ends, including an
  end-of-thinking sequence it writes itself (as ``max_tokens=t`` does in the paper's phase 1). The reported
  ``thinking_tokens`` is the thinking *content*: sampled thinking tokens without the end-of-thinking sequence, so it
  is always ``<= t``.
* Forced tokens (the transition text, the end-of-thinking sequence and the answer prefix appended at a cut) count
  against **neither** budget; they are reported as ``forced_tokens`` and marked forced in the per-token mask.
* ``solution_budget`` (``s``) bounds every token sampled after the end of thinking, **EOS included** (the usual
  ``max_tokens`` convention). When ``s`` is spent without EOS the completion ends with ``finish_reason="length"``
  and no EOS is appended.
* ``max_total_tokens`` (optional) caps everything emitted, sampled and forced; it is what "plain truncation" uses.
  When it ends a completion while the end of thinking is being forced, the sequence is not in the completion and
  ``end_thinking_index``/``solution_index`` are ``None`` (the record's ``thinking_ended`` is False).

An EOS sampled while thinking (:class:`EosInThinking`): the paper's principle is that the solution always gets its
own budget, so by default (``END_THINKING``) the EOS is *replaced* by the end-of-thinking sequence (forced, marked
forced, the model's own log-prob reported by the engine) and the solution follows with its full budget ``s``.
``SUPPRESS`` masks EOS while thinking, so thinking only ends by the delimiter or the budget; ``STOP`` honours the EOS
and ends the completion with no solution (what a plain decoder does; the paper's code appended ``</think>`` after
such an EOS and then masked the whole solution away, a bug this rule set does not reproduce).

A multi-token end-of-thinking sequence (e.g. ``</think>`` on a model without that special token) is matched on
sampled token ids exactly as the tokenizer encodes it. If the budget runs out while the model has written a prefix
of it, the remainder is forced, so the sequence appears exactly once. Other tokenizations of the same text are not
recognised (a non-goal: the canonical ids are the ones every chat template emits).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum, IntEnum


class Phase(IntEnum):
    THINKING = 0
    FORCING = 1
    SOLUTION = 2
    DONE = 3


class EosInThinking(str, Enum):
    """What happens when the model samples EOS before its thinking has ended."""

    END_THINKING = "end_thinking"  # replace the EOS by the forced end-of-thinking sequence; the solution follows
    SUPPRESS = "suppress"  # EOS is masked while thinking (the sampling distribution renormalises without it)
    STOP = "stop"  # honour the EOS: the completion ends, with no solution


class ThinkingEnd(str, Enum):
    """Why thinking ended."""

    MODEL = "model"  # the model wrote the end-of-thinking sequence itself
    BUDGET = "budget"  # the thinking budget ran out: the sequence was forced (the thinking was cut)
    EOS = "eos"  # the model sampled EOS while thinking (see EosInThinking)


class FinishReason(str, Enum):
    STOP = "stop"  # EOS sampled
    LENGTH = "length"  # a budget or the total cap ran out
    THINKING_DONE = "thinking_done"  # two-call phase 1 only: stopped once thinking ended
    ABORT = "abort"  # cancelled by the caller (e.g. a client that disconnected)


@dataclass(frozen=True)
class BudgetConfig:
    """The budgets of one completion and the texts that delimit thinking. Backend-agnostic."""

    thinking_budget: int | None = None
    """Max tokens the model may sample while thinking (``t``). ``None``: unlimited."""
    solution_budget: int | None = None
    """Max tokens sampled after thinking ends, EOS included (``s``). ``None``: unlimited."""
    end_thinking: str = "</think>"
    """End-of-thinking text. May tokenize to several tokens."""
    start_thinking: str = "<think>"
    """Start-of-thinking text; appended to a rendered prompt that does not already end with it. Empty: never."""
    transition: str = ""
    """Text forced before the end-of-thinking text when the budget cuts thinking (e.g. Qwen3's
    "Considering the limited time by the user, ..."). Empty: none (the paper)."""
    answer_prefix: str = ""
    """Text forced right after the end-of-thinking text when the budget cuts thinking (s1's "Final Answer:").
    It is the start of the solution and counts against neither budget. Empty: none (the paper)."""
    eos_in_thinking: EosInThinking = EosInThinking.END_THINKING
    """Rule for an EOS sampled while thinking."""
    max_total_tokens: int | None = None
    """Optional cap on all emitted tokens (sampled and forced)."""

    @classmethod
    def plain(cls, max_total_tokens: int | None, *, end_thinking: str = "</think>",
              start_thinking: str = "<think>") -> "BudgetConfig":
        """Plain decoding under one total cap, as a decoder without budgets does: nothing is forced and an EOS
        anywhere ends the completion. The ``truncate`` and ``vanilla`` baselines of training and of evaluation
        (and L1's hard cap) all decode with this one config."""
        return cls(max_total_tokens=max_total_tokens, eos_in_thinking=EosInThinking.STOP, end_thinking=end_thinking,
                   start_thinking=start_thinking)

    def __post_init__(self) -> None:
        for name in ("thinking_budget", "solution_budget", "max_total_tokens"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer or None, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.end_thinking:
            raise ValueError("end_thinking must be a non-empty text")
        object.__setattr__(self, "eos_in_thinking", EosInThinking(self.eos_in_thinking))

    def max_new_tokens(self, forced_len: int) -> int | None:
        """Upper bound on emitted tokens, or None when unbounded (thinking or solution unlimited, no total cap)."""
        bound = None
        if self.thinking_budget is not None and self.solution_budget is not None:
            bound = self.thinking_budget + forced_len + self.solution_budget
        if self.max_total_tokens is not None:
            bound = self.max_total_tokens if bound is None else min(bound, self.max_total_tokens)
        return bound


@dataclass(frozen=True)
class BudgetTokens:
    """Token ids the state machine needs, resolved once from texts (see special_tokens.resolve_budget_tokens)."""

    end_thinking_ids: tuple[int, ...]
    transition_ids: tuple[int, ...]
    eos_ids: frozenset[int]
    pad_id: int
    answer_prefix_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.end_thinking_ids:
            raise ValueError("end_thinking_ids must not be empty")
        if not self.eos_ids:
            raise ValueError("at least one EOS id is needed")

    @property
    def forced_len(self) -> int:
        """The most tokens a cut can force."""
        return len(self.transition_ids) + len(self.end_thinking_ids) + len(self.answer_prefix_ids)


@dataclass
class BudgetRow:
    """The budget state of one completion. Drive it with :meth:`step`, once per emitted token.

    ``phase`` may start at SOLUTION (the second call of the two-call mode) and ``stop_after_thinking`` ends the
    completion as soon as thinking has ended (its first call).
    """

    config: BudgetConfig
    tokens: BudgetTokens
    phase: Phase = Phase.THINKING
    stop_after_thinking: bool = False

    sampled_thinking: int = 0  # tokens sampled while thinking, end-of-thinking tokens the model wrote included
    thinking_tokens: int = 0  # thinking content (set when thinking ends; live count while thinking)
    solution_tokens: int = 0
    forced_tokens: int = 0
    emitted: int = 0
    thinking_end: ThinkingEnd | None = None
    finish_reason: FinishReason | None = None
    end_thinking_index: int | None = None  # index in the completion where the end-of-thinking sequence starts
    solution_index: int | None = None  # index in the completion where the solution starts
    _match: int = 0  # length of the end-of-thinking prefix at the tail of the sampled thinking tokens
    _recent: deque = field(default_factory=deque)
    _queue: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.phase == Phase.SOLUTION:
            self.solution_index = 0
            self._check_solution_done()
        elif self.phase == Phase.THINKING:
            self._check_thinking_budget()
        self._check_total()

    # -- what the engine asks before sampling ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase == Phase.DONE

    @property
    def thinking_truncated(self) -> bool:
        return self.thinking_end == ThinkingEnd.BUDGET

    def forced_token(self) -> int | None:
        """The token this step must emit regardless of the model, or None when the model samples."""
        if self.phase == Phase.DONE:
            return self.tokens.pad_id
        if self._queue:
            return self._queue[0]
        return None

    def suppress_eos(self) -> bool:
        """Whether EOS must be masked out of this step's sampling distribution."""
        return self.phase == Phase.THINKING and self.config.eos_in_thinking == EosInThinking.SUPPRESS

    def eos_replacement(self) -> int | None:
        """The token that would replace an EOS sampled at this step (END_THINKING rule), else None.
        Known before sampling so an engine can read the model's log-prob of it."""
        if self.phase == Phase.THINKING and self.config.eos_in_thinking != EosInThinking.STOP:
            return self.tokens.end_thinking_ids[self._match]
        return None

    # -- advancing ---------------------------------------------------------------------------------------------
    def step(self, sampled: int) -> tuple[int, bool]:
        """Advance by one emitted token.

        ``sampled`` is what the sampler drew for this row (ignored when a token is forced). Returns the token to
        emit and whether it was forced. Calling it on a finished row returns ``(pad_id, True)`` and changes nothing.
        """
        if self.phase == Phase.DONE:
            return self.tokens.pad_id, True
        if self._queue:
            token = self._queue.popleft()
            self._emit_forced()
            return token, True
        if self.phase == Phase.THINKING:
            if sampled in self.tokens.eos_ids and self.config.eos_in_thinking != EosInThinking.STOP:
                # Replace the EOS by the end of thinking, continuing any prefix of it the model already wrote.
                self._start_forcing(ThinkingEnd.EOS, with_transition=False)
                token = self._queue.popleft()
                self._emit_forced()
                return token, True
            self._emit_thinking(sampled)
            return sampled, False
        # SOLUTION
        self._emit_solution(sampled)
        return sampled, False

    # -- internals ---------------------------------------------------------------------------------------------
    def _emit_thinking(self, token: int) -> None:
        self.emitted += 1
        self.sampled_thinking += 1
        if token in self.tokens.eos_ids:  # STOP rule: the completion ends inside its thinking
            self.thinking_end = ThinkingEnd.EOS
            self.thinking_tokens = self.sampled_thinking - 1 - self._match
            self._finish(FinishReason.STOP)
            return
        self._advance_match(token)
        ids = self.tokens.end_thinking_ids
        if self._match == len(ids):  # the model closed its thinking itself
            self.thinking_end = ThinkingEnd.MODEL
            self.thinking_tokens = self.sampled_thinking - len(ids)
            self.end_thinking_index = self.emitted - len(ids)
            self._enter_solution()
            return
        self.thinking_tokens = self.sampled_thinking
        self._check_thinking_budget()
        self._check_total()

    def _advance_match(self, token: int) -> None:
        ids = self.tokens.end_thinking_ids
        if len(ids) == 1:
            self._match = 1 if token == ids[0] else 0
            return
        self._recent.append(token)
        if len(self._recent) > len(ids):
            self._recent.popleft()
        recent = list(self._recent)
        self._match = 0
        for j in range(min(len(ids), len(recent)), 0, -1):
            if recent[-j:] == list(ids[:j]):
                self._match = j
                break

    def _check_thinking_budget(self) -> None:
        budget = self.config.thinking_budget
        if self.phase == Phase.THINKING and budget is not None and self.sampled_thinking >= budget:
            self._start_forcing(ThinkingEnd.BUDGET, with_transition=bool(self.tokens.transition_ids))

    def _start_forcing(self, reason: ThinkingEnd, with_transition: bool) -> None:
        self.thinking_end = reason
        ids = self.tokens.end_thinking_ids
        if with_transition:
            # The transition goes before a complete end-of-thinking sequence; a written prefix stays thinking.
            self._queue.extend(self.tokens.transition_ids)
            self._queue.extend(ids)
            self.thinking_tokens = self.sampled_thinking
            self.end_thinking_index = self.emitted + len(self.tokens.transition_ids)
        else:
            self._queue.extend(ids[self._match :])
            self.thinking_tokens = self.sampled_thinking - self._match
            self.end_thinking_index = self.emitted - self._match
        self.solution_index = self.end_thinking_index + len(ids)
        if reason == ThinkingEnd.BUDGET:
            self._queue.extend(self.tokens.answer_prefix_ids)
        self.phase = Phase.FORCING

    def _emit_forced(self) -> None:
        self.emitted += 1
        self.forced_tokens += 1
        if not self._queue and self.phase == Phase.FORCING:
            self._enter_solution()
            return
        self._check_total()

    def _enter_solution(self) -> None:
        self.phase = Phase.SOLUTION
        if self.solution_index is None:
            self.solution_index = self.emitted
        if self.stop_after_thinking:
            self._finish(FinishReason.THINKING_DONE)
            return
        self._check_solution_done()
        self._check_total()

    def _emit_solution(self, token: int) -> None:
        self.emitted += 1
        self.solution_tokens += 1
        if token in self.tokens.eos_ids:
            self._finish(FinishReason.STOP)
            return
        self._check_solution_done()
        self._check_total()

    def _check_solution_done(self) -> None:
        budget = self.config.solution_budget
        if self.phase == Phase.SOLUTION and budget is not None and self.solution_tokens >= budget:
            self._finish(FinishReason.LENGTH)

    def _check_total(self) -> None:
        cap = self.config.max_total_tokens
        if self.phase != Phase.DONE and cap is not None and self.emitted >= cap:
            self._finish(FinishReason.LENGTH)

    def _finish(self, reason: FinishReason) -> None:
        if self.solution_index is not None and self.emitted < self.solution_index:
            # Stopped (total cap, abort) while the end of thinking was still being forced: it is not in the
            # completion, so no index may point at it (``thinking_end`` still says why thinking stopped).
            self.end_thinking_index = None
            self.solution_index = None
        self.phase = Phase.DONE
        self.finish_reason = reason
        self._queue.clear()

    def abort(self) -> None:
        """Stop now (the caller gave up on this completion)."""
        if self.phase != Phase.DONE:
            self._finish(FinishReason.ABORT)

    def finish_unfinished(self) -> None:
        """Called by an engine that stopped (context full, step cap) before this row was done."""
        if self.phase != Phase.DONE:
            self._finish(FinishReason.LENGTH)
