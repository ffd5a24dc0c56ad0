"""``elastic-reasoning report DIR [DIR...]``: a markdown table and a PNG of accuracy against mean tokens.

One line per (model, method) across all the directories given, like the paper's figures (x: mean total tokens per
completion, y: accuracy in percent); a no-budget point is drawn as a lone marker of its line's colour. Several runs
(a base model and its E1-trained version, or the same model under several methods) go on one plot. matplotlib runs
with its Agg backend: no display needed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from .metrics import format_table
from .runner import load_records

REPORT_MD = "report.md"
REPORT_PNG = "accuracy_vs_tokens.png"


def collect(dirs: list[str | Path]) -> list[dict]:
    records = []
    for d in dirs:
        for r in load_records(d):
            records.append({**r, "run": str(d)})
    if not records:
        raise ValueError("no summary records in " + ", ".join(map(str, dirs)))
    return records


def _lines(records: list[dict]) -> dict[str, list[dict]]:
    """(model, method[, dataset]) -> records ascending by budget; the run directory disambiguates duplicates."""
    datasets = {r["dataset"] for r in records}
    grids: dict[tuple, set] = defaultdict(set)  # a --solution-budgets grid: one line per solution budget
    for r in records:
        if r["thinking_budget"] is not None:
            grids[(r["model"], r["method"], r["dataset"], r["run"])].add(r.get("solution_budget"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        line = (r["model"], r["method"], r["dataset"], r["run"])
        s = r.get("solution_budget") if len(grids[line]) > 1 else None
        groups[(*line, s)].append(r)
    names: dict[str, list[dict]] = {}
    base_count: dict[tuple, int] = defaultdict(int)
    for model, method, dataset, _, s in groups:
        base_count[(model, method, dataset, s)] += 1
    for (model, method, dataset, run, s), items in groups.items():
        name = f"{model} / {method}" + (f" / s={s}" if s is not None else "") + (
            f" / {dataset}" if len(datasets) > 1 else "")
        if base_count[(model, method, dataset, s)] > 1:
            name += f" ({run})"
        items.sort(key=lambda r: math.inf if r["thinking_budget"] is None else r["thinking_budget"])
        names[name] = items
    return names


def plot(records: list[dict], path: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, items in sorted(_lines(records).items()):
        budgeted = [r for r in items if r["thinking_budget"] is not None]
        free = [r for r in items if r["thinking_budget"] is None]
        color = None
        if budgeted:
            (line,) = ax.plot([r["total_tokens"] for r in budgeted], [r["accuracy"] for r in budgeted], marker="o",
                              label=name)
            color = line.get_color()
            if all(r.get("accuracy_ci_low") is not None for r in budgeted):  # the 95 % intervals as error bars
                ax.errorbar([r["total_tokens"] for r in budgeted], [r["accuracy"] for r in budgeted],
                            yerr=[[r["accuracy"] - r["accuracy_ci_low"] for r in budgeted],
                                  [r["accuracy_ci_high"] - r["accuracy"] for r in budgeted]],
                            fmt="none", ecolor=color, capsize=2, alpha=0.8)
            for r in budgeted:
                ax.annotate(str(r["thinking_budget"]), (r["total_tokens"], r["accuracy"]), textcoords="offset points",
                            xytext=(3, 4), fontsize=7, color=color)
        for r in free:
            ax.scatter([r["total_tokens"]], [r["accuracy"]], marker="*", s=90, color=color,
                       label=name + " (no budget)" if not budgeted else None)
            if r.get("accuracy_ci_low") is not None:
                ax.errorbar([r["total_tokens"]], [r["accuracy"]], fmt="none", capsize=2, ecolor=color,
                            yerr=[[r["accuracy"] - r["accuracy_ci_low"]], [r["accuracy_ci_high"] - r["accuracy"]]])
    ax.set_xlabel("mean tokens per completion (thinking + solution)")
    ax.set_ylabel("accuracy (Avg@k, %), 95 % CI")
    ax.set_title(title or "Accuracy against tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(dirs: list[str | Path], output: str | Path | None = None, *,
                 paired: bool = False) -> tuple[Path, Path, str]:
    """Write ``report.md`` and the PNG into ``output`` (default: the first directory). Returns (md, png, table).
    ``paired``: also the paired difference of every directory after the first against the first, on the same
    problems (runs that differ in dataset or sampling are refused, naming the difference)."""
    records = collect(dirs)
    datasets = {r["dataset"] for r in records}
    if paired and len(datasets) > 1:
        raise ValueError(f"cannot compare runs on different datasets: {', '.join(sorted(datasets))}")
    out = Path(output) if output is not None else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    png = plot(records, out / REPORT_PNG)
    table = format_table(records)
    if paired:
        from .compare import format_paired, paired_differences

        for other in dirs[1:]:
            table += "\n\n" + format_paired(paired_differences(other, dirs[0]), str(other), str(dirs[0]))
    md = out / REPORT_MD
    md.write_text(
        "# Budget sweep\n\n"
        f"Runs: {', '.join(f'`{d}`' for d in dirs)}. Accuracy is Avg@k (pass@1 averaged over samples, %) with "
        "its 95 % bootstrap interval over problems (and seeds, where a summary has several); token columns "
        "are means per completion; `cut %` is the share of samples whose thinking the budget cut; `decoded` is what "
        "was actually decoded.\n\n"
        f"{table}\n\n![accuracy against tokens]({png.name})\n"
    )
    return md, png, table
