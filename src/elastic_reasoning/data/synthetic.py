"""The synthetic reasoning task: sums of small numbers, with worked chains of thought that are needlessly long.

Made for the tiny offline model (``models/toy.py``: numbers 0-999 are single tokens, a small lowercase word
vocabulary), so every text here is a space-separated sequence of vocabulary words and numbers.

A problem is a tuple of terms; its prompt asks for their sum::

    what is the sum of 3 5 7 2 ?

The **minimal thinking** carries the running partial sum from step to step, so a trace cut anywhere still holds
partial information (how many terms are done, and their sum)::

    3 + 5 = 8 + 7 = 15 + 2 = 17                        (4n - 3 tokens for n terms)

The **reference thinking** is the same chain padded the way real reasoning traces are: after a step, with
probability ``check_prob``, a needless re-check (``check 8 + 7 = 15 ok``, after which the chain restarts from the
running sum), and with probability ``restate_prob`` a restatement of the problem first (``the problem is the sum of
3 5 7 2 .``). With ``check_prob > 0.5`` the most likely next token after a step is the padding, so a model trained on
it and decoded greedily pads too. A share ``concise_prob`` of the worked examples is written concisely (the minimal
trace), as real traces vary in verbosity: a model can learn that a short trace is also a way to the answer. Averages
over the default settings (4-8 distinct terms of 0-9): minimal 21 tokens, worked thinking about 56
(``reference_stats``).

The **solution** is ``answer 17``. A solution written after thinking was cut (``solution_after_cut``) first finishes
the remaining steps from the last complete partial sum (``15 + 2 = 17 answer 17``): training data that teaches a
model to reason usefully after a cut (issue 6).

**Train and held-out never overlap**: a problem's split is a function of its terms (a CRC32 of them), not of a seed
or a count, so every train set and every held-out set ever generated are disjoint.

**Scoring** (``score_synthetic`` / ``synthetic_reward``, in ``elastic_reasoning.rewards.synthetic``) is strict:
thinking must have ended, the completion must have ended with EOS (``finish_reason == "stop"``), and the solution's
last two words must be ``answer <sum>``.
Non-goals: other operations, multi-digit carries written out, natural-language variety.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Sequence

SPLITS = ("train", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty, length and padding of the synthetic task."""

    min_terms: int = 4
    """Fewest terms in a problem (at least 2)."""
    max_terms: int = 8
    """Most terms in a problem. Difficulty grows with it: the minimal trace is ``4 * terms - 3`` tokens."""
    max_value: int = 9
    """Terms are drawn from ``0..max_value`` (sums must stay below 1000, the toy tokenizer's largest number)."""
    distinct_terms: bool = True
    """Terms of a problem are all different. A tiny model finds the next term by looking up the one it just used in
    the prompt; a repeated digit makes that lookup ambiguous, and errors of that kind (not of arithmetic or of
    budgeting) then dominate: with repeats, the demo's warm-up model scored 85 % on such problems against 96 % on
    problems without them."""
    check_prob: float = 0.9
    """Probability of a needless re-check after a step (above 0.5: greedy decoding then prefers the padding)."""
    restate_prob: float = 0.8
    """Probability that the reference thinking starts by restating the problem."""
    concise_prob: float = 0.25
    """Share of worked examples written concisely (the minimal trace, no padding), as real traces vary in verbosity.
    The verbose rest pads with ``check_prob`` and ``restate_prob``."""
    heldout_fraction: float = 0.1
    """Share of all possible problems reserved for the held-out (test) split."""

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if self.max_value < 1 or self.max_terms * self.max_value > 999:
            raise ValueError(f"max_value must be >= 1 and max_terms * max_value <= 999, got {self.max_value}")
        if self.distinct_terms and self.max_terms > self.max_value + 1:
            raise ValueError(f"distinct_terms needs max_terms <= max_value + 1, got {self.max_terms} terms of "
                             f"0..{self.max_value}")
        for name in ("check_prob", "restate_prob", "concise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass(frozen=True)
class Segment:
    """Some thinking words and the progress they complete: ``done`` terms summed to ``partial``."""

    words: tuple[str, ...]
    done: int
    partial: int


@dataclass(frozen=True)
class SumProblem:
    terms: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.terms)

    @property
    def id(self) -> str:
        return "sum-" + "-".join(map(str, self.terms))

    @property
    def prompt(self) -> str:
        return "what is the sum of " + " ".join(map(str, self.terms)) + " ?"

    def split(self, heldout_fraction: float = 0.1) -> str:
        return split_of(self.terms, heldout_fraction)

    # -- thinking ----------------------------------------------------------------------------------------------
    def minimal_segments(self) -> list[Segment]:
        return self.reference_segments(random.Random(0), check_prob=0.0, restate_prob=0.0)

    def reference_segments(self, rng: random.Random, check_prob: float = 0.9, restate_prob: float = 0.8) -> list[Segment]:
        """The padded worked thinking, as segments that each end at a known state of progress."""
        t = self.terms
        out: list[Segment] = []
        if rng.random() < restate_prob:
            out.append(Segment(("the", "problem", "is", "the", "sum", "of", *map(str, t), "."), 0, 0))
        partial = t[0] + t[1]
        chained = False  # whether the previous segment ended with "= S" of a step (the chain can go on)
        out.append(Segment((str(t[0]), "+", str(t[1]), "=", str(partial)), 2, partial))
        chained = True
        previous = t[0]
        for i in range(2, len(t) + 1):
            if rng.random() < check_prob:  # re-check the step just done
                out.append(Segment(("check", str(previous), "+", str(t[i - 1]), "=", str(partial), "ok"), i, partial))
                chained = False
            if i == len(t):
                break
            previous, partial = partial, partial + t[i]
            head = () if chained else (str(previous),)
            out.append(Segment((*head, "+", str(t[i]), "=", str(partial)), i + 1, partial))
            chained = True
        return out

    def minimal_thinking(self) -> str:
        return " ".join(w for s in self.minimal_segments() for w in s.words)

    def reference_thinking(self, rng: random.Random, check_prob: float = 0.9, restate_prob: float = 0.8) -> str:
        return " ".join(w for s in self.reference_segments(rng, check_prob, restate_prob) for w in s.words)

    # -- solution ----------------------------------------------------------------------------------------------
    def solution(self) -> str:
        return f"answer {self.answer}"

    def remaining_steps(self, done: int, partial: int) -> str:
        """The steps from a state of progress to the end, restarting from the partial sum."""
        t = self.terms
        if done < 2:
            return " ".join(w for s in self.minimal_segments() for w in s.words)
        words: list[str] = []
        for i in range(done, len(t)):
            words += ([str(partial)] if i == done else []) + ["+", str(t[i]), "=", str(partial + t[i])]
            partial += t[i]
        return " ".join(words)

    def solution_after_cut(self, segments: Sequence[Segment], cut_words: int) -> tuple[str, str]:
        """``(thinking, solution)`` when thinking is cut after ``cut_words`` words of ``segments``: the solution
        finishes the remaining steps from the last complete partial sum, then answers."""
        words: list[str] = []
        done, partial = 0, 0
        for seg in segments:
            if len(words) + len(seg.words) <= cut_words:
                words += seg.words
                if seg.done >= done:
                    done, partial = seg.done, seg.partial
            else:
                words += seg.words[: cut_words - len(words)]
                break
        rest = self.remaining_steps(done, partial) if done < len(self.terms) else ""
        return " ".join(words), (rest + " " if rest else "") + self.solution()


def split_of(terms: Sequence[int], heldout_fraction: float = 0.1) -> str:
    """``"test"`` (held-out) or ``"train"``: a fixed function of the terms, so the splits never overlap."""
    h = zlib.crc32(",".join(map(str, terms)).encode()) / 2**32
    return "test" if h < heldout_fraction else "train"


def generate_problems(n: int, split: str = "train", *, seed: int = 0,
                      config: SyntheticConfig = SyntheticConfig()) -> list[SumProblem]:
    """``n`` distinct problems of ``split``, drawn with ``seed`` (the same arguments give the same problems)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    space = sum(_count_problems(config.max_value + 1, k, config.distinct_terms)
                for k in range(config.min_terms, config.max_terms + 1))
    share = config.heldout_fraction if split == "test" else 1 - config.heldout_fraction
    if n > 0.5 * space * share:
        raise ValueError(f"{n} distinct {split} problems asked for, but only about {int(space * share)} exist with "
                         f"{config.min_terms}-{config.max_terms} terms of 0..{config.max_value}"
                         + (" (all different)" if config.distinct_terms else ""))
    rng = random.Random(f"synthetic-{split}-{seed}")
    seen: set[tuple[int, ...]] = set()
    out: list[SumProblem] = []
    while len(out) < n:
        k = rng.randint(config.min_terms, config.max_terms)
        if config.distinct_terms:
            terms = tuple(rng.sample(range(config.max_value + 1), k))
        else:
            terms = tuple(rng.randint(0, config.max_value) for _ in range(k))
        if terms in seen or split_of(terms, config.heldout_fraction) != split:
            continue
        seen.add(terms)
        out.append(SumProblem(terms))
    return out


def _count_problems(values: int, k: int, distinct: bool) -> int:
    return math.perm(values, k) if distinct else values**k


@dataclass
class TrainingExample:
    """One supervised example: the prompt, the thinking, the solution (and whether the thinking was cut)."""

    problem: SumProblem
    thinking: str
    solution: str
    cut: bool = False
    extra: dict = field(default_factory=dict)


def training_examples(problems: Sequence[SumProblem], *, seed: int = 0, config: SyntheticConfig = SyntheticConfig(),
                      cut_fraction: float = 0.0, min_cut: int = 1) -> list[TrainingExample]:
    """Worked examples for supervised warm-up: reference thinking + ``answer S``; a ``cut_fraction`` of them have
    their thinking cut at a random word, with a solution that finishes the remaining steps."""
    rng = random.Random(f"synthetic-examples-{seed}")
    out = []
    for p in problems:
        segments = worked_segments(p, rng, config)
        total = sum(len(s.words) for s in segments)
        if cut_fraction and rng.random() < cut_fraction and total > min_cut:
            cut = rng.randint(min_cut, total - 1)
            thinking, solution = p.solution_after_cut(segments, cut)
            out.append(TrainingExample(p, thinking, solution, cut=True))
        else:
            out.append(TrainingExample(p, " ".join(w for s in segments for w in s.words), p.solution()))
    return out


def worked_segments(problem: SumProblem, rng: random.Random, config: SyntheticConfig) -> list[Segment]:
    """The thinking of one worked example: concise (minimal) with probability ``concise_prob``, else padded."""
    if rng.random() < config.concise_prob:
        return problem.minimal_segments()
    return problem.reference_segments(rng, config.check_prob, config.restate_prob)


def reference_stats(n: int = 2000, *, seed: int = 0, config: SyntheticConfig = SyntheticConfig()) -> dict[str, float]:
    """Mean words of minimal and reference thinking over ``n`` training problems (one token per word on the toy)."""
    problems = generate_problems(n, "train", seed=seed, config=config)
    rng = random.Random(seed)
    minimal = [len(p.minimal_thinking().split()) for p in problems]
    reference = [sum(len(s.words) for s in worked_segments(p, rng, config)) for p in problems]
    return {"minimal_mean": sum(minimal) / n, "reference_mean": sum(reference) / n,
            "minimal_max": max(minimal), "reference_max": max(reference)}
