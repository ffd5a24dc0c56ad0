"""``elastic-reasoning serve --backend vllm`` (vLLM's CPU build, the tiny model, a child process on loopback): the
same API as the transformers backend over vLLM's async engine with the budget processor inside it: every budget
name honoured under concurrent clients, a stream equal to the plain answer for the same seed, bad input a 4xx, and a
client that walks away mid-stream freeing its slot."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

openai = pytest.importorskip("openai")

MSG = [{"role": "user", "content": "What is 2+2?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(toy_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve-vllm") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # AsyncLLM runs its engine core in its own process
    cmd = [sys.executable, "-m", "elastic_reasoning", "serve", "--backend", "vllm", "--model", str(toy_dir),
           "--served-model-name", "toy", "--port", str(port), "--max-model-len", "512", "--dtype", "float32",
           "--max-batch-size", "8", "--log-level", "warning"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve --backend vllm exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"serve --backend vllm not ready in 240 s: {log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.mark.parametrize("extra, t, s", [
    ({"thinking_budget": 3, "solution_budget": 2}, 3, 2),
    ({"thinking_token_budget": 5, "solution_budget": 4}, 5, 4),
    ({"thinking": {"type": "enabled", "budget_tokens": 4}, "solution_budget": 3}, 4, 3),
])
def test_every_budget_name_is_honoured(client, extra, t, s):
    r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, n=2, seed=3, extra_body=extra)
    assert (r.model_extra["budget"]["thinking_budget"], r.model_extra["budget"]["solution_budget"]) == (t, s)
    details = r.usage.completion_tokens_details
    assert details.reasoning_tokens <= 2 * t and details.model_extra["solution_tokens"] <= 2 * s
    for choice in r.choices:
        assert isinstance(choice.message.model_extra["reasoning_content"], str)
        assert choice.model_extra["thinking_end"] in ("model", "budget", "eos")


def test_budgets_hold_for_concurrent_clients_with_mixed_budgets(client):
    def one(i: int):
        t, s = (0, 3, 8, 20)[i % 4], (2, 6, 12)[i % 3]
        r = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0,
                                           seed=i if i % 3 == 0 else None,
                                           extra_body={"thinking_budget": t, "solution_budget": s})
        details = r.usage.completion_tokens_details
        assert details.reasoning_tokens <= t and details.model_extra["solution_tokens"] <= s, (t, s, details)
        if r.choices[0].model_extra["thinking_truncated"]:
            assert details.reasoning_tokens == t  # a cut thinking used its whole budget
        return 1

    with ThreadPoolExecutor(16) as pool:
        assert sum(pool.map(one, range(32))) == 32


def test_stream_equals_the_plain_answer_for_the_same_seed(client):
    budgets = {"thinking_budget": 9, "solution_budget": 6}
    plain = client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=7, extra_body=budgets)
    reasoning, content, finish = [], [], None
    for chunk in client.chat.completions.create(model="toy", messages=MSG, temperature=1.0, seed=7, stream=True,
                                                extra_body=budgets):
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            reasoning.append(extra.get("reasoning_content") or "")
            content.append(choice.delta.content or "")
            if choice.finish_reason is not None:
                finish = choice
    assert "".join(reasoning) == plain.choices[0].message.model_extra["reasoning_content"]
    assert "".join(content) == plain.choices[0].message.content
    assert finish.finish_reason == plain.choices[0].finish_reason


def test_bad_input_is_a_4xx(served, client):
    with pytest.raises(openai.BadRequestError, match="non-negative integer"):
        client.chat.completions.create(model="toy", messages=MSG, extra_body={"thinking_budget": -1})
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-5", messages=MSG)


def test_a_client_that_walks_away_mid_stream_frees_its_slot(served):
    body = {"model": "toy", "messages": MSG, "thinking_budget": 400, "solution_budget": 80, "temperature": 1.0,
            "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", served + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            got = 0
            while got < 3:
                if next(lines).startswith("data:"):
                    got += 1
            assert httpx.get(served + "/health").json()["running"] == 1
    deadline = time.monotonic() + 5
    while httpx.get(served + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(served + "/health").json()["running"] == 0
    metrics = httpx.get(served + "/metrics").text
    assert 'elastic_reasoning_cancelled_total{model="toy"} 1' in metrics
