"""Serving on an engine that batches by itself (vLLM's ``AsyncLLM``): every choice goes to the engine at once.

The engine's own scheduler does continuous batching, so this batcher only keeps the server's contract: at most
``max_queue`` rows outstanding beyond ``max_batch_size`` (one more is a 429), each choice one engine request
running as an asyncio task on the server's loop, and :meth:`cancel` (a client gone, a timeout) cancels the tasks,
which abort their engine requests at once; a choice cut by a stop string is aborted the same way.
``stats.batches``/``stats.rows`` count requests/rows submitted (the engine's steps are its own) and
``stats.busy_seconds`` stays 0 (the engine core runs in its own process).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..generation.record import Completion
from ..generation.seeds import derive_seed
from .batcher import BatcherStats, Cancelled, Overloaded, SettlesWork, Work

log = logging.getLogger("elastic_reasoning.serving")


class AsyncEngineBatcher(SettlesWork):
    continuous = True
    flushes_thinking = True  # completions come back after the rows' streamed tokens

    def __init__(self, engine, *, max_batch_size: int = 16, max_queue: int = 256):
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.stats = BatcherStats()
        self.queue: list[Work] = []  # never waits here: the engine queues internally
        self.running: set[Work] = set()
        self._tasks: dict[Work, asyncio.Task] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        start = getattr(self.engine, "start", None)
        if start is not None:
            await start()

    async def close(self) -> None:
        self.closed = True
        for work in list(self.running):
            self.cancel(work)
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown is not None:
            shutdown()

    @property
    def queued(self) -> int:
        return 0

    @property
    def running_rows(self) -> int:
        return sum(w.n for w in self.running)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, work: Work) -> None:
        if self.closed:
            raise Overloaded("the server is shutting down")
        if work.n > self.max_batch_size:
            raise ValueError(f"n={work.n} is more than the {self.max_batch_size} rows a batch holds")
        if self.running_rows + work.n > self.max_batch_size + self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(f"server overloaded: {len(self.running)} requests already outstanding")
        work.future = self._loop.create_future()
        work.started = self._loop.create_future()
        work.enqueued_at = time.monotonic()
        work.started.set_result(None)
        self.running.add(work)
        self.stats.submitted += 1
        self.stats.batches += 1
        self.stats.rows += work.n
        self.stats.max_rows_in_batch = max(self.stats.max_rows_in_batch, self.running_rows)
        self._tasks[work] = self._loop.create_task(self._run(work))

    def cancel(self, work: Work) -> None:
        if work.cancelled or (work.future is not None and work.future.done()):
            return
        work.cancelled = True
        self.stats.cancelled += 1
        self.running.discard(work)
        task = self._tasks.get(work)
        if task is not None:
            task.cancel()  # its engine requests are aborted as the cancellation unwinds them
        for fut in (work.started, work.future):
            if fut is not None and not fut.done():
                fut.set_exception(Cancelled())
                fut.exception()
        if work.events is not None:
            work.events.put_nowait(("error", work, Cancelled()))

    async def _run(self, work: Work) -> None:
        seed = work.sampling.seed
        try:
            results: list[Completion] = list(await asyncio.gather(*(
                self._one(work, k, None if seed is None else (seed if k == 0 else derive_seed(seed, slot=k)))
                for k in range(work.n))))
        except asyncio.CancelledError:
            return
        except Exception as err:  # noqa: BLE001 - the engine failed: this request gets the error
            self._fail(work, err)
            return
        finally:
            self._tasks.pop(work, None)
        self._complete(work, results)

    async def _one(self, work: Work, k: int, seed: int | None) -> Completion:
        choice = work.choices[k]

        def on_first_token(at: float) -> None:
            if work.first_token_at is None or at < work.first_token_at:
                work.first_token_at = at

        if not choice.needs_tokens:  # neither streamed nor watched for stop strings: the finished request is enough
            return await self.engine.generate_one(work.prompt, work.budget, work.sampling, seed=seed, sample_index=k,
                                                  stream=False, on_first_token=on_first_token)

        def on_token(token: int) -> None:
            if not choice.stopped:
                choice.push_token(token)

        return await self.engine.generate_one(work.prompt, work.budget, work.sampling, seed=seed, on_token=on_token,
                                              should_stop=lambda: work.cancelled or choice.stopped, sample_index=k,
                                              on_first_token=on_first_token)
