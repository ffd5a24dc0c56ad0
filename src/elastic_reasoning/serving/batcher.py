"""Dynamic batching: requests that arrive together decode together, each row with its own budgets.

The batcher takes waiting requests in arrival order and hands them to the engine in batches (``engine.generate`` in
a worker thread), on the server's event loop: when a request arrives and the moment a batch ends. Rows of one batch may carry different budgets; they must share
one :class:`~elastic_reasoning.generation.record.SamplingConfig`, because the engine draws every row from one
generator. So requests are grouped by (temperature, top_p, top_k), and a request with a ``seed`` runs in a batch of
its own: its tokens then depend on nothing but the request, and the same seed gives the same tokens.

Bounds and slots:

* at most ``max_batch_size`` rows per batch and ``max_concurrent_batches`` batches in flight (1 for a local model);
* at most ``max_queue`` requests waiting; one more is refused with 429 (:class:`Overloaded`), and the server answers
  503 to a request still waiting after its queue timeout, so an overloaded server says so rather than stalling;
* :meth:`Batcher.cancel` (a client that disconnected, a timeout) frees the request's slot at once: a waiting request
  leaves the queue, a running one stops decoding at the next step (the engine's ``is_cancelled``) and no longer
  counts as running. A row's place in a running batch is reused by the next batch, not mid-batch (the engine runs
  whole ``generate`` calls).

This whole-batch batcher serves engines that only offer ``generate`` (an upstream server, which batches on its own
side); a local transformers model gets :class:`~.continuous_batcher.ContinuousBatcher`, where a request joins the
running batch at the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..budget import BudgetConfig
from ..generation.record import Completion, SamplingConfig
from .stream import ChoiceText


class Overloaded(Exception):
    """The queue is full."""


class Cancelled(Exception):
    """The request was cancelled (client gone, or timed out in the queue)."""


_ids = itertools.count()


@dataclass(eq=False)
class Work:
    """One request as the batcher sees it: ``n`` rows with the same prompt, budget and sampling."""

    prompt: Any  # token ids (local engine) or what the upstream engine takes
    budget: BudgetConfig
    sampling: SamplingConfig
    choices: list[ChoiceText]
    events: asyncio.Queue | None = None  # streaming: ("delta", index, channel, text), ("done"|"error", work, payload)
    id: int = field(default_factory=lambda: next(_ids))
    future: asyncio.Future | None = None
    started: asyncio.Future | None = None
    cancelled: bool = False
    enqueued_at: float = 0.0
    first_token_at: float | None = None  # time.monotonic() when its first token was decoded (continuous batching)

    @property
    def n(self) -> int:
        return len(self.choices)

    @property
    def batch_key(self) -> tuple:
        s = self.sampling
        if s.seed is not None:
            return ("seeded", self.id)
        return (s.temperature, s.top_p, s.top_k)


@dataclass
class BatcherStats:
    submitted: int = 0
    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    failed: int = 0
    batches: int = 0
    rows: int = 0
    max_rows_in_batch: int = 0
    busy_seconds: float = 0.0


class SettlesWork:
    """How a request leaves any batcher, on the server's event loop: with its completions or with an error.

    Every batcher (:class:`Batcher`, :class:`~.continuous_batcher.ContinuousBatcher`,
    :class:`~.engine_process.EngineProcessBatcher`, :class:`~.async_batcher.AsyncEngineBatcher`) has ``stats`` and
    ``running`` and settles a request through these two methods. A request already cancelled (its futures settled by
    ``cancel``) or already answered is left alone. ``flushes_thinking``: the batcher hands back whole completions
    after the rows' last tokens were streamed, so a row that ended while thinking still holds back a possible prefix
    of the end of thinking, which :meth:`_complete` releases (as thinking) before answering; batchers that release it
    in the engine thread leave it False."""

    stats: BatcherStats
    running: set
    flushes_thinking = False

    def _complete(self, work: Work, results: list[Completion]) -> None:
        self.running.discard(work)
        if work.cancelled or work.future.done():
            return
        if self.flushes_thinking:
            for choice, c in zip(work.choices, results):
                if not c.thinking_ended:
                    choice.finish_thinking_tokens()
        self.stats.completed += 1
        work.future.set_result(results)
        if work.events is not None:
            work.events.put_nowait(("done", work, results))

    def _fail(self, work: Work, error: BaseException) -> None:
        self.running.discard(work)
        if work.cancelled or work.future.done():
            return
        self.stats.failed += 1
        if not work.started.done():
            work.started.set_result(None)
        work.future.set_exception(error)
        work.future.exception()  # a streaming request reads the error from its events instead
        if work.events is not None:
            work.events.put_nowait(("error", work, error))


class Batcher(SettlesWork):
    """Queue -> batches -> ``engine.generate``. Create, then ``await start()`` inside the server's event loop."""

    def __init__(self, engine, *, max_batch_size: int = 16, max_queue: int = 256, max_concurrent_batches: int = 1,
                 batch_window: float = 0.003):
        if max_batch_size < 1 or max_queue < 0 or max_concurrent_batches < 1:
            raise ValueError("max_batch_size and max_concurrent_batches must be >= 1, max_queue >= 0")
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.max_concurrent_batches = max_concurrent_batches
        self.batch_window = batch_window
        self.streams_text = bool(getattr(engine, "streams_text", False))
        self.stats = BatcherStats()
        self.queue: deque[Work] = deque()
        self.running: set[Work] = set()
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._free_since = 0.0  # when the last batch ended
        self._last_rows = 0  # rows that batch answered
        self._last_seconds = 0.0  # and how long it decoded
        self._arrived_since_free = 0  # rows submitted since it ended
        self._executor: ThreadPoolExecutor | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        self.closed = False

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(self.max_concurrent_batches, thread_name_prefix="engine")

    async def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for work in list(self.queue) + list(self.running):
            self.cancel(work)
        if self._batch_tasks:
            await asyncio.gather(*self._batch_tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # -- what the endpoints call --------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def running_rows(self) -> int:
        return sum(w.n for w in self.running)

    @property
    def in_flight(self) -> int:
        """Batches the engine is still decoding."""
        return self._in_flight

    def submit(self, work: Work) -> None:
        if self.closed:
            raise Overloaded("the server is shutting down")
        if work.n > self.max_batch_size:
            raise ValueError(f"n={work.n} is more than the {self.max_batch_size} rows a batch holds")
        if len(self.queue) >= self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(f"server overloaded: {len(self.queue)} requests already waiting")
        loop = self._loop
        work.future = loop.create_future()
        work.started = loop.create_future()
        work.enqueued_at = time.monotonic()
        self.queue.append(work)
        self.stats.submitted += 1
        self._arrived_since_free += work.n
        self._dispatch()

    def cancel(self, work: Work) -> None:
        """Free the request's slot now. Idempotent; a no-op for a finished request."""
        if work.cancelled or (work.future is not None and work.future.done()):
            return
        work.cancelled = True  # read by the engine thread through is_cancelled: the rows stop at the next step
        self.stats.cancelled += 1
        if work in self.queue:
            self.queue.remove(work)
        self.running.discard(work)
        for fut in (work.started, work.future):
            if fut is not None and not fut.done():
                fut.set_exception(Cancelled())
                fut.exception()  # mark retrieved: nobody may be awaiting it any more
        if work.events is not None:
            work.events.put_nowait(("error", work, Cancelled()))

    # -- scheduling ---------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start batches while there is work and room. Synchronous, on the event loop: called when a request
        arrives and when a batch ends (before that batch's answers are sent, so the engine does not wait on them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.queue and self._in_flight < self.max_concurrent_batches and not self.closed:
            if self._in_flight == 0 and self._queued_rows() < self.max_batch_size:
                wait = self._hold() - time.monotonic()
                if wait > 0:
                    self._timer = self._loop.call_later(wait, self._dispatch)
                    return
            batch = self._take_batch()
            self._in_flight += 1
            task = self._loop.create_task(self._run(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    def _hold(self) -> float:
        """Until when a free engine short of a full batch waits for more rows (a static batcher's delay).

        Clients just answered tend to come back at once (closed-loop traffic): without waiting for them the batches
        settle into two alternating halves. So after a batch the engine waits until as many rows have arrived as it
        just answered, for at most a quarter of that batch's duration (``batch_window`` at least, 0.1 s at most).
        An engine idle for longer waits ``batch_window`` after the oldest arrival, so that a burst meets."""
        now = time.monotonic()
        back_by = self._free_since + min(max(self.batch_window, 0.25 * self._last_seconds), 0.1)
        if now < back_by:
            return back_by if self._arrived_since_free < self._last_rows else now
        return self.queue[0].enqueued_at + self.batch_window

    def _queued_rows(self) -> int:
        return sum(w.n for w in self.queue)

    def _take_batch(self) -> list[Work]:
        """The oldest request and, in arrival order, the waiting requests that can share its batch."""
        first = self.queue.popleft()
        batch, rows = [first], first.n
        if first.batch_key[0] != "seeded":
            for work in list(self.queue):
                if rows >= self.max_batch_size:
                    break
                if work.batch_key == first.batch_key and rows + work.n <= self.max_batch_size:
                    self.queue.remove(work)
                    batch.append(work)
                    rows += work.n
        return batch

    async def _run(self, batch: list[Work]) -> None:
        for work in batch:
            self.running.add(work)
            if not work.started.done():
                work.started.set_result(None)
        rows = sum(w.n for w in batch)
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.max_rows_in_batch = max(self.stats.max_rows_in_batch, rows)
        start = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(self._executor, self._generate, batch)
        except Exception as err:  # the engine failed: every request of the batch gets the error
            results, error = None, err
        finally:
            seconds = time.perf_counter() - start
            self.stats.busy_seconds += seconds
            for work in batch:
                self.running.discard(work)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._free_since, self._last_rows, self._last_seconds = time.monotonic(), rows, seconds
                self._arrived_since_free = 0
            self._dispatch()  # before this batch's answers are sent: a full batch waiting starts at once
        for i, work in enumerate(batch):
            if results is None:
                self._fail(work, error)
            else:
                self._complete(work, results[i])

    def _generate(self, batch: list[Work]) -> list[list[Completion]]:
        """Runs in the engine's thread: one ``generate`` call for the whole batch, rows in request order."""
        prompts: list = []
        budgets: list[BudgetConfig] = []
        rows: list[tuple[Work, ChoiceText]] = []
        for work in batch:
            for choice in work.choices:
                prompts.append(work.prompt)
                budgets.append(work.budget)
                rows.append((work, choice))

        def is_cancelled(job: int) -> bool:
            work, choice = rows[job]
            return work.cancelled or choice.stopped

        kwargs: dict = {"is_cancelled": is_cancelled}
        if any(choice.needs_tokens for _, choice in rows):
            if self.streams_text:
                def on_text(job: int, part: str, delta: str) -> None:
                    rows[job][1].push_text(part, delta)

                kwargs["on_text"] = on_text
            else:
                def on_token(job: int, token_id: int, forced: bool) -> None:
                    choice = rows[job][1]
                    if choice.needs_tokens:
                        choice.push_token(token_id)

                kwargs["on_token"] = on_token
        completions = self.engine.generate(prompts, budgets, batch[0].sampling, num_samples=1, **kwargs)
        out: list[list[Completion]] = []
        k = 0
        for work in batch:
            mine = completions[k : k + work.n]
            k += work.n
            for choice, c in zip(work.choices, mine):
                if not c.thinking_ended and not self.streams_text:
                    choice.finish_thinking_tokens()
            out.append(mine)
        return out


def make_choices(n: int, *, endpoint: str, end_thinking: str, stops: Sequence[str], tokenizer, end_ids: Sequence[int],
                 streaming: bool, events: asyncio.Queue | None, loop: asyncio.AbstractEventLoop,
                 first_index: int = 0) -> list[ChoiceText]:
    """``n`` choice trackers; streamed deltas go into ``events`` through the event loop (thread-safe)."""
    choices = []
    for index in range(first_index, first_index + n):
        on_delta = None
        if streaming and events is not None:
            def on_delta(channel: str, delta: str, index=index) -> None:
                loop.call_soon_threadsafe(events.put_nowait, ("delta", index, channel, delta))
        choices.append(ChoiceText(endpoint=endpoint, end_thinking=end_thinking, stops=stops, tokenizer=tokenizer,
                                  end_ids=end_ids, streaming=streaming, on_delta=on_delta))
    return choices
