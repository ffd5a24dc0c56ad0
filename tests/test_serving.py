"""The server: the official openai client works unchanged, budgets are honoured, streams are the same text, bad
input is a clean 4xx, overload is a 429/503, a client that leaves frees its slot, a load of concurrent clients ends
with no errors and no leaked slots, and upstream mode enforces both budgets over our own server on loopback."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

for _dep in ("fastapi", "uvicorn", "httpx", "openai"):  # the serving extras: a clear skip where they are missing
    pytest.importorskip(_dep, reason=f"serving needs {_dep} (see docs/serving.md)")
import httpx  # noqa: E402
import openai  # noqa: E402

from elastic_reasoning.budget import BudgetConfig
from elastic_reasoning.generation.record import SamplingConfig
from elastic_reasoning.serving import BackgroundServer, ModelDefaults, ServedModel, ServerConfig, create_app
from elastic_reasoning.serving.protocol import APIError, ChatCompletionRequest, parse_effort_table, resolve_budget
from elastic_reasoning.serving.stream import ChoiceText

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "What is 2+2?"}]
DEFAULTS = ModelDefaults(thinking_budget=6, solution_budget=4,
                         effort_table=parse_effort_table('{"low": {"thinking_budget": 3, "solution_budget": 2}, "high": 10}'))


class SlowEngine:
    """The toy engine, slowed down per emitted token: long enough requests to queue behind and walk away from."""

    def __init__(self, engine, delay: float):
        self.engine, self.delay = engine, delay
        self.tokenizer, self.model = engine.tokenizer, engine.model
        self.calls = 0

    def budget_tokens(self, budget):
        return self.engine.budget_tokens(budget)

    def generate(self, prompts, budgets, sampling, *, num_samples=1, on_token=None, is_cancelled=None):
        self.calls += 1

        def slow(job, token, forced):
            time.sleep(self.delay)
            if on_token is not None:
                on_token(job, token, forced)

        return self.engine.generate(prompts, budgets, sampling, num_samples=num_samples, on_token=slow,
                                    is_cancelled=is_cancelled)


class SlowContinuousEngine(SlowEngine):
    """The same, for the continuous batcher: every decoding step is slowed down."""

    def continuous_decoder(self, **kwargs):
        decoder = self.engine.continuous_decoder(**kwargs)
        step = decoder.step

        def slow_step():
            time.sleep(self.delay)
            step()

        decoder.step = slow_step
        return decoder


@pytest.fixture(scope="module")
def served(toy_engine):
    model = ServedModel("toy", toy_engine, defaults=DEFAULTS)
    config = ServerConfig(api_key=KEY, max_batch_size=8, max_queue=64, max_body_bytes=256 * 1024)
    with BackgroundServer(create_app(model, config)) as server:
        server.model = model
        yield server


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(server, path: str, body, *, headers=AUTH, timeout: float = 60) -> httpx.Response:
    kwargs = {"json": body} if isinstance(body, (dict, list)) else {"content": body}
    return httpx.post(server.url + "/v1" + path, headers={"Content-Type": "application/json", **headers},
                      timeout=timeout, **kwargs)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def stream_chat(client, model: str = "toy", **kwargs):
    """(reasoning text, content text, finish chunk choice, usage, order of the channels) of one streamed chat."""
    reasoning, content, order, finish, usage = [], [], [], None, None
    for chunk in client.chat.completions.create(model=model, messages=MSG, stream=True,
                                                stream_options={"include_usage": True}, **kwargs):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                reasoning.append(extra["reasoning_content"])
                order.append("r")
            if choice.delta.content:
                content.append(choice.delta.content)
                order.append("c")
            if choice.finish_reason is not None:
                finish = choice
    return "".join(reasoning), "".join(content), finish, usage, order


# -- the basics ---------------------------------------------------------------------------------------------------
def test_models_health_and_metrics_endpoints(served, client):
    assert [m.id for m in client.models.list().data] == ["toy"]
    health = httpx.get(served.url + "/health").json()
    assert health["status"] == "ok" and health["models"] == ["toy"]
    text = httpx.get(served.url + "/metrics").text
    for line in text.splitlines():  # every sample line is "name{labels} number"
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])
    assert "# TYPE elastic_reasoning_queue_depth gauge" in text
    assert 'elastic_reasoning_running_rows{model="toy"}' in text


@pytest.mark.parametrize("extra, t, s, source", [
    ({"thinking_budget": 5, "solution_budget": 3}, 5, 3, "thinking_budget"),
    ({"thinking_token_budget": 4, "solution_budget": 2}, 4, 2, "thinking_token_budget"),  # vLLM's name
    ({"thinking": {"type": "enabled", "budget_tokens": 7}, "solution_budget": 1}, 7, 1, "thinking.budget_tokens"),
    ({"thinking": {"type": "disabled"}, "solution_budget": 3}, 0, 3, "thinking.budget_tokens"),  # Anthropic's off
    ({"reasoning_effort": "low"}, 3, 2, "reasoning_effort=low"),  # the server's table: thinking and solution
    ({"reasoning_effort": "high", "solution_budget": 2}, 10, 2, "reasoning_effort=high"),
    ({"reasoning_effort": "high", "thinking_budget": 2}, 2, 4, "thinking_budget"),  # a number beats the effort
    ({}, 6, 4, "default"),  # the model's server-side defaults
])
def test_every_budget_name_is_honoured(client, extra, t, s, source):
    r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, n=3, seed=11, extra_body=extra)
    budget = r.model_extra["budget"]
    assert (budget["thinking_budget"], budget["solution_budget"]) == (t, s)
    assert budget["sources"]["thinking_budget"] == source
    for choice in r.choices:
        assert choice.model_extra["thinking_end"] in ("model", "budget", "eos")
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens <= 3 * t  # three choices, each within its budget
    assert details.model_extra["solution_tokens"] <= 3 * s


def test_each_choice_within_its_budgets_and_cut_reported(client):
    r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=3,
                                       extra_body={"thinking_budget": 2, "solution_budget": 3})
    choice = r.choices[0]
    assert r.usage.completion_tokens_details.reasoning_tokens <= 2
    assert r.usage.completion_tokens_details.model_extra["solution_tokens"] <= 3
    if choice.model_extra["thinking_end"] == "budget":
        assert choice.model_extra["thinking_truncated"] is True
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.model_extra["reasoning_content"], str)


def test_max_tokens_caps_everything_emitted(client):
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=5,
                                           extra_body={"thinking_budget": 20, "solution_budget": 20}, **{field: 7})
        assert r.usage.completion_tokens <= 7
        assert r.choices[0].finish_reason == "length"


def test_zero_thinking_budget_goes_straight_to_the_solution(client):
    r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=2,
                                       extra_body={"thinking_budget": 0, "solution_budget": 3})
    assert r.usage.completion_tokens_details.reasoning_tokens == 0
    assert r.choices[0].message.model_extra["reasoning_content"] == ""
    assert r.choices[0].model_extra["thinking_truncated"] is True


def test_same_seed_same_tokens_even_beside_other_requests(client):
    def once():
        return client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=42,
                                              extra_body={"thinking_budget": 8, "solution_budget": 5})

    first = once()
    with ThreadPoolExecutor(4) as pool:  # unseeded traffic around it must not change it
        noise = [pool.submit(client.chat.completions.create, model="toy", messages=MSG, temperature=1.0,
                             extra_body={"thinking_budget": 8, "solution_budget": 5}) for _ in range(3)]
        again = once()
        [f.result() for f in noise]
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.choices[0].message.model_extra["reasoning_content"] == \
        first.choices[0].message.model_extra["reasoning_content"]


# -- streaming ----------------------------------------------------------------------------------------------------
def test_stream_sends_reasoning_then_content_and_equals_the_plain_answer(client):
    budgets = {"thinking_budget": 9, "solution_budget": 6}
    plain = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=7, extra_body=budgets)
    reasoning, content, finish, usage, order = stream_chat(client, temperature=1.0, seed=7, extra_body=budgets)
    assert reasoning == plain.choices[0].message.model_extra["reasoning_content"]
    assert content == plain.choices[0].message.content
    assert order == sorted(order, key=lambda x: x != "r")  # every reasoning delta before any content delta
    assert finish.finish_reason == plain.choices[0].finish_reason
    assert finish.model_extra["thinking_truncated"] == plain.choices[0].model_extra["thinking_truncated"]
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens <= 9


def test_stop_string_cuts_the_content_and_is_reported(client):
    plain = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=9,
                                           extra_body={"thinking_budget": 2, "solution_budget": 12})
    words = plain.choices[0].message.content.split()
    assert len(words) >= 3
    stop = words[2]
    r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=9, stop=[stop],
                                       extra_body={"thinking_budget": 2, "solution_budget": 12})
    assert stop not in r.choices[0].message.content
    assert plain.choices[0].message.content.startswith(r.choices[0].message.content)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].model_extra["stop_reason"] == stop
    _, streamed, finish, _, _ = stream_chat(client, temperature=1.0, seed=9, stop=[stop],
                                            extra_body={"thinking_budget": 2, "solution_budget": 12})
    assert streamed == r.choices[0].message.content and finish.finish_reason == "stop"


def test_completions_endpoint_plain_and_budgeted(client):
    plain = client.completions.create(model="toy", prompt="what is 2 + 2 ?", max_tokens=5, temperature=1.0, seed=1)
    assert plain.usage.completion_tokens <= 5 and plain.choices[0].model_extra["content"] is None
    r = client.completions.create(model="toy", prompt="what is 2 + 2 ?", temperature=1.0, seed=1,
                                  extra_body={"thinking_budget": 4, "solution_budget": 3})
    choice = r.choices[0]
    assert r.usage.completion_tokens_details.reasoning_tokens <= 4
    assert choice.model_extra["reasoning_content"] + "</think>" + choice.model_extra["content"] == choice.text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="toy", prompt="what is 2 + 2 ?", temperature=1.0, seed=1, stream=True,
        extra_body={"thinking_budget": 4, "solution_budget": 3}) if c.choices)
    assert streamed == choice.text
    ids = client.completions.create(model="toy", prompt=[10, 11, 12], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3


# -- bad input: always a 4xx with a message, never a 5xx --------------------------------------------------------
BAD_BODIES = [
    ({"thinking_budget": -1}, "thinking_budget"),
    ({"thinking_budget": "many"}, "thinking_budget"),
    ({"solution_budget": 1.5}, "solution_budget"),
    ({"solution_budget": True}, "solution_budget"),
    ({"thinking_token_budget": -3}, "thinking_token_budget"),
    ({"thinking": {"type": "enabled"}}, "thinking"),  # enabled needs budget_tokens
    ({"thinking": {"type": "enabled", "budget_tokens": -5}}, "budget_tokens"),
    ({"thinking_budget": 3, "thinking_token_budget": 4}, "conflicting"),
    ({"thinking_budget": 100000}, "beyond the context"),
    ({"thinking_budget": 1500, "solution_budget": 1500}, "beyond the context"),
    ({"max_tokens": 5000}, "beyond the context"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"reasoning_effort": "maximal"}, "reasoning_effort"),
    ({"temperature": 7}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 99}, "n="),
    ({"stop": [""]}, "stop"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "not supported"),
    ({"messages": [{"role": "user", "content": "1 " * 3000}]}, "no room"),  # oversize prompt: beyond the context
    ({"model": "no-such-model"}, "does not exist"),
    ({"model": 12}, "model"),
]


@pytest.mark.parametrize("patch, needle", BAD_BODIES, ids=[json.dumps(p)[:40] for p, _ in BAD_BODIES])
def test_bad_input_is_a_clear_4xx(served, patch, needle):
    body = {"model": "toy", "messages": MSG, **patch}
    r = post(served, "/chat/completions", body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    message = r.json()["error"]["message"]
    assert needle in message or needle == r.json()["error"]["param"], message


@pytest.mark.parametrize("path, body, needle", [
    ("/chat/completions", b'{"model": "toy", "messages": [', "not valid JSON"),
    ("/chat/completions", b"[1, 2]", "body"),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    ("/completions", {"model": "toy", "prompt": [999999]}, "outside the vocabulary"),
    ("/completions", {"model": "toy", "prompt": ""}, "empty prompt"),
    ("/completions", {"model": "toy", "prompt": "hi", "echo": True}, "echo"),
    ("/completions", {"model": "toy", "prompt": "hi", "thinking_budget": -2}, "thinking_budget"),
])
def test_malformed_requests_are_4xx(served, path, body, needle):
    r = post(served, path, body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert needle in r.json()["error"]["message"]


def test_oversize_body_is_413(served):
    r = post(served, "/chat/completions", {"model": "toy", "messages": [{"role": "user", "content": "x" * 300_000}]})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]

    def chunked(n):  # no Content-Length: the server counts as it reads
        yield b'{"model": "toy", "messages": [{"role": "user", "content": "'
        yield b"x" * n
        yield b'"}], "thinking_budget": 2, "solution_budget": 2}'

    r = post(served, "/chat/completions", chunked(300_000))
    assert r.status_code == 413 and "over the limit" in r.json()["error"]["message"]
    assert post(served, "/chat/completions", chunked(10)).status_code == 200


def test_wrong_or_missing_api_key_is_401(served):
    for headers in ({"Authorization": "Bearer nope"}, {}):
        r = post(served, "/chat/completions", {"model": "toy", "messages": MSG}, headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    assert httpx.get(served.url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_openai_client_sees_bad_input_as_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="non-negative integer"):
        client.chat.completions.create(model="toy", messages=MSG, extra_body={"thinking_budget": -1})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=MSG)


# -- load: many concurrent clients, streaming and not -----------------------------------------------------------
def test_load_of_concurrent_clients_ends_with_no_errors_and_no_leaked_slots(served, client):
    batcher = served.model.batcher
    assert getattr(batcher, "continuous", False)  # a local transformers model gets continuous batching
    before = batcher.stats.batches, batcher.stats.rows, batcher.stats.completed

    def one(i: int):
        t, s = (0, 3, 8, 16)[i % 4], (2, 5, 9)[i % 3]
        extra = {"thinking_budget": t, "solution_budget": s}
        seed = i if i % 8 == 0 else None  # mostly unseeded, so they share batches
        if i % 2:
            reasoning, content, finish, usage, _ = stream_chat(client, temperature=1.0, seed=seed, extra_body=extra)
            assert finish is not None and usage is not None
            details = usage.completion_tokens_details
        else:
            r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=seed, extra_body=extra)
            details = r.usage.completion_tokens_details
        assert details.reasoning_tokens <= t and details.model_extra["solution_tokens"] <= s
        return 1

    start = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        done = sum(pool.map(one, range(72)))
    assert done == 72
    assert time.monotonic() - start < 300  # bounded: every client also has its own timeout
    assert wait_until(lambda: batcher.queued == 0 and not batcher.running and batcher.in_flight == 0)
    health = httpx.get(served.url + "/health").json()
    assert health["queued"] == 0 and health["running"] == 0
    batches, rows = batcher.stats.batches - before[0], batcher.stats.rows - before[1]
    assert batcher.stats.completed - before[2] == 72
    # continuous batching: a batch is one decoding step; rows that run at the same time share its forward
    assert rows / batches > 2  # requests that arrived together shared batches
    assert batcher.stats.max_rows_in_batch <= 8
    assert 'elastic_reasoning_running_rows{model="toy"} 0' in httpx.get(served.url + "/metrics").text


# -- overload and disconnects -----------------------------------------------------------------------------------
@pytest.fixture(params=["static", "continuous"])
def slow_server(toy_engine, request):
    engine = (SlowContinuousEngine if request.param == "continuous" else SlowEngine)(toy_engine, delay=0.02)
    model = ServedModel("slow", engine)
    config = ServerConfig(max_batch_size=1, max_queue=1, queue_timeout=0.6, batching=request.param)
    with BackgroundServer(create_app(model, config)) as server:
        assert getattr(model.batcher, "continuous", False) == (request.param == "continuous")
        server.model, server.engine = model, engine
        yield server


def long_body(**kw):
    return {"model": "slow", "messages": MSG, "thinking_budget": 400, "solution_budget": 100, "temperature": 1.0, **kw}


def open_stream(server, http: httpx.Client, chunks: int = 2):
    """Start a long streaming request and read a few events; returns the open response context and its line
    iterator (keep both: closing or dropping the iterator closes the connection, which the server sees at once)."""
    ctx = http.stream("POST", server.url + "/v1/chat/completions", json=long_body(stream=True))
    response = ctx.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    got = 0
    while got < chunks:
        if next(lines).startswith("data:"):
            got += 1
    return ctx, lines


def test_full_queue_is_429_and_a_long_wait_is_503(slow_server):
    batcher = slow_server.model.batcher
    with httpx.Client(timeout=30) as http:
        ctx, lines = open_stream(slow_server, http)  # occupies the only batch slot
        try:
            waiting = {}
            thread = threading.Thread(target=lambda: waiting.setdefault("r", post(slow_server, "/chat/completions",
                                                                                  long_body(), headers={})))
            thread.start()
            assert wait_until(lambda: batcher.queued == 1)
            r = post(slow_server, "/chat/completions", long_body(), headers={})  # the queue holds one: refused now
            assert r.status_code == 429 and r.headers.get("retry-after")
            assert "overloaded" in r.json()["error"]["message"]
            thread.join(timeout=10)
            assert waiting["r"].status_code == 503 and "waited" in waiting["r"].json()["error"]["message"]
            assert batcher.queued == 0
        finally:
            ctx.__exit__(None, None, None)
    assert wait_until(lambda: not batcher.running and batcher.in_flight == 0)


def test_disconnect_frees_the_slot_at_once(slow_server):
    batcher = slow_server.model.batcher
    # A streaming client walks away mid-thinking: its row stops at the next step (400+100 tokens would take 10 s).
    with httpx.Client(timeout=30) as http:
        ctx, lines = open_stream(slow_server, http, chunks=3)
        assert len(batcher.running) == 1
        start = time.monotonic()
        ctx.__exit__(None, None, None)
    assert wait_until(lambda: not batcher.running and batcher.in_flight == 0, timeout=3)
    assert time.monotonic() - start < 3
    assert batcher.stats.cancelled >= 1
    # A non-streaming client gives up while running, and one while queued behind it.
    cancelled = batcher.stats.cancelled
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, slow_server, "/chat/completions", long_body(), headers={}, timeout=0.8)
        assert wait_until(lambda: len(batcher.running) == 1)
        queued = pool.submit(post, slow_server, "/chat/completions", long_body(), headers={}, timeout=0.3)
        for f in (running, queued):
            with pytest.raises(httpx.ReadTimeout):
                f.result()
    assert wait_until(lambda: batcher.queued == 0 and not batcher.running and batcher.in_flight == 0, timeout=3)
    assert batcher.stats.cancelled == cancelled + 2
    ok = post(slow_server, "/chat/completions", {"model": "slow", "messages": MSG, "thinking_budget": 2,
                                                 "solution_budget": 2}, headers={})
    assert ok.status_code == 200  # the freed slot serves the next request


# -- upstream mode: both budgets over another server's completions API ----------------------------------------
@pytest.fixture(scope="module")
def upstream_pair(served, toy_dir):
    from elastic_reasoning.serving import build_upstream_model

    model = build_upstream_model(served.url + "/v1", tokenizer=str(toy_dir), api_key=KEY, name="front")
    assert model.context_length == 2048  # discovered from the upstream's /v1/models
    with BackgroundServer(create_app(model, ServerConfig(max_concurrent_batches=8))) as front:
        yield served, front


def upstream_calls(served) -> float:
    for line in httpx.get(served.url + "/metrics").text.splitlines():
        if line.startswith('elastic_reasoning_http_requests_total{path="/v1/completions",status="200"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("t, s", [(0, 3), (4, 0), (5, 4), (12, 6)])
def test_upstream_mode_enforces_both_budgets_phase_by_phase(upstream_pair, t, s):
    back, front = upstream_pair
    c = openai.OpenAI(base_url=front.url + "/v1", api_key="anything", max_retries=0, timeout=120)
    before = upstream_calls(back)
    r = c.chat.completions.create(model="front", messages=MSG, temperature=1.0,
                                  extra_body={"thinking_budget": t, "solution_budget": s})
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens <= t and details.model_extra["solution_tokens"] <= s
    assert r.choices[0].model_extra["thinking_end"] in ("model", "budget", "eos")
    assert upstream_calls(back) - before == (t > 0) + (s > 0)  # one call per phase that has a budget


def test_upstream_mode_streams_and_serves_concurrent_clients(upstream_pair):
    back, front = upstream_pair
    c = openai.OpenAI(base_url=front.url + "/v1", api_key="anything", max_retries=0, timeout=120)
    reasoning, content, finish, usage, order = stream_chat(
        c, "front", temperature=1.0, extra_body={"thinking_budget": 6, "solution_budget": 4})
    assert order == sorted(order, key=lambda x: x != "r") and finish is not None
    assert usage.completion_tokens_details.reasoning_tokens <= 6

    def one(i):
        r = c.chat.completions.create(model="front", messages=MSG, temperature=1.0,
                                      extra_body={"thinking_budget": 3 + i % 4, "solution_budget": 2 + i % 3})
        d = r.usage.completion_tokens_details
        return d.reasoning_tokens <= 3 + i % 4 and d.model_extra["solution_tokens"] <= 2 + i % 3

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(16)))
    batcher = front.app.state.models[0].batcher
    assert wait_until(lambda: not batcher.running and batcher.queued == 0)


def test_remote_engine_forces_answer_prefix_and_counts_forced_tokens(served, toy_dir):
    from transformers import AutoTokenizer

    from elastic_reasoning.generation.remote_engine import RemoteEngine

    engine = RemoteEngine(served.url, api_key=KEY, tokenizer=AutoTokenizer.from_pretrained(str(toy_dir)))
    budget = BudgetConfig(thinking_budget=3, solution_budget=2, answer_prefix="answer :")
    [c] = engine.generate(["What is 2+2?"], budget, SamplingConfig(temperature=0))
    assert c.thinking_truncated and c.thinking_tokens <= 3 and c.solution_tokens <= 2
    assert c.solution.startswith("answer :")
    assert c.forced_tokens == 3  # </think> answer :
    assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
    capped = engine.generate(["What is 2+2?"], BudgetConfig(thinking_budget=10, solution_budget=10, max_total_tokens=4))
    assert capped[0].extra["completion_tokens"] <= 4
    engine.close()


# -- the pieces, without a server -------------------------------------------------------------------------------
def test_split_waits_on_a_multi_token_end_of_thinking(toy_tokenizer):
    end = toy_tokenizer.encode("so answer", add_special_tokens=False)
    assert len(end) == 2
    seen = []
    text = ChoiceText(endpoint="chat", end_thinking="so answer", tokenizer=toy_tokenizer, end_ids=end, streaming=True,
                      on_delta=lambda ch, d: seen.append((ch, d)))
    ids = toy_tokenizer.encode("1 2 so 3 so answer 4 5", add_special_tokens=False)
    for tok in ids:
        text.push_token(tok)
    assert text.text == {"reasoning_content": "1 2 so 3", "content": "4 5"}
    assert [ch for ch, _ in seen] == sorted([ch for ch, _ in seen], key=lambda c: c != "reasoning_content")


REQ = ChatCompletionRequest(model="toy", messages=MSG)


@settings(max_examples=150, deadline=None)
@given(t=st.one_of(st.none(), st.integers(0, 3000)), s=st.one_of(st.none(), st.integers(0, 3000)),
       cap=st.one_of(st.none(), st.integers(1, 3000)), prompt=st.integers(1, 2100),
       default_t=st.one_of(st.none(), st.integers(0, 4000)), default_s=st.one_of(st.none(), st.integers(0, 4000)))
def test_resolved_budget_is_what_was_asked_or_a_clean_400(t, s, cap, prompt, default_t, default_s):
    req = REQ.model_copy(update={"thinking_budget": t, "solution_budget": s, "max_tokens": cap})
    defaults = ModelDefaults(thinking_budget=default_t, solution_budget=default_s)
    context, forced = 2048, 1
    try:
        got = resolve_budget(req, defaults, prompt_tokens=prompt, context_length=context, forced_len=forced).budget
    except APIError as err:
        assert err.status == 400
        room = context - prompt
        asked = (t or 0) + (forced if t is not None else 0) + (s or 0)
        assert room <= 0 or (cap or 0) > room or min(asked, cap or asked) > room
        return
    if t is not None:
        assert got.thinking_budget == t  # what the client asked for is never changed
    if s is not None:
        assert got.solution_budget == s
    assert got.max_total_tokens == cap
    if got.thinking_budget is not None and got.solution_budget is not None and t is None and s is None:
        assert got.thinking_budget + forced + got.solution_budget <= context - prompt  # defaults fitted


def test_serve_without_a_model_is_a_one_line_error():
    from elastic_reasoning.cli import main

    assert main(["serve"]) == 2


@pytest.mark.parametrize("sampling", [{"temperature": 1e-40}, {"top_p": 1e-300, "temperature": 1.0},
                                      {"temperature": 5e-324, "top_p": 5e-324}])
def test_extreme_sampling_values_decode_like_greedy_not_a_500(served, sampling):
    body = {"model": "toy", "prompt": "What is 3+4?", "thinking_budget": 4, "solution_budget": 3}
    greedy = post(served, "/completions", {**body, "temperature": 0})
    r = post(served, "/completions", {**body, **sampling, "seed": 1})
    assert greedy.status_code == r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


def test_sampling_values_outside_their_domain_are_a_400(served):
    body = {"model": "toy", "prompt": "hi", "thinking_budget": 2, "solution_budget": 2}
    for bad in ('"temperature": -1', '"top_p": 0', '"top_p": 1.5', '"temperature": NaN', '"top_p": Infinity'):
        raw = json.dumps(body)[:-1] + ", " + bad + "}"
        r = post(served, "/completions", raw)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert "temperature" in r.text or "top_p" in r.text


def test_metrics_label_requests_by_route_not_by_raw_path(served):
    for k in range(30):  # invented paths: 404s, and unauthenticated ones
        assert httpx.get(served.url + f"/probe-{k}/x").status_code == 404
    assert httpx.get(served.url + "/v1/models").status_code == 401
    text = httpx.get(served.url + "/metrics").text
    assert "probe-" not in text
    assert 'path="other",status="404"' in text
    assert 'path="/v1/models",status="401"' in text


def test_prompts_are_tokenized_off_the_event_loop(served, client):
    seen = []
    tokenizer = served.model.tokenizer
    original = type(tokenizer).apply_chat_template

    def spy(self, *args, **kwargs):
        seen.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    type(tokenizer).apply_chat_template = spy
    try:
        client.chat.completions.create(model="toy", messages=MSG, temperature=1.0,
                                       extra_body={"thinking_budget": 2, "solution_budget": 2})
    finally:
        type(tokenizer).apply_chat_template = original
    assert seen and all(name.startswith("tokenizer") for name in seen)


# -- the engine in its own process (what `serve --model` runs) --------------------------------------------------
@pytest.fixture(scope="module")
def served_process(toy_engine, toy_dir):
    model = ServedModel("toy", toy_engine, defaults=DEFAULTS,
                        engine_source={"model_path": str(toy_dir), "engine_kwargs": {"device": "cpu"}})
    config = ServerConfig(max_batch_size=8, max_queue=64)
    with BackgroundServer(create_app(model, config)) as server:
        assert type(model.batcher).__name__ == "EngineProcessBatcher"
        server.model = model
        yield server


def test_engine_process_serves_budgets_streams_and_seeds_like_the_thread(served_process, client):
    local = openai.OpenAI(base_url=served_process.url + "/v1", api_key="x", max_retries=0, timeout=120)
    budgets = {"thinking_budget": 9, "solution_budget": 6}
    plain = local.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=7, extra_body=budgets)
    threaded = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=7, extra_body=budgets)
    assert plain.choices[0].message.content == threaded.choices[0].message.content  # same decoder, same seed
    reasoning, content, finish, usage, _ = stream_chat(local, temperature=1.0, seed=7, extra_body=budgets)
    assert reasoning == plain.choices[0].message.model_extra["reasoning_content"]
    assert content == plain.choices[0].message.content
    assert usage.completion_tokens == plain.usage.completion_tokens

    def one(i: int):
        t, s = (0, 3, 8, 16)[i % 4], (2, 5, 9)[i % 3]
        r = local.chat.completions.create(model="toy", messages=MSG, temperature=1.0, n=1 + i % 2,
                                          seed=i if i % 5 == 0 else None,
                                          extra_body={"thinking_budget": t, "solution_budget": s})
        details = r.usage.completion_tokens_details
        assert details.reasoning_tokens <= t * len(r.choices) and details.model_extra["solution_tokens"] <= \
            s * len(r.choices)
        return 1

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(one, range(40))) == 40
    batcher = served_process.model.batcher
    assert wait_until(lambda: batcher.queued == 0 and not batcher.running and batcher.in_flight == 0)
    assert batcher.stats.max_rows_in_batch <= 8


def test_engine_process_frees_a_disconnected_clients_rows_at_once(served_process):
    batcher = served_process.model.batcher
    body = {"model": "toy", "messages": MSG, "thinking_budget": 400, "solution_budget": 80, "temperature": 1.0,
            "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", served_process.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            got = 0
            while got < 3:
                if next(lines).startswith("data:"):
                    got += 1
            assert len(batcher.running) == 1 and batcher.in_flight == 1
            start = time.monotonic()
    assert wait_until(lambda: not batcher.running and batcher.in_flight == 0, timeout=3)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("raw", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",  # bad Content-Length
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",  # chunk size
])
def test_malformed_http_gets_the_openai_error_body(served, raw):
    import socket

    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and "malformed HTTP request" in error["message"]
