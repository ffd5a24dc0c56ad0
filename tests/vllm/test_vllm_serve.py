"""A real ``vllm serve`` on loopback (vLLM's CPU build, the tiny model): budgets in ``vllm_xargs`` hold on every
request of concurrent mixed traffic, TRL's server-mode client gets budgeted rollouts, and this project's server in
upstream mode enforces both budgets over it."""

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from elastic_reasoning.budget import BudgetConfig, BudgetRow
from elastic_reasoning.generation.record import SamplingConfig

END = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(toy_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1", VLLM_SERVER_DEV_MODE="1")  # as TRL needs it
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core in its own process
    # The budget processor comes in through this package's vllm.logits_processors entry point: no flag needed.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(toy_dir), "--host",
           "127.0.0.1", "--port", str(port), "--max-model-len", "512", "--enforce-eager", "--dtype", "float32",
           "--served-model-name", "toy", "--logprobs-mode", "processed_logprobs"]  # as trl vllm-serve
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited: {log.read_text()[-3000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vllm serve not ready in 240 s: {log.read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def complete(url: str, prompt_ids: list[int], xargs: dict | None, seed: int) -> list[int]:
    body = {"model": "toy", "prompt": prompt_ids, "max_tokens": 40, "temperature": 1.0, "seed": seed,
            "return_token_ids": True}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    r = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def test_vllm_xargs_budgets_hold_under_concurrent_mixed_traffic(vllm_server, toy_engine):
    ids = toy_engine.render("what is the sum of 1 2 3 ?", BudgetConfig())
    tokens = toy_engine.budget_tokens(BudgetConfig())
    plan = [(k, None if k % 4 == 3 else {"thinking_budget": k % 5, "solution_budget": 1 + k % 3}) for k in range(24)]
    with ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda p: complete(vllm_server, ids, p[1], p[0]), plan))
    for (k, xargs), out in zip(plan, outs):
        if xargs is None:
            assert len(out) == 40 or out[-1] == 2  # untouched: plain decoding up to max_tokens or EOS
            continue
        row = BudgetRow(BudgetConfig(thinking_budget=xargs["thinking_budget"],
                                     solution_budget=xargs["solution_budget"]), tokens)
        for token in out:
            if row.done:
                break
            assert row.step(token)[0] == token  # every forced token is where the state machine put it
        assert row.done
        assert row.thinking_tokens <= xargs["thinking_budget"] and row.solution_tokens <= xargs["solution_budget"]
        assert len(out) <= row.emitted + 1  # at most the one stop token the processor forces to end the request


def test_bad_xargs_are_a_400(vllm_server):
    r = httpx.post(vllm_server + "/v1/completions", json={"model": "toy", "prompt": "hi", "max_tokens": 4,
                                                         "vllm_xargs": {"thinking_budget": -1}}, timeout=60)
    assert r.status_code == 400 and "thinking_budget" in r.text


def test_trl_server_mode_rollouts(vllm_server, toy_engine):
    import math

    from trl.generation.vllm_client import VLLMClient

    from elastic_reasoning.generation.vllm_server_engine import VLLMServerEngine

    client = VLLMClient(base_url=vllm_server, connection_timeout=30)
    engine = VLLMServerEngine(client, toy_engine.tokenizer, max_model_len=512)
    budget = BudgetConfig(thinking_budget=4, solution_budget=3)
    prompts = ["what is 1 + 2 ?"] * 4 + ["what is the sum of 4 5 6 ?"] * 4  # TRL repeats each prompt
    out = engine.generate(prompts, budget, SamplingConfig(temperature=0.7, top_p=0.9, seed=3))
    assert [c.prompt_index for c in out] == list(range(8))
    for c in out:
        assert c.thinking_tokens <= 4 and c.solution_tokens <= 3
        assert len(c.completion_ids) == len(c.sampled_mask) == len(c.logprobs)
        if c.thinking_truncated:
            assert c.sampled_mask[c.end_thinking_index] == 0
        for lp, m in zip(c.logprobs, c.sampled_mask):  # processed log-probs; NaN where forced
            assert math.isnan(lp) if m == 0 else lp <= 1e-6
    assert len({tuple(c.completion_ids) for c in out[:4]}) > 1  # n samples of one prompt differ


def test_upstream_mode_over_real_vllm_serve(vllm_server, toy_dir):
    import openai

    from elastic_reasoning.serving import BackgroundServer, ServerConfig, build_upstream_model, create_app

    model = build_upstream_model(vllm_server + "/v1", tokenizer=str(toy_dir), name="front")
    with BackgroundServer(create_app(model, ServerConfig(max_concurrent_batches=4))) as front:
        c = openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0, timeout=120)
        for t, s in [(0, 3), (5, 4), (9, 2)]:
            r = c.chat.completions.create(model="front", messages=[{"role": "user", "content": "what is 2 + 2 ?"}],
                                          temperature=1.0, extra_body={"thinking_budget": t, "solution_budget": s})
            details = r.usage.completion_tokens_details
            assert details.reasoning_tokens <= t and details.model_extra["solution_tokens"] <= s
