"""``elastic-reasoning eval``: a budget sweep of one method on one dataset, resumable, with a summary at the end.

Work is cut into **units**: a chunk of problems (up to ``max_batch_size`` completions) times all the sweep's points
(shared thinking) or times one point (independent runs). A unit whose results are all stored is skipped; a unit
with missing results is computed and only the missing rows are written, the moment it is done. Each unit's sampler
is seeded from ``(seed, method, chunk, point)``, so a run is repeatable, and a resumed run draws what the
uninterrupted run would have drawn for the units it still has to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..budget import BudgetConfig
from ..data import Problem, load_dataset
from ..generation.record import SamplingConfig
from .methods import L1_EXACT_PROMPT, METHODS, S1_ANSWER_PREFIX, SHAREABLE, MethodPoint, method_points, with_prompt
from .metrics import format_table, summarize
from .store import ResultStore

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass
class EvalConfig:
    """One evaluation run. The CLI's ``eval`` mirrors these fields."""

    model: str
    """Model directory, hub id, or short name (``toy``, ``smollm2-135m``)."""
    dataset: str = "synthetic"
    """Dataset name (``elastic_reasoning.data.datasets()``) or a local JSONL/JSON/parquet file."""
    method: str = "elastic"
    """elastic | truncate | s1 | l1 | none (``evaluation/methods.py``)."""
    thinking_budgets: tuple[int, ...] = (1024, 2048, 3072, 4096)
    """Sweep values ``t`` (the paper's code sweep)."""
    solution_budget: int = 1024
    """Solution budget ``s`` (elastic, s1); truncate and l1 use the total ``t + s``."""
    solution_budgets: tuple[int, ...] = ()
    """A grid of solution budgets instead of the one ``solution_budget``: every ``t`` is run with every ``s`` (rows
    and summary records carry ``s``; the points of one ``s`` share thinking, and so do the ``s`` of one ``t``)."""
    samples: int = 1
    """Samples per problem ``K`` (paper: 16 for math, 8 for Codeforces)."""
    limit: int | None = None
    """Evaluate only the first ``limit`` problems."""
    seed: int | None = 0
    """Seeds every unit's sampler: the same seed gives the same results."""
    output: str | None = None
    """Output directory (store, config, summary). Default: ``runs/eval/<model>-<dataset>``."""
    independent: bool = False
    """Run every budget separately instead of sharing thinking (elastic, s1, truncate share by default)."""
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    end_thinking: str = "</think>"
    start_thinking: str = "<think>"
    transition: str = ""
    eos_in_thinking: str = "end_thinking"
    answer_prefix: str = S1_ANSWER_PREFIX
    """s1's forced answer prefix (written the way the tokenizer writes it when it normalises text)."""
    l1_prompt: str = L1_EXACT_PROMPT
    """L1's budget sentence, ``{n}`` = the asked length."""
    max_tokens: int | None = None
    """Cap on all emitted tokens for ``none`` (default: the model's context)."""
    data_file: str | None = None
    """Load a named benchmark from this local file instead of its hub id."""
    dataset_options: dict[str, Any] = field(default_factory=dict)
    """Loader options (``synthetic``: ``n``, ``split``, ``seed``, ``min_terms``, ``max_terms``, ``max_value``)."""
    model_name: str | None = None
    """Label in the store, summary and plots (default: the model's directory or id name)."""
    endpoint: str | None = None
    """Base URL of an OpenAI-compatible server: generate there, phase by phase (``RemoteEngine``), ``model`` being
    the served model's id. Budgets then always run independently (shared thinking replays token ids)."""
    tokenizer: str | None = None
    """With ``endpoint``: where to load the tokenizer that renders prompts and counts tokens (default: ``model``)."""
    api_key: str | None = None
    """With ``endpoint``: its API key (default: the ``OPENAI_API_KEY`` environment variable)."""
    max_batch_size: int = 64
    backend: str = "transformers"
    """Local generation backend: ``transformers`` or ``vllm`` (ignored with ``endpoint``)."""
    dtype: str | None = None
    device: str | None = None
    progress: bool | None = None
    """Progress bar on stderr; None: only on a terminal."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; one of {', '.join(METHODS)}")
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        self.thinking_budgets = tuple(self.thinking_budgets)
        self.solution_budgets = tuple(sorted(set(self.solution_budgets)))
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in self.solution_budgets):
            raise ValueError(f"solution budgets must be non-negative integers, got {list(self.solution_budgets)}")
        SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)  # validates

    @property
    def label(self) -> str:
        return self.model_name or Path(self.model.rstrip("/")).name or self.model

    @property
    def output_dir(self) -> Path:
        if self.output:
            return Path(self.output)
        return Path("runs") / "eval" / f"{self.label}-{Path(self.dataset).stem}"

    @property
    def shared(self) -> bool:
        return self.method in SHAREABLE and not self.independent and not self.endpoint

    def settings(self) -> dict[str, Any]:
        """What stored results depend on; a directory only takes runs with the same settings."""
        return {
            "model": self.model, "model_name": self.label, "dataset": self.dataset, "data_file": self.data_file,
            "dataset_options": {k: str(v) for k, v in sorted(self.dataset_options.items())},
            "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed,
            "solution_budget": self.solution_budget, "end_thinking": self.end_thinking,
            "start_thinking": self.start_thinking, "transition": self.transition,
            "eos_in_thinking": self.eos_in_thinking, "answer_prefix": self.answer_prefix,
            "l1_prompt": self.l1_prompt, "max_tokens": self.max_tokens, "endpoint": self.endpoint,
            "backend": None if self.endpoint else self.backend,
            **({"solution_budgets": list(self.solution_budgets)} if self.solution_budgets else {}),
        }

    @property
    def grid(self) -> tuple[int | None, ...]:
        """The solution budgets swept: the grid, or ``(None,)`` for the single ``solution_budget`` (rows then carry
        no ``s`` field, as before grids existed)."""
        return (self.solution_budgets or (None,)) if self.method != "none" else (None,)

    def base_budget(self) -> BudgetConfig:
        return BudgetConfig(end_thinking=self.end_thinking, start_thinking=self.start_thinking,
                            transition=self.transition, eos_in_thinking=self.eos_in_thinking)

    def sampling(self, seed: int | None) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=seed)


@dataclass
class EvalResult:
    output_dir: Path
    records: list[dict]
    """Summary records of the whole store (every method run into this directory)."""
    computed: int
    """Results computed by this run (0 when everything was already stored)."""
    tokens_generated: int
    wall_s: float


def unit_seed(seed: int | None, *parts: Any) -> int | None:
    if seed is None:
        return None
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def canonical_text(tokenizer, text: str) -> str:
    """``text`` as the tokenizer can force it exactly.

    A normalising tokenizer writes "Final Answer:" back as "final answer :": that form is used. Words it cannot
    encode at all (the unknown token) are dropped (the tiny model's vocabulary has no "final": s1's prefix becomes
    "answer :" there; the runner logs the change). Nothing left: the text itself, which then fails with the
    tokenizer's own clear error."""
    if not text:
        return text
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if unk is not None and unk in ids:
        kept = [w for w in text.split() if unk not in tokenizer.encode(w, add_special_tokens=False)]
        if not kept:
            return text
        return canonical_text(tokenizer, " ".join(kept))
    decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).strip()
    if decoded != text.strip() and list(tokenizer.encode(decoded, add_special_tokens=False)) == ids:
        return decoded
    return text


def _points(config: EvalConfig, tokenizer=None, s: int | None = None) -> list[MethodPoint]:
    prefix = config.answer_prefix
    if tokenizer is not None and config.method == "s1":
        prefix = canonical_text(tokenizer, prefix)
        if prefix != config.answer_prefix:
            logger.warning("s1 answer prefix %r forced as %r (what this tokenizer can write)", config.answer_prefix,
                           prefix)
    return method_points(config.method, config.thinking_budgets, config.solution_budget if s is None else s,
                         base=config.base_budget(),
                         answer_prefix=prefix, l1_prompt=config.l1_prompt, max_tokens=config.max_tokens)


def _chunks(problems: list[Problem], per_chunk: int) -> list[list[Problem]]:
    return [problems[i: i + per_chunk] for i in range(0, len(problems), per_chunk)]


def run_eval(config: EvalConfig, *, engine=None, log: TextIO | None = sys.stderr,
             table: TextIO | None = None) -> EvalResult:
    """Run (or resume) the sweep and write ``summary.json``. Progress and messages go to ``log``, the summary table
    of the whole directory to ``table``. ``engine``: reuse a loaded engine."""
    start = time.perf_counter()
    problems = load_dataset(config.dataset, data_file=config.data_file, limit=config.limit, **config.dataset_options)
    grid = {s: _points(config, s=s) for s in config.grid}
    out_dir = config.output_dir
    per_chunk = max(1, config.max_batch_size // config.samples)
    chunks = _chunks(problems, per_chunk)
    mode = "shared" if config.shared else "independent"

    def say(msg: str) -> None:
        if log is not None:
            print(msg, file=log, flush=True)

    computed = decoded_total = 0
    with ResultStore(out_dir, config.settings()) as store:
        def key_for(grid_s: int | None):
            def key(p: Problem, s: int, point: MethodPoint) -> tuple:
                return (config.label, config.dataset, p.id, s, config.method, point.budget, grid_s)
            return key

        def missing_in(chunk) -> int:
            return sum(not store.has(key_for(g)(p, s, pt)) for g, points in grid.items() for p in chunk
                       for s in range(config.samples) for pt in points)

        todo = [(ci, chunk) for ci, chunk in enumerate(chunks) if missing_in(chunk)]
        missing = sum(missing_in(chunk) for _, chunk in todo)
        first = next(iter(grid.values()))
        grid_note = f", solution budgets {list(config.solution_budgets)}" if config.solution_budgets else ""
        say(f"eval: {config.label} on {config.dataset} ({len(problems)} problems x {config.samples} samples), "
            f"method {config.method}, budgets {[p.budget for p in first]}{grid_note}, {mode}; "
            f"{missing} results to compute, {len(store.rows)} already in {out_dir}")
        if todo:
            if engine is None:
                engine = _make_engine(config)
            grid = {s: _points(config, engine.tokenizer, s=s) for s in config.grid}
            for pt in (pt for points in grid.values() for pt in points):
                engine.budget_tokens(pt.config)  # a text the tokenizer cannot encode fails now, not mid-run
            from tqdm.auto import tqdm

            from .scoring import Scorer

            scorer = Scorer()
            disable = (not (log is not None and getattr(log, "isatty", lambda: False)())
                       if config.progress is None else not config.progress)
            bar = tqdm(total=missing, unit="result", desc=f"{config.method} {config.label}", disable=disable,
                       file=log or sys.stderr, dynamic_ncols=True)
            try:
                for ci, chunk in todo:
                    rows = []
                    for g, points in grid.items():
                        rows += _run_unit(config, engine, scorer, chunk, ci, points, store, key_for(g), g)
                    written = store.append(rows)
                    computed += written
                    decoded_total += sum(r["tokens_generated"] for r in rows)
                    bar.update(written)
                    if disable:
                        say(f"eval: {len(store.rows)} results stored ({computed}/{missing} new), "
                            f"{time.perf_counter() - start:.0f} s")
            except KeyboardInterrupt:
                bar.close()
                say(f"eval: interrupted; {len(store.rows)} results are safe in {out_dir / 'results.jsonl'}; "
                    f"run the same command again to resume")
                raise
            bar.close()
        records = summarize(store.rows)
        _write_json(out_dir / SUMMARY, records)
    wall = time.perf_counter() - start
    if table is not None:
        print(format_table(records), file=table, flush=True)
    if log is not None:
        say(f"eval: {computed} results computed, {decoded_total} tokens decoded, {wall:.1f} s; summary: "
            f"{out_dir / SUMMARY}")
    return EvalResult(out_dir, records, computed, decoded_total, wall)


def _make_engine(config: EvalConfig):
    from ..generation.engines import load_engine

    if config.endpoint:
        return load_engine(config.model, "remote", endpoint=config.endpoint, tokenizer=config.tokenizer or config.model,
                           api_key=config.api_key or os.environ.get("OPENAI_API_KEY"),
                           max_batch_size=config.max_batch_size)
    return load_engine(config.model, config.backend, dtype=config.dtype, device=config.device,
                       max_batch_size=config.max_batch_size)


def _remote_point(engine, prompts: list[str], point: MethodPoint, sampling: SamplingConfig):
    """One point on an engine with only ``generate`` (the remote engine): completions and what the server decoded."""
    out = engine.generate(prompts, point.config, sampling)
    return out, [int(c.extra.get("completion_tokens", c.total_tokens)) for c in out]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _run_unit(config: EvalConfig, engine, scorer, chunk: list[Problem], ci: int, points: list[MethodPoint], store,
              key, grid_s: int | None = None) -> list[dict]:
    from .sweep import SweepOutput, independent_sweep, shared_sweep

    jobs = [(p, s) for p in chunk for s in range(config.samples)]
    if config.shared and len(points) > 1:
        prompts = [engine.render(p.prompt, points[0].config) for p, _ in jobs]
        out = shared_sweep(engine, prompts, points, config.sampling(unit_seed(config.seed, config.method, ci, "shared")))
        mode = "shared"
    else:
        todo = [k for k, pt in enumerate(points) if any(not store.has(key(p, s, pt)) for p, s in jobs)]
        sub = [points[k] for k in todo]
        samplings = [config.sampling(unit_seed(config.seed, config.method, ci, pt.budget)) for pt in sub]
        if hasattr(engine, "continue_ids"):
            prompts = [[engine.render(with_prompt(p.prompt, pt), pt.config) for p, _ in jobs] for pt in sub]
            partial = independent_sweep(engine, prompts, sub, samplings)
        else:  # a remote engine: text prompts, rendered by its tokenizer
            results = [_remote_point(engine, [with_prompt(p.prompt, pt) for p, _ in jobs], pt, sampling)
                       for pt, sampling in zip(sub, samplings)]
            partial = SweepOutput([r[0] for r in results], [r[1] for r in results])
        out = SweepOutput([None] * len(points), [[0] * len(jobs) for _ in points])
        for k, c, d in zip(todo, partial.completions, partial.decoded):
            out.completions[k], out.decoded[k] = c, d
        mode = "independent"

    # The rows this unit must write, each with the tokens an uninterrupted run attributes to it: a repaired or resumed
    # unit re-decodes its stored siblings too, but that work is not charged to the rows it recomputes.
    wanted = [(k, j) for j, (p, s) in enumerate(jobs) for k, pt in enumerate(points) if not store.has(key(p, s, pt))]
    decoded = {(k, j): out.decoded[k][j] for k, j in wanted}
    completions = [out.completions[k][j] for k, j in wanted]
    graded = scorer.score([jobs[j][0] for _, j in wanted], completions)
    rows = []
    for (k, j), c, g in zip(wanted, completions, graded):
        p, s = jobs[j]
        pt = points[k]
        row = {
            "model": config.label, "dataset": config.dataset, "problem_id": p.id, "sample": s,
            "method": config.method, "budget": pt.budget, "mode": mode,
            "solution_budget": pt.config.solution_budget, "max_total_tokens": pt.config.max_total_tokens,
            **({} if grid_s is None else {"s": grid_s}),
            "score": g["score"], "correct": bool(g["correct"]),
            "thinking_tokens": c.thinking_tokens, "solution_tokens": c.solution_tokens,
            "forced_tokens": c.forced_tokens, "total_tokens": c.total_tokens,
            "thinking_truncated": c.thinking_truncated, "thinking_end": c.thinking_end,
            # cut by any budget: the thinking budget, or a total cap that stopped it before it ended (truncate, l1)
            "thinking_cut": c.thinking_truncated or (not c.thinking_ended and c.finish_reason == "length"),
            "thinking_ended": c.thinking_ended,
            "finish_reason": c.finish_reason, "tokens_generated": decoded[(k, j)],
            "thinking": c.thinking, "solution": c.solution,
        }
        for extra in ("extracted_answer", "pass_fraction", "answered"):
            if extra in g:
                row[extra] = g[extra]
        rows.append(row)
    return rows


def load_records(directory: str | Path) -> list[dict]:
    """Summary records of an output directory: its ``summary.json``, or recomputed from its store."""
    directory = Path(directory)
    path = directory / SUMMARY
    if path.exists():
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data.get("records", [])
    rows = ResultStore.read(directory)
    if not rows:
        raise FileNotFoundError(f"{directory}: no {SUMMARY} and no results (not an eval output directory?)")
    return summarize(rows)


__all__ = ["EvalConfig", "EvalResult", "canonical_text", "load_records", "run_eval", "unit_seed"]
