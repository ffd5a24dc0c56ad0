"""Paired comparisons of two evaluation runs on the same problems: ``report A B --paired``.

For each sweep point the two runs share (method, thinking budget, solution budget), the difference of their Avg@k
accuracy (``a - b``, points) with a 95 % bootstrap interval that resamples the problems jointly (``stats.py``).
Only runs that can be compared are: the same dataset (and its options), the same sampling settings, the same texts
and solution budget; what differs is named. The model (and its label and seed) is what a comparison varies.
"""

from __future__ import annotations

import json
from pathlib import Path

from .metrics import avg_at_k
from .stats import paired_difference_ci, score_matrix
from .store import CONFIG, ResultStore

VARIES = {"model", "model_name", "seed", "backend", "endpoint"}
"""Settings two compared runs may differ in; any other difference is refused."""


def run_settings(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    if not path.exists():
        raise ValueError(f"{directory}: no {CONFIG} (not an eval output directory)")
    return json.loads(path.read_text())


def check_comparable(a: str | Path, b: str | Path) -> None:
    """Refuse two runs whose results depend on different settings, naming each difference."""
    sa, sb = run_settings(a), run_settings(b)
    differ = sorted(k for k in set(sa) | set(sb) if k not in VARIES and sa.get(k) != sb.get(k))
    if differ:
        detail = "; ".join(f"{k}: {sa.get(k)!r} in {a}, {sb.get(k)!r} in {b}" for k in differ)
        raise ValueError(f"cannot compare {a} with {b}: they differ in {detail}")


def paired_differences(a: str | Path, b: str | Path, *, seed: int = 0) -> list[dict]:
    """One record per sweep point the two runs share, with ``difference`` and its ``ci_low``/``ci_high`` (points)."""
    check_comparable(a, b)
    rows_a, rows_b = ResultStore.read(a), ResultStore.read(b)

    def points(rows):
        out: dict[tuple, list[dict]] = {}
        for r in rows:
            out.setdefault((r["method"], r["budget"], r.get("s", r.get("solution_budget"))), []).append(r)
        return out

    pa, pb = points(rows_a), points(rows_b)
    records = []
    for key in sorted(set(pa) & set(pb), key=lambda k: (k[0], float("inf") if k[1] is None else k[1],
                                                         float("inf") if k[2] is None else k[2])):
        sa, sb = avg_at_k(pa[key]), avg_at_k(pb[key])
        common = sorted(set(sa) & set(sb))
        if not common:
            continue
        if len(common) != len(sa) or len(common) != len(sb):
            raise ValueError(f"cannot pair {a} with {b} at {key}: {len(sa)} and {len(sb)} problems, "
                             f"{len(common)} in common (run both on the same problems)")
        d, low, high = paired_difference_ci(score_matrix([sa], common), score_matrix([sb], common), seed=seed)
        records.append({"method": key[0], "thinking_budget": key[1], "solution_budget": key[2],
                        "problems": len(common), "difference": 100.0 * d, "ci_low": 100.0 * low,
                        "ci_high": 100.0 * high})
    if not records:
        raise ValueError(f"{a} and {b} share no sweep point (method, budget) to compare")
    return records


def format_paired(records: list[dict], a: str, b: str) -> str:
    lines = [f"Paired difference, {a} minus {b} (accuracy points, 95 % bootstrap interval over the same problems):",
             "", "| method | t | s | difference [95% CI] | problems |", "|---|---|---|---|---|"]
    for r in records:
        t = "none" if r["thinking_budget"] is None else r["thinking_budget"]
        s = "-" if r["solution_budget"] is None else r["solution_budget"]
        lines.append(f"| {r['method']} | {t} | {s} | {r['difference']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]"
                     f" | {r['problems']} |")
    return "\n".join(lines)
