"""Budgeted generation on vLLM: the fast backend (GPUs; vLLM's CPU build on machines without one).

Same interface and same per-completion record as :class:`~.transformers_engine.TransformersEngine`: one request per
completion, each carrying its budgets in ``SamplingParams.extra_args``, all submitted at once so vLLM's continuous
batching schedules them; :class:`~.vllm_processor.ElasticBudgetLogitsProcessor` runs the budget state machine inside
the engine, in one pass, and draws every token from the transformers engine's distribution (temperature, top-k/top-p
and the budget's EOS rule; the request's top-p/top-k travel in the extra arguments, see :mod:`.vllm_args`).

The record is rebuilt here by replaying the emitted tokens through the same :class:`~elastic_reasoning.budget.BudgetRow`
(the processor's state never leaves vLLM's worker): a token is forced exactly where the state machine had one due, so
the sampled/forced mask is exact. The stop token the processor forces to end a request whose budget is spent is
dropped. Log-probs follow :mod:`.record`'s one definition (``logprobs_kind == "sampling"``): vLLM runs with
``logprobs_mode="processed_logprobs"``, so a sampled token reports its log-prob under the distribution it was drawn
from; a forced token reports NaN. The one difference from the transformers engine's record: end-of-thinking tokens
emitted in place of an EOS are recorded as the model's own (see the processor's doc).

The ``LLM`` is created with ``generation_config="vllm"``: vLLM's neutral sampling defaults, never the checkpoint's
``generation_config.json`` (repetition penalty, temperature...), as the transformers engine never applies them either.

``mode="two-call"`` is the fallback for comparisons: phase 1 stops once thinking ends, phase 2 continues
prompt + thinking with a fresh solution budget; vLLM's prefix caching (on by default) spares most of the re-prefill.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..budget import BudgetConfig, BudgetRow, BudgetTokens, EosInThinking, Phase
from ..special_tokens import BudgetTokenCache
from .prompts import Prompt, render_prompt
from .record import LOGPROBS_SAMPLING, LOGPROBS_UNAVAILABLE, Completion, SamplingConfig, budgets_per_prompt
from .seeds import derive_seed
from .two_call import Part, completion_of, solution_row
from .vllm_args import budget_extra_args, request_max_tokens, vllm_sampling_kwargs

logger = logging.getLogger(__name__)

LOGITS_PROCESSOR = "elastic_reasoning.generation.vllm_processor:ElasticBudgetLogitsProcessor"
"""What to pass to ``vllm serve --logits-processors`` (or ``LLM(logits_processors=[...])``)."""
LOGPROBS_MODE = "processed_logprobs"
"""The vLLM ``logprobs_mode`` whose log-probs are the record's (and TRL's): after logits processors, temperature and
top-k/top-p. The raw modes are taken before the budget processor and the temperature: not the sampling distribution."""


def processor_registered() -> bool:
    """Whether vLLM loads the budget processor by itself (this package's ``vllm.logits_processors`` entry point)."""
    from importlib.metadata import entry_points

    return any(ep.value == LOGITS_PROCESSOR for ep in entry_points(group="vllm.logits_processors"))


def _cpu_defaults() -> None:
    """vLLM's CPU build: a small KV cache by default (it otherwise claims several GiB)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


class VLLMEngine:
    """Budgeted generation on a vLLM ``LLM`` created with the budget logits processor."""

    def __init__(self, llm, *, max_model_len: int | None = None):
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        config = getattr(llm, "llm_engine", None)
        model_config = getattr(getattr(config, "model_config", None), "max_model_len", None)
        self.max_model_len = max_model_len or model_config or 4096
        model_eos = None
        try:
            from transformers import GenerationConfig

            model_eos = GenerationConfig.from_pretrained(self.model_path).eos_token_id
        except Exception:  # noqa: BLE001 - a model without a generation config keeps the tokenizer's EOS
            pass
        self._budget_tokens = BudgetTokenCache(self.tokenizer, model_eos)
        mode = llm_logprobs_mode(llm)
        if mode is not None and mode != LOGPROBS_MODE:
            # An LLM made elsewhere (TRL's colocate mode makes it with processed_logprobs): a raw mode's log-probs are
            # the model's before the temperature, top-k/top-p and the budget rule, which TRL would take for the
            # sampling distribution's.
            raise ValueError(f"this vLLM LLM reports logprobs_mode={mode!r}; the vLLM engine needs "
                             f"logprobs_mode={LOGPROBS_MODE!r} (the sampling distribution's log-probs, as TRL's "
                             f"importance-sampling correction expects): create it with "
                             f"LLM(..., logprobs_mode={LOGPROBS_MODE!r})")
        self.logprobs_kind = LOGPROBS_SAMPLING if mode == LOGPROBS_MODE else LOGPROBS_UNAVAILABLE
        if mode is None:
            logger.warning("cannot read this LLM's logprobs_mode: completions carry NaN log-probs "
                           "(logprobs_kind='unavailable')")
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token_id is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def model_path(self) -> str:
        return self.llm.llm_engine.model_config.model

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "auto", max_model_len: int | None = 2048,
                        seed: int = 0, **llm_kwargs: Any) -> "VLLMEngine":
        """Load a model into vLLM with the budget processor. ``name_or_path``: a directory, a hub id, or one of the
        project's names (``toy``, ``smollm2-135m``). Extra keyword arguments go to ``vllm.LLM``.

        The ``LLM`` gets ``logprobs_mode="processed_logprobs"`` (any other mode is refused: see :data:`LOGPROBS_MODE`)
        and ``generation_config="vllm"`` unless given explicitly: vLLM otherwise takes its sampling defaults from the
        checkpoint's ``generation_config.json`` (repetition penalty, temperature, top-k...)."""
        from vllm import LLM

        from ..models import resolve_model_path
        from .vllm_processor import ElasticBudgetLogitsProcessor

        mode = llm_kwargs.pop("logprobs_mode", LOGPROBS_MODE)
        if str(getattr(mode, "value", mode)) != LOGPROBS_MODE:
            raise ValueError(f"the vLLM engine needs logprobs_mode={LOGPROBS_MODE!r}, got {mode!r}: the raw modes are "
                             "taken before the temperature, top-k/top-p and the budget rule, so they are not the "
                             "log-probs of the distribution tokens are drawn from (processed_logits are not log-probs)")
        llm_kwargs.setdefault("generation_config", "vllm")
        import torch

        if not torch.cuda.is_available():
            _cpu_defaults()
            llm_kwargs.setdefault("enforce_eager", True)
        processors = list(llm_kwargs.pop("logits_processors", []))
        if not processor_registered():
            processors.append(ElasticBudgetLogitsProcessor)
        llm = LLM(model=resolve_model_path(name_or_path), dtype=dtype, max_model_len=max_model_len, seed=seed,
                  logits_processors=processors, logprobs_mode=LOGPROBS_MODE, **llm_kwargs)
        return cls(llm, max_model_len=max_model_len)

    # -- public API (the transformers engine's) ----------------------------------------------------------------
    def budget_tokens(self, budget: BudgetConfig) -> BudgetTokens:
        return self._budget_tokens(budget)

    def render(self, prompt: Prompt, budget: BudgetConfig) -> list[int]:
        return render_prompt(self.tokenizer, prompt, budget.start_thinking)

    def generate(
        self,
        prompts: Sequence[Prompt],
        budget: BudgetConfig | Sequence[BudgetConfig],
        sampling: SamplingConfig = SamplingConfig(),
        *,
        num_samples: int = 1,
        mode: str = "single-pass",
        progress: bool = False,
        on_token: Callable | None = None,
        is_cancelled: Callable | None = None,
    ) -> list[Completion]:
        """``num_samples`` completions per prompt, in prompt order then sample order (as the transformers engine).

        With ``sampling.seed`` set, every request gets its own seed derived from it (vLLM seeds per request; no two
        requests of a call share one), so the same call gives the same tokens whatever else shares vLLM's batch.
        Streaming and cancellation are not offered
        offline: serve through ``vllm serve`` with the processor and this project's server in upstream mode."""
        if mode not in ("single-pass", "two-call"):
            raise ValueError(f"unknown mode {mode!r} (single-pass or two-call)")
        if on_token is not None or is_cancelled is not None:
            raise ValueError("the vLLM engine does not stream or cancel offline; serve through vllm serve instead")
        budgets = budgets_per_prompt(prompts, budget, num_samples)
        rendered = [self.render(p, b) for p, b in zip(prompts, budgets)]
        jobs = [(p, s) for p in range(len(rendered)) for s in range(num_samples)]
        prompt_ids = [rendered[p] for p, _ in jobs]
        job_budgets = [budgets[p] for p, _ in jobs]
        stream = self.make_generator(sampling)
        seeds = _seeds(stream, len(jobs))
        if mode == "single-pass":
            rows = [BudgetRow(b, self.budget_tokens(b)) for b in job_budgets]
            parts = self._decode(prompt_ids, rows, sampling, seeds, progress)
            merged = [(part, None) for part in parts]
        else:
            first_rows = [BudgetRow(b, self.budget_tokens(b), stop_after_thinking=True) for b in job_budgets]
            first = self._decode(prompt_ids, first_rows, sampling, seeds, progress)
            second_rows = [solution_row(part, b) for part, b in zip(first, job_budgets)]
            second = self._decode([ids + part.ids for ids, part in zip(prompt_ids, first)], second_rows, sampling,
                                  _seeds(stream, len(jobs)), progress)
            merged = list(zip(first, second))
        return [self._record(completion_of(first, second, self.tokenizer.decode, prompt_index=p, sample_index=s,
                                           prompt_ids=ids))
                for (p, s), ids, (first, second) in zip(jobs, prompt_ids, merged)]

    def continue_ids(self, prefixes: Sequence[Sequence[int]], budget: BudgetConfig,
                     sampling: SamplingConfig = SamplingConfig(), *, phase: Phase = Phase.THINKING,
                     stop_after_thinking: bool = False, generator=None) -> list[Completion]:
        """Continue already-rendered prefixes, each in ``phase`` (see the transformers engine's method).
        ``generator`` (from :meth:`make_generator`) hands out the per-request seeds; calls that share it draw
        different seeds."""
        tokens = self.budget_tokens(budget)
        rows = [BudgetRow(budget, tokens, phase=phase, stop_after_thinking=stop_after_thinking) for _ in prefixes]
        seeds = _seeds(generator if generator is not None else self.make_generator(sampling), len(rows))
        parts = self._decode([list(p) for p in prefixes], rows, sampling, seeds, False)
        return [self._record(completion_of(part, None, self.tokenizer.decode, prompt_index=k, sample_index=0,
                                           prompt_ids=list(p)))
                for k, (p, part) in enumerate(zip(prefixes, parts))]

    @staticmethod
    def make_generator(sampling: SamplingConfig) -> "SeedStream | None":
        """Where per-request seeds come from: a :class:`SeedStream` on ``sampling.seed``; None (vLLM's own randomness,
        and per-request generators cost vLLM a loop over requests at every step) without a seed or under greedy."""
        if sampling.greedy or sampling.seed is None:
            return None
        return SeedStream(sampling.seed)

    # -- internals ---------------------------------------------------------------------------------------------
    def _record(self, completion: Completion) -> Completion:
        completion.logprobs_kind = self.logprobs_kind
        if self.logprobs_kind != LOGPROBS_SAMPLING:
            completion.logprobs = [float("nan")] * len(completion.logprobs)
        return completion

    def _decode(self, prompt_ids: list[list[int]], rows: list[BudgetRow], sampling: SamplingConfig,
                seeds: list[int | None], progress: bool) -> list[Part]:
        """Submit every unfinished row as one request; replay what vLLM emitted through the row."""
        from vllm import SamplingParams

        parts = [Part(r, [], [], []) for r in rows]
        active = [i for i, r in enumerate(rows) if not r.done]
        if not active:
            return parts
        requests, params = [], []
        for i in active:
            row, ids = rows[i], prompt_ids[i]
            room = self.max_model_len - len(ids)
            if room <= 0:
                raise ValueError(f"prompt of {len(ids)} tokens leaves no room in the model's context of "
                                 f"{self.max_model_len}")
            requests.append({"prompt_token_ids": list(ids)})
            params.append(SamplingParams(
                # temperature, and vLLM's neutral top-p/top-k: the processor applies the real ones, in the extra args
                **vllm_sampling_kwargs(sampling),
                seed=seeds[i],
                max_tokens=request_max_tokens(row.config, row.tokens, room),
                logprobs=0,
                skip_special_tokens=False,
                detokenize=False,
                extra_args=budget_extra_args(row.config, row.tokens, phase=_start_phase(row),
                                             stop_after_thinking=row.stop_after_thinking, sampling=sampling),
            ))
        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        for i, output in zip(active, outputs):
            out = output.outputs[0]
            parts[i] = replay(rows[i], out.token_ids, token_logprobs(out.token_ids, out.logprobs))
        return parts


class SeedStream:
    """Per-request seeds for the calls of one run seeded with ``base``: request ``k`` of the ``c``-th call drawn from
    the stream gets ``derive_seed(base, step=c, slot=k)``, so no two requests of a call, nor of two calls sharing the
    stream (two-call mode, a sweep's continuations), get the same seed. No global generator is touched."""

    def __init__(self, base: int):
        self.base = base
        self.calls = 0

    def take(self, n: int) -> list[int]:
        step, self.calls = self.calls, self.calls + 1
        return [derive_seed(self.base, step=step, slot=k) for k in range(n)]


def _seeds(stream: SeedStream | None, n: int) -> list[int | None]:
    return [None] * n if stream is None else stream.take(n)


def llm_logprobs_mode(llm) -> str | None:
    """The ``logprobs_mode`` a vLLM ``LLM`` runs with, or None when it cannot be read."""
    mode = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "logprobs_mode", None)
    return None if mode is None else str(getattr(mode, "value", mode))


def _start_phase(row: BudgetRow) -> Phase:
    """The phase the processor's own copy of the row starts in (a solution continuation, or thinking)."""
    return Phase.SOLUTION if row.phase == Phase.SOLUTION else Phase.THINKING


def token_logprobs(token_ids: Sequence[int], entries) -> list[float]:
    """The log-prob of each emitted token from vLLM's per-position dicts (NaN where vLLM gave none)."""
    if entries is None:
        return [float("nan")] * len(token_ids)
    return [float(e[t].logprob) if e and t in e else float("nan") for t, e in zip(token_ids, entries)]


def replay(row: BudgetRow, token_ids: Sequence[int], logprobs: Sequence[float], *,
           forced_logprobs_known: bool | None = None) -> Part:
    """The record of one vLLM output: each token through the state machine, forced exactly where one was due.

    ``logprobs`` are vLLM's processed ones: a sampled token keeps its own, a forced token gets NaN (vLLM reports 0.0
    for it, which no distribution drew). Tokens after the row finished (the stop token the processor forces to end a
    request whose budget is spent) are dropped.

    An end-of-thinking token that may have been emitted in place of an EOS (rule ``end_thinking``, more of the
    sequence to follow; see the processor's doc) is read as the model's own: the output cannot say which it was. If
    that reading cannot fit the tokens that follow (a thinking budget it would have spent mid-sequence, then a forced
    transition or answer prefix the output does not have), the token is re-read as an EOS replaced by the forced end
    of thinking, which is what the processor did. ``forced_logprobs_known`` is accepted for old callers and ignored:
    a forced token's log-prob is always NaN."""
    ids: list[int] = []
    mask: list[int] = []
    out_logprobs: list[float] = []
    nan = float("nan")
    checkpoint: tuple[int, dict] | None = None  # (index, row state) at the last token that may have replaced an EOS
    k = 0
    while k < len(token_ids) and not row.done:
        token = int(token_ids[k])
        forced = row.forced_token() is not None
        if not forced and _may_replace_eos(row, token):
            checkpoint = (k, _state(row))
        emitted, _ = row.step(token)
        if emitted != token and checkpoint is not None:
            k, state = checkpoint
            checkpoint = None
            row.__dict__.update(state)
            del ids[k:], mask[k:], out_logprobs[k:]
            token = int(token_ids[k])
            forced = True
            emitted, _ = row.step(min(row.tokens.eos_ids))  # the EOS path: this token and the rest are forced
        if emitted != token:
            raise RuntimeError(f"vLLM emitted {token} where the budget forced {emitted}: is the budget logits "
                               "processor loaded (LLM(logits_processors=[...]), --logits-processors, or the "
                               "vllm.logits_processors entry point)?")
        ids.append(token)
        mask.append(0 if forced else 1)
        out_logprobs.append(nan if forced else float(logprobs[k]))
        if row.phase in (Phase.SOLUTION, Phase.DONE):
            checkpoint = None  # the end of thinking is complete: nothing before can be re-read any more
        k += 1
    row.finish_unfinished()
    return Part(row, ids, mask, out_logprobs)


def _may_replace_eos(row: BudgetRow, token: int) -> bool:
    """Whether ``token``, sampled now, may stand in place of an EOS followed by more forced end-of-thinking tokens."""
    if row.phase != Phase.THINKING or row.config.eos_in_thinking != EosInThinking.END_THINKING:
        return False
    ids = row.tokens.end_thinking_ids
    return token == row.eos_replacement() and row._match < len(ids) - 1  # noqa: SLF001


def _state(row: BudgetRow) -> dict:
    """A copy of a row's state that ``row.__dict__.update`` restores."""
    state = dict(row.__dict__)
    state["_recent"] = deque(row._recent)  # noqa: SLF001
    state["_queue"] = deque(row._queue)  # noqa: SLF001
    return state
