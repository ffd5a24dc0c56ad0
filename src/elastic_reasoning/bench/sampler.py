"""``bench sampler``: the engines' token draw (``generation/sampling.draw``, inverse CDF) against ``torch.multinomial``
on the same probabilities, side by side in one run (medians of interleaved repeats), on this process's torch threads."""

from __future__ import annotations

import statistics
import time


def run(rows: int = 128, vocab: int = 1071, repeats: int = 9, calls: int = 200, threads: int = 1) -> dict:
    import torch

    from ..generation.sampling import draw

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(rows, vocab, generator=generator) * 3, dim=-1)
    candidates = {
        "multinomial": lambda: torch.multinomial(probs, 1, generator=generator),
        "inverse_cdf": lambda: draw(probs, generator),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        fn()  # warm
    for _ in range(repeats):
        for name, fn in candidates.items():  # interleaved: both see the same machine state
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {"rows": rows, "vocab": vocab, "threads": threads, "repeats": repeats,
            "multinomial_ms": med["multinomial"], "inverse_cdf_ms": med["inverse_cdf"],
            "speedup": med["multinomial"] / med["inverse_cdf"]}
