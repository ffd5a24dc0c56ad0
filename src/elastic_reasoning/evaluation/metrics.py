"""From stored result rows to the summary: Avg@k accuracy with its interval, unbiased pass@k, token means. No torch.

A summary record per (model, dataset, method, thinking budget, solution budget):

* ``accuracy``: Avg@k, the correctness of each problem's k samples averaged, then averaged over problems, in percent
  (the paper's Avg@16 convention); ``accuracy_ci_low``/``accuracy_ci_high``: its 95 % bootstrap interval over
  problems (``stats.py``); ``seeds``: 1 for one run (the demo aggregates several);
* ``pass_at_k``: ``{"k": percent}`` for k = 1, 2, 4, ... up to the fewest samples any problem has, unbiased
  (``1 - C(n-c, k) / C(n, k)`` per problem, Chen et al. 2021), averaged over problems;
* ``thinking_tokens``, ``solution_tokens``, ``total_tokens``: means over all samples (thinking content without the
  delimiter; solution EOS included; total = everything emitted, forced tokens included);
* ``truncated_fraction``: the share of samples whose thinking was cut (by the thinking budget, or by a total cap
  that stopped it before it ended: truncate, l1, none);
* ``no_answer_fraction``: the share of samples with no final answer to grade (no end of thinking, no boxed answer,
  no ``answer N`` line, no code block: ``scoring.py`` says per kind);
* ``tokens_generated``: the tokens actually decoded for this point (sum), which shows what shared thinking saves.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

from .stats import mean_ci


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (a probability)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def _sort_key(record: dict) -> tuple:
    b, s = record["thinking_budget"], record.get("solution_budget")
    return (record["model"], record["dataset"], record["method"], math.inf if b is None else b,
            math.inf if s is None else s)


def avg_at_k(items: Iterable[dict]) -> dict[str, float]:
    """Each problem's Avg@k (mean correctness of its samples, 0..1)."""
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for r in items:
        per_problem[r["problem_id"]].append(bool(r["correct"]))
    return {p: sum(v) / len(v) for p, v in per_problem.items()}


def summarize(rows: Iterable[dict]) -> list[dict]:
    """One record per (model, dataset, method, thinking budget, solution budget), sorted by those."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["dataset"], r["method"], r["budget"], r.get("s", r.get("solution_budget")))].append(r)
    records = []
    for (model, dataset, method, budget, grid_s), items in groups.items():
        per_problem: dict[str, list[bool]] = defaultdict(list)
        for r in items:
            per_problem[r["problem_id"]].append(bool(r["correct"]))
        n_min = min(len(v) for v in per_problem.values())
        ids = sorted(per_problem)
        accuracy, ci_low, ci_high = mean_ci([[sum(per_problem[p]) / len(per_problem[p]) for p in ids]])
        pass_k = {
            str(k): 100.0 * sum(pass_at_k(len(v), sum(v), k) for v in per_problem.values()) / len(per_problem)
            for k in ks_for(n_min)
        }
        n = len(items)
        modes = sorted({r.get("mode", "independent") for r in items})
        first = items[0]
        records.append({
            "model": model,
            "dataset": dataset,
            "method": method,
            "thinking_budget": budget,
            "solution_budget": grid_s,
            "max_total_tokens": first.get("max_total_tokens"),
            "problems": len(per_problem),
            "samples": n_min,
            "completions": n,
            "accuracy": 100.0 * accuracy,
            "accuracy_ci_low": 100.0 * ci_low,
            "accuracy_ci_high": 100.0 * ci_high,
            "seeds": 1,
            "pass_at_k": pass_k,
            "thinking_tokens": sum(r["thinking_tokens"] for r in items) / n,
            "solution_tokens": sum(r["solution_tokens"] for r in items) / n,
            "total_tokens": sum(r["total_tokens"] for r in items) / n,
            "truncated_fraction": sum(bool(r.get("thinking_cut", r["thinking_truncated"])) for r in items) / n,
            "no_answer_fraction": sum(not r.get("answered", r.get("thinking_ended", True)) for r in items) / n,
            "tokens_generated": int(sum(r["tokens_generated"] for r in items)),
            "mode": modes[0] if len(modes) == 1 else "mixed",
        })
    return sorted(records, key=_sort_key)


def format_table(records: list[dict]) -> str:
    """A markdown table of summary records, readable in a terminal too."""
    header = ["model", "method", "t", "s", "accuracy % [95% CI]", "pass@k %", "thinking", "solution", "total",
              "cut %", "no answer %", "decoded", "problems x samples"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in records:
        k = max(r["pass_at_k"], key=int)
        budget = "none" if r["thinking_budget"] is None else str(r["thinking_budget"])
        s = r.get("solution_budget")
        lines.append("| " + " | ".join([
            r["model"], r["method"], budget, "-" if s is None else str(s), format_accuracy(r),
            f"@{k}: {r['pass_at_k'][k]:.1f}",
            f"{r['thinking_tokens']:.1f}", f"{r['solution_tokens']:.1f}", f"{r['total_tokens']:.1f}",
            f"{100 * r['truncated_fraction']:.0f}", f"{100 * r.get('no_answer_fraction', 0.0):.0f}",
            str(r["tokens_generated"]), f"{r['problems']} x {r['samples']}",
        ]) + " |")
    return "\n".join(lines)


def format_accuracy(r: dict) -> str:
    """``92.9 [90.6, 95.0]``: the mean and its 95 % interval (older summaries without one: the mean alone)."""
    if r.get("accuracy_ci_low") is None:
        return f"{r['accuracy']:.1f}"
    return f"{r['accuracy']:.1f} [{r['accuracy_ci_low']:.1f}, {r['accuracy_ci_high']:.1f}]"
