"""Continuous batching with the decode loop in its own process, so it never waits on the server's interpreter lock.

The same contract as :class:`~.continuous_batcher.ContinuousBatcher` (``submit``/``cancel``, 429 past ``max_queue``,
a cancelled request's rows retired at the next step), with the :class:`~elastic_reasoning.generation.continuous.
ContinuousDecoder` running in a child process that loads the model itself. This is vLLM v1's split between the API
server and the ``EngineCore`` process (``vllm/v1/engine/core.py``, ``core_client.py``): on the tiny model a decoding
step is mostly Python, so an engine thread and the HTTP event loop in one process take turns on one interpreter lock
and each slows the other; in two processes each has its own.

Messages (``multiprocessing`` pipes, pickled): the server sends ``("add", work_id, rows)`` when the child has free
rows (the queue stays in the server, so 429/503 and queue timeouts are unchanged), ``("cancel", work_id, choice)``
and ``("stop",)``; the child sends, after a step that produced any, ``("events", tokens, done, stats)``: the streamed
tokens ``(work_id, choice, token)`` of rows that asked for them, the finished rows ``(work_id, choice, completion,
first_token_time)`` and its step counters. A decoding failure fails the requests the child held; a child that dies
fails every running request and the batcher refuses new ones.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections import deque
from typing import Any

from ..generation.record import Completion
from ..generation.seeds import derive_seed
from .batcher import BatcherStats, Cancelled, Overloaded, SettlesWork, Work

log = logging.getLogger("elastic_reasoning.serving")


class EngineProcessBatcher(SettlesWork):
    """Queue in the server -> a :class:`ContinuousDecoder` in a child process."""

    continuous = True
    flushes_thinking = True  # completions come back after the rows' streamed tokens

    def __init__(self, model_path: str, *, engine_kwargs: dict[str, Any] | None = None, max_batch_size: int = 16,
                 max_queue: int = 256, prefill_chunk: int = 512, threads: int | None = None):
        if max_batch_size < 1 or max_queue < 0:
            raise ValueError("max_batch_size must be >= 1, max_queue >= 0")
        self.model_path = model_path
        self.engine_kwargs = dict(engine_kwargs or {})
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.threads = threads
        self.stats = BatcherStats()
        self.queue: deque[Work] = deque()
        self.running: set[Work] = set()
        self._works: dict[int, Work] = {}  # sent to the child and not finished there
        self._results: dict[int, list] = {}
        self._child_rows = 0  # rows the child holds (a cancelled one until its completion comes back)
        self._send_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process = None
        self._commands = None
        self._reader: threading.Thread | None = None
        self.closed = False

    # -- life cycle ---------------------------------------------------------------------------------------------
    async def start(self) -> None:
        import torch

        self._loop = asyncio.get_running_loop()
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch or event-loop state
        commands_child, self._commands = ctx.Pipe(duplex=False)
        self._events, events_child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_engine_main, name="elastic-reasoning-engine", daemon=True,
            args=(commands_child, events_child, self.model_path, self.engine_kwargs, self.max_batch_size,
                  self.prefill_chunk, self.threads or torch.get_num_threads()))
        self._process.start()
        commands_child.close()
        events_child.close()
        ready = await self._loop.run_in_executor(None, self._events.recv)
        if ready[0] != "ready":
            raise RuntimeError(f"the engine process failed to start: {ready[1]}")
        self._reader = threading.Thread(target=self._read_events, name="engine-events", daemon=True)
        self._reader.start()

    async def close(self) -> None:
        self.closed = True
        for work in list(self.queue) + list(self.running):
            self.cancel(work)
        self._send(("stop",))
        if self._process is not None:
            await self._loop.run_in_executor(None, self._process.join, 30)
            if self._process.is_alive():
                self._process.kill()

    # -- what the endpoints call --------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return len(self.queue)

    @property
    def running_rows(self) -> int:
        return sum(w.n for w in self.running)

    @property
    def in_flight(self) -> int:
        return self._child_rows

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
        self.queue.append(work)
        self.stats.submitted += 1
        self._dispatch()

    def cancel(self, work: Work) -> None:
        if work.cancelled or (work.future is not None and work.future.done()):
            return
        work.cancelled = True
        self.stats.cancelled += 1
        if work in self.queue:
            self.queue.remove(work)
        elif work.id in self._works:
            self._send(("cancel", work.id, None))  # its rows are retired at the child's next step
        self.running.discard(work)
        for fut in (work.started, work.future):
            if fut is not None and not fut.done():
                fut.set_exception(Cancelled())
                fut.exception()
        if work.events is not None:
            work.events.put_nowait(("error", work, Cancelled()))

    # -- scheduling (event loop) --------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Send waiting requests to the child while it has free rows."""
        while self.queue and not self.closed and self._child_rows + self.queue[0].n <= self.max_batch_size:
            work = self.queue.popleft()
            seed = work.sampling.seed
            rows = [dict(prompt_ids=list(work.prompt), budget=work.budget, sampling=work.sampling,
                         seed=None if seed is None else (seed if k == 0 else derive_seed(seed, slot=k)),
                         stream=choice.needs_tokens)
                    for k, choice in enumerate(work.choices)]
            self._works[work.id] = work
            self._results[work.id] = [None] * work.n
            self._child_rows += work.n
            self.running.add(work)
            if not work.started.done():
                work.started.set_result(None)
            self._send(("add", work.id, rows))

    def _send(self, message) -> None:
        if self._commands is None:
            return
        try:
            with self._send_lock:
                self._commands.send(message)
        except (OSError, ValueError):  # the child is gone: _read_events fails what it held
            pass

    def _read_events(self) -> None:
        """Reader thread: hand every message of the child to the event loop."""
        while True:
            try:
                message = self._events.recv()
            except (EOFError, OSError):
                if not self.closed:
                    self._loop.call_soon_threadsafe(self._child_died)
                return
            self._loop.call_soon_threadsafe(self._on_message, message)

    def _on_message(self, message) -> None:
        kind = message[0]
        if kind == "events":
            _, tokens, done, stats = message
            self.stats.batches += stats["steps"]
            self.stats.rows += stats["row_steps"]
            self.stats.busy_seconds += stats["busy"]
            self.stats.max_rows_in_batch = max(self.stats.max_rows_in_batch, stats["rows"])
            for work_id, k, token in tokens:
                work = self._works.get(work_id)
                if work is None or work.cancelled:
                    continue
                choice = work.choices[k]
                if work.first_token_at is None:
                    work.first_token_at = time.monotonic()
                choice.push_token(token)
                if choice.stopped:  # a stop string matched: this row need not decode further
                    self._send(("cancel", work_id, k))
            for work_id, k, completion, first_token in done:
                self._row_done(work_id, k, completion, first_token)
            self._dispatch()
        elif kind == "failed":
            _, work_ids, error = message
            for work_id in work_ids:
                work = self._works.pop(work_id, None)
                self._results.pop(work_id, None)
                if work is not None:
                    self._child_rows -= work.n
                    self._fail(work, RuntimeError(error))
            self._dispatch()

    def _row_done(self, work_id: int, k: int, completion: Completion, first_token: float | None) -> None:
        work, results = self._works.get(work_id), self._results.get(work_id)
        if work is None:
            return
        self._child_rows -= 1
        if first_token is not None and (work.first_token_at is None or first_token < work.first_token_at):
            work.first_token_at = first_token
        results[k] = completion
        if any(r is None for r in results):
            return
        del self._works[work_id], self._results[work_id]
        # after the stream deltas its last tokens scheduled (ChoiceText hands them to the loop with call_soon)
        self._loop.call_soon(self._complete, work, results)

    def _child_died(self) -> None:
        log.error("the engine process exited")
        self.closed = True
        error = RuntimeError("the engine process exited")
        for work in list(self._works.values()):
            self._fail(work, error)
        self._works.clear()
        self._results.clear()
        self._child_rows = 0
        while self.queue:
            self._fail(self.queue.popleft(), error)


def _engine_main(commands, events, model_path: str, engine_kwargs: dict, max_rows: int, prefill_chunk: int,
                 threads: int) -> None:  # pragma: no cover - runs in the child process (tested through the server)
    """The child: load the model, then alternate between reading commands and decoding steps."""
    import torch

    torch.set_num_threads(threads)
    try:
        from ..generation.continuous import DecodeRequest
        from ..generation.transformers_engine import TransformersEngine

        engine = TransformersEngine.from_pretrained(model_path, max_batch_size=max_rows, **engine_kwargs)
        decoder = engine.continuous_decoder(max_rows=max_rows, prefill_chunk=prefill_chunk)
    except Exception as err:  # noqa: BLE001 - reported to the server, which refuses to start
        events.send(("error", f"{type(err).__name__}: {err}"))
        return
    events.send(("ready",))
    cancelled: set[tuple[int, int | None]] = set()
    held: dict[int, int] = {}  # work id -> rows still in the decoder
    tokens: list = []
    done: list = []
    pending = {"steps": 0, "row_steps": 0, "busy": 0.0, "rows": 0}
    last_sent = time.monotonic()

    def add(work_id: int, rows: list[dict]) -> None:
        nonlocal tokens
        held[work_id] = len(rows)
        for k, row in enumerate(rows):
            first: list[float] = []

            def on_token(token: int, forced: bool, k=k, stream=row["stream"], first=first) -> None:
                if not first:
                    first.append(time.monotonic())
                if stream:
                    tokens.append((work_id, k, token))

            def on_done(c: Completion, k=k, first=first) -> None:
                done.append((work_id, k, c, first[0] if first else None))
                held[work_id] -= 1
                if not held[work_id]:
                    del held[work_id]
                    for key in [key for key in cancelled if key[0] == work_id]:
                        cancelled.discard(key)

            decoder.add(DecodeRequest(
                prompt_ids=row["prompt_ids"], budget=row["budget"], sampling=row["sampling"], seed=row["seed"],
                on_token=on_token, on_done=on_done, sample_index=k,
                is_cancelled=lambda k=k: (work_id, None) in cancelled or (work_id, k) in cancelled))

    while True:
        try:
            while not decoder.busy or commands.poll():
                message = commands.recv()
                if message[0] == "stop":
                    return
                if message[0] == "add":
                    add(message[1], message[2])
                elif message[0] == "cancel":
                    cancelled.add((message[1], message[2]))
        except (EOFError, OSError):  # the server is gone
            return
        steps, row_steps, start = decoder.steps, decoder.row_steps, time.perf_counter()
        try:
            decoder.step()
        except Exception as err:  # noqa: BLE001 - the requests it held fail; the engine goes on
            decoder.abort_all()
            events.send(("failed", list(held), f"{type(err).__name__}: {err}"))
            held.clear()
            tokens.clear()
            done.clear()
            continue
        pending["steps"] += decoder.steps - steps
        pending["row_steps"] += decoder.row_steps - row_steps
        pending["busy"] += time.perf_counter() - start
        pending["rows"] = max(pending["rows"], decoder.rows)
        # A message only when there is something to say (or counters older than 0.2 s): every message costs the
        # server's event loop a wake-up.
        if tokens or done or time.monotonic() - last_sent > 0.2:
            events.send(("events", tokens, done, pending))
            tokens, done = [], []
            pending = {"steps": 0, "row_steps": 0, "busy": 0.0, "rows": 0}
            last_sent = time.monotonic()
