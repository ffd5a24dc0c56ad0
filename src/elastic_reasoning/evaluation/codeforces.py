"""A Codeforces rating (and percentile) from per-problem pass results, the way CodeElo's evaluation estimates it.

The paper reports a Codeforces rating for E1-Code-14B (REFERENCE.md section 3), from DeepCoder's evaluation, which
follows CodeElo (Qwen, arXiv 2501.01257, its ``calc_rating.py``). Per contest:

1. the model's **submissions** to a problem are its samples in order; its first accepted one counts. A problem with
   points scores ``max(0.3 * points, points - 50 * wrong_before)``; a contest without points scores 1 per solved
   problem with a penalty of 10 per wrong submission before the accepted one;
2. its **rank** is where that score falls in the contest's official standings (ties broken by penalty);
3. its **performance rating** is the rating ``r`` whose Elo expected rank among the contest's rated participants,
   ``1 + sum_i 1 / (1 + 10 ** ((r - r_i) / 400))`` with ``r_i`` their ratings before the contest, equals that rank
   (a binary search, as Codeforces' own rating formula does for a participant's seed).

The overall rating is the mean of the contests' performance ratings; the **percentile** is the share of Codeforces
users rated below it, given their rating distribution. Neither the standings nor the user distribution ship with
this project (they come from the Codeforces API, which needs the network): :func:`load_contests` reads them from a
JSON file the user provides (format in its doc), and the tests use a small fixture.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Contest:
    contest_id: str
    problems: dict[str, float | None]
    """Problem index (``A``, ``B``...) -> its points (None: an ICPC-style contest, 1 per problem)."""
    standings: list[tuple[float, float]]
    """(points, penalty) of the rated participants, best first."""
    ratings: list[float]
    """Their ratings before the contest, in the same order."""

    def __post_init__(self) -> None:
        if len(self.standings) != len(self.ratings) or not self.ratings:
            raise ValueError(f"contest {self.contest_id}: {len(self.standings)} standings rows for "
                             f"{len(self.ratings)} ratings (need the same, non-zero number)")


@dataclass
class RatingEstimate:
    rating: float
    per_contest: dict[str, float] = field(default_factory=dict)
    percentile: float | None = None
    """Percent of users rated below ``rating`` (None without a user rating distribution)."""


def contest_score(contest: Contest, submissions: dict[str, list[bool]]) -> tuple[float, float]:
    """(score, penalty) of the model in ``contest``: ``submissions[index]`` are its samples' verdicts in order."""
    score = penalty = 0.0
    for index, points in contest.problems.items():
        verdicts = submissions.get(index, [])
        if True not in verdicts:
            continue
        wrong = verdicts.index(True)
        if points is None:
            score += 1
            penalty += 10 * wrong
        else:
            score += max(0.3 * points, points - 50 * wrong)
    return score, penalty


def contest_rank(contest: Contest, score: float, penalty: float) -> int:
    """1-based rank of (score, penalty) in the standings: ahead of the first row it beats."""
    for i, (points, their_penalty) in enumerate(contest.standings):
        if points < score or (points == score and their_penalty > penalty):
            return i + 1
    return len(contest.standings) + 1


def expected_rank(rating: float, ratings: list[float]) -> float:
    """Elo expected rank of a participant rated ``rating`` among ``ratings`` (Codeforces' seed)."""
    return 1.0 + sum(1.0 / (1.0 + 10.0 ** ((rating - r) / 400.0)) for r in ratings)


def performance_rating(contest: Contest, rank: int) -> float:
    """The rating whose expected rank equals ``rank`` (binary search to 1 point, as CodeElo)."""
    low, high = 0.0, max(contest.ratings) + 400.0
    while high - low > 1.0:
        mid = (low + high) / 2.0
        if expected_rank(mid, contest.ratings) < rank:  # expected to place better than it did: too high
            high = mid
        else:
            low = mid
    return low


def estimate_rating(contests: list[Contest], submissions: dict[str, dict[str, list[bool]]],
                    user_ratings: list[float] | None = None) -> RatingEstimate:
    """Mean performance rating over the contests the model took part in (``submissions[contest_id]``)."""
    per_contest = {}
    for contest in contests:
        if contest.contest_id not in submissions:
            continue
        score, penalty = contest_score(contest, submissions[contest.contest_id])
        per_contest[contest.contest_id] = performance_rating(contest, contest_rank(contest, score, penalty))
    if not per_contest:
        raise ValueError("no contest of the file has results (problem ids must be 'CONTEST/INDEX', e.g. '2024/A')")
    rating = sum(per_contest.values()) / len(per_contest)
    percentile = None
    if user_ratings:
        ordered = sorted(user_ratings)
        percentile = 100.0 * bisect.bisect_left(ordered, rating) / len(ordered)
    return RatingEstimate(rating, per_contest, percentile)


def submissions_from_rows(rows: list[dict], *, method: str | None = None, budget=None) -> dict[str, dict[str, list[bool]]]:
    """Per contest, per problem index, the verdicts of its samples in sample order, from an eval store's rows whose
    ``problem_id`` is ``CONTEST/INDEX`` (the Codeforces loader's ids). Filtered to one sweep point."""
    out: dict[str, dict[str, list[tuple[int, bool]]]] = {}
    for r in rows:
        if (method is not None and r["method"] != method) or (budget is not None and r["budget"] != budget):
            continue
        contest_id, sep, index = str(r["problem_id"]).rpartition("/")
        if not sep:
            continue
        out.setdefault(contest_id, {}).setdefault(index, []).append((r["sample"], bool(r["correct"])))
    return {c: {i: [v for _, v in sorted(samples)] for i, samples in problems.items()} for c, problems in out.items()}


def load_contests(path: str | Path) -> tuple[list[Contest], list[float] | None]:
    """Contests (and optionally the users' rating distribution) from a JSON file::

        {"contests": [{"contest_id": "2024", "problems": {"A": 500, "B": 1000},
                       "standings": [[1500, 0], [1000, 0], ...], "ratings": [2100, 1800, ...]}, ...],
         "user_ratings": [1200, 1350, ...]}          # optional; or {"rating": count, ...}
    """
    data = json.loads(Path(path).read_text())
    contests = [Contest(str(c["contest_id"]), dict(c["problems"]), [tuple(s) for s in c["standings"]],
                        [float(r) for r in c["ratings"]]) for c in data["contests"]]
    users = data.get("user_ratings")
    if isinstance(users, dict):
        users = [float(r) for r, n in users.items() for _ in range(int(n))]
    return contests, users


def rating_table(dirs: list[str | Path], contests_file: str | Path) -> str:
    """``report DIR... --codeforces FILE``: the estimated rating (and percentile) of every sweep point of each run."""
    from .store import ResultStore

    contests, users = load_contests(contests_file)
    lines = ["Codeforces rating (CodeElo's method, contests from " + str(contests_file) + "):", "",
             "| run | method | t | rating | percentile | contests |", "|---|---|---|---|---|---|"]
    for d in dirs:
        rows = ResultStore.read(d)
        for method, budget in sorted({(r["method"], r["budget"]) for r in rows},
                                     key=lambda k: (k[0], float("inf") if k[1] is None else k[1])):
            subs = submissions_from_rows(rows, method=method, budget=budget)
            if not any(c.contest_id in subs for c in contests):
                continue
            e = estimate_rating(contests, subs, users)
            pct = "-" if e.percentile is None else f"{e.percentile:.1f}"
            lines.append(f"| {d} | {method} | {'none' if budget is None else budget} | {e.rating:.0f} | {pct} | "
                         f"{len(e.per_contest)} |")
    return "\n".join(lines)
