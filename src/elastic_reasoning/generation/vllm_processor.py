"""Separate thinking and solution budgets inside vLLM: a v1-engine logits processor.

One :class:`~elastic_reasoning.budget.BudgetRow` per request that asks for budgets (``SamplingParams.extra_args``
offline, ``vllm_xargs`` over HTTP; keys in :mod:`.vllm_args`), driven by the tokens vLLM emits, inside vLLM's
continuous batching. Nothing is re-prefilled: a forced token is the only token left in that row's distribution, so
vLLM's sampler picks it and it enters the KV cache like any other. Requests without budget arguments are untouched.

Loaded three ways: the package registers it as a ``vllm.logits_processors`` entry point, so every vLLM engine of an
environment where this project is installed has it (``LLM``, ``vllm serve``, TRL's colocate and server modes);
explicitly, ``LLM(model, logits_processors=[ElasticBudgetLogitsProcessor])`` or
``vllm serve MODEL --logits-processors elastic_reasoning.generation.vllm_processor:ElasticBudgetLogitsProcessor``.
Loaded twice (the entry point and ``--logits-processors``: vLLM builds both) it still acts once: the second instance
built for the same engine stands aside (top-p over an already filtered distribution, or a second coin, would not be
idempotent).

**Where it runs in vLLM's sampler** (``vllm/v1/sample/sampler.py``, vLLM 0.32): a processor that is not
argmax-invariant runs on the float32 logits *before* penalties and before ``sample``, which then divides by the
request's temperature, runs the argmax-invariant processors (min-p) and applies top-k/top-p
(``ops/topk_topp_sampler.py``). The budget rule for an EOS while thinking must act on the distribution the token is
actually drawn from (temperature, then top-k/top-p), as in the transformers engine, which draws from
:func:`~.sampling.filtered_scores` and then replaces a drawn EOS. So for a tracked request the processor builds that
distribution ``D`` itself, with the same :func:`~.sampling.filtered_scores` (the request's temperature from
``SamplingParams``, its top-p/top-k from the extra arguments, where :mod:`.vllm_args` puts them while
``SamplingParams`` carries vLLM's neutral top_p=1, top_k=0), applies the budget rule to ``D`` and writes back
``logits = T * log D``: vLLM's own division by ``T`` then gives ``log D`` exactly, its (neutral) top-k/top-p change
nothing, and vLLM samples from ``D``. vLLM's ``processed_logprobs`` of a sampled token is then ``log D(token)``.

Per step and per tracked request, in this order:

* the request is done (solution budget spent, total cap reached, or thinking ended under ``stop_after_thinking``):
  its stop token (the request's EOS) is forced so vLLM ends it. That one token is *not* part of the completion:
  :class:`~elastic_reasoning.generation.vllm_engine.VLLMEngine` drops it, and ``finish_reason`` is ``"length"``
  as the state machine says. (A client of ``vllm serve`` sees ``finish_reason: "stop"`` and an EOS it never
  decodes.) vLLM gives a logits processor no other way to end a request;
* a token is due to be forced (transition, end-of-thinking sequence, answer prefix): only that token is left;
* thinking, rule ``end_thinking`` (the default), sampling: an EOS cannot end the request before its solution. In
  the transformers engine a drawn EOS becomes the rest of the end-of-thinking sequence, forced. Here ``D``'s EOS
  probability ``q`` moves onto the next end-of-thinking token ``e = end_ids[match]``, so ``e`` is emitted with
  probability ``D(e) + q``, the transformers engine's. When ``e`` completes the sequence (one token left: always so
  for a one-token ``</think>``) that is all. When more tokens remain (a multi-token end-of-thinking text, or a prefix
  of it just written), an emitted ``e`` was an EOS with probability ``q / (D(e) + q)``: a per-request coin decides,
  once ``e`` is known, and on "EOS" the processor's row takes the EOS path, so the rest of the sequence is forced
  exactly as the transformers engine forces it; otherwise the model wrote ``e`` and continues freely. The coin is
  seeded from ``SamplingParams.seed`` when set (deterministic), otherwise from the OS's entropy. (Flipping it after
  the draw, rather than before it, gives the same distribution of outputs and keeps every sampled token's reported
  log-prob the exact ``log D(token)``, ``e``'s being ``log(D(e) + q)``.)
* thinking, rule ``end_thinking``, greedy: the transformers engine's argmax of the raw logits decides. EOS is the
  argmax: ``e`` gets the merged log-prob (so it is the argmax; vLLM reports ``log(p(e) + p(EOS))``) and the rest of
  the sequence is forced. Otherwise nothing changes (EOS, not being the argmax, is never picked, and every log-prob
  is the plain log-softmax the transformers engine reports);
* thinking, rule ``suppress``: EOS is removed before top-k/top-p (the transformers engine's order); rule ``stop``
  and the solution: only the exact filtering.

**What differs from the transformers engine, unavoidably.** vLLM's output carries token ids and one log-prob per
token, nothing else. End-of-thinking tokens emitted in place of an EOS are therefore reported by the engine as the
model's own (mask 1, ``thinking_end="model"``) rather than forced, and the tokens forced after such an EOS report
log-prob 0.0 (given the processor's state they were certain); the tokens, and so the distribution of completions,
are the transformers engine's. (Where reading them as the model's own cannot fit the tokens, e.g. a thinking budget
that the model-written reading would have spent mid-sequence, the engine's replay reads them as forced.)

**A client that sets top-p/top-k in** ``SamplingParams`` **itself** (a raw ``vllm serve`` request with ``top_p``
and budgets in ``vllm_xargs`` but no ``sampling_top_p``) still gets its budgets. vLLM then applies top-k/top-p after
the processor, so the processor moves EOS's mass in the temperature-scaled domain (``softmax(logits / T)``, exact at
any temperature) and vLLM filters the merged distribution: the nucleus can differ from the transformers engine's at
its boundary (the end-of-thinking token carrying EOS's mass may enter it). Put them in the extra arguments for the
exact distribution (:func:`~.vllm_args.vllm_sampling_kwargs`). Setting them both ways is refused (they would filter
twice). Penalties, min-p, logit bias and min-tokens are vLLM's own and apply around this processor: they are outside
this guarantee (the project's engines never set them; the vLLM engine creates its ``LLM`` with
``generation_config="vllm"`` so a checkpoint's defaults never set them either).

Log-probs: the engine runs vLLM with ``logprobs_mode="processed_logprobs"`` (as TRL does), so a sampled token's
log-prob is ``log D(token)``, the definition in :mod:`.record`; a token the processor forced reports 0.0 there and
the engine records NaN for it.
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from ..budget import BudgetRow, BudgetTokens, EosInThinking, Phase
from ..special_tokens import encode_exact
from .record import GREEDY_TEMPERATURE, SamplingConfig
from .sampling import NEG_INF, filtered_scores
from .seeds import fresh_seed
from .vllm_args import BudgetArgsError, RequestBudget, budget_requested, check_filters, parse_budget_args

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


@dataclass
class _Pending:
    """A step whose drawn token may stand in place of an EOS: resolved by the coin once the token is known."""

    position: int  # index in the output of the token drawn at that step
    token: int  # the end-of-thinking token that carried EOS's mass
    odds: torch.Tensor  # P(EOS | that token was drawn), one entry of a per-step tensor (read after the step)
    index: int


@dataclass
class _Tracked:
    """One request's budget state and the live list of its output tokens (vLLM appends to it)."""

    row: BudgetRow
    output_ids: list[int]
    stop_token: int
    eos: tuple[int, ...]
    temperature: float  # the request's SamplingParams temperature: vLLM divides the logits by it after processors
    filters: SamplingConfig | None  # the distribution the processor builds (None: greedy)
    coin: random.Random
    seen: int = 0
    pending: _Pending | None = None

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
            pending = self.pending
            if pending is not None and pending.position <= self.seen:
                self.pending = None
                if (pending.position == self.seen and token == pending.token
                        and self.coin.random() < float(pending.odds[pending.index])):
                    # Drawn in place of an EOS: the row takes the EOS path and forces the rest of the end of
                    # thinking, as the transformers engine's row does after a sampled EOS.
                    token = min(self.row.tokens.eos_ids)
            self.row.step(token)
            self.seen += 1

    @property
    def filtering(self) -> bool:
        """Whether the processor applies top-k/top-p itself for this request."""
        f = self.filters
        return f is not None and (f.top_p < 1.0 or 0 < f.top_k)


_ACTIVE: dict[int, weakref.ref] = {}  # id(vllm_config) -> the instance that acts for that engine


class ElasticBudgetLogitsProcessor(LogitsProcessor):
    """Thinking budget, forced end of thinking, solution budget: per request, in one pass (see the module doc)."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool):
        # vLLM builds one instance per class it loads, with the same config object: a second one (the processor loaded
        # both through the entry point and explicitly) stands aside. The instance keeps the config alive, so its id
        # cannot be reused while the first instance lives.
        self._vllm_config = vllm_config
        first = _ACTIVE.get(id(vllm_config))
        first = first() if first is not None else None
        self.active = first is None or first._vllm_config is not vllm_config
        if self.active:
            _ACTIVE[id(vllm_config)] = weakref.ref(self)
        model_config = vllm_config.model_config
        self._tokenizer_name = getattr(model_config, "tokenizer", None) or getattr(model_config, "model", None)
        self._trust_remote_code = bool(getattr(model_config, "trust_remote_code", False))
        self._tokenizer = None
        self._tokens: dict[tuple, BudgetTokens] = {}
        self.device = device
        self.rows: dict[int, _Tracked] = {}
        # A request vLLM takes out of its batch (preempted, or merely not scheduled for a step) comes back later as a
        # new entry with the same SamplingParams object: its state (coin decisions included) is kept by that object,
        # weakly, so it dies with the request.
        self._known: dict[int, tuple[weakref.ref, _Tracked]] = {}
        self._live: set[int] = set()

    # -- vLLM's interface --------------------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        args = sampling_params.extra_args
        # BudgetArgsError is a ValueError: HTTP 400 under vllm serve
        check_filters(args, getattr(sampling_params, "top_p", 1.0), getattr(sampling_params, "top_k", 0))
        if budget_requested(args):
            parse_budget_args(args)

    def is_argmax_invariant(self) -> bool:
        return False  # forcing a token changes the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if not self.active:
            return
        if batch_update is not None and batch_update.added:
            removed = set(batch_update.removed)
            self._live = {id(t) for i, t in self.rows.items() if i not in removed}
        process_dict_updates(self.rows, batch_update, self._new_request)
        for tracked in self.rows.values():
            tracked.catch_up()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        forced_rows: list[int] = []
        forced_ids: list[int] = []
        greedy: dict[tuple[int, ...], list[tuple[int, _Tracked]]] = {}
        suppress: dict[tuple[int, ...], list[int]] = {}
        exact: dict[tuple, list[tuple[int, _Tracked, EosInThinking | None]]] = {}
        for index, tracked in self.rows.items():
            tracked.catch_up()  # under async scheduling the last token is only known now (vLLM fills it in first)
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
            rule = row.config.eos_in_thinking if row.phase == Phase.THINKING else None
            if tracked.filters is None:  # greedy
                if rule == EosInThinking.END_THINKING:
                    greedy.setdefault(tracked.eos, []).append((index, tracked))
                elif rule == EosInThinking.SUPPRESS:
                    suppress.setdefault(tracked.eos, []).append(index)
            elif rule == EosInThinking.END_THINKING or tracked.filtering:
                exact.setdefault((tracked.filters, tracked.temperature, tracked.eos), []).append((index, tracked, rule))
            elif rule == EosInThinking.SUPPRESS:  # no filtering here: removing EOS from the raw logits is exact
                suppress.setdefault(tracked.eos, []).append(index)
        for (filters, temperature, eos), entries in exact.items():
            self._write_distribution(logits, filters, temperature, eos, entries)
        for eos, entries in greedy.items():
            self._greedy_end_thinking(logits, eos, entries)
        for eos, indices in suppress.items():
            rows_t = torch.tensor(indices, device=logits.device)[:, None]
            logits[rows_t, torch.tensor(eos, device=logits.device)[None, :]] = NEG_INF
        if forced_rows:
            rows_t = torch.tensor(forced_rows, device=logits.device)
            logits[rows_t] = NEG_INF
            logits[rows_t, torch.tensor(forced_ids, device=logits.device)] = 0.0
        return logits

    # -- internals ---------------------------------------------------------------------------------------------
    def _new_request(self, params: "SamplingParams", prompt_ids: list[int] | None,
                     output_ids: list[int]) -> _Tracked | None:
        args = params.extra_args
        if not budget_requested(args):
            return None
        known = self._known.get(id(params))
        if known is not None and known[0]() is params and id(known[1]) not in self._live:
            tracked = known[1]
            if len(output_ids) >= tracked.seen:  # back in the batch: same request, same state, tokens since
                tracked.output_ids = output_ids
                tracked.catch_up()
                return tracked
        request = parse_budget_args(args)
        eos = set(params.all_stop_token_ids or ())
        if params.eos_token_id is not None:
            eos.add(params.eos_token_id)
        tokens = self._budget_tokens(request, tuple(sorted(eos)))
        row = BudgetRow(request.config, tokens, phase=request.phase, stop_after_thinking=request.stop_after_thinking)
        stop = params.eos_token_id if params.eos_token_id is not None else min(tokens.eos_ids)
        temperature = float(params.temperature)
        filters = None
        if temperature >= GREEDY_TEMPERATURE:  # vLLM's own greedy threshold (sampler.py: _SAMPLING_EPS)
            # Top-p/top-k in the extra arguments: the processor applies them (vLLM's are neutral). Otherwise vLLM
            # applies its own after the processor and the processor only scales by the temperature (module doc).
            filters = SamplingConfig(temperature=temperature, top_p=request.top_p if request.top_p is not None else 1.0,
                                     top_k=request.top_k or 0)
        seed = getattr(params, "seed", None)
        coin = random.Random(f"elastic-reasoning/eos-coin/{seed}" if seed is not None else fresh_seed())
        tracked = _Tracked(row, output_ids, stop, tuple(sorted(tokens.eos_ids)), temperature, filters, coin)
        tracked.catch_up()  # a request seen for the first time with tokens already (resumed): replay them
        self._remember(params, tracked)
        return tracked

    def _remember(self, params: "SamplingParams", tracked: _Tracked) -> None:
        key, known = id(params), self._known

        def forget(ref: weakref.ref) -> None:
            if known.get(key, (None,))[0] is ref:
                del known[key]

        try:
            known[key] = (weakref.ref(params, forget), tracked)
        except TypeError:  # parameters that cannot be weakly referenced: no state kept across a removal
            pass

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
    def _end_token(tracked: _Tracked) -> tuple[int, bool]:
        """The end-of-thinking token an EOS would become now, and whether more of the sequence would follow it."""
        row = tracked.row
        target = row.eos_replacement()
        ids = row.tokens.end_thinking_ids
        return target, row._match < len(ids) - 1  # noqa: SLF001 - the row's own view of the written prefix

    @classmethod
    def _write_distribution(cls, logits: torch.Tensor, filters: SamplingConfig, temperature: float,
                            eos: tuple[int, ...], entries: list[tuple[int, _Tracked, EosInThinking | None]]) -> None:
        """Rows sampled at ``temperature``: ``logits = T * log D`` with ``D`` the transformers engine's distribution
        (:func:`filtered_scores`) after the budget's EOS rule; vLLM's division by ``T`` then gives ``log D``."""
        device = logits.device
        rows_t = torch.tensor([e[0] for e in entries], device=device)
        eos_t = torch.tensor(eos, device=device)
        sub = logits[rows_t].float()
        suppress = [k for k, e in enumerate(entries) if e[2] == EosInThinking.SUPPRESS]
        banned = None
        if suppress:
            banned = (torch.tensor(suppress, device=device)[:, None], eos_t[None, :])
        # Temperature, EOS ban, top-k, top-p: the transformers engine's own function, so both draw from one D.
        logd = torch.log_softmax(filtered_scores(sub, filters, banned), dim=-1)
        merge = [k for k, e in enumerate(entries) if e[2] == EosInThinking.END_THINKING]
        if merge:
            merge_t = torch.tensor(merge, device=device)
            targets = [cls._end_token(entries[k][1]) for k in merge]
            target_t = torch.tensor([t for t, _ in targets], device=device)
            log_q = torch.logsumexp(logd[merge_t[:, None], eos_t[None, :]], dim=1)  # log P_D(EOS)
            merged = torch.logaddexp(logd[merge_t, target_t], log_q)
            # P(EOS | the end-of-thinking token was drawn); 0 where neither can be drawn
            odds = torch.where(merged > NEG_INF, torch.exp(log_q - merged), torch.zeros_like(merged))
            logd[merge_t[:, None], eos_t[None, :]] = NEG_INF
            logd[merge_t, target_t] = merged
            for j, k in enumerate(merge):
                target, more = targets[j]
                tracked = entries[k][1]
                if more:  # more end-of-thinking tokens follow an EOS: the coin decides once the token is known
                    tracked.pending = _Pending(len(tracked.output_ids), target, odds, j)
        logits[rows_t] = (logd * temperature).to(logits.dtype)

    @classmethod
    def _greedy_end_thinking(cls, logits: torch.Tensor, eos: tuple[int, ...],
                             entries: list[tuple[int, _Tracked]]) -> None:
        """Greedy, rule ``end_thinking`` while thinking: where EOS is the argmax (the transformers engine's argmax of
        the raw logits), the end-of-thinking token takes EOS's mass, which makes it the argmax; elsewhere nothing
        changes (EOS is not the argmax, so it is never picked, and every log-prob stays the plain log-softmax)."""
        device = logits.device
        rows_t = torch.tensor([e[0] for e in entries], device=device)
        eos_t = torch.tensor(eos, device=device)
        sub = logits[rows_t]
        eos_top = torch.isin(sub.argmax(dim=1), eos_t)  # torch.argmax: first maximum, as the transformers engine
        targets = [cls._end_token(tracked) for _, tracked in entries]
        target_t = torch.tensor([t for t, _ in targets], device=device)
        top = sub.max(dim=1).values
        merged = torch.logaddexp(sub.gather(1, target_t[:, None])[:, 0], torch.logsumexp(sub[:, eos_t], dim=1))
        merged = torch.where(merged > top, merged, torch.nextafter(top, torch.full_like(top, float("inf"))))
        new_target = torch.where(eos_top, merged, sub.gather(1, target_t[:, None])[:, 0])
        new_eos = torch.where(eos_top[:, None], torch.full_like(sub[:, eos_t], NEG_INF), sub[:, eos_t])
        logits[rows_t[:, None], eos_t[None, :]] = new_eos
        logits[rows_t, target_t] = new_target
        odds = eos_top.float()
        for j, (_, tracked) in enumerate(entries):
            if targets[j][1]:
                tracked.pending = _Pending(len(tracked.output_ids), targets[j][0], odds, j)
