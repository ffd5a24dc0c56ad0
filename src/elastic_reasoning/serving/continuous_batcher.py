"""Continuous batching for a local model: a request joins the running batch at the next decoding step.

The batcher keeps the server's queue and bounds (the same contract as :class:`~.batcher.Batcher`: ``submit`` raises
:class:`~.batcher.Overloaded` past ``max_queue``, ``cancel`` frees a slot at once) and one engine thread that drives
a :class:`~elastic_reasoning.generation.continuous.ContinuousDecoder`: before every step it moves waiting requests
into the decoder while there are free rows (``max_batch_size``), then runs the step. Each choice of a request is one
row with its own budget, sampling and generator (choice ``k`` of a request seeded ``s`` is seeded
``derive_seed(s, slot=k)``, choice 0 with ``s`` itself), so seeded requests share steps with everyone else and still
get the same tokens for the same seed.

A cancelled request (client gone, queue timeout) leaves the queue at once or, when running, is retired at the next
step; its rows stop counting as running immediately. ``stats.batches`` counts decoding steps and ``stats.rows`` the
rows decoded over them, so rows/batches is the mean number of rows per forward.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from ..generation.continuous import DecodeRequest
from ..generation.record import Completion
from ..generation.seeds import derive_seed
from .batcher import BatcherStats, Cancelled, Overloaded, SettlesWork, Work

log = logging.getLogger("elastic_reasoning.serving")


class ContinuousBatcher(SettlesWork):
    """Queue -> a decoder whose rows join and leave between steps. Create, then ``await start()`` in the loop."""

    continuous = True

    def __init__(self, engine, *, max_batch_size: int = 16, max_queue: int = 256, prefill_chunk: int = 512):
        if max_batch_size < 1 or max_queue < 0:
            raise ValueError("max_batch_size must be >= 1, max_queue >= 0")
        self.engine = engine
        self.decoder = engine.continuous_decoder(max_rows=max_batch_size, prefill_chunk=prefill_chunk)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self.queue: deque[Work] = deque()
        self.running: set[Work] = set()
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._active: dict[Work, list] = {}  # engine thread only: work -> its completions so far
        self.closed = False

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._engine_thread, name="engine", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self.closed = True
        for work in list(self.queue) + list(self.running):
            self.cancel(work)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    # -- what the endpoints call --------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def running_rows(self) -> int:
        return sum(w.n for w in self.running)

    @property
    def in_flight(self) -> int:
        """Rows the engine still holds (a cancelled row until the step that retires it)."""
        return self.decoder.rows + self.decoder.waiting

    def submit(self, work: Work) -> None:
        if self.closed:
            raise Overloaded("the server is shutting down")
        if work.n > self.max_batch_size:
            raise ValueError(f"n={work.n} is more than the {self.max_batch_size} rows a batch holds")
        if len(self.queue) >= self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(f"server overloaded: {len(self.queue)} requests already waiting")
        work.future = self._loop.create_future()
        work.started = self._loop.create_future()
        work.enqueued_at = time.monotonic()
        with self._cond:
            self.queue.append(work)
            self._cond.notify()
        self.stats.submitted += 1

    def cancel(self, work: Work) -> None:
        """Free the request's slot now. Idempotent; a no-op for a finished request."""
        if work.cancelled or (work.future is not None and work.future.done()):
            return
        work.cancelled = True  # read by the engine thread: its rows are retired at the next step
        self.stats.cancelled += 1
        with self._cond:
            if work in self.queue:
                self.queue.remove(work)
        self.running.discard(work)
        for fut in (work.started, work.future):
            if fut is not None and not fut.done():
                fut.set_exception(Cancelled())
                fut.exception()  # mark retrieved: nobody may be awaiting it any more
        if work.events is not None:
            work.events.put_nowait(("error", work, Cancelled()))

    # -- the engine thread --------------------------------------------------------------------------------------
    def _engine_thread(self) -> None:
        decoder = self.decoder
        while True:
            with self._cond:
                while not self.closed and not self.queue and not decoder.busy:
                    self._cond.wait()
                if self.closed and not decoder.busy:
                    return
                admitted = []
                free = self.max_batch_size - decoder.rows - decoder.waiting
                while self.queue and self.queue[0].n <= free:
                    work = self.queue.popleft()
                    admitted.append(work)
                    free -= work.n
            for work in admitted:
                self._admit(work)
            steps, row_steps = decoder.steps, decoder.row_steps
            start = time.perf_counter()
            try:
                decoder.step()
            except Exception as err:  # the engine failed: every request it held gets the error
                log.exception("decoding step failed")
                decoder.abort_all()
                for work in list(self._active):
                    self._loop.call_soon_threadsafe(self._fail, work, err)
                self._active.clear()
            self.stats.busy_seconds += time.perf_counter() - start
            self.stats.batches += decoder.steps - steps
            self.stats.rows += decoder.row_steps - row_steps
            self.stats.max_rows_in_batch = max(self.stats.max_rows_in_batch, decoder.rows)

    def _admit(self, work: Work) -> None:
        """Engine thread: the request's rows go to the decoder; the event loop learns it started."""
        self._loop.call_soon_threadsafe(self._started, work)
        self._active[work] = [None] * work.n
        seed = work.sampling.seed
        for k, choice in enumerate(work.choices):
            def on_token(token: int, forced: bool, choice=choice) -> None:
                if work.first_token_at is None:
                    work.first_token_at = time.monotonic()
                if choice.needs_tokens:
                    choice.push_token(token)

            def on_done(c: Completion, k=k, choice=choice) -> None:
                if not c.thinking_ended:
                    choice.finish_thinking_tokens()
                results = self._active.get(work)
                if results is None:
                    return
                results[k] = c
                if all(r is not None for r in results):
                    del self._active[work]
                    self._loop.call_soon_threadsafe(self._complete, work, results)

            self.decoder.add(DecodeRequest(
                prompt_ids=work.prompt, budget=work.budget, sampling=work.sampling,
                seed=None if seed is None else (seed if k == 0 else derive_seed(seed, slot=k)),
                on_token=on_token, on_done=on_done, is_cancelled=lambda choice=choice: work.cancelled or choice.stopped,
                sample_index=k))

    # -- back on the event loop ---------------------------------------------------------------------------------
    def _started(self, work: Work) -> None:
        if work.cancelled:
            return
        self.running.add(work)
        if not work.started.done():
            work.started.set_result(None)
