"""Separate thinking and solution budgets inside vLLM: a v1-engine logits processor.

One :class:`~elastic_reasoning.budget.BudgetRow` per request that asks for budgets (``SamplingParams.extra_args``
offline, ``vllm_xargs`` over HTTP; keys in :mod:`.vllm_args`), driven by the tokens vLLM emits, inside vLLM's
continuous batching. Nothing is re-prefilled: a forced token is the only token left in that row's distribution, so
vLLM's sampler picks it and it enters the KV cache like any other. Requests without budget arguments are untouched.

Loaded three ways: the package registers it as a ``vllm.logits_processors`` entry point, so every vLLM engine of an
environment where this project is installed has it (``LLM``, ``vllm serve``, TRL's colocate and server modes);
explicitly, ``LLM(model, logits_processors=[ElasticBudgetLogitsProcessor])`` or
``vllm serve MODEL --logits-processors elastic_reasoning.generation.vllm_processor:ElasticBudgetLogitsProcessor``.
Loaded twice it still acts once: every change it makes is idempotent.

Per step and per tracked request, in this order:

* the request is done (solution budget spent, total cap reached, or thinking ended under ``stop_after_thinking``):
  its stop token (the request's EOS) is forced so vLLM ends it. That one token is *not* part of the completion:
  :class:`~elastic_reasoning.generation.vllm_engine.VLLMEngine` drops it, and ``finish_reason`` is ``"length"``
  as the state machine says. (A client of ``vllm serve`` sees ``finish_reason: "stop"`` and an EOS it never
  decodes.) vLLM gives a logits processor no other way to end a request;
* a token is due to be forced (transition, end-of-thinking sequence, answer prefix): only that token is left;
* thinking, rule ``end_thinking`` (the default): an EOS cannot end the request before its solution. Sampling: the
  EOS's probability moves onto the next end-of-thinking token, so the emitted tokens have the same distribution as in
  the transformers engine, where a sampled EOS is replaced by a forced end-of-thinking; the difference is the flag,
  such a token is recorded as the model's own (``thinking_end="model"``). Greedy: if an EOS is the argmax the
  end-of-thinking token is forced, otherwise EOS is removed, exactly the transformers engine's outcome;
* thinking, rule ``suppress``: EOS is removed; rule ``stop``: nothing changes.

Log-probs: vLLM's default ``logprobs_mode="raw_logprobs"`` computes them *before* logits processors, so every token,
forced ones included, reports the model's own log-prob (at temperature 1, before top-k/top-p). That is the sampling
distribution's log-prob exactly when sampling at temperature 1 with no top-k/top-p (the RL setting) and never a
polluted 0.0 for a forced token. ``processed_logprobs`` would report 0.0 for forced tokens: the engine refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..budget import BudgetRow, BudgetTokens, EosInThinking, Phase
from ..special_tokens import encode_exact
from .vllm_args import BudgetArgsError, RequestBudget, budget_requested, parse_budget_args

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig

_GREEDY_EPS = 1e-5  # vLLM's own threshold for greedy sampling


@dataclass
class _Tracked:
    """One request's budget state and the live list of its output tokens (vLLM appends to it)."""

    row: BudgetRow
    output_ids: list[int]
    stop_token: int
    greedy: bool
    eos: tuple[int, ...]
    seen: int = 0

    def catch_up(self) -> None:
        """Feed the state machine the tokens vLLM emitted since the last step."""
        out = self.output_ids
        while self.seen < len(out):
            token = out[self.seen]
            if token < 0:  # a placeholder of async scheduling: the real id is not known yet
                return
            if self.row.done:
                self.seen = len(out)
                return
            self.row.step(token)
            self.seen += 1


class ElasticBudgetLogitsProcessor(LogitsProcessor):
    """Thinking budget, forced end of thinking, solution budget: per request, in one pass (see the module doc)."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool):
        model_config = vllm_config.model_config
        self._tokenizer_name = getattr(model_config, "tokenizer", None) or getattr(model_config, "model", None)
        self._trust_remote_code = bool(getattr(model_config, "trust_remote_code", False))
        self._tokenizer = None
        self._tokens: dict[tuple, BudgetTokens] = {}
        self.device = device
        self.rows: dict[int, _Tracked] = {}

    # -- vLLM's interface --------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        args = sampling_params.extra_args
        if budget_requested(args):
            parse_budget_args(args)  # BudgetArgsError is a ValueError: HTTP 400 under vllm serve

    def is_argmax_invariant(self) -> bool:
        return False  # forcing a token changes the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_request)
        for tracked in self.rows.values():
            tracked.catch_up()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        forced_rows: list[int] = []
        forced_ids: list[int] = []
        merge: dict[tuple[int, ...], list[tuple[int, int, bool]]] = {}
        suppress: dict[tuple[int, ...], list[int]] = {}
        for index, tracked in self.rows.items():
            row = tracked.row
            if row.done:
                forced_rows.append(index)
                forced_ids.append(tracked.stop_token)
                continue
            token = row.forced_token()
            if token is not None:
                forced_rows.append(index)
                forced_ids.append(token)
                continue
            if row.phase != Phase.THINKING:
                continue
            rule = row.config.eos_in_thinking  # an EosInThinking already (BudgetConfig converts it)
            if rule == EosInThinking.END_THINKING:
                merge.setdefault(tracked.eos, []).append((index, row.eos_replacement(), tracked.greedy))
            elif rule == EosInThinking.SUPPRESS:
                suppress.setdefault(tracked.eos, []).append(index)
        for eos, entries in merge.items():
            self._move_eos_mass(logits, eos, entries)
        for eos, indices in suppress.items():
            rows_t = torch.tensor(indices, device=logits.device)[:, None]
            logits[rows_t, torch.tensor(eos, device=logits.device)[None, :]] = float("-inf")
        if forced_rows:
            rows_t = torch.tensor(forced_rows, device=logits.device)
            logits[rows_t] = float("-inf")
            logits[rows_t, torch.tensor(forced_ids, device=logits.device)] = 0.0
        return logits

    # -- internals ---------------------------------------------------------------------------------------------
    def _new_request(self, params: "SamplingParams", prompt_ids: list[int] | None,
                     output_ids: list[int]) -> _Tracked | None:
        args = params.extra_args
        if not budget_requested(args):
            return None
        request = parse_budget_args(args)
        eos = set(params.all_stop_token_ids or ())
        if params.eos_token_id is not None:
            eos.add(params.eos_token_id)
        tokens = self._budget_tokens(request, tuple(sorted(eos)))
        row = BudgetRow(request.config, tokens, phase=request.phase, stop_after_thinking=request.stop_after_thinking)
        stop = params.eos_token_id if params.eos_token_id is not None else min(tokens.eos_ids)
        tracked = _Tracked(row, output_ids, stop, params.temperature < _GREEDY_EPS, tuple(sorted(tokens.eos_ids)))
        tracked.catch_up()  # a preempted request comes back with its tokens so far: replay them
        return tracked

    def _budget_tokens(self, request: RequestBudget, eos: tuple[int, ...]) -> BudgetTokens:
        config = request.config
        key = (config.end_thinking, request.end_thinking_ids, config.transition, config.answer_prefix, eos)
        if key not in self._tokens:
            needs_text = request.end_thinking_ids is None or config.transition or config.answer_prefix
            tokenizer = self._tokenizer_or_none() if needs_text else None
            end_ids = request.end_thinking_ids or self._encode(tokenizer, config.end_thinking, "end-of-thinking")
            if not eos:
                eos = (tokenizer or self._tokenizer_or_none()).eos_token_id,
            if set(end_ids) & set(eos):
                raise BudgetArgsError("the end-of-thinking sequence contains an EOS token")
            self._tokens[key] = BudgetTokens(
                end_thinking_ids=tuple(end_ids),
                transition_ids=self._encode(tokenizer, config.transition, "transition") if config.transition else (),
                eos_ids=frozenset(eos),
                pad_id=min(eos),
                answer_prefix_ids=(self._encode(tokenizer, config.answer_prefix, "answer prefix")
                                   if config.answer_prefix else ()),
            )
        return self._tokens[key]

    def _tokenizer_or_none(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name,
                                                            trust_remote_code=self._trust_remote_code)
        return self._tokenizer

    @staticmethod
    def _encode(tokenizer, text: str, what: str) -> tuple[int, ...]:
        try:
            return encode_exact(tokenizer, text, what)
        except ValueError as exc:
            raise BudgetArgsError(str(exc)) from exc

    @staticmethod
    def _move_eos_mass(logits: torch.Tensor, eos: Sequence[int], entries: list[tuple[int, int, bool]]) -> None:
        """Rule ``end_thinking`` while thinking: EOS cannot be emitted; its mass goes to the end-of-thinking token
        (sampling), or that token is forced where EOS is the argmax (greedy)."""
        device = logits.device
        rows_t = torch.tensor([e[0] for e in entries], device=device)
        target = torch.tensor([e[1] for e in entries], device=device)
        greedy = torch.tensor([e[2] for e in entries], device=device)
        eos_t = torch.tensor(list(eos), device=device)
        sub = logits[rows_t]
        eos_logits = sub[:, eos_t]
        target_logits = sub.gather(1, target[:, None])[:, 0]
        merged = torch.logaddexp(target_logits, torch.logsumexp(eos_logits, dim=1))
        eos_is_argmax = eos_logits.max(dim=1).values >= sub.max(dim=1).values
        greedy_value = torch.where(eos_is_argmax, sub.max(dim=1).values + 1.0, target_logits)
        logits[rows_t[:, None], eos_t[None, :]] = float("-inf")
        logits[rows_t, target] = torch.where(greedy, greedy_value, merged)

