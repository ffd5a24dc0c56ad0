"""The Codeforces rating estimate (CodeElo's method) on a small fixture of two contests."""

import math
from pathlib import Path

import pytest

from elastic_reasoning.evaluation.codeforces import (Contest, contest_rank, contest_score, estimate_rating,
                                                     expected_rank, load_contests, performance_rating,
                                                     submissions_from_rows)

FIXTURE = Path(__file__).parent / "fixtures" / "codeforces_contests.json"


def test_scores_follow_the_official_rules():
    contests, _ = load_contests(FIXTURE)
    points, icpc = contests
    # first accepted submission counts; 50 points lost per wrong one, never below 30 %
    assert contest_score(points, {"A": [False, True], "B": [True], "C": [False] * 30 + [True]}) == (450 + 1000 + 450, 0)
    assert contest_score(icpc, {"A": [True], "B": [False, False, True]}) == (2, 20)


def test_rank_and_the_elo_inverse():
    contests, _ = load_contests(FIXTURE)
    icpc = contests[1]
    assert contest_rank(icpc, 2, 20) == 1 and contest_rank(icpc, 2, 40) == 2 and contest_rank(icpc, 0, 0) == 5
    # four participants at 1500, placed second: 1 + 4 / (1 + 10^((r-1500)/400)) = 2  =>  r = 1500 + 400 log10(3)
    r = performance_rating(icpc, 2)
    assert r == pytest.approx(1500 + 400 * math.log10(3), abs=1.0)
    assert expected_rank(r, icpc.ratings) == pytest.approx(2, abs=0.01)


def test_estimate_from_eval_rows_with_a_percentile():
    contests, users = load_contests(FIXTURE)
    rows = [{"problem_id": f"9001/{i}", "sample": s, "correct": ok, "method": "elastic", "budget": 1024}
            for i, verdicts in {"A": [True, True], "B": [False, True], "C": [False, False]}.items()
            for s, ok in enumerate(verdicts)]
    rows += [{"problem_id": "9002/A", "sample": 0, "correct": True, "method": "elastic", "budget": 1024}]
    estimate = estimate_rating(contests, submissions_from_rows(rows), users)
    # 9001: 500 + 950 = 1450 points, level with the third (same penalty: placed after it) -> fourth
    assert set(estimate.per_contest) == {"9001", "9002"}
    assert estimate.per_contest["9001"] == pytest.approx(performance_rating(contests[0], 4))
    assert estimate.per_contest["9002"] == pytest.approx(performance_rating(contests[1], 4))  # 1 solved, no penalty: ahead of [1, 20]
    assert estimate.rating == pytest.approx(sum(estimate.per_contest.values()) / 2)
    assert 0 < estimate.percentile < 100
    better = estimate_rating(contests, {"9001": {"A": [True], "B": [True], "C": [True]}}, users)
    assert better.rating > estimate.per_contest["9001"] and better.percentile >= 90


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="same, non-zero"):
        Contest("1", {"A": 500}, [(1, 0)], [])
    contests, _ = load_contests(FIXTURE)
    with pytest.raises(ValueError, match="CONTEST/INDEX"):
        estimate_rating(contests, {})


def test_report_prints_the_rating_of_an_eval_directory(tmp_path, capsys):
    import json

    from elastic_reasoning.cli import main
    from elastic_reasoning.evaluation.metrics import summarize

    d = tmp_path / "run"
    d.mkdir()
    rows = [{"model": "m", "dataset": "codeforces", "problem_id": f"9001/{i}", "sample": 0, "method": "elastic",
             "budget": 8, "correct": i == "A", "score": float(i == "A"), "thinking_tokens": 1, "solution_tokens": 1,
             "total_tokens": 2, "thinking_truncated": False, "tokens_generated": 2} for i in "ABC"]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps(summarize(rows)))
    assert main(["report", str(d), "--codeforces", str(FIXTURE), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "Codeforces rating" in out and "| elastic | 8 |" in out
