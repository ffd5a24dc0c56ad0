"""The OpenAI-compatible server: FastAPI app, endpoints, and running it under uvicorn.

Endpoints: ``POST /v1/chat/completions`` (thinking in ``reasoning_content``, solution in ``content``),
``POST /v1/completions`` (raw text; a plain decoder unless the request names a budget), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text). Every request carries its own budgets (see protocol.py);
batching, bounds and cancellation are the batcher's (see batcher.py).

Errors: bad input is a 4xx with OpenAI's ``{"error": {"message", "type", "param", "code"}}`` body; a full queue is a
429 and a request left waiting past the queue timeout a 503 (both with ``Retry-After``); a client that disconnects
frees its slot at once. What is not covered: tools, logprobs, structured output, ``echo``/``suffix``/``best_of``
(each rejected with a 400 naming it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..budget import BudgetConfig
from ..generation.prompts import render_prompt
from ..generation.record import Completion
from .batcher import Batcher, Cancelled, Overloaded, Work, make_choices
from .metrics import Metrics
from .protocol import (
    APIError,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionRequest,
    CompletionResponse,
    ModelDefaults,
    ResolvedBudget,
    TextChoice,
    applied_budget,
    bad_request,
    new_id,
    now,
    resolve_budget,
    resolve_sampling,
    usage_of,
)

log = logging.getLogger("elastic_reasoning.serving")


@dataclass
class ServerConfig:
    """Server-wide settings (per-model budget defaults are :class:`~.protocol.ModelDefaults`)."""

    api_key: str | None = None
    """Required as ``Authorization: Bearer KEY`` (or ``x-api-key``) on /v1/*; None: no check."""
    max_batch_size: int = 16
    """Rows decoded together."""
    max_queue: int = 256
    """Requests waiting beyond the running batch; one more gets 429."""
    max_concurrent_batches: int = 1
    """Batches in flight (1 for a local model; more for an upstream server, which batches them itself)."""
    queue_timeout: float = 60.0
    """Seconds a request may wait for its batch before it gets 503."""
    max_n: int = 16
    """Largest ``n`` (choices per request)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Larger request bodies get 413."""
    batch_window: float = 0.003
    """Whole-batch batching only: an idle engine short of a full batch waits this long after the oldest arrival, so
    that requests arriving together share a batch (after a batch it waits for the clients it answered instead: see
    Batcher._hold)."""
    batching: str = "continuous"
    """``continuous``: a local model's requests join the running batch at the next decoding step
    (continuous_batcher.py; an engine or model that cannot falls back to whole batches, with a warning);
    ``static``: whole ``generate`` calls, a request joins the next batch (batcher.py)."""
    prefill_chunk: int = 512
    """Continuous batching: prompt tokens prefilled per step, so a long prompt does not stall running rows."""
    engine_process: bool = True
    """Continuous batching of a model the server loaded itself (``ServedModel.engine_source``): decode in a child
    process (engine_process.py) rather than a thread, so decoding and HTTP never wait on one interpreter lock."""


@dataclass
class ServedModel:
    """One model behind the server: its engine (local or upstream) and its server-side defaults."""

    name: str
    engine: Any
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    aliases: Sequence[str] = ()
    context_length: int | None = None
    """The model's context; read from the engine when None (an upstream engine may not know it: no checks)."""
    engine_source: dict | None = None
    """How to load the engine again (``model_path``, ``engine_kwargs``): lets the server decode in its own process."""

    def __post_init__(self):
        self.tokenizer = getattr(self.engine, "tokenizer", None)
        if self.context_length is None:
            self.context_length = _context_length(self.engine)
        self.vocab_size = len(self.tokenizer) if self.tokenizer is not None else None
        self.end_ids: tuple[int, ...] = ()
        self.forced_len = 0
        texts = BudgetConfig(end_thinking=self.defaults.end_thinking, transition=self.defaults.transition,
                             answer_prefix=self.defaults.answer_prefix)
        if hasattr(self.engine, "budget_tokens") and self.tokenizer is not None:
            tokens = self.engine.budget_tokens(texts)  # a text the tokenizer cannot encode fails here, at start-up
            self.end_ids, self.forced_len = tokens.end_thinking_ids, tokens.forced_len
        self.tokenizer_lock = threading.Lock()
        # Prompts are tokenized on this one thread, never on the event loop: a huge prompt delays other prompts'
        # tokenization, not /health or the streams of running requests.
        self.tokenizer_executor = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self.batcher: Batcher | None = None


def _context_length(engine) -> int | None:
    known = getattr(engine, "context_length", None)
    if known is not None:
        return known
    model = getattr(engine, "model", None)
    config = getattr(model, "config", None)
    if config is None:
        return None
    return getattr(config, "max_position_embeddings", None) or 4096  # what the engine itself assumes


# -- the app -----------------------------------------------------------------------------------------------------
def create_app(models: ServedModel | Sequence[ServedModel], config: ServerConfig | None = None) -> FastAPI:
    """The app: a batcher per model for its lifetime, OpenAI-shaped errors, the size/metrics middleware, and the
    routes (status routes in :func:`_add_status_routes`, generation routes in :func:`_add_generation_routes`)."""
    models = [models] if isinstance(models, ServedModel) else list(models)
    config = config or ServerConfig()
    metrics = _make_metrics(models)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models:
            m.batcher = make_batcher(m.engine, config, m.engine_source)
            await m.batcher.start()
        try:
            yield
        finally:
            for m in models:
                await m.batcher.close()

    app = FastAPI(title="elastic-reasoning", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.models = models
    app.state.metrics = metrics
    app.state.config = config
    _add_error_handlers(app)
    app.add_middleware(_LimitAndCount, metrics=metrics, max_body_bytes=config.max_body_bytes,
                       route_paths=lambda: {getattr(r, "path", None) for r in app.routes} - {None})
    check_key = _api_key_check(config)
    _add_status_routes(app, models, metrics, check_key)
    _add_generation_routes(app, models, metrics, config, check_key)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Errors: always OpenAI's shape, bad input always 4xx."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        message, param = _validation_message(err.errors())
        return JSONResponse(bad_request(message, param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(err.status_code, str(err.detail), type=kind).body(), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body(),
                            status_code=500)


def _api_key_check(config: ServerConfig):
    """The /v1/* dependency: ``Authorization: Bearer KEY`` (or ``x-api-key``) when the server has a key."""

    async def check_key(request: Request) -> None:  # async: a sync dependency would cost a threadpool hop
        if config.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise APIError(401, "invalid API key: send it as 'Authorization: Bearer KEY'", type="authentication_error",
                           code="invalid_api_key")

    return check_key


def _add_status_routes(app: FastAPI, models: list[ServedModel], metrics: Metrics, check_key) -> None:
    """``/health``, ``/metrics``, ``/v1/models``."""

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": [m.name for m in models],
                "queued": sum(m.batcher.queued for m in models), "running": sum(len(m.batcher.running) for m in models)}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "elastic-reasoning",
             "max_model_len": m.context_length, "budget_defaults": m.defaults.public()} for m in models]}


def _add_generation_routes(app: FastAPI, models: list[ServedModel], metrics: Metrics, config: ServerConfig,
                           check_key) -> None:
    """``/v1/chat/completions`` and ``/v1/completions``: look the model up, render, resolve the budget, then
    :func:`_serve`."""
    by_name: dict[str, ServedModel] = {}
    for m in models:
        for name in (m.name, *m.aliases):
            by_name.setdefault(name, m)

    def lookup(name: str) -> ServedModel:
        model = by_name.get(name)
        if model is None:
            raise APIError(404, f"model {name!r} does not exist; this server serves: "
                                f"{', '.join(m.name for m in models)}", type="not_found_error", param="model",
                           code="model_not_found")
        return model

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        model = lookup(body.model)
        _check_common(body, config)
        messages = body.chat()
        if model.tokenizer is not None:
            prompt = await _render_off_loop(model, messages, model.defaults.start_thinking, chat=True)
            prompt_tokens = len(prompt)
        else:
            prompt, prompt_tokens = messages, 0
        resolved = resolve_budget(body, model.defaults, prompt_tokens=prompt_tokens,
                                  context_length=model.context_length if model.tokenizer is not None else None,
                                  forced_len=model.forced_len)
        return await _serve(request, model, metrics, config, "chat", body, [(prompt, prompt_tokens)], resolved)

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, request: Request):
        model = lookup(body.model)
        _check_common(body, config)
        plain = not body.asks_for_budgets()
        start = "" if plain else model.defaults.start_thinking
        prompts = []
        for p in body.prompts():
            if model.tokenizer is None:
                prompts.append((p, 0))
                continue
            ids = await _render_off_loop(model, p, start, chat=False)
            prompts.append((ids, len(ids)))
        if len(prompts) * body.n > config.max_batch_size:
            raise bad_request(f"{len(prompts)} prompts x n={body.n} is more than the {config.max_batch_size} rows a "
                              "batch holds", "prompt")
        longest = max(t for _, t in prompts)
        resolved = resolve_budget(body, model.defaults, prompt_tokens=longest,
                                  context_length=model.context_length if model.tokenizer is not None else None,
                                  forced_len=model.forced_len, plain=plain)
        return await _serve(request, model, metrics, config, "completions", body, prompts, resolved, plain=plain)


def make_batcher(engine, config: ServerConfig, source: dict | None = None):
    """Continuous batching where the engine offers it (a local transformers model: in a child process when the
    server can load it there, else in a thread), else whole batches."""
    if config.batching not in ("continuous", "static"):
        raise ValueError(f"batching must be 'continuous' or 'static', got {config.batching!r}")
    if getattr(engine, "is_async", False):  # vLLM's AsyncLLM: it batches continuously itself
        from .async_batcher import AsyncEngineBatcher

        return AsyncEngineBatcher(engine, max_batch_size=config.max_batch_size, max_queue=config.max_queue)
    if config.batching == "continuous" and config.engine_process and source is not None \
            and hasattr(engine, "continuous_decoder"):
        from ..generation.continuous import supports
        from .engine_process import EngineProcessBatcher

        if supports(engine.model):
            return EngineProcessBatcher(source["model_path"], engine_kwargs=source.get("engine_kwargs"),
                                        max_batch_size=config.max_batch_size, max_queue=config.max_queue,
                                        prefill_chunk=config.prefill_chunk)
    if config.batching == "continuous" and hasattr(engine, "continuous_decoder"):
        from .continuous_batcher import ContinuousBatcher

        try:
            return ContinuousBatcher(engine, max_batch_size=config.max_batch_size, max_queue=config.max_queue,
                                     prefill_chunk=config.prefill_chunk)
        except ValueError as err:  # e.g. a model whose cache layers the decoder cannot edit
            log.warning("continuous batching unavailable (%s): whole batches instead", err)
    return Batcher(engine, max_batch_size=config.max_batch_size, max_queue=config.max_queue,
                   max_concurrent_batches=config.max_concurrent_batches, batch_window=config.batch_window)


def _check_common(body, config: ServerConfig) -> None:
    feature = body.unsupported()
    if feature is not None:
        raise bad_request(f"{feature} is not supported by this server", feature)
    if body.n > min(config.max_n, config.max_batch_size):
        raise bad_request(f"n={body.n} is more than this server allows ({min(config.max_n, config.max_batch_size)})", "n")


async def _render_off_loop(model: ServedModel, prompt, start_thinking: str, *, chat: bool) -> list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return _render(model, prompt, start_thinking, chat=chat)  # token ids: nothing to tokenize
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(model.tokenizer_executor, functools.partial(_render, model, prompt,
                                                                                  start_thinking, chat=chat))


def _render(model: ServedModel, prompt, start_thinking: str, *, chat: bool) -> list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        bad = [t for t in prompt if not 0 <= t < model.vocab_size]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside the vocabulary (0..{model.vocab_size - 1})", "prompt")
        return list(prompt)
    try:
        with model.tokenizer_lock:
            return render_prompt(model.tokenizer, prompt, start_thinking, use_chat_template=chat)
    except ValueError as err:  # empty prompt
        raise bad_request(str(err), "messages" if chat else "prompt") from None
    except Exception as err:  # a chat template that refuses these messages (e.g. roles out of order)
        raise bad_request(f"cannot render the prompt: {err}", "messages" if chat else "prompt") from None


def _validation_message(errors: Sequence[dict]) -> tuple[str, str | None]:
    messages, param = [], None
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}", None
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        # drop pydantic's union-member markers (str, list[int], function-before[...]) from the location
        loc = [x for x in loc if not (x[:1].islower() and ("[" in x or x in ("str", "int", "list", "float")))]
        name = ".".join(loc)
        param = param or name or None
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if "input" in e and e.get("type") not in ("missing",) and "got" not in msg:
            shown = json.dumps(e["input"], default=str)
            msg += f" (got {shown[:60]})"
        text = f"{name or 'request body'}: {msg}"
        if text not in messages:
            messages.append(text)
    if not messages:
        return "invalid request", None
    return "; ".join(messages[:4]), param


# -- one request through the batcher ---------------------------------------------------------------------------
async def _serve(request: Request, model: ServedModel, metrics: Metrics, config: ServerConfig, endpoint: str, body,
                 prompts: list[tuple[Any, int]], resolved: ResolvedBudget, plain: bool = False):
    loop = asyncio.get_running_loop()
    started_at = time.perf_counter()
    arrived = time.monotonic()  # the clock first tokens are stamped with (engine process included)
    events: asyncio.Queue | None = asyncio.Queue() if body.stream else None
    sampling = resolve_sampling(body, model.defaults)
    works: list[Work] = []
    for k, (prompt, _) in enumerate(prompts):
        choices = make_choices(body.n, endpoint=endpoint, end_thinking=resolved.budget.end_thinking,
                               stops=body.stop or (), tokenizer=model.tokenizer, end_ids=model.end_ids,
                               streaming=body.stream, events=events, loop=loop, first_index=k * body.n)
        works.append(Work(prompt=prompt, budget=resolved.budget, sampling=sampling, choices=choices, events=events))
    batcher = model.batcher
    cancel_all = lambda: [batcher.cancel(w) for w in works]  # noqa: E731
    try:
        for work in works:
            batcher.submit(work)
    except Overloaded as err:
        cancel_all()
        metrics.inc("rejected_total", reason="queue_full")
        raise APIError(429, f"{err} (queue bound {config.max_queue}); retry later", type="rate_limit_error",
                       code="overloaded", headers={"Retry-After": "1"}) from None

    watcher = asyncio.create_task(_watch_disconnect(request, cancel_all))
    try:
        done, pending = await asyncio.wait([w.started for w in works], timeout=config.queue_timeout)
        if pending:
            cancel_all()
            metrics.inc("rejected_total", reason="queue_timeout")
            raise APIError(503, f"server overloaded: the request waited {config.queue_timeout:g}s for a batch",
                           type="server_overloaded", code="queue_timeout", headers={"Retry-After": "5"})
        if any(w.cancelled for w in works):
            metrics.inc("disconnected_total")
            return Response(status_code=499)  # the client is gone; nobody reads this
        metrics.observe("queue_wait_seconds", time.perf_counter() - started_at)
        if body.stream:
            watcher.cancel()
            stream = _chat_stream if endpoint == "chat" else _text_stream
            return _EventStream(stream(model, metrics, body, works, prompts, resolved, events, started_at, plain,
                                       arrived),
                                on_disconnect=cancel_all)
        try:
            results = [await w.future for w in works]
        except Cancelled:
            metrics.inc("disconnected_total")
            return Response(status_code=499)
    finally:
        watcher.cancel()
    _raise_row_errors(results)
    completions = [c for rows in results for c in rows]
    choices = [w.choices[i] for w in works for i in range(w.n)]
    prompt_tokens = sum(t for _, t in prompts)
    _count(metrics, endpoint, prompt_tokens, completions, started_at, works, arrived)
    common = dict(id=new_id("chatcmpl" if endpoint == "chat" else "cmpl"), created=now(), model=model.name,
                  usage=usage_of(prompt_tokens, completions), budget=applied_budget(resolved))
    if endpoint == "chat":
        out = []
        for i, (c, choice) in enumerate(zip(completions, choices)):
            final = choice.final_texts(c.thinking, c.solution, c.thinking_ended)
            out.append(ChatChoice(index=i, message=ChatMessageOut(content=final["content"],
                                                                  reasoning_content=final["reasoning_content"]),
                                  **_finish(c, choice)))
        return _json(ChatCompletionResponse(choices=out, **common))
    out = []
    for i, (c, choice) in enumerate(zip(completions, choices)):
        final = choice.final_texts(c.thinking, c.solution, c.thinking_ended)
        out.append(TextChoice(index=i, text=final["text"], reasoning_content=None if plain else c.thinking,
                              content=None if plain else c.solution, **_finish(c, choice)))
    return _json(CompletionResponse(choices=out, **common))


def _json(model) -> Response:
    """Serialize a response model directly (FastAPI's generic encoder walks it field by field)."""
    return Response(model.model_dump_json(), media_type="application/json")


def _finish(c: Completion, choice) -> dict:
    if choice.stopped:
        reason, stop_reason = "stop", choice.stop_reason
    else:
        reason, stop_reason = ("stop" if c.finish_reason == "stop" else "length"), None
    return dict(finish_reason=reason, stop_reason=stop_reason, thinking_truncated=c.thinking_truncated,
                thinking_end=c.thinking_end)


def _raise_row_errors(results: list[list[Completion]]) -> None:
    """An upstream engine reports a failed row in ``extra`` rather than failing the whole batch."""
    for rows in results:
        for c in rows:
            err = c.extra.get("error")
            if err:
                status = c.extra.get("status", 502)
                raise APIError(status if 400 <= status < 500 or status in (429, 503) else 502,
                               f"upstream: {err}", type="upstream_error")


def _count(metrics: Metrics, endpoint: str, prompt_tokens: int, completions: list[Completion], started_at: float,
           works: Sequence[Work] = (), arrived: float | None = None) -> None:
    metrics.inc("requests_completed_total", endpoint=endpoint)
    metrics.inc("prompt_tokens_total", prompt_tokens)
    metrics.inc("completion_tokens_total", sum(c.extra.get("completion_tokens", len(c.completion_ids)) for c in completions))
    metrics.inc("reasoning_tokens_total", sum(c.thinking_tokens for c in completions))
    metrics.inc("thinking_truncated_total", sum(bool(c.thinking_truncated) for c in completions))
    metrics.observe("request_seconds", time.perf_counter() - started_at, endpoint=endpoint)
    firsts = [w.first_token_at for w in works if w.first_token_at is not None]
    if firsts and arrived is not None:
        metrics.observe("time_to_first_token_seconds", min(firsts) - arrived, endpoint=endpoint)


class _LimitAndCount:
    """Pure ASGI middleware (streaming and disconnects pass through untouched): 413 for an oversize body, and
    a count of responses by route and status. The label is the matched route's template; any other path (a 404, a
    probe) counts as ``other``, so a client cannot grow /metrics by inventing paths."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, route_paths: Callable[[], set[str]] = set):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self._route_paths = route_paths
        self._known: set[str] | None = None

    def _label(self, scope) -> str:
        route = scope.get("route")  # set by the router when a route matched
        if route is not None and getattr(route, "path", None):
            return route.path
        if self._known is None:
            self._known = set(self._route_paths())
        return scope["path"] if scope["path"] in self._known else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        size = dict(scope.get("headers") or ()).get(b"content-length")
        too_large = None
        if size is not None and size.isdigit() and int(size) > self.max_body_bytes:
            too_large = int(size)
        elif size is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            # No Content-Length (chunked): read the body here, bounded, and hand it on as one message.
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > self.max_body_bytes:
                    too_large = len(body)
                    break
            if too_large is None:
                receive = _replay(body, receive)
        if too_large is not None:
            response = JSONResponse(APIError(413, f"the request body (at least {too_large} bytes) is over the limit of "
                                                  f"{self.max_body_bytes}").body(), status_code=413)
            self.metrics.inc("http_requests_total", path=self._label(scope), status="413")
            return await response(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.inc("http_requests_total", path=self._label(scope), status=str(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


def _replay(body: bytes, receive):
    """An ASGI receive that gives ``body`` first, then passes on (so disconnects are still seen)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _watch_disconnect(request: Request, on_disconnect: Callable[[], Any]) -> None:
    """Cancel the request's work as soon as the client goes away (the ASGI server says ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


# -- streaming ---------------------------------------------------------------------------------------------------
class _EventStream(Response):
    """Server-sent events; a client that disconnects cancels the work at once, not at the next write."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_disconnect: Callable[[], Any]):
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # no body: no Content-Length
        self.events = events
        self.on_disconnect = on_disconnect

    async def __call__(self, scope, receive, send) -> None:
        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            self.on_disconnect()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            self.on_disconnect()
        finally:
            watcher.cancel()
            await self.events.aclose()


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _events_until_done(works: list[Work], events: asyncio.Queue):
    """Yields ("delta", index, channel, text) and ("done", work, completions) until every work is done."""
    remaining = len(works)
    while remaining:
        item = await events.get()
        if item[0] == "error":
            raise item[2]
        if item[0] == "done":
            remaining -= 1
        yield item


async def _chat_stream(model, metrics, body, works, prompts, resolved, events, started_at, plain, arrived) -> AsyncIterator[str]:
    rid, created = new_id("chatcmpl"), now()
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model.name}

    def chunk(index: int, delta: dict, finish: dict | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        if finish:
            choice.update(finish)
        return _sse({**head, "choices": [choice]})

    for i in range(len(works) * body.n):
        yield chunk(i, {"role": "assistant", "content": ""})
    try:
        all_completions = []
        async for item in _events_until_done(works, events):
            if item[0] == "delta":
                _, index, channel, text = item
                yield chunk(index, {channel: text})
                continue
            _, work, completions = item
            _raise_row_errors([completions])
            all_completions += completions
            for choice, c in zip(work.choices, completions):
                index = works.index(work) * body.n + work.choices.index(choice)
                final = choice.final_texts(c.thinking, c.solution, c.thinking_ended)
                for channel, text in choice.remainders(final):
                    yield chunk(index, {channel: text})
                yield chunk(index, {}, _finish(c, choice))
        prompt_tokens = sum(t for _, t in prompts)
        _count(metrics, "chat", prompt_tokens, all_completions, started_at, works, arrived)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": usage_of(prompt_tokens, all_completions).model_dump()})
    except Cancelled:
        return
    except APIError as err:
        yield _sse(err.body())
    except Exception as err:  # the engine failed mid-stream: the status line is long gone, say it in the stream
        log.exception("stream failed")
        yield _sse(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body())
    yield "data: [DONE]\n\n"


async def _text_stream(model, metrics, body, works, prompts, resolved, events, started_at, plain, arrived) -> AsyncIterator[str]:
    rid, created = new_id("cmpl"), now()
    head = {"id": rid, "object": "text_completion", "created": created, "model": model.name}

    def chunk(index: int, text: str, finish: dict | None = None) -> str:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": None}
        if finish:
            choice.update(finish)
        return _sse({**head, "choices": [choice]})

    try:
        all_completions = []
        async for item in _events_until_done(works, events):
            if item[0] == "delta":
                _, index, _channel, text = item
                yield chunk(index, text)
                continue
            _, work, completions = item
            _raise_row_errors([completions])
            all_completions += completions
            for choice, c in zip(work.choices, completions):
                index = works.index(work) * body.n + work.choices.index(choice)
                final = choice.final_texts(c.thinking, c.solution, c.thinking_ended)
                for _channel, text in choice.remainders(final):
                    yield chunk(index, text)
                yield chunk(index, "", _finish(c, choice))
        prompt_tokens = sum(t for _, t in prompts)
        _count(metrics, "completions", prompt_tokens, all_completions, started_at, works, arrived)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": usage_of(prompt_tokens, all_completions).model_dump()})
    except Cancelled:
        return
    except APIError as err:
        yield _sse(err.body())
    except Exception as err:
        log.exception("stream failed")
        yield _sse(APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body())
    yield "data: [DONE]\n\n"


# -- metrics -----------------------------------------------------------------------------------------------------
def _make_metrics(models: list[ServedModel]) -> Metrics:
    m = Metrics()
    m.describe("http_requests_total", "counter", "HTTP requests by path and status")
    m.describe("requests_completed_total", "counter", "generation requests answered in full")
    m.describe("rejected_total", "counter", "requests refused because the server was overloaded (429/503)")
    m.describe("disconnected_total", "counter", "requests whose client went away before the answer")
    m.describe("prompt_tokens_total", "counter", "prompt tokens of answered requests")
    m.describe("completion_tokens_total", "counter", "tokens emitted (thinking, forced, solution)")
    m.describe("reasoning_tokens_total", "counter", "thinking tokens emitted")
    m.describe("thinking_truncated_total", "counter", "completions whose thinking the budget cut")
    m.describe("request_seconds", "summary", "wall time of answered requests")
    m.describe("queue_wait_seconds", "summary", "time from arrival to the start of the request's batch")
    m.describe("time_to_first_token_seconds", "summary", "time from arrival to the first decoded token (continuous "
               "batching)")

    def per_model(fn):
        return lambda: {(("model", x.name),): fn(x.batcher) for x in models if x.batcher is not None}

    m.gauge("queue_depth", per_model(lambda b: b.queued), "requests waiting for a batch")
    m.gauge("running_requests", per_model(lambda b: len(b.running)), "requests in the running batches")
    m.gauge("running_rows", per_model(lambda b: b.running_rows), "rows (choices) in the running batches")
    m.gauge("batches_total", per_model(lambda b: b.stats.batches), "engine batches run (continuous batching: "
            "decoding steps)", kind="counter")
    m.gauge("batch_rows_total", per_model(lambda b: b.stats.rows), "rows over all batches (rows/batches = mean batch)",
            kind="counter")
    m.gauge("cancelled_total", per_model(lambda b: b.stats.cancelled), "requests cancelled (disconnect, timeout)", kind="counter")
    m.gauge("engine_busy_seconds_total", per_model(lambda b: b.stats.busy_seconds), "seconds the engine spent decoding", kind="counter")
    return m


# -- running it --------------------------------------------------------------------------------------------------
def build_local_model(model: str, *, name: str | None = None, defaults: ModelDefaults | None = None,
                      dtype=None, device: str | None = None, max_batch_size: int = 16) -> ServedModel:
    from ..generation.engines import load_engine

    from ..models import resolve_model_path

    engine = load_engine(model, "transformers", dtype=dtype, device=device, max_batch_size=max_batch_size)
    source = {"model_path": resolve_model_path(model), "engine_kwargs": {"dtype": dtype, "device": device}}
    return ServedModel(name=name or _display_name(model), engine=engine, defaults=defaults or ModelDefaults(),
                       aliases=(model,), engine_source=source)


def build_vllm_model(model: str, *, name: str | None = None, defaults: ModelDefaults | None = None,
                     dtype: str | None = None, max_batch_size: int = 16, max_model_len: int | None = None) -> ServedModel:
    """A model on vLLM's async engine with the budget processor in the engine (``serve --backend vllm``)."""
    from ..generation.vllm_async_engine import VLLMAsyncEngine

    engine = VLLMAsyncEngine.from_pretrained(model, dtype=dtype or "auto", max_model_len=max_model_len or 2048,
                                             max_num_seqs=max_batch_size)
    return ServedModel(name=name or _display_name(model), engine=engine, defaults=defaults or ModelDefaults(),
                       aliases=(model,))


def build_upstream_model(upstream: str, *, tokenizer: str | None, upstream_model: str | None = None,
                         name: str | None = None, api_key: str | None = None, defaults: ModelDefaults | None = None,
                         context_length: int | None = None) -> ServedModel:
    from ..generation.engines import load_engine

    engine = load_engine(upstream_model, "remote", endpoint=upstream, tokenizer=tokenizer, api_key=api_key,
                         context_length=context_length)
    label = name or _display_name(upstream_model or engine.model)
    return ServedModel(name=label, engine=engine, defaults=defaults or ModelDefaults(),
                       aliases=tuple(a for a in (upstream_model, tokenizer) if a))


def _display_name(model: str) -> str:
    from pathlib import Path

    path = Path(model).expanduser()
    return path.name if path.is_dir() else model


def http_protocol():
    """uvicorn's HTTP protocol (httptools when installed, else h11) whose answer to a request it cannot parse (a bad
    Content-Length or chunk size...) is OpenAI's JSON error body rather than uvicorn's plain text."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # no httptools: h11, whose 400 is written through its own state machine
        return "auto"

    class OpenAIErrorProtocol(Base):
        def send_400_response(self, msg: str) -> None:
            body = json.dumps(APIError(400, f"malformed HTTP request: {msg}").body()).encode()
            self.transport.write(b"".join([
                b"HTTP/1.1 400 Bad Request\r\n", b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n", b"connection: close\r\n\r\n",
                body]))
            self.transport.close()

    return OpenAIErrorProtocol


def run_server(models: ServedModel | Sequence[ServedModel], config: ServerConfig, *, host: str = "127.0.0.1",
               port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn)."""
    import uvicorn

    app = create_app(models, config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, http=http_protocol())


class BackgroundServer:
    """The app under uvicorn in a thread, on a free loopback port: ``with BackgroundServer(app) as s: s.url``.
    For tests and benchmarks."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2,
                                     lifespan="on", http=http_protocol())
        self.server = uvicorn.Server(self.config)
        self.app = app
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.host = host
        self.port = port

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
