"""``elastic-reasoning bench serve``: served throughput against the same requests decoded offline, side by side.

Workloads (the same chat prompts, temperature 1, top-p 1, no seed):

* ``uniform``: every request thinks up to ``t`` (default 24) and answers in up to ``s`` (default 8);
* ``mixed``: budgets and lengths vary per request, ``t`` in {8, 16, 32, 64, 128, 256} and ``s`` in {4, 8, 16, 32}
  (a fixed draw), where whole-batch decoding loses most (a batch runs until its longest row is done).

For each workload and client count ``c``:

* **served**: ``elastic-reasoning serve`` in a child process on a loopback port, ``c`` concurrent clients (threads,
  one keep-alive ``http.client`` connection each, non-streaming) sending the requests between them, each client one request at a time;
* **offline**: the same requests through the same engine in this process, in batches of ``min(c, server bound)``
  (what a server holding ``c`` requests at a time could at best batch; a 16-client server cannot reach a batch of 64):
  ``TransformersEngine.generate``, the engine training and evaluation use. The ratio served / offline is
  ``requests_per_s_ratio``;
* **continuous offline** (transformers backend): the server's own decoder (``generation/continuous.py``) in this
  process with at most ``min(c, bound)`` rows, no HTTP: served / this isolates what HTTP, JSON, chat templates and
  the engine thread's hand-offs cost (``requests_per_s_vs_offline_continuous``).

Offline and served runs are interleaved over ``repeats`` rounds and medians reported, so drift of a shared machine hits
both sides alike. Reported per client count: requests/s, completion tokens/s, the ratios served / offline, latency
p50/p99 (client side), the mean time to first token (server side: arrival to the first decoded token), the mean rows
per engine batch (continuous batching: per decoding step) and the share of wall time the engine was decoding.

``backend="vllm"`` (run from the vLLM environment) serves with ``serve --backend vllm`` and decodes offline with
:class:`~elastic_reasoning.generation.vllm_engine.VLLMEngine` (``max_num_seqs`` = the server bound), handed the same
batches of ``min(c, bound)`` requests.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

WORKLOADS = ("uniform", "mixed")
MIXED_THINKING = (8, 16, 32, 64, 128, 256)
MIXED_SOLUTION = (4, 8, 16, 32)


@dataclass(frozen=True)
class Request:
    prompt: str
    thinking_budget: int
    solution_budget: int


def workload(name: str, n: int, *, thinking_budget: int = 24, solution_budget: int = 8) -> list[Request]:
    prompts = [f"What is {i} + {3 * i + 7}?" for i in range(n)]
    if name == "uniform":
        return [Request(p, thinking_budget, solution_budget) for p in prompts]
    if name == "mixed":
        rng = random.Random(0)
        return [Request(p, rng.choice(MIXED_THINKING), rng.choice(MIXED_SOLUTION)) for p in prompts]
    raise ValueError(f"unknown workload {name!r} ({', '.join(WORKLOADS)})")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline(generate, requests: list[Request], batch: int) -> dict:
    """``generate(requests) -> completions`` over consecutive batches of ``batch`` requests."""
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(requests), batch):
        tokens += sum(len(c.completion_ids) for c in generate(requests[i : i + batch]))
    wall = time.perf_counter() - start
    return {"seconds": wall, "requests_per_s": len(requests) / wall, "tokens_per_s": tokens / wall, "tokens": tokens}


def _metrics(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            key = name.split("{")[0]
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _served(url: str, model: str, requests: list[Request], clients: int) -> dict:
    import http.client
    from urllib.parse import urlparse

    before = _metrics(url)
    shares = [requests[i::clients] for i in range(clients)]
    where = urlparse(url)

    def client(mine: list[Request]) -> tuple[int, list[float]]:
        # the standard library's keep-alive connection: the lightest client there is, so that the clients (threads of
        # this process, on the same CPU as the server) cost the measurement as little as they can
        tokens, latencies = 0, []
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
        try:
            for req in mine:
                body = json.dumps({
                    "model": model, "messages": [{"role": "user", "content": req.prompt}],
                    "thinking_budget": req.thinking_budget, "solution_budget": req.solution_budget,
                    "temperature": 1.0, "top_p": 1.0})
                sent = time.perf_counter()
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"the server answered {response.status}: {data[:300]!r}")
                latencies.append(time.perf_counter() - sent)
                tokens += json.loads(data)["usage"]["completion_tokens"]
        finally:
            conn.close()
        return tokens, latencies

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, shares))
    wall = time.perf_counter() - start
    after = _metrics(url)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("elastic_reasoning_batches_total", 0.0)
    rows = delta.get("elastic_reasoning_batch_rows_total", 0.0)
    busy = delta.get("elastic_reasoning_engine_busy_seconds_total", 0.0)
    ttft_n = delta.get("elastic_reasoning_time_to_first_token_seconds_count", 0.0)
    ttft = delta.get("elastic_reasoning_time_to_first_token_seconds_sum", 0.0) / ttft_n if ttft_n else float("nan")
    latencies = sorted(x for _, lat in results for x in lat)
    tokens = sum(t for t, _ in results)
    return {"seconds": wall, "requests_per_s": len(latencies) / wall, "tokens_per_s": tokens / wall, "tokens": tokens,
            "latency_p50_s": _quantile(latencies, 0.5), "latency_p99_s": _quantile(latencies, 0.99),
            "ttft_mean_s": ttft, "mean_batch_rows": rows / batches if batches else float("nan"),
            "engine_busy_share": busy / wall if busy else float("nan")}


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _median_row(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


class _Server:
    """``elastic-reasoning serve`` in a child process on a loopback port."""

    def __init__(self, cmd: list[str], env: dict, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"the server did not start: {self.process.stderr.read()[-2000:]}") from None
                time.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _offline_engine(backend: str, path: str, max_batch_size: int):
    """``generate(requests) -> completions`` on the backend's offline engine, and for the transformers backend also
    ``decode(requests, rows)``: the continuous decoder offline, at most ``rows`` rows at a time (no HTTP)."""
    from ..budget import BudgetConfig
    from ..generation.record import SamplingConfig

    sampling = SamplingConfig(temperature=1.0, top_p=1.0)

    def budgets(requests):
        return [BudgetConfig(thinking_budget=r.thinking_budget, solution_budget=r.solution_budget) for r in requests]

    if backend == "transformers":
        from ..generation.transformers_engine import TransformersEngine

        from ..generation.continuous import DecodeRequest

        engine = TransformersEngine.from_pretrained(path, device="cpu", max_batch_size=max_batch_size)

        def decode(requests, rows):
            decoder = engine.continuous_decoder(max_rows=rows)
            return decoder.run([DecodeRequest(engine.render(r.prompt, b), b, sampling)
                                for r, b in zip(requests, budgets(requests))])

        generate = lambda requests: engine.generate([r.prompt for r in requests], budgets(requests), sampling)  # noqa: E731
        generate.decode = decode
        return generate
    if backend == "vllm":
        from ..generation.vllm_engine import VLLMEngine

        engine = VLLMEngine.from_pretrained(path, max_num_seqs=max_batch_size)
        return lambda requests: engine.generate([r.prompt for r in requests], budgets(requests), sampling)
    raise ValueError(f"unknown backend {backend!r} (transformers or vllm)")


def run_serve_bench(*, model: str = "toy", requests: int = 64, concurrency=(1, 4, 16), thinking_budget: int = 24,
                    solution_budget: int = 8, max_batch_size: int = 16, threads: int = 1, repeats: int = 3,
                    workloads=WORKLOADS, backend: str = "transformers", batching: str = "continuous",
                    quick: bool = False, log=None) -> dict:
    import torch

    from ..models import resolve_model_path

    if quick:
        requests, concurrency, repeats = min(requests, 16), tuple(c for c in concurrency if c <= 4) or (1,), 1
    torch.set_num_threads(threads)
    path = resolve_model_path(model)
    say = (lambda msg: print(msg, file=log, flush=True)) if log else (lambda msg: None)
    work = {name: workload(name, requests, thinking_budget=thinking_budget, solution_budget=solution_budget)
            for name in workloads}
    batch_of = {c: min(c, max_batch_size) for c in concurrency}
    # one offline engine; _offline() hands it batches of min(c, bound) requests
    generate = _offline_engine(backend, path, max_batch_size)
    generate_for = {c: generate for c in concurrency}
    first = next(iter(work.values()))
    generate(first[:4])  # warm-up

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    port = _free_port()
    cmd = [sys.executable, "-m", "elastic_reasoning", "serve", "--model", path, "--served-model-name", "bench",
           "--port", str(port), "--max-batch-size", str(max_batch_size), "--max-queue", str(max(256, requests)),
           "--log-level", "warning"]
    cmd += ["--backend", "vllm"] if backend == "vllm" else ["--device", "cpu", "--batching", batching]
    offline: dict[str, dict[int, list[dict]]] = {w: {c: [] for c in concurrency} for w in work}
    decoded: dict[str, dict[int, list[dict]]] = {w: {c: [] for c in concurrency} for w in work}
    served: dict[str, dict[int, list[dict]]] = {w: {c: [] for c in concurrency} for w in work}
    server = _Server(cmd, env, port)
    try:
        _served(server.url, "bench", first[:4], 4)  # warm-up
        for rep in range(repeats):  # interleaved, so drift of a shared machine hits every side alike
            for name, reqs in work.items():
                for c in concurrency:
                    say(f"repeat {rep + 1}/{repeats}, {name}: offline in batches of {batch_of[c]}, "
                        f"served to {c} clients")
                    offline[name][c].append(_offline(generate_for[c], reqs, batch_of[c]))
                    decode = getattr(generate_for[c], "decode", None)
                    if decode is not None:  # the same decoder as the server, offline: what HTTP and scheduling cost
                        decoded[name][c].append(_offline(lambda rs, c=c: decode(rs, batch_of[c]), reqs, len(reqs)))
                    served[name][c].append(_served(server.url, "bench", reqs, c))
    finally:
        server.close()

    out_workloads = {}
    for name in work:
        rows = {}
        for c in concurrency:
            ref, got = _median_row(offline[name][c]), _median_row(served[name][c])
            if backend == "vllm":  # vLLM schedules its own steps: the server's batch counters are requests there
                got["mean_batch_rows"] = float("nan")
            rows[str(c)] = {
                "clients": c, **got,
                "offline_batch": batch_of[c], "offline_requests_per_s": ref["requests_per_s"],
                "offline_tokens_per_s": ref["tokens_per_s"],
                "requests_per_s_ratio": got["requests_per_s"] / ref["requests_per_s"],
                "tokens_per_s_ratio": got["tokens_per_s"] / ref["tokens_per_s"],
                "runs_requests_per_s_ratio": [s["requests_per_s"] / o["requests_per_s"]
                                              for s, o in zip(served[name][c], offline[name][c])],
            }
            if decoded[name][c]:
                dec = _median_row(decoded[name][c])
                rows[str(c)]["offline_continuous_requests_per_s"] = dec["requests_per_s"]
                rows[str(c)]["requests_per_s_vs_offline_continuous"] = got["requests_per_s"] / dec["requests_per_s"]
        reqs = work[name]
        out_workloads[name] = {
            "thinking_budgets": sorted({r.thinking_budget for r in reqs}),
            "solution_budgets": sorted({r.solution_budget for r in reqs}),
            "served": rows,
        }
    return {
        "backend": backend, "batching": batching if backend != "vllm" else "vllm", "model": model,
        "requests": requests, "max_batch_size": max_batch_size, "threads": threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "repeats": repeats, "workloads": out_workloads,
    }


def format_table(result: dict) -> str:
    lines = [
        f"serving vs offline, backend {result['backend']} ({result['batching']} batching), model {result['model']}, "
        f"{result['requests']} requests per run, server batch <= {result['max_batch_size']}, {result['threads']} torch "
        f"thread(s), medians of {result['repeats']} interleaved repeats; offline in batches of min(clients, bound)",
    ]
    for name, w in result["workloads"].items():
        t, s = w["thinking_budgets"], w["solution_budgets"]
        lines += [
            "",
            f"workload {name}: t in {t}, s in {s}",
            "",
            "| clients | req/s | tok/s | offline req/s | req/s vs offline | tok/s vs offline | vs continuous offline | "
            "p50 latency | p99 latency | mean TTFT | rows/step | engine busy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c, r in w["served"].items():
            lines.append(
                f"| {c} | {r['requests_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['offline_requests_per_s']:.1f} | "
                f"**{r['requests_per_s_ratio']:.2f}** | {r['tokens_per_s_ratio']:.2f} | "
                f"{r.get('requests_per_s_vs_offline_continuous', float('nan')):.2f} | "
                f"{r['latency_p50_s'] * 1000:.0f} ms | {r['latency_p99_s'] * 1000:.0f} ms | "
                f"{r['ttft_mean_s'] * 1000:.1f} ms | {r['mean_batch_rows']:.1f} | {r['engine_busy_share']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_serve_bench(quick=True, log=sys.stderr)))
