"""Score completions by problem kind with the project's rewards: math reward, code reward, the synthetic scorer."""

from __future__ import annotations

from typing import Any, Sequence

from ..data import Problem
from ..generation.record import Completion

CODE_COLUMNS = ("tests", "input_output", "test", "entry_point", "fn_name", "metadata")


class Scorer:
    """Grades (problem, completion) pairs; reward functions are built once, on first use."""

    def __init__(self, *, math_timeout_s: float = 5.0, code_timeout_s: float = 6.0):
        self.math_timeout_s = math_timeout_s
        self.code_timeout_s = code_timeout_s
        self._math = None
        self._code = None

    def score(self, problems: Sequence[Problem], completions: Sequence[Completion]) -> list[dict[str, Any]]:
        """Per pair: ``{"score": float, "correct": bool, "answered": bool, ...}``, in input order. ``answered``: the
        completion has a final answer to grade (thinking ended, and an ``answer N`` line / a boxed or extracted
        answer / a fenced code block), whether right or wrong."""
        out: list[dict[str, Any] | None] = [None] * len(problems)
        by_kind: dict[str, list[int]] = {}
        for i, p in enumerate(problems):
            by_kind.setdefault(p.kind, []).append(i)
        for kind, idx in by_kind.items():
            ps = [problems[i] for i in idx]
            cs = [completions[i] for i in idx]
            if kind == "synthetic":
                results = self._synthetic(ps, cs)
            elif kind == "math":
                results = self._reward("math", ps, cs)
            elif kind == "code":
                results = self._reward("code", ps, cs)
            else:
                raise ValueError(f"problem {ps[0].id!r}: unknown kind {kind!r}")
            for i, r in zip(idx, results):
                out[i] = r
        return out  # type: ignore[return-value]

    @staticmethod
    def _synthetic(problems: Sequence[Problem], completions: Sequence[Completion]) -> list[dict[str, Any]]:
        from ..rewards.synthetic import score_synthetic

        res = []
        for p, c in zip(problems, completions):
            s = score_synthetic(c.solution, p.answer, thinking_ended=c.thinking_ended,
                                stopped=c.finish_reason == "stop")
            words = c.solution.split()
            answered = c.thinking_ended and len(words) >= 2 and words[-2] == "answer"
            res.append({"score": s, "correct": s >= 1.0, "answered": answered})
        return res

    def _reward(self, kind: str, problems: Sequence[Problem], completions: Sequence[Completion]) -> list[dict]:
        from ..rewards import get_reward

        if kind == "math":
            if self._math is None:
                self._math = get_reward("math", timeout_s=self.math_timeout_s)
            fn, columns = self._math, {"answer": [p.answer for p in problems]}
            extra_name = "extracted_answer"
        else:
            if self._code is None:
                self._code = get_reward("code", timeout_s=self.code_timeout_s)
            fn = self._code
            columns = {name: [p.columns.get(name) for p in problems] for name in CODE_COLUMNS
                       if any(name in p.columns for p in problems)}
            extra_name = "pass_fraction"
        extras: dict[str, list] = {}
        scores = fn(
            prompts=[p.prompt for p in problems],
            completions=[c.solution for c in completions],
            solution=[c.solution for c in completions],
            thinking_ended=[c.thinking_ended for c in completions],
            log_extra=lambda name, values: extras.__setitem__(name, list(values)),
            **columns,
        )
        detail = extras.get(extra_name, [None] * len(scores))
        if kind == "math":  # an answer to grade: a final \boxed{} (or whatever the reward extracted) after thinking
            answered = [d is not None and c.thinking_ended for d, c in zip(detail, completions)]
        else:  # a program to run: a fenced code block after thinking
            answered = [c.thinking_ended and "```" in c.solution for c in completions]
        return [{"score": float(s or 0.0), "correct": (s or 0.0) >= 1.0, extra_name: d, "answered": a}
                for s, d, a in zip(scores, detail, answered)]
