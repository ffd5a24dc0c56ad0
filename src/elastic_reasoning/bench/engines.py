"""``elastic-reasoning bench engines``: which engine generates GRPO rollouts faster here, transformers or vLLM.

The same batch of rollout-shaped requests (prompts of the synthetic task through the model's chat template, the
budget ``t``/``s`` of E1's training, sampling at T = 1 with one seed) through the transformers engine and through
vLLM (offline ``LLM``, the budget logits processor in-process), one torch/OpenMP thread each as in a demo worker.
Runs are interleaved (A, B, A, B, ...) and medians compared; tokens/s is the fair figure (two backends sampling at
T = 1 do not emit the same tokens). Needs vLLM: run it with ``.venv-vllm/bin/elastic-reasoning`` on a CPU machine
(that environment holds both engines).
"""

from __future__ import annotations

import platform
import statistics
import time


def run_engines_bench(*, model: str = "smollm2-135m", requests: int = 16, thinking_budget: int = 32,
                      solution_budget: int = 16, repeats: int = 3, threads: int = 1, log=None) -> dict:
    import os

    import torch

    from ..budget import BudgetConfig
    from ..data.synthetic import SyntheticConfig, generate_problems
    from ..generation.engines import load_engine
    from ..generation.record import SamplingConfig
    from ..models import resolve_model_path

    def say(msg):
        if log is not None:
            print(msg, file=log, flush=True)

    torch.set_num_threads(threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    path = resolve_model_path(model)
    prompts = [p.prompt for p in generate_problems(requests, "train", seed=1, config=SyntheticConfig(min_terms=3, max_terms=5))]
    budget = BudgetConfig(thinking_budget=thinking_budget, solution_budget=solution_budget)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=0)
    say(f"loading {model} in both engines")
    engines = {"transformers": load_engine(path, "transformers", device="cpu", max_batch_size=requests),
               "vllm": load_engine(path, "vllm", max_model_len=512)}
    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {name: [] for name in engines}
    for name, engine in engines.items():  # warm-up run, not timed
        engine.generate(prompts, budget, sampling)
    for i in range(repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(prompts, budget, sampling)
            times[name].append(time.perf_counter() - start)
            tokens[name].append(sum(len(c.completion_ids) for c in out))
            say(f"repeat {i + 1}/{repeats} {name}: {times[name][-1]:.2f} s, {tokens[name][-1]} tokens")
    rows = {name: {"median_s": statistics.median(times[name]), "tokens": statistics.median(tokens[name]),
                   "tokens_per_s": statistics.median(t / s for t, s in zip(tokens[name], times[name]))}
            for name in engines}
    return {"model": model, "requests": requests, "thinking_budget": thinking_budget,
            "solution_budget": solution_budget, "threads": threads, "repeats": repeats, "engines": rows,
            "vllm_over_transformers_tokens_per_s": rows["vllm"]["tokens_per_s"] / rows["transformers"]["tokens_per_s"],
            "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def format_table(result: dict) -> str:
    lines = [f"{result['model']}: {result['requests']} rollouts, t = {result['thinking_budget']}, "
             f"s = {result['solution_budget']}, T = 1, {result['threads']} thread(s), medians of "
             f"{result['repeats']} interleaved repeats ({result['machine']}, torch {result['torch']})", "",
             "| engine | seconds per batch | tokens | tokens/s |", "|---|---|---|---|"]
    for name, row in result["engines"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['tokens']:.0f} | {row['tokens_per_s']:.1f} |")
    lines += ["", f"vLLM / transformers, tokens per second: {result['vllm_over_transformers_tokens_per_s']:.2f}"]
    return "\n".join(lines)
