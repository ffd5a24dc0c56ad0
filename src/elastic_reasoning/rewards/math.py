r"""Math reward: the final answer of the solution segment, checked against the ground truth with ``math-verify``.

The paper's rule (official code, REFERENCE section 2): a completion whose thinking never ended scores 0; otherwise
only the text after the end of thinking is graded, its last ``\boxed{...}`` against the ground truth, 1 or 0, no
format bonus. Here:

* extraction: the last ``\boxed{...}`` or ``\fbox{...}`` (nested braces, escaped ``\{ \}``, ``\boxed 5``); an
  unbalanced last box (a truncated answer) is no answer. Optional fallback regexes (``fallback_patterns``, e.g.
  :data:`ANSWER_IS` for "The answer is 42") apply only when there is no box; off by default, as in the paper;
* comparison (:func:`answers_match`), each step a grading choice: Unicode rewritten as LaTeX ("√2", "½", "x²",
  "−3", "３"; :func:`normalize_unicode`); word answers ("No", "does not exist") compared as words without case, and
  only so (so "On" does not equal "No" as the product ``o*n``); a normalised string match (``\text{}``, spacing,
  ``\left``/``\right``, ``\dfrac``; case kept); **no free points**: a single-valued ground truth never matches a
  list or disjunction of candidates (``x=4 \lor x=5``, ``4, 5``, ``\pm 2``; thousands separators are not lists),
  and symbols that differ from the ground truth's only by case never match (math-verify folds case: ``\Delta`` =
  ``\delta``, ``\Pi`` = ``\pi``, ``X`` = ``x``); then ``math-verify`` decides (fractions, decimals, LaTeX,
  radicals, sets, intervals, percentages, equations ``x=3`` vs ``3``);
* bounded time: ``math-verify`` runs in a small pool of grading processes. Each grading has a deadline
  (``timeout_s``); a grader that passes it is killed (sympy can hang in C, e.g. on ``9^{9^{9^{9}}}``, where
  ``signal.alarm`` cannot interrupt it) and replaced, and the answer scores 0. This works from any thread and from
  worker processes (the pool is per process). Answers longer than ``max_answer_chars`` or nested deeper than
  ``max_brace_depth`` score 0 without being parsed. ``isolation="inline"`` grades in-process instead (signal
  timeouts in the main thread; no bound at all in other threads) for places where subprocesses are unwelcome.
"""

from __future__ import annotations

import atexit
import json
import logging
import math as _math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from . import END_OF_THINKING, RewardFn, completion_text, report, solution_segments, split_solution

logger = logging.getLogger(__name__)

ANSWER_IS = r"(?i)(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+?)\s*(?:\.\s*)?$"
"""Fallback: "The (final) answer is X" / "Answer: X", on the last line that says so."""


@dataclass
class MathRewardConfig:
    """How the math reward extracts and checks answers."""

    end_of_thinking: str = END_OF_THINKING
    """Text that ends the thinking segment; only what follows it is graded."""
    require_thinking_end: bool = True
    """Score 0 when thinking never ended (the paper's rule). False grades the whole completion instead."""
    fallback_patterns: tuple[str, ...] = ()
    """Regexes (group 1 = the answer) tried, last match first, when the solution has no box. E.g. (ANSWER_IS,)."""
    timeout_s: float = 5.0
    """Deadline of one grading (parse + verify), in seconds; past it the answer scores 0."""
    max_answer_chars: int = 1000
    """Longer extracted answers score 0 without being parsed."""
    max_brace_depth: int = 50
    """Answers nested deeper than this score 0 without being parsed."""
    isolation: str = "process"
    """``process``: grade in killable helper processes (bounded everywhere). ``inline``: in this process."""
    workers: int | None = None
    """Helper processes for batches; ``None``: min(4, cores)."""
    memory_mb: int = 2048
    """Address-space limit of each helper process (sympy can try to build enormous numbers)."""


@dataclass
class MathScore:
    """One graded completion and why it got its score."""

    score: float
    extracted_answer: str | None
    thinking_ended: bool
    reason: str
    """``correct`` | ``wrong`` | ``no_answer`` | ``thinking_not_ended`` | ``rejected`` (too long/deep) |
    ``timeout`` | ``no_ground_truth``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


class _TooDeep(Exception):
    pass


def _braced(text: str, open_at: int, max_depth: int) -> str | None:
    """The content of the brace group opening at ``open_at``; None if unbalanced. Escaped braces don't count."""
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
            if depth > max_depth:
                raise _TooDeep
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
        i += 1
    return None


def last_boxed(text: str, max_depth: int = 10**9) -> str | None:
    r"""Content of the last ``\boxed{...}`` / ``\fbox{...}`` (or ``\boxed 5``); None if absent or unbalanced."""
    matches = list(_BOX.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _braced(text, end + (len(rest) - len(stripped)), max_depth)
    if rest[:1].isspace() and stripped:  # "\boxed 5": up to the end of the math or line
        return re.split(r"[$\n]", stripped, maxsplit=1)[0].strip() or None
    return None


def extract_answer(solution: str, config: MathRewardConfig | None = None) -> str | None:
    """The final answer of a solution segment: the last box, else the fallback patterns (if configured)."""
    config = config or MathRewardConfig()
    boxed = last_boxed(solution, config.max_brace_depth)
    if boxed is not None:
        return boxed.strip()
    for pattern in config.fallback_patterns:
        found = list(re.finditer(pattern, solution, flags=re.MULTILINE))
        if found:
            answer = found[-1].group(1).strip().strip("$").strip()
            inner = last_boxed(answer, config.max_brace_depth)
            return (inner if inner is not None else answer) or None
    return None


# ------------------------------------------------------------------------------------------- string match

_TEXT_COMMANDS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad|\\left|\\right|\$|\s+")
_WORDS_ONLY = re.compile(r"^[A-Za-z][A-Za-z\s,.;'’-]*$")


def normalize_answer(answer: str) -> str:
    """A canonical string form for the fast exact comparison (not a mathematical normal form). Case is kept:
    ``x`` and ``X``, ``\\delta`` and ``\\Delta`` are different answers (word answers compare without case)."""
    s = normalize_unicode(answer).strip()
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _TEXT_COMMANDS.sub(r"\1", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = _SPACING.sub("", s)
    return s.rstrip(".")


# ------------------------------------------------------------------------------------------- unicode
# Answers written with Unicode symbols ("√2", "½", "x²", "−3", "３") mean what their LaTeX means, but math-verify
# parses only the LaTeX. NFKC alone is not enough (it turns "x²" into "x2" and "½" into "1⁄2"), so superscripts,
# subscripts, vulgar fractions, roots and operators are rewritten first, then NFKC folds the rest (full-width forms,
# odd spaces).

_SUPERSCRIPTS = dict(zip("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱ", "0123456789+-=()ni"))
_SUBSCRIPTS = dict(zip("₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₐₑₒₓₕₖₗₘₙₚₛₜ", "0123456789+-=()aeoxhklmnpst"))
_VULGAR = {"½": (1, 2), "⅓": (1, 3), "⅔": (2, 3), "¼": (1, 4), "¾": (3, 4), "⅕": (1, 5), "⅖": (2, 5), "⅗": (3, 5),
           "⅘": (4, 5), "⅙": (1, 6), "⅚": (5, 6), "⅐": (1, 7), "⅛": (1, 8), "⅜": (3, 8), "⅝": (5, 8), "⅞": (7, 8),
           "⅑": (1, 9), "⅒": (1, 10)}
_GREEK = dict(zip("αβγδεζηθικλμνξπρστυφχψωΓΔΘΛΞΠΣΥΦΨΩϕϑϵ",
                  ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
                   "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", "Gamma",
                   "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega", "phi", "theta",
                   "epsilon"]))
_SYMBOLS = {"−": "-", "–": "-", "‒": "-", "﹣": "-", "×": "\\times", "·": "\\cdot", "⋅": "\\cdot", "∙": "\\cdot",
            "÷": "\\div", "±": "\\pm", "∓": "\\mp", "≤": "\\le", "≥": "\\ge", "≠": "\\ne", "≈": "\\approx",
            "∞": "\\infty", "∪": "\\cup", "∩": "\\cap", "∈": "\\in", "∉": "\\notin", "⊂": "\\subset",
            "⊆": "\\subseteq", "∅": "\\emptyset", "°": "^\\circ", "⁄": "/", "∕": "/", "′": "'", "″": "''",
            "∠": "\\angle", "→": "\\to", "∨": "\\lor", "∧": "\\land", "…": "\\ldots", "∣": "|", "⋯": "\\cdots"}
_ROOTS = {"√": "", "∛": "[3]", "∜": "[4]"}
_ROOT_ARGUMENT = re.compile(r"\\[A-Za-z]+|[0-9A-Za-z.]+")


def normalize_unicode(text: str) -> str:
    """``text`` with Unicode mathematics rewritten as the LaTeX math-verify reads ("√2" -> ``\\sqrt{2}``, "½" ->
    ``\\frac{1}{2}``, "x²" -> ``x^{2}``, "−3" -> ``-3``, "３" -> ``3``). ASCII text is returned unchanged."""
    if text.isascii():
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        for table, mark in ((_SUPERSCRIPTS, "^"), (_SUBSCRIPTS, "_")):
            if ch in table:
                j = i
                while j < n and text[j] in table:
                    j += 1
                out.append(mark + "{" + "".join(table[c] for c in text[i:j]) + "}")
                i = j
                break
        else:
            if ch in _VULGAR:
                out.append("\\frac{%d}{%d}" % _VULGAR[ch])  # after a digit, a mixed number: math-verify reads 1\frac12 as 3/2
            elif ch in _GREEK:
                out.append("\\" + _GREEK[ch] + " ")
            elif ch in _SYMBOLS:
                replacement = _SYMBOLS[ch]
                out.append(replacement + (" " if replacement[-1].isalpha() else ""))
            else:
                out.append(ch)
            i += 1
    text = unicodedata.normalize("NFKC", "".join(out))
    return _rewrite_roots(text) if any(r in text for r in _ROOTS) else text


def _rewrite_roots(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch not in _ROOTS:
            out.append(ch)
            i += 1
            continue
        rest = text[i + 1:].lstrip()
        skipped = len(text) - i - 1 - len(rest)
        if rest[:1] in ("(", "{"):
            close = {"(": ")", "{": "}"}[rest[0]]
            depth, j = 0, 0
            for j, c in enumerate(rest):
                depth += (c == rest[0]) - (c == close)
                if depth == 0:
                    break
            argument, used = rest[1:j], j + 1
        else:
            match = _ROOT_ARGUMENT.match(rest)
            argument, used = (match.group(), match.end()) if match else ("", 0)
        out.append("\\sqrt" + _ROOTS[ch] + "{" + argument + "}")
        i += 1 + skipped + used
    return "".join(out)


# ------------------------------------------------------------------------------------------- no free points
# math-verify is generous in two ways a policy can learn to exploit. (1) It accepts a disjunction or list when one
# of its members equals the answer: "x=4 \\lor x=5" and "4 \\vee 5" match 5. A single-valued ground truth therefore
# needs a single-valued prediction: no list separator, disjunction, union or +-. (2) It folds case, so \\Delta equals
# \\delta, \\Pi equals \\pi, X equals x and E equals e. A prediction whose symbols differ from the ground truth's only
# by case is therefore wrong.

_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3})((?:(?:,|\{,\})\d{3})+)(?!\d)")
_LIST_MARKS = re.compile(r",|;|\\lor\b|\\vee\b|\\land\b|\\wedge\b|\\cup\b|\\pm\b|\\mp\b|\b(?:or|and)\b")
_TEXT_BLOCK = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
_SYMBOL = re.compile(r"\\[A-Za-z]+|[A-Za-z]")
_SIZING = {"\\big", "\\bigl", "\\bigr", "\\bigg", "\\biggl", "\\biggr", "\\left", "\\right"}


_VARIANTS = re.compile(r"\\var(nothing|epsilon|phi|theta|rho|sigma)(?![A-Za-z])")


def _canonical(answer: str) -> str:
    """Unicode as LaTeX, and variant glyphs as their letter (``\\varnothing`` is ``\\emptyset``, ``\\varphi`` is
    ``\\phi``): one symbol, two spellings."""
    answer = normalize_unicode(answer)
    if "\\var" not in answer:
        return answer
    return _VARIANTS.sub(lambda m: "\\emptyset" if m.group(1) == "nothing" else "\\" + m.group(1), answer)


def _several_values(answer: str) -> bool:
    """Whether an answer lists several values (a list, a disjunction, a union, +-); thousands separators do not."""
    plain = _THOUSANDS.sub(lambda m: m.group(1) + re.sub(r"\{,\}|,", "", m.group(2)), answer)
    return bool(_LIST_MARKS.search(plain))


def _symbols(answer: str) -> set[str]:
    return {s for s in _SYMBOL.findall(_TEXT_BLOCK.sub(" ", answer)) if s.casefold() not in _SIZING}


def _differs_only_by_case(gold: str, predicted: str) -> bool:
    """Whether a symbol of one answer is, up to case, a symbol of the other but not the same (\\Delta vs \\delta)."""
    gold_symbols, predicted_symbols = _symbols(gold), _symbols(predicted)
    for mine, theirs in ((gold_symbols, predicted_symbols), (predicted_symbols, gold_symbols)):
        folded = {s.casefold() for s in theirs}
        if any(s.casefold() in folded and s not in theirs for s in mine):
            return True
    return False


_MATH_WORDS = {"pi", "inf", "infty", "infinity", "sqrt", "ln", "log", "exp", "sin", "cos", "tan", "mod"}


def _words_only(answer: str) -> bool:
    """An answer in words ("No", "does not exist"), which only the string comparison may grade."""
    plain = _TEXT_COMMANDS.sub(r"\1", answer).strip()
    words = re.findall(r"[A-Za-z]+", plain.lower())
    return (bool(_WORDS_ONLY.match(plain)) and any(len(w) >= 2 for w in words)
            and not any(w in _MATH_WORDS for w in words))


def _screen(answer: str, config: MathRewardConfig) -> bool:
    """Whether an extracted answer is small enough to hand to the parser."""
    if len(answer) > config.max_answer_chars:
        return False
    depth = best = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            best = max(best, depth)
        elif ch in "})]":
            depth -= 1
    return best <= config.max_brace_depth


# ------------------------------------------------------------------------------------------- math-verify


def _wrap(answer: str) -> str:
    return answer if "\\boxed" in answer else f"${answer}$"


def _verify_inline(gold: str, predicted: str, timeout: int | None) -> bool:
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold, timeout)
    pred_parsed = parse(_wrap(predicted), parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None):
    from math_verify import parse

    return parse(_wrap(gold), parsing_timeout=timeout)


def _worker_main() -> None:  # pragma: no cover - runs in the helper process (covered through it)
    """The helper process: one JSON request per line on stdin, one JSON answer per line on stdout."""
    import resource

    logging.disable(logging.WARNING)  # math-verify warns on every timeout; the parent reports instead
    inner, memory_mb = int(sys.argv[1]), int(sys.argv[2])
    inner_timeout = inner if inner > 0 else None
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))
    _verify_inline("1/2", "0.5", inner_timeout)  # warm up the parsers before saying ready
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            answer = {"ok": _verify_inline(request["gold"], request["pred"], inner_timeout)}
        except BaseException as exc:  # noqa: BLE001 - anything the parser throws is a wrong answer
            answer = {"ok": False, "error": repr(exc)[:300]}
        out.write(json.dumps(answer) + "\n")
        out.flush()


class _Grader:
    """One helper process running math-verify, killed and replaced when a grading passes its deadline."""

    START_TIMEOUT_S = 120.0

    def __init__(self, timeout_s: float, memory_mb: int):
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    def _start(self) -> None:
        src = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # math-verify's own signal timeouts, in whole seconds below the hard deadline, end most slow parses
        # gracefully; the deadline below (kill) ends the rest.
        inner = max(1, int(self.timeout_s * 0.6)) if self.timeout_s >= 2 else 0
        boot = "from elastic_reasoning.rewards.math import _worker_main; _worker_main()"
        self.proc = subprocess.Popen([sys.executable, "-c", boot, str(inner), str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, start_new_session=True, close_fds=True)
        self._buffer = b""
        if self._readline(self.START_TIMEOUT_S) != b"ready":
            self.close()
            raise RuntimeError("the math grading process did not start (is math-verify installed?)")

    def _readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the process died
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def grade(self, gold: str, predicted: str) -> bool | None:
        """True/False, or None when the deadline passed (the process is then replaced)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps({"gold": gold, "pred": predicted}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.close()
            return False
        line = self._readline(self.timeout_s)
        if line is None:
            self.close()
            return None
        answer = json.loads(line)
        if "error" in answer:
            logger.debug("math-verify error on %r vs %r: %s", predicted[:100], gold[:100], answer["error"])
        return bool(answer["ok"])

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()  # type: ignore[union-attr]
                except OSError:
                    pass
        self.proc = None


class _GraderPool:
    def __init__(self, size: int, timeout_s: float, memory_mb: int):
        self.size = size
        self.idle: queue.SimpleQueue[_Grader] = queue.SimpleQueue()
        self.all = [_Grader(timeout_s, memory_mb) for _ in range(size)]
        for grader in self.all:
            self.idle.put(grader)

    def grade(self, gold: str, predicted: str) -> bool | None:
        grader = self.idle.get()
        try:
            return grader.grade(gold, predicted)
        finally:
            self.idle.put(grader)

    def close(self) -> None:
        for grader in self.all:
            grader.close()


_POOLS: dict[tuple[int, int, float, int], _GraderPool] = {}
_POOLS_LOCK = threading.Lock()


def _pool(config: MathRewardConfig) -> _GraderPool:
    size = config.workers or min(4, os.cpu_count() or 1)
    key = (os.getpid(), size, config.timeout_s, config.memory_mb)  # a forked worker process gets its own pool
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = _GraderPool(size, config.timeout_s, config.memory_mb)
        return _POOLS[key]


@atexit.register
def shutdown() -> None:
    """Stop this process's grading helpers (also runs at exit)."""
    with _POOLS_LOCK:
        for key, pool in list(_POOLS.items()):
            if key[0] == os.getpid():
                pool.close()
            del _POOLS[key]


def answers_match(gold: str, predicted: str, config: MathRewardConfig | None = None) -> bool | None:
    """Whether ``predicted`` is equivalent to ``gold``: True/False, or None when grading timed out.

    Unicode is rewritten as LaTeX first; a word answer compares as words (without case); a single-valued gold
    answer never matches a list or disjunction; symbols that differ only by case never match; then math-verify.
    """
    config = config or MathRewardConfig()
    gold, predicted = _canonical(gold), _canonical(predicted)
    if _words_only(gold):
        return normalize_answer(gold).lower() == normalize_answer(predicted).lower()
    if normalize_answer(gold) == normalize_answer(predicted):
        return True
    if not _screen(predicted, config):
        return False
    if _several_values(predicted) and not _several_values(gold):
        return False
    if _differs_only_by_case(gold, predicted):
        return False
    if config.isolation == "inline":
        in_main = threading.current_thread() is threading.main_thread()
        timeout = max(1, _math.ceil(config.timeout_s)) if in_main else None
        try:
            return _verify_inline(gold, predicted, timeout)
        except Exception:  # noqa: BLE001
            return False
    if config.isolation != "process":
        raise ValueError(f"isolation must be 'process' or 'inline', not {config.isolation!r}")
    return _pool(config).grade(gold, predicted)


# ------------------------------------------------------------------------------------------- scoring


def _gold_answer(answer: Any) -> str | None:
    if answer is None:
        return None
    text = str(answer).strip()
    if "\\boxed" in text or "\\fbox" in text:  # a full reference solution: its last box is the answer
        boxed = last_boxed(text)
        text = boxed.strip() if boxed is not None else text
    return text or None


def score_math(completion: Any, answer: Any, *, config: MathRewardConfig | None = None,
               thinking_ended: bool | None = None, solution: str | None = None) -> MathScore:
    """Grade one completion against one ground-truth answer.

    ``thinking_ended`` and ``solution`` are the rollout's split when it has one; otherwise ``completion`` is split on
    ``config.end_of_thinking``.
    """
    config = config or MathRewardConfig()
    if thinking_ended is None or solution is None:
        thinking_ended, solution = split_solution(completion_text(completion), config.end_of_thinking)
    return _score_one(thinking_ended, solution, _gold_answer(answer), config)


def _score_one(thinking_ended: bool, solution: str, gold: str | None, config: MathRewardConfig) -> MathScore:
    if gold is None:
        return MathScore(0.0, None, thinking_ended, "no_ground_truth")
    try:
        extracted = extract_answer(solution, config)
    except _TooDeep:
        return MathScore(0.0, None, thinking_ended, "rejected")
    if not thinking_ended and config.require_thinking_end:
        return MathScore(0.0, extracted, thinking_ended, "thinking_not_ended")
    if extracted is None:
        return MathScore(0.0, None, thinking_ended, "no_answer")
    if not _screen(extracted, config):
        return MathScore(0.0, extracted[:200], thinking_ended, "rejected")
    verdict = answers_match(gold, extracted, config)
    if verdict is None:
        return MathScore(0.0, extracted, thinking_ended, "timeout")
    return MathScore(1.0 if verdict else 0.0, extracted, thinking_ended, "correct" if verdict else "wrong")


def score_many(segments: Sequence[tuple[bool, str]], answers: Sequence[Any],
               config: MathRewardConfig | None = None) -> list[MathScore]:
    """Grade a batch, spread over the grading processes."""
    config = config or MathRewardConfig()
    golds = [_gold_answer(a) for a in answers]
    jobs = list(zip(segments, golds))
    workers = config.workers or min(4, os.cpu_count() or 1)
    if len(jobs) <= 1 or workers <= 1 or config.isolation != "process":
        return [_score_one(ended, sol, gold, config) for (ended, sol), gold in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda job: _score_one(job[0][0], job[0][1], job[1], config), jobs))


def math_reward(config: MathRewardConfig | None = None, **overrides: Any) -> RewardFn:
    """TRL reward: 1.0 for an equivalent final answer, else 0.0; ``None`` for rows without an ``answer``.

    Ground truth from the ``answer`` column. Logs ``math/answered``, ``math/thinking_ended``, ``math/timeouts`` and
    an ``extracted_answer`` column when TRL passes its loggers.
    """
    if config is None:
        config = MathRewardConfig(**overrides)
    elif overrides:
        raise TypeError("pass either a MathRewardConfig or keyword overrides, not both")

    def math_accuracy(prompts=None, completions=(), completion_ids=None, **columns) -> list[float | None]:
        answers = columns.get("answer")
        if answers is None:
            raise ValueError("the math reward needs an 'answer' column (the ground-truth final answer)")
        segments = solution_segments(completions, columns, config.end_of_thinking)
        scores = score_many(segments, answers, config)
        n = max(1, len(scores))
        report(
            columns,
            {
                "math/answered": sum(s.extracted_answer is not None for s in scores) / n,
                "math/thinking_ended": sum(s.thinking_ended for s in scores) / n,
                "math/timeouts": sum(s.reason == "timeout" for s in scores) / n,
            },
            {"extracted_answer": [s.extracted_answer for s in scores]},
        )
        return [None if s.reason == "no_ground_truth" else s.score for s in scores]

    return math_accuracy


def benchmark(n: int = 200, config: MathRewardConfig | None = None) -> dict[str, float]:
    """Math gradings per second: ``n`` distinct answers (no cache hits), equivalent and not, all through math-verify.

    The helper pool is started and warmed up before the clock starts.
    """
    config = config or MathRewardConfig()

    def pair(i: int) -> tuple[str, str]:
        k = i // 6 + 2
        return [
            (f"\\frac{{{k}}}{{{k + 1}}}", f"{k / (k + 1):.9f}"),  # fraction vs decimal
            (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"),  # radicals
            (f"\\{{{k}, {k + 1}\\}}", f"\\{{{k + 1}, {k}\\}}"),  # sets
            (f"(0, {k}]", f"(0, {k})"),  # intervals, different
            (f"x^2 + {2 * k}x + {k * k}", f"(x + {k})^2"),  # polynomials
            (f"{k}", f"{k + 1}"),  # plainly wrong
        ][i % 6]

    score_many([split_solution(f"</think>\\boxed{{{p}}}") for _, p in map(pair, range(2))],
               [g for g, _ in map(pair, range(2))], config)  # start and warm the helper pool
    pairs = [pair(i) for i in range(12, 12 + n)]
    segments = [split_solution(f"<think>...</think> so \\boxed{{{p}}}") for _, p in pairs]
    start = time.perf_counter()
    scores = score_many(segments, [g for g, _ in pairs], config)
    seconds = time.perf_counter() - start
    return {"gradings": n, "seconds": seconds, "gradings_per_s": n / seconds,
            "correct_fraction": sum(s.score for s in scores) / n}
