"""``elastic-reasoning bench rollouts``: GRPO's rollouts through the transformers engine's two decoding loops.

The same rollout-shaped batch (synthetic prompts, several samples each, E1's budgets or vanilla's one cap, T = 1)
decoded by transformers' ``generate`` with the budget processor (``TransformersEngine``, the static loop: every row
stays until the longest finishes) and by the continuous decoder (``TransformersEngine(continuous=True)``: a finished
row leaves at once; what ``rollout.continuous`` selects). Runs are interleaved (static, continuous, static, ...) with
one sampling seed per repeat, and medians compared. Sampling at T = 1, the two loops do not emit the same tokens, so
the bench also scores every completion with the synthetic task's strict reward: the two loops must draw from the same
distribution, so their accuracies must agree within the seed-to-seed spread (it prints each repeat's).
"""

from __future__ import annotations

import platform
import statistics
import time


def run_rollouts_bench(*, model: str, prompts: int = 16, samples: int = 8, thinking_budget: int | None = 32,
                       solution_budget: int = 16, max_tokens: int = 160, repeats: int = 3, threads: int = 1,
                       min_terms: int = 4, max_terms: int = 8, log=None) -> dict:
    """``thinking_budget=None``: vanilla's rollouts (plain decoding under ``max_tokens``)."""
    import os

    import torch

    from ..budget import BudgetConfig
    from ..data.synthetic import SyntheticConfig, generate_problems
    from ..generation.transformers_engine import TransformersEngine
    from ..generation.record import SamplingConfig
    from ..rewards.synthetic import score_synthetic

    def say(msg):
        if log is not None:
            print(msg, file=log, flush=True)

    torch.set_num_threads(threads)
    static = TransformersEngine.from_pretrained(model, device="cpu", max_batch_size=prompts * samples)
    engines = {"static": static,
               "continuous": TransformersEngine(static.model, static.tokenizer, max_batch_size=prompts * samples,
                                                continuous=True)}
    problems = generate_problems(prompts, "train", seed=1, config=SyntheticConfig(min_terms=min_terms,
                                                                                  max_terms=max_terms))
    batch = [p.prompt for p in problems for _ in range(samples)]
    answers = [p.answer for p in problems for _ in range(samples)]
    budget = (BudgetConfig(thinking_budget=thinking_budget, solution_budget=solution_budget)
              if thinking_budget is not None else BudgetConfig.plain(max_tokens))
    for engine in engines.values():  # warm-up run, not timed
        engine.generate(batch[:samples], budget, SamplingConfig(temperature=1.0, top_p=1.0, seed=0))
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for i in range(repeats):
        sampling = SamplingConfig(temperature=1.0, top_p=1.0, seed=100 + i)
        for name, engine in engines.items():
            start = time.perf_counter()
            out = engine.generate(batch, budget, sampling)
            took = time.perf_counter() - start
            correct = [score_synthetic(c.solution, a, thinking_ended=c.thinking_ended, stopped=c.finish_reason == "stop")
                       for c, a in zip(out, answers)]
            runs[name].append({"seconds": took, "tokens": sum(len(c.completion_ids) for c in out),
                               "accuracy": 100.0 * sum(correct) / len(correct),
                               "thinking_tokens": statistics.mean(c.thinking_tokens for c in out)})
            say(f"repeat {i + 1}/{repeats} {name}: {took:.2f} s, {runs[name][-1]['tokens']} tokens, "
                f"accuracy {runs[name][-1]['accuracy']:.1f} %")
    rows = {name: {"median_s": statistics.median(r["seconds"] for r in rs),
                   "tokens": statistics.median(r["tokens"] for r in rs),
                   "accuracy_per_repeat": [round(r["accuracy"], 1) for r in rs],
                   "accuracy_mean": statistics.mean(r["accuracy"] for r in rs),
                   "thinking_tokens_mean": statistics.mean(r["thinking_tokens"] for r in rs)}
            for name, rs in runs.items()}
    return {"model": model, "rollouts": len(batch), "prompts": prompts, "samples": samples,
            "thinking_budget": thinking_budget, "solution_budget": solution_budget, "max_tokens": max_tokens,
            "threads": threads, "repeats": repeats, "decoders": rows,
            "static_over_continuous_seconds": rows["static"]["median_s"] / rows["continuous"]["median_s"],
            "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def format_table(result: dict) -> str:
    budget = (f"t = {result['thinking_budget']}, s = {result['solution_budget']}"
              if result["thinking_budget"] is not None else f"no budget, at most {result['max_tokens']} tokens")
    lines = [f"{result['model']}: {result['rollouts']} rollouts ({result['prompts']} prompts x {result['samples']}), "
             f"{budget}, T = 1, {result['threads']} thread(s), medians of {result['repeats']} interleaved repeats "
             f"({result['machine']}, torch {result['torch']})", "",
             "| decoder | seconds per batch | tokens | thinking tokens | accuracy % per repeat |", "|---|---|---|---|---|"]
    for name, row in result["decoders"].items():
        lines.append(f"| {name} | {row['median_s']:.2f} | {row['tokens']:.0f} | {row['thinking_tokens_mean']:.1f} | "
                     f"{', '.join(f'{a:.1f}' for a in row['accuracy_per_repeat'])} |")
    lines += ["", f"static / continuous, seconds per batch: {result['static_over_continuous_seconds']:.2f}"]
    return "\n".join(lines)
