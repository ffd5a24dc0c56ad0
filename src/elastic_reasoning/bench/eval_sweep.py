"""``elastic-reasoning bench eval``: what shared thinking saves in a 4-budget sweep (issue 5, section 9).

The same elastic sweep (problems of the synthetic task x samples, budgets ``t1 < t2 < t3 < t4``, solution budget
``s``) is run with shared thinking and with independent runs, interleaved (shared, independent, shared, ...), and the
medians compared: ``tokens_ratio = decoded tokens shared / independent`` (exact, the same every repeat) and
``time_ratio = wall time shared / independent``. No scoring, no store: generation only.

What to expect when thinking is always cut (an untrained model): independent runs decode ``sum(t) + 4 s`` per
completion, shared ``max(t) + 4 s``; thinking that ends before a budget is shared too (one solution for all the
budgets it ends within).
"""

from __future__ import annotations

import platform
import statistics
import time

from ..data import load_dataset
from ..evaluation.methods import method_points
from ..evaluation.sweep import independent_sweep, shared_sweep
from ..generation.record import SamplingConfig


def run_eval_sweep_bench(*, model: str = "toy", thinking_budgets=(32, 64, 96, 128), solution_budget: int = 32,
                         problems: int = 16, samples: int = 2, repeats: int = 3, temperature: float = 0.6,
                         threads: int | None = 1, log=None) -> dict:
    import torch

    if threads:  # one thread: a tiny model gains nothing from more, and a shared machine's load hurts them most
        torch.set_num_threads(threads)

    from ..generation.engines import load_engine

    def say(msg):
        if log is not None:
            print(msg, file=log, flush=True)

    engine = load_engine(model, "transformers", device="cpu", dtype=torch.float32)
    points = method_points("elastic", list(thinking_budgets), solution_budget)
    rows = [engine.render(p.prompt, points[0].config) for p in load_dataset("synthetic", limit=problems)
            for _ in range(samples)]
    times = {"shared": [], "independent": []}
    tokens = {}
    for r in range(repeats):
        sampling = SamplingConfig(temperature=temperature, top_p=0.95, seed=r)
        for mode in ("shared", "independent"):
            start = time.perf_counter()
            if mode == "shared":
                out = shared_sweep(engine, rows, points, sampling)
            else:
                out = independent_sweep(engine, [rows] * len(points), points, [sampling] * len(points))
            times[mode].append(time.perf_counter() - start)
            tokens.setdefault(mode, []).append(out.tokens_generated)
            say(f"bench eval: repeat {r + 1}/{repeats} {mode}: {out.tokens_generated} tokens, "
                f"{times[mode][-1]:.2f} s")
    med = {m: statistics.median(v) for m, v in times.items()}
    tok = {m: statistics.median(v) for m, v in tokens.items()}
    return {
        "model": model,
        "thinking_budgets": list(points[i].budget for i in range(len(points))),
        "solution_budget": solution_budget,
        "completions_per_budget": len(rows),
        "repeats": repeats,
        "tokens_shared": tok["shared"],
        "tokens_independent": tok["independent"],
        "tokens_ratio": tok["shared"] / tok["independent"],
        "time_shared_s": med["shared"],
        "time_independent_s": med["independent"],
        "time_ratio": med["shared"] / med["independent"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def format_result(r: dict) -> str:
    return "\n".join([
        f"bench eval: {r['model']}, elastic sweep t={r['thinking_budgets']}, s={r['solution_budget']}, "
        f"{r['completions_per_budget']} completions per budget, median of {r['repeats']} ({r['machine']})",
        "| | shared thinking | independent runs | shared / independent |",
        "|---|---|---|---|",
        f"| tokens decoded | {r['tokens_shared']:.0f} | {r['tokens_independent']:.0f} | {r['tokens_ratio']:.2f} |",
        f"| wall time (s) | {r['time_shared_s']:.2f} | {r['time_independent_s']:.2f} | {r['time_ratio']:.2f} |",
    ])
