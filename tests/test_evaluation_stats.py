"""Statistics of evaluation: intervals, paired differences, refusals, the solution-budget grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from elastic_reasoning.evaluation import EvalConfig, run_eval
from elastic_reasoning.evaluation.compare import check_comparable, paired_differences
from elastic_reasoning.evaluation.report import write_report
from elastic_reasoning.evaluation.stats import mean_ci, paired_difference_ci, score_matrix


def test_interval_contains_the_mean_narrows_with_problems_and_is_the_same_bits_each_time():
    rng = np.random.default_rng(1)
    small = (rng.random((1, 50)) < 0.6).astype(float)
    large = (rng.random((1, 2000)) < 0.6).astype(float)
    m, lo, hi = mean_ci(small)
    assert lo <= m <= hi and hi - lo > 0.15
    m2, lo2, hi2 = mean_ci(large)
    assert lo2 <= m2 <= hi2 and hi2 - lo2 < 0.06
    assert mean_ci(small) == (m, lo, hi)  # seeded bootstrap


def test_interval_coverage_on_simulated_benchmarks():
    """95 % intervals should cover the true accuracy about 95 % of the time (a loose bound: 88-99 % of 200)."""
    rng = np.random.default_rng(0)
    truth, covered = 0.7, 0
    for k in range(200):
        m, lo, hi = mean_ci((rng.random((1, 300)) < truth).astype(float), draws=1000, seed=k)
        covered += lo <= truth <= hi
    assert 176 <= covered <= 199


def test_seed_spread_widens_the_interval():
    problems = np.tile(np.array([[1.0, 0.0] * 100]), (3, 1))
    alike = mean_ci(problems)
    spread = mean_ci(problems * np.array([[0.2], [0.6], [1.0]]))
    assert spread[2] - spread[1] > alike[2] - alike[1]


def test_paired_difference_is_tighter_than_two_separate_intervals():
    rng = np.random.default_rng(3)
    difficulty = rng.random(400)
    a = (difficulty < 0.7).astype(float)[None]  # a solves what b solves, and more
    b = (difficulty < 0.6).astype(float)[None]
    d, lo, hi = paired_difference_ci(a, b)
    assert d == pytest.approx(a.mean() - b.mean()) and lo > 0
    (_, alo, ahi), (_, blo, bhi) = mean_ci(a), mean_ci(b)
    assert hi - lo < 0.5 * ((ahi - alo) + (bhi - blo))


def test_score_matrix_refuses_seeds_on_other_problems():
    with pytest.raises(ValueError, match="other problems"):
        score_matrix([{"p1": 1.0, "p2": 0.0}, {"p1": 1.0, "p3": 1.0}])


def _cfg(tmp_path, name, **kw):
    base = dict(model="toy", dataset="synthetic", thinking_budgets=(4, 8), solution_budget=4, samples=2, limit=6,
                seed=0, temperature=1.0, top_p=1.0, output=str(tmp_path / name), progress=False)
    return EvalConfig(**{**base, **kw})


def test_summary_has_intervals_and_answer_fractions(toy_engine, tmp_path):
    result = run_eval(_cfg(tmp_path, "a"), engine=toy_engine, log=None)
    for r in result.records:
        assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"]
        assert r["seeds"] == 1 and 0 <= r["no_answer_fraction"] <= 1
    md, png, table = write_report([tmp_path / "a"], tmp_path / "rep")
    assert "95% CI" in table and png.stat().st_size > 1000


def test_paired_report_and_refusals(toy_engine, tmp_path):
    run_eval(_cfg(tmp_path, "a"), engine=toy_engine, log=None)
    run_eval(_cfg(tmp_path, "b", seed=5, model_name="other"), engine=toy_engine, log=None)
    records = paired_differences(tmp_path / "b", tmp_path / "a")
    assert [r["thinking_budget"] for r in records] == [4, 8]
    assert all(r["ci_low"] <= r["difference"] <= r["ci_high"] and r["problems"] == 6 for r in records)
    _, _, table = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep", paired=True)
    assert "Paired difference" in table
    run_eval(_cfg(tmp_path, "hot", temperature=0.6), engine=toy_engine, log=None)
    with pytest.raises(ValueError, match="temperature: 1.0 in .*, 0.6 in"):
        check_comparable(tmp_path / "a", tmp_path / "hot")
    run_eval(_cfg(tmp_path, "fewer", limit=3), engine=toy_engine, log=None)
    with pytest.raises(ValueError, match="same problems"):
        paired_differences(tmp_path / "fewer", tmp_path / "a")


def test_solution_budget_grid(toy_engine, tmp_path):
    cfg = _cfg(tmp_path, "grid", solution_budgets=(2, 6))
    result = run_eval(cfg, engine=toy_engine, log=None)
    assert {(r["thinking_budget"], r["solution_budget"]) for r in result.records} == {(4, 2), (4, 6), (8, 2), (8, 6)}
    assert all(r["solution_tokens"] <= r["solution_budget"] for r in result.records)
    assert run_eval(cfg, engine=toy_engine, log=None).computed == 0  # resumes by (t, s)
    rows = [json.loads(line) for line in (tmp_path / "grid" / "results.jsonl").read_text().splitlines()]
    assert {r["s"] for r in rows} == {2, 6}
    none = run_eval(_cfg(tmp_path, "grid", method="none", solution_budgets=(2, 6)), engine=toy_engine, log=None)
    assert sum(r["method"] == "none" for r in none.records) == 1  # no grid for the no-budget point
