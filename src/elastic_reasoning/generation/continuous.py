"""Continuous batching for the transformers engine: rows join and leave between decoding steps.

:class:`ContinuousDecoder` owns a decode loop over one batched KV cache. Each :meth:`~ContinuousDecoder.step`

1. retires rows whose caller gave up (``is_cancelled``), at once;
2. draws one token for every running row from the logits the previous forward left it, with the row's own
   :class:`~.record.SamplingConfig` and, for a seeded request, its own seeded ``torch.Generator`` (unseeded rows
   share the decoder's; ``sampling.sample``), lets the row's :class:`~elastic_reasoning.budget.BudgetRow` replace
   it by a forced token where the budget says so, and records token, sampled/forced mask and log-prob
   (:mod:`.record`'s definitions: NaN and 0 for a forced token);
3. retires the rows that are done (their :class:`~.record.Completion` goes to ``on_done``) and runs one forward over
   the rest with the tokens just chosen;
4. admits waiting requests (at once when idle; while rows run, once enough of them wait or the oldest has waited a
   few steps: :meth:`~ContinuousDecoder._admission_due`) and runs one chunk (at most ``prefill_chunk`` prompt
   columns) of their prefill; when a group's prefill is complete, its cache joins the running batch and its rows
   draw their first token next step.

So a request joins at the next step instead of waiting for a batch to drain, a finished row leaves at once, a long
prompt is prefilled a chunk per step (the running rows keep decoding in between, vLLM's chunked prefill), and rows
with different budgets, sampling settings and seeds share every forward.

Where the pattern comes from: the scheduling (admit between steps, retire at once, chunked prefill) is vLLM's v1
scheduler (``vllm/v1/core/sched/scheduler.py``); the cache is not paged but one left-padded ``DynamicCache`` whose
rows are selected out on retirement and concatenated (padded on the left to a common length) on admission, as
text-generation-inference's ``CausalLMBatch.filter`` / ``CausalLMBatch.concatenate`` do for models without paged
attention (``server/text_generation_server/models/causal_lm.py``); the per-row state with a forced-token queue is
nanochat's engine (``nanochat/engine.py``). Positions are per row (``position_ids``), so padding changes nothing a
row attends to. Leading cache columns no running row uses are dropped after each retirement.

Not covered: paged attention or prefix sharing (a padded cache wastes the columns of short rows beside a long one),
cache layers other than :class:`transformers.DynamicLayer` (sliding-window, hybrid or static caches:
:func:`supports` says so and serving falls back to whole-batch decoding). A row's tokens equal those of the
one-pass engine's ``generate`` for the same prompt, budget and seed up to float rounding of batched kernels
(tested under greedy decoding against ``TransformersEngine.generate``).
"""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
import torch

from ..budget import BudgetConfig, BudgetRow
from .record import Completion, SamplingConfig
from .sampling import draw, filtered_scores, sample
from .seeds import fresh_seed
from .two_call import Part, completion_of


@dataclass(eq=False)
class DecodeRequest:
    """One completion to decode: a rendered prompt, its budget, its sampling and its seed."""

    prompt_ids: list[int]
    budget: BudgetConfig
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None
    """Seed of this row's own generator; None: ``sampling.seed``, else a fresh one from the OS."""
    on_token: Callable[[int, bool], None] | None = None
    """Called from the decoding thread with (token id, forced) for every emitted token (streaming)."""
    on_done: Callable[[Completion], None] | None = None
    """Called from the decoding thread with the finished completion (``finish_reason == "abort"`` if cancelled)."""
    is_cancelled: Callable[[], bool] | None = None
    """Read before every step; once true the row is retired at that step."""
    prompt_index: int = 0
    sample_index: int = 0


@dataclass(eq=False)
class _Row:
    request: DecodeRequest
    budget_row: BudgetRow
    generator: torch.Generator | None  # a seeded row's own; None: greedy, or drawn from the decoder's generator
    banned: tuple[torch.Tensor, torch.Tensor] | None  # this row's EOS ids, for the suppress rule
    position: int  # position id of the next token fed to the model
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


def supports(model) -> bool:
    """Whether the model's default cache is made of plain dynamic layers (what :class:`ContinuousDecoder` edits)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def draw_per_row(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """``sampling.draw`` for a batch whose rows have one generator each: (B, V) -> (B,).

    The same inverse-CDF rule (the first token whose cumulative mass exceeds a uniform draw; a zero-probability
    token never drawn), with row ``b``'s uniform taken from ``generators[b]`` exactly as ``draw`` takes it for a
    batch of one, so row ``b`` gets the token ``draw(probs[b:b+1], generators[b])`` would give (a test holds this)
    for one small tensor op per row instead of six."""
    u = torch.cat([torch.rand((1, 1), generator=g, device=probs.device, dtype=probs.dtype) for g in generators])
    cdf = probs.cumsum(dim=-1)  # (B, V)
    tokens = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)  # (B,)
    last_possible = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(tokens, last_possible)


class _Batch:
    """Rows and their shared left-padded cache: ``attention`` (B, L) says which of the L cache columns are real."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=model.config)
        self.rows: list[_Row] = []
        self.attention = torch.zeros((0, 0), dtype=torch.long)
        self.logits: torch.Tensor | None = None  # (B, V): what each row draws its next token from

    @property
    def length(self) -> int:
        return self.attention.shape[1]

    def select(self, keep: list[int]) -> None:
        """Keep these rows (TGI's ``CausalLMBatch.filter``), then drop leading columns none of them uses."""
        index = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self.attention = self.attention[index]
        if self.logits is not None:
            self.logits = self.logits[index]
        used = self.attention.any(dim=0).nonzero()
        first = int(used[0]) if len(used) and self.rows else self.length
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys.numel():
                layer.keys = layer.keys[index, :, first:]
                layer.values = layer.values[index, :, first:]
        self.attention = self.attention[:, first:]

    def extend(self, other: "_Batch") -> None:
        """Append ``other``'s rows, padding the shorter cache on the left (TGI's ``CausalLMBatch.concatenate``)."""
        if not self.rows:
            self.cache, self.rows, self.attention, self.logits = other.cache, other.rows, other.attention, other.logits
            return
        width = max(self.length, other.length)

        def left_pad(x: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - x.shape[dim]
            if missing == 0:
                return x
            shape = list(x.shape)
            shape[dim] = missing
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)], dim=0)
        self.attention = torch.cat([left_pad(self.attention, 1), left_pad(other.attention, 1)], dim=0)
        self.logits = torch.cat([self.logits, other.logits], dim=0)
        self.rows += other.rows


class _Prefill:
    """A group of admitted requests whose prompts are being prefilled, ``chunk`` columns per step."""

    def __init__(self, model, rows: list[_Row], pad_id: int):
        self.batch = _Batch(model)
        self.batch.rows = rows
        width = max(len(r.request.prompt_ids) for r in rows)
        self.input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        self.full_attention = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids = r.request.prompt_ids
            self.input_ids[j, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            self.full_attention[j, width - len(ids):] = 1
        self.positions = (self.full_attention.cumsum(dim=1) - 1).clamp(min=0)  # left padding: real tokens from 0
        self.done_columns = 0

    @property
    def complete(self) -> bool:
        return self.done_columns >= self.input_ids.shape[1]


class ContinuousDecoder:
    """A decode loop whose rows join and leave between steps. One thread calls :meth:`step`; any thread may
    :meth:`add`. Build it with ``TransformersEngine.continuous_decoder()``."""

    def __init__(self, engine, *, max_rows: int = 16, prefill_chunk: int = 512, admit_ratio: float = 0.3,
                 admit_wait_steps: int = 4, generator: torch.Generator | None = None):
        if max_rows < 1 or prefill_chunk < 1:
            raise ValueError("max_rows and prefill_chunk must be >= 1")
        if admit_ratio < 0 or admit_wait_steps < 0:
            raise ValueError("admit_ratio and admit_wait_steps must be >= 0")
        if not supports(engine.model):
            raise ValueError(f"{type(engine.model).__name__} uses cache layers other than DynamicLayer: continuous "
                             "batching needs plain dynamic KV caches")
        self.engine = engine
        self.model = engine.model
        self.device = engine.device
        self.max_rows = max_rows
        self.prefill_chunk = prefill_chunk
        self.admit_ratio = admit_ratio
        self.admit_wait_steps = admit_wait_steps
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 4096
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns); older 5.x only knows it
        self._cache_argument = "cache" if "cache" in inspect.signature(self.model.forward).parameters else \
            "past_key_values"
        self._waiting: deque[DecodeRequest] = deque()
        self._waiting_since = 0  # self.steps when the oldest waiting request arrived
        self._lock = threading.Lock()
        self._batch = _Batch(self.model)
        self._prefill: _Prefill | None = None
        # Unseeded rows draw from one generator (one uniform per row in one call): a generator per row costs a tensor
        # op per row at every step. Serving's is seeded from the OS; an offline batch (``TransformersEngine.generate``
        # with ``continuous=True``) passes its own, seeded from the batch's seed, so the batch is reproducible.
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(fresh_seed())
        self._generator = generator
        # A decoding step's mask, built here: (B, 1, 1, L) booleans, what transformers' ``sdpa_mask`` makes of the
        # (B, L) padding mask for one query column (every cached column is in the past), without its ~0.3 ms of
        # Python per step (a tenth of a step on a small model; transformers returns a 4D mask as it is given). Only
        # for SDPA on plain causal attention: eager wants an additive float mask, flash attention a 2D one, and
        # sliding or chunked attention masks more than padding.
        config = self.model.config
        self._own_decode_mask = (getattr(config, "_attn_implementation", None) == "sdpa"
                                 and getattr(config, "sliding_window", None) is None
                                 and getattr(config, "attention_chunk_size", None) is None)
        self.steps = 0
        self.row_steps = 0  # rows decoded, summed over steps (row_steps / steps = mean rows per step)

    # -- what callers use -------------------------------------------------------------------------------------
    def add(self, request: DecodeRequest) -> None:
        """Queue a request; it is admitted at a coming step. Thread-safe."""
        if not request.prompt_ids:
            raise ValueError("empty prompt")
        if len(request.prompt_ids) >= self.context:
            raise ValueError(f"prompt of {len(request.prompt_ids)} tokens leaves no room in the model's context of "
                             f"{self.context}")
        with self._lock:
            if not self._waiting:
                self._waiting_since = self.steps
            self._waiting.append(request)

    @property
    def rows(self) -> int:
        """Rows admitted and not yet retired (running or being prefilled)."""
        return len(self._batch.rows) + (len(self._prefill.batch.rows) if self._prefill else 0)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return bool(self.rows or self._waiting)

    def step(self) -> None:
        """One scheduling iteration (see the module docstring). Call from one thread only."""
        with torch.inference_mode():
            self._retire_cancelled()
            if self._batch.rows:
                self._decode()
            self._admit_and_prefill()

    def run(self, requests: list[DecodeRequest]) -> list[Completion]:
        """Decode these requests to the end (offline use and tests); completions in request order."""
        done: dict[int, Completion] = {}
        for k, req in enumerate(requests):
            user_done = req.on_done

            def on_done(c: Completion, k=k, user_done=user_done) -> None:
                done[k] = c
                if user_done is not None:
                    user_done(c)

            req.on_done = on_done
            self.add(req)
        while len(done) < len(requests):
            self.step()
        return [done[k] for k in range(len(requests))]

    def abort_all(self, error: BaseException | None = None) -> list[DecodeRequest]:
        """Drop every row and waiting request (after a failed step); returns them, unfinished."""
        with self._lock:
            dropped = list(self._waiting)
            self._waiting.clear()
        dropped += [r.request for r in self._batch.rows]
        if self._prefill is not None:
            dropped += [r.request for r in self._prefill.batch.rows]
        self._batch, self._prefill = _Batch(self.model), None
        return dropped

    # -- the steps --------------------------------------------------------------------------------------------
    def _retire_cancelled(self) -> None:
        for batch in (self._batch, self._prefill.batch if self._prefill else None):
            if batch is None or not batch.rows:
                continue
            gone = [i for i, r in enumerate(batch.rows) if r.request.is_cancelled is not None and r.request.is_cancelled()]
            if not gone:
                continue
            for i in gone:
                batch.rows[i].budget_row.abort()
                self._finish(batch.rows[i])
            keep = [i for i in range(len(batch.rows)) if i not in set(gone)]
            if batch is self._batch:
                batch.select(keep)
            elif keep:  # a prefilling group: its tensors are sliced too
                prefill = self._prefill
                index = torch.tensor(keep, dtype=torch.long)
                prefill.input_ids = prefill.input_ids[index]
                prefill.full_attention = prefill.full_attention[index]
                prefill.positions = prefill.positions[index]
                batch.rows = [batch.rows[i] for i in keep]
                batch.logits = None
                for layer in batch.cache.layers:
                    if layer.is_initialized and layer.keys.numel():
                        layer.keys, layer.values = layer.keys[index], layer.values[index]
            else:
                self._prefill = None

    def _decode(self) -> None:
        """Draw a token for every running row, retire the finished ones, one forward for the rest."""
        batch = self._batch
        sampled, logps = self._draw(batch)
        chosen: list[int] = []
        keep: list[int] = []
        nan = float("nan")
        for i, row in enumerate(batch.rows):
            state = row.budget_row
            token, forced = state.step(sampled[i])
            row.ids.append(token)
            row.mask.append(0 if forced else 1)
            row.logprobs.append(nan if forced else logps[i])  # forced: never drawn (record.py)
            row.position += 1
            if row.request.on_token is not None:
                row.request.on_token(token, forced)
            if not state.done and row.position >= self.context:
                state.finish_unfinished()  # the context is full
            if state.done:
                self._finish(row)
            else:
                keep.append(i)
                chosen.append(token)
        self.steps += 1
        self.row_steps += len(batch.rows)
        if len(keep) < len(batch.rows):
            batch.select(keep)
        if not batch.rows:
            batch.logits = None
            return
        tokens = torch.tensor(chosen, dtype=torch.long)[:, None]  # (B, 1)
        positions = torch.tensor([r.position - 1 for r in batch.rows], dtype=torch.long)[:, None]  # (B, 1)
        batch.attention = torch.cat([batch.attention, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        mask = batch.attention.bool()[:, None, None, :] if self._own_decode_mask else batch.attention
        batch.logits = self._forward(batch, tokens, mask, positions)

    def _draw(self, batch: _Batch) -> tuple[list[int], list[float]]:
        """One token per row and its log-prob, each row from its own distribution, a seeded row with its own
        generator.

        Every row draws at every step, forced or not, as the one-pass engine does, so a seed gives the tokens of a
        batch of one in ``TransformersEngine.generate``. Rows with the same sampling settings are filtered in one
        call (``filtered_scores`` and the softmax are row-wise) and drawn by :func:`draw_per_row` (each seeded row's
        uniform from its own generator, the others' from the decoder's), or by one ``draw`` from the decoder's
        generator when none of them is seeded; a greedy group needs no generator: one ``sample`` call."""
        logits = batch.logits  # (B, V)
        tokens: list[int] = [0] * len(batch.rows)
        logps: list[float] = [0.0] * len(batch.rows)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(batch.rows):
            s = row.request.sampling
            groups.setdefault((s.temperature, s.top_p, s.top_k), []).append(i)
        for members in groups.values():
            sampling = batch.rows[members[0]].request.sampling
            suppress = [j for j, i in enumerate(members) if batch.rows[i].budget_row.suppress_eos()]
            banned = None
            if suppress:
                banned = (torch.tensor(suppress, device=logits.device)[:, None], batch.rows[members[0]].banned[1])
            rows_logits = logits if len(members) == len(batch.rows) else logits[members]
            if sampling.greedy:
                picked, picked_logp = sample(rows_logits, sampling, None, banned)
            else:
                probs = torch.softmax(filtered_scores(rows_logits, sampling, banned), dim=-1)  # as in sample()
                generators = [batch.rows[i].generator for i in members]
                if all(g is None for g in generators):  # no seeded row: one draw for the group
                    picked = draw(probs, self._generator)
                else:
                    picked = draw_per_row(probs, [g or self._generator for g in generators])
                picked_logp = probs.gather(1, picked[:, None]).squeeze(1).log()
            for i, token, logp in zip(members, picked.tolist(), picked_logp.tolist()):
                tokens[i], logps[i] = token, logp
        return tokens, logps

    def _admission_due(self, free: int) -> bool:
        """Whether waiting requests join now, or wait for company so that they are prefilled together.

        Every prefill is a forward of its own, which on a small model costs about a decoding step whatever its rows
        (mostly Python), while a free slot left empty for a step costs one row of a step. So while rows are running
        a lone arrival waits until ``admit_ratio`` x running requests wait (or as many as there are free rows), or
        until the oldest has waited ``admit_wait_steps`` steps; an idle decoder admits at once. This is
        text-generation-inference's rule for its padded (non-paged) batches (``router/src/infer/v2/scheduler.rs``:
        a new batch joins the running one only with ``waiting_served_ratio`` x its size waiting, or after
        ``max_waiting_tokens`` steps). vLLM's v1 scheduler needs no such rule: it puts the prompt tokens of new
        requests in the same forward as the running rows' tokens (paged attention over a flat token batch)."""
        waiting = len(self._waiting)
        if not waiting or free <= 0:
            return False
        running = len(self._batch.rows)
        if not running or self.steps - self._waiting_since >= self.admit_wait_steps:
            return True
        return waiting >= min(free, max(1, int(running * self.admit_ratio)))

    def _admit_and_prefill(self) -> None:
        if self._prefill is None:
            free = self.max_rows - len(self._batch.rows)
            if not self._admission_due(free):
                return
            admitted: list[_Row] = []
            while free > 0:
                with self._lock:
                    if not self._waiting:
                        break
                    request = self._waiting.popleft()
                row = self._new_row(request)
                if row.budget_row.done:  # nothing to decode (e.g. a total cap of 0)
                    self._finish(row)
                    continue
                admitted.append(row)
                free -= 1
            if not admitted:
                return
            self._prefill = _Prefill(self.model, admitted, admitted[0].budget_row.tokens.pad_id)
        prefill = self._prefill
        start = prefill.done_columns
        end = min(start + self.prefill_chunk, prefill.input_ids.shape[1])
        batch = prefill.batch
        batch.attention = prefill.full_attention[:, :end]
        batch.logits = self._forward(batch, prefill.input_ids[:, start:end], batch.attention,
                                     prefill.positions[:, start:end])
        prefill.done_columns = end
        if prefill.complete:
            self._prefill = None
            self._batch.extend(batch)

    def _forward(self, batch: _Batch, input_ids, attention, positions) -> torch.Tensor:
        """One forward over the batch's cache; the logits of each row's last column, (B, V) float32. ``attention``:
        the (B, L) padding mask, or a 4D mask transformers uses as it is."""
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1,
                         **{self._cache_argument: batch.cache})
        return out.logits[:, -1, :].float()

    # -- rows -------------------------------------------------------------------------------------------------
    def _new_row(self, request: DecodeRequest) -> _Row:
        tokens = self.engine.budget_tokens(request.budget)
        generator = None
        seed = request.seed if request.seed is not None else request.sampling.seed
        if not request.sampling.greedy and seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        eos = sorted(tokens.eos_ids)
        banned = None
        if eos:
            banned = (torch.zeros((1, 1), dtype=torch.long, device=self.device),
                      torch.tensor(eos, dtype=torch.long, device=self.device)[None, :])
        return _Row(request, BudgetRow(request.budget, tokens), generator, banned,
                    position=len(request.prompt_ids))

    def _finish(self, row: _Row) -> None:
        req = row.request
        completion = completion_of(Part(row.budget_row, row.ids, row.mask, row.logprobs), None,
                                   self.engine.tokenizer.decode, prompt_index=req.prompt_index,
                                   sample_index=req.sample_index, prompt_ids=list(req.prompt_ids))
        if req.on_done is not None:
            req.on_done(completion)

