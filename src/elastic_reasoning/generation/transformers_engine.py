"""Budgeted generation for any Hugging Face causal LM, in ONE batched decoding pass.

How: ``model.generate`` keeps doing what it does well (prefill, KV cache, positions, any architecture) while a
logits processor does the sampling itself and runs one :class:`~elastic_reasoning.budget.BudgetRow` per
completion. At each step the processor draws every row's token (temperature/top-k/top-p, own seeded generator),
lets the row's state machine replace it by a forced token where the budget says so, records the token, whether it
was sampled or forced, and its log-prob, then hands ``generate`` a one-hot score so its greedy pick *is* that
token. The forced end-of-thinking tokens thus enter the KV cache like any other token: nothing is prefilled twice.
A stopping criterion ends each row when its state machine is done; the whole call ends when every row is.

The two-call mode reproduces the official implementation's mechanics (phase 1 up to the end of thinking, then a
second call re-prefilling prompt + thinking + end-of-thinking for the solution) with the same state machine, so under
greedy decoding both modes give the same tokens; it exists for comparison and for backends that only offer whole
calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..budget import BudgetConfig, BudgetRow, BudgetTokens, Phase
from ..special_tokens import BudgetTokenCache
from .prompts import Prompt, render_prompt
from .seeds import fresh_seed
from .record import Completion, SamplingConfig, budgets_per_prompt
from .two_call import Part, completion_of, solution_row
from .sampling import NEG_INF, sample

Mode = Literal["single-pass", "two-call"]
TokenCallback = Callable[[int, int, bool], None]  # (job, token_id, forced)


class BudgetLogitsProcessor(LogitsProcessor):
    """Samples each row itself, applies the budget state machine, records tokens, mask and log-probs.

    Must be the only logits processor: it receives the model's raw logits and returns a one-hot score.
    """

    def __init__(
        self,
        rows: list[BudgetRow],
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        on_token: TokenCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
        job_ids: list[int] | None = None,
    ):
        self.rows = rows
        self.on_token = on_token
        self.is_cancelled = is_cancelled
        self.job_ids = job_ids if job_ids is not None else list(range(len(rows)))
        self.sampling = sampling
        self.generator = generator
        self.ids: list[list[int]] = [[] for _ in rows]
        self.mask: list[list[int]] = [[] for _ in rows]
        self.logprobs: list[list[float]] = [[] for _ in rows]
        self._eos = sorted(set().union(*(r.tokens.eos_ids for r in rows))) if rows else []
        self._suppress = any(r.config.eos_in_thinking == "suppress" for r in rows)
        self._eos_t = torch.tensor(self._eos, dtype=torch.long)[None, :]
        self._onehot: torch.Tensor | None = None
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits = scores  # raw: _decode gives generate a clean config and use_model_defaults=False, so no processor of
        # its own (nor any from the checkpoint's generation_config.json) ran before this one
        rows = self.rows
        banned = None
        if self._suppress:
            suppress_rows = [i for i, r in enumerate(rows) if r.suppress_eos()]
            if suppress_rows:
                banned = (torch.tensor(suppress_rows, device=logits.device)[:, None], self._eos_t.to(logits.device))
        sampled, sampled_logp = sample(logits, self.sampling, self.generator, banned)
        sampled_list = sampled.tolist()
        logp_list = sampled_logp.tolist()

        chosen: list[int] = []
        cancelled = self.is_cancelled
        nan = float("nan")
        for i, row in enumerate(rows):
            if cancelled is not None and row.phase != Phase.DONE and cancelled(self.job_ids[i]):
                row.abort()
            if row.phase == Phase.DONE:
                chosen.append(row.tokens.pad_id)
                continue
            token, forced = row.step(sampled_list[i])
            chosen.append(token)
            self.ids[i].append(token)
            self.mask[i].append(0 if forced else 1)
            self.logprobs[i].append(nan if forced else logp_list[i])  # forced: never drawn (see record.py)
            if self.on_token is not None:
                self.on_token(self.job_ids[i], token, forced)

        # One-hot scores: generate's argmax picks exactly the chosen tokens. The buffer is reused across steps.
        chosen_t = torch.tensor(chosen, device=logits.device)[:, None]
        if self._onehot is None or self._onehot.shape != logits.shape:
            self._onehot = torch.full_like(logits, NEG_INF)
        elif self._last is not None:
            self._onehot.scatter_(1, self._last, NEG_INF)
        self._onehot.scatter_(1, chosen_t, 0.0)
        self._last = chosen_t
        return self._onehot


_FENCE_LOCK = threading.RLock()


@contextmanager
def checkpoint_sampling_fenced(model):
    """Decode with none of the checkpoint's ``generation_config.json``.

    ``generate`` fills every field its caller left unset from ``model.generation_config`` (transformers 5: any
    ``None`` field, and most neutral values are ``None``), so a checkpoint's repetition penalty, n-gram ban, min
    length, bad words or forced BOS/EOS would add processors that run *before* the budget processor and change both
    what is sampled and the log-probs reported (REFERENCE.md section 7). For the duration of the call the model's
    config is a blank ``GenerationConfig`` (nothing to merge) and is restored afterwards; a lock keeps concurrent
    callers from restoring each other's blank config. ``tests/test_engine_contract.py`` checks that a hostile
    ``generation_config.json`` changes no token and no log-prob.
    """
    with _FENCE_LOCK:
        saved = getattr(model, "generation_config", None)
        model.generation_config = GenerationConfig()
        try:
            yield
        finally:
            model.generation_config = saved


class BudgetStoppingCriteria(StoppingCriteria):
    """A row is finished when its budget state machine is done."""

    def __init__(self, rows: list[BudgetRow]):
        self.rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.tensor([r.phase == Phase.DONE for r in self.rows], dtype=torch.bool, device=input_ids.device)


class TransformersEngine:
    """Budgeted generation on a Hugging Face causal LM (CPU or one GPU)."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 64, continuous: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.continuous = continuous
        """``generate`` (single pass) decodes through the continuous decoder (:mod:`.continuous`, the loop serving
        uses) instead of transformers' ``generate``: a finished row leaves the batch at once and the next prompt
        takes its slot, so a batch whose completions differ in length stops paying for the finished ones, and a
        decoding step costs less Python (measured on the demo's rollouts: ``elastic-reasoning bench rollouts``). The same budgets and
        sampling rule; a seeded batch is reproducible, but its tokens differ from the static loop's (rows draw
        their uniforms in another order). Needs plain dynamic KV caches (``continuous.supports``; otherwise the
        static loop runs) and processes that need not step in lockstep: not under ZeRO-3 or FSDP, whose
        ``generate`` synchronises the processes' decoding steps."""
        self.device = next(model.parameters()).device
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self._budget_tokens = BudgetTokenCache(tokenizer, gen_eos)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device: str | None = None, **kwargs) -> "TransformersEngine":
        from ..models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(name_or_path, dtype=dtype, device=device)
        return cls(model, tokenizer, **kwargs)

    # -- public API --------------------------------------------------------------------------------------------
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
        mode: Mode = "single-pass",
        progress: bool = False,
        on_token: TokenCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
    ) -> list[Completion]:
        """Generate ``num_samples`` completions per prompt, in prompt order then sample order.

        ``budget`` is one config for every prompt, or one per prompt (rows with different budgets share a batch).
        Single-pass only: ``on_token(job, token_id, forced)`` is called for every emitted token as it is decoded
        (``job`` = prompt_index * num_samples + sample_index; streaming), and a job for which ``is_cancelled(job)``
        turns true stops at the next step with ``finish_reason == "abort"``, freeing its slot.
        """
        if mode not in ("single-pass", "two-call"):
            raise ValueError(f"unknown mode {mode!r} (single-pass or two-call)")
        if mode == "two-call" and (on_token is not None or is_cancelled is not None):
            raise ValueError("streaming and cancellation need the single-pass mode")
        budgets = budgets_per_prompt(prompts, budget, num_samples)
        rendered = [self.render(p, b) for p, b in zip(prompts, budgets)]
        jobs = [(p, s) for p in range(len(rendered)) for s in range(num_samples)]
        generator = self.make_generator(sampling)

        if mode == "single-pass" and self.continuous and self._supports_continuous():
            return self._generate_continuous(rendered, budgets, jobs, num_samples, sampling, generator, on_token,
                                             is_cancelled, progress)
        batches = [jobs[i : i + self.max_batch_size] for i in range(0, len(jobs), self.max_batch_size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="generate", unit="batch")
        out: list[Completion] = []
        for batch in batches:
            prompt_ids = [rendered[p] for p, _ in batch]
            if mode == "single-pass":
                rows = [BudgetRow(budgets[p], self.budget_tokens(budgets[p])) for p, _ in batch]
                job_ids = [p * num_samples + s for p, s in batch]
                parts = self._decode(prompt_ids, rows, sampling, generator, on_token, is_cancelled, job_ids)
                merged = [(part, None) for part in parts]
            else:
                merged = self._two_call(prompt_ids, [budgets[p] for p, _ in batch], sampling, generator)
            for (p, s), ids, (first, second) in zip(batch, prompt_ids, merged):
                out.append(self._record(p, s, ids, first, second))
        return out

    def continuous_decoder(self, *, max_rows: int | None = None, prefill_chunk: int = 512):
        """A decode loop whose rows join and leave between steps (serving): see :mod:`.continuous`."""
        from .continuous import ContinuousDecoder

        return ContinuousDecoder(self, max_rows=max_rows or self.max_batch_size, prefill_chunk=prefill_chunk)

    def make_generator(self, sampling: SamplingConfig) -> torch.Generator | None:
        """The sampler's own random generator, seeded from ``sampling.seed`` (None under greedy). Without a seed it
        is seeded from the operating system's entropy: torch's global generator is neither read nor reseeded."""
        if sampling.greedy:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else fresh_seed())
        return generator

    def continue_ids(
        self,
        prefixes: Sequence[Sequence[int]],
        budget: BudgetConfig,
        sampling: SamplingConfig = SamplingConfig(),
        *,
        phase: Phase = Phase.THINKING,
        stop_after_thinking: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[Completion]:
        """Low-level: continue already-rendered token prefixes, each in ``phase``, one completion per prefix.

        ``phase=Phase.SOLUTION`` generates a solution after a thinking prefix that already ends with the
        end-of-thinking sequence (what evaluation's shared-thinking sweeps and two-call backends need);
        ``stop_after_thinking=True`` stops each row once its thinking has ended. ``prompt_index`` is the position
        in ``prefixes``.
        """
        tokens = self.budget_tokens(budget)
        if generator is None:
            generator = self.make_generator(sampling)
        out: list[Completion] = []
        prefixes = [list(p) for p in prefixes]
        for start in range(0, len(prefixes), self.max_batch_size):
            chunk = prefixes[start : start + self.max_batch_size]
            rows = [BudgetRow(budget, tokens, phase=phase, stop_after_thinking=stop_after_thinking) for _ in chunk]
            for k, (ids, part) in enumerate(zip(chunk, self._decode(chunk, rows, sampling, generator))):
                out.append(self._record(start + k, 0, ids, part, None))
        return out

    # -- internals ---------------------------------------------------------------------------------------------
    def _supports_continuous(self) -> bool:
        if getattr(self, "_continuous_ok", None) is None:
            from .continuous import supports

            self._continuous_ok = supports(self.model)
        return self._continuous_ok

    def _generate_continuous(self, rendered, budgets, jobs, num_samples: int, sampling: SamplingConfig, generator,
                             on_token, is_cancelled, progress: bool) -> list[Completion]:
        """``generate`` through the continuous decoder: every row draws from the batch's one ``generator`` (rows
        are not seeded one by one: rows seeded alike would draw the same uniforms), ``max_batch_size`` rows at a
        time, the next job admitted as soon as a row finishes."""
        import dataclasses

        from .continuous import ContinuousDecoder, DecodeRequest

        # admit_wait_steps=0: a waiting job takes a free slot at the next step (nothing more is coming offline)
        decoder = ContinuousDecoder(self, max_rows=self.max_batch_size, admit_wait_steps=0, generator=generator)
        row_sampling = dataclasses.replace(sampling, seed=None)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc="generate", unit="completion")
        requests = []
        for p, s in jobs:
            job = p * num_samples + s
            requests.append(DecodeRequest(
                prompt_ids=rendered[p], budget=budgets[p], sampling=row_sampling, prompt_index=p, sample_index=s,
                on_token=(lambda token, forced, job=job: on_token(job, token, forced)) if on_token else None,
                is_cancelled=(lambda job=job: is_cancelled(job)) if is_cancelled else None,
                on_done=(lambda _c: bar.update(1)) if bar is not None else None))
        try:
            return decoder.run(requests)
        finally:
            if bar is not None:
                bar.close()

    def _max_new_tokens(self, rows: list[BudgetRow], longest_prompt: int) -> int:
        bounds = [r.config.max_new_tokens(r.tokens.forced_len) for r in rows]
        context = getattr(self.model.config, "max_position_embeddings", None) or 4096
        room = context - longest_prompt
        if room <= 0:
            raise ValueError(f"prompt of {longest_prompt} tokens leaves no room in the model's context of {context}")
        finite = [b for b in bounds if b is not None]
        want = max(finite) if len(finite) == len(bounds) else room
        return max(1, min(want, room))

    def _decode(
        self,
        prompt_ids: list[list[int]],
        rows: list[BudgetRow],
        sampling: SamplingConfig,
        generator,
        on_token: TokenCallback | None = None,
        is_cancelled: Callable[[int], bool] | None = None,
        job_ids: list[int] | None = None,
    ) -> list[Part]:
        """One decoding call over a batch: left padding, the budget processor, per-row stopping."""
        active = [i for i, r in enumerate(rows) if not r.done]
        parts = [Part(r, [], [], []) for r in rows]
        if not active:
            return parts
        act_rows = [rows[i] for i in active]
        act_prompts = [prompt_ids[i] for i in active]
        pad = act_rows[0].tokens.pad_id
        width = max(len(p) for p in act_prompts)
        input_ids = torch.full((len(active), width), pad, dtype=torch.long)
        attention = torch.zeros((len(active), width), dtype=torch.long)
        for j, ids in enumerate(act_prompts):
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[j, width - len(ids) :] = 1
        act_jobs = [job_ids[i] for i in active] if job_ids is not None else active
        processor = BudgetLogitsProcessor(act_rows, sampling, generator, on_token, is_cancelled, act_jobs)
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=self._max_new_tokens(act_rows, width),
            pad_token_id=pad,
            eos_token_id=sorted(act_rows[0].tokens.eos_ids),
            temperature=None,
            top_p=None,
            top_k=None,
        )
        with torch.inference_mode(), checkpoint_sampling_fenced(self.model):
            self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([processor]),
                stopping_criteria=StoppingCriteriaList([BudgetStoppingCriteria(act_rows)]),
            )
        for j, i in enumerate(active):
            rows[i].finish_unfinished()
            parts[i] = Part(rows[i], processor.ids[j], processor.mask[j], processor.logprobs[j])
        return parts

    def _two_call(self, prompt_ids, budgets: list[BudgetConfig], sampling, generator):
        """Phase 1 stops when thinking ends (forced end-of-thinking appended); phase 2 re-prefills for the solution."""
        first_rows = [BudgetRow(b, self.budget_tokens(b), stop_after_thinking=True) for b in budgets]
        first = self._decode(prompt_ids, first_rows, sampling, generator)
        second_rows = [solution_row(part, budget) for part, budget in zip(first, budgets)]
        second_prompts = [ids + part.ids for ids, part in zip(prompt_ids, first)]
        second = self._decode(second_prompts, second_rows, sampling, generator)
        return list(zip(first, second))

    def _record(self, p: int, s: int, prompt_ids: list[int], first: Part, second: Part | None) -> Completion:
        return completion_of(first, second, self.tokenizer.decode, prompt_index=p, sample_index=s,
                             prompt_ids=prompt_ids)
