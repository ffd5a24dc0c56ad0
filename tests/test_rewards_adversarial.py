"""Rewards a policy cannot game: every attack of issue 14 (and a few more) as a table case, graded as a user would
grade it, in every sandbox mode.

Under ``bwrap`` and ``unshare`` each case goes through the CLI (``elastic-reasoning reward code --sandbox ...``);
under ``plain`` through ``score_code``. An attack case is a program that scores 1 only if the attack works (it prints
what the test expects only when it managed to read, forge, reach or hold what it must not), so every attack must
score 0; every honest solution must score 1. Cases that ``plain`` mode cannot stop are listed with the reason
(``sandbox.PLAIN_EXPOSES``): plain runs without isolation and only when chosen by name.

To add an attack: one ``Case`` with a comment saying what it tries and why it must fail.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_reasoning import sandbox
from elastic_reasoning.rewards.code import CodeRewardConfig, score_code


@dataclass
class Case:
    name: str
    tests: dict | list
    code: str
    exposed_in: tuple[str, ...] = ()
    """Modes that do not stop this attack by design (plain: see sandbox.PLAIN_EXPOSES)."""
    timeout: float = 3.0
    needs_cgroup: bool = False


YES_NO = {"inputs": ["1\n", "1\n"], "outputs": ["YES\n", "NO\n"]}  # the same input, two answers: no honest program
BIG = {"inputs": ["\n"], "outputs": ["408264793\n"]}
BIG_CALL = {"inputs": [[1]], "outputs": [[408264793]], "fn_name": "f"}
CHECK = {"test": "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(5) == 10\n",
         "entry_point": "dbl"}
CHECK_ABS = {"test": "def check(candidate):\n    assert abs(candidate(2) - 4) < 1e-9\n", "entry_point": "dbl"}


SLEEP_TOKEN = f"{60 + secrets.randbelow(10 ** 6) / 10 ** 6:.6f}"  # an argument no other process has


def expects(text: str) -> dict:
    """Tests that pass only for a program printing ``text``: what it prints when its attack worked."""
    return {"inputs": ["\n"], "outputs": [text + "\n"]}


LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"

FORGED_FRAMES = (
    "def forged():\n"
    "    import json\n"
    "    out = b''\n"
    "    for i, answer in enumerate(['YES\\n', 'NO\\n']):\n"
    "        out += ('@@ER-TEST@@' + json.dumps({'i': i, 'status': 'ok', 'stdout': answer}) + '\\n').encode()\n"
    "        out += (json.dumps({'i': i, 'status': 'ok', 'truncated': False, 'n': len(answer)}) + '\\n'"
    " + answer).encode()\n"
    "    return out\n"
)

ATTACKS = [
    # -- 1. integer tolerance: a wrong big integer within 1e-6 relative used to pass
    Case("wrong big integer, stdout", BIG, "print(408264794)"),
    Case("wrong big integer as a float, stdout", BIG, "print('408264794.0')"),
    Case("wrong big integer in exponent notation, stdout", BIG, "print('4.08264794e8')"),
    Case("wrong big integer, returned", BIG_CALL, "def f(x):\n    return 408264794"),
    Case("wrong big integer as a float, returned", BIG_CALL, "def f(x):\n    return 408264794.0"),
    # -- 2. the harness's spec carried per-test output caps derived from the expected outputs' sizes
    Case("answer YES/NO by reading the output cap", YES_NO, textwrap.dedent("""
        import json, os, sys
        def answer():
            frame = sys._getframe()
            while frame:  # the harness's frames, copied into this forked process
                spec, i = frame.f_locals.get("spec"), frame.f_locals.get("i")
                if isinstance(spec, dict) and isinstance(i, int) and spec.get("output_caps"):
                    return "YES" if spec["output_caps"][i] == 4104 else "NO"
                frame = frame.f_back
            if os.path.exists("spec.json"):
                caps = json.load(open("spec.json")).get("output_caps") or []
                return "YES" if caps and caps[0] == 4104 else "NO"
            return "YES"
        print(answer())
        """)),
    # -- 3. verdicts forged through the harness's own channel
    Case("take the harness's stdout with pidfd_getfd and forge results", YES_NO,
         LIBC + FORGED_FRAMES + textwrap.dedent("""
        pidfd = libc.syscall(434, os.getppid(), 0)  # pidfd_open(parent)
        fd = libc.syscall(438, pidfd, 1, 0) if pidfd >= 0 else -1  # pidfd_getfd(parent's stdout)
        if fd >= 0:
            os.write(fd, forged())  # results for both tests, before the harness writes its own
        print("YES")
        """)),
    Case("take the harness's stdout with pidfd_getfd", expects("grabbed"), LIBC + textwrap.dedent("""
        pidfd = libc.syscall(434, os.getppid(), 0)
        print("grabbed" if pidfd >= 0 and libc.syscall(438, pidfd, 1, 0) >= 0 else "refused")
        """)),
    Case("ptrace the harness", expects("attached"), LIBC + textwrap.dedent("""
        libc.ptrace.restype = ctypes.c_long
        ok = libc.ptrace(ctypes.c_long(16), ctypes.c_long(os.getppid()), None, None) == 0  # PTRACE_ATTACH
        print("attached" if ok else "refused")
        """)),
    Case("open the harness's stdout through /proc and forge results", YES_NO, FORGED_FRAMES + textwrap.dedent("""
        import os
        try:
            with open(f"/proc/{os.getppid()}/fd/1", "ab") as f:
                f.write(forged())
        except OSError:
            pass
        print("YES")
        """)),
    Case("write the harness's memory through /proc/<pid>/mem", expects("opened"), textwrap.dedent("""
        import os
        try:
            open(f"/proc/{os.getppid()}/mem", "r+b").close()
            print("opened")
        except OSError:
            print("refused")
        """)),
    Case("write forged frames to every inherited descriptor", YES_NO, FORGED_FRAMES + textwrap.dedent("""
        import os
        for fd in range(3, 1024):
            try:
                os.write(fd, forged())
            except OSError:
                pass
        print("YES")
        """)),
    Case("print the old harness's result markers", YES_NO, FORGED_FRAMES + textwrap.dedent("""
        import sys
        sys.stdout.buffer.write(forged())
        """)),
    Case("kill the harness after answering", YES_NO,
         "import os, signal\nprint('YES', flush=True)\nos.kill(os.getppid(), signal.SIGKILL)"),
    Case("leave a daemon that answers the next test", YES_NO, textwrap.dedent("""
        import os, sys, time
        if os.path.exists("er-attack-marker"):
            time.sleep(1)  # the second test: stay silent, the first test's daemon answers
        else:
            open("er-attack-marker", "w").close()
            print("YES", flush=True)
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    seen, me = set(), os.getpid()
                    for _ in range(500):
                        for pid in os.listdir("/proc"):
                            if pid.isdigit() and int(pid) != me and pid not in seen:
                                seen.add(pid)
                                try:
                                    with open(f"/proc/{pid}/fd/1", "a") as out:
                                        out.write("NO\\n")
                                except OSError:
                                    pass
                        time.sleep(0.01)
                os._exit(0)
        """)),
    # -- 4. HumanEval's in-process check
    Case("HumanEval: write the result file and exit", CHECK,
         "open('res_0.json', 'w').write('{\"ok\": true}')\nimport os\nos._exit(0)\ndef dbl(x):\n    return 0"),
    Case("HumanEval: a return value whose __eq__ says yes", CHECK,
         "class Yes:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
         "        return False\ndef dbl(x):\n    return Yes()"),
    Case("HumanEval: an int subclass whose __eq__ says yes", CHECK,
         "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
         "def dbl(x):\n    return Int(0)"),
    Case("HumanEval: exit before check runs", CHECK, "import sys\nsys.exit(0)\ndef dbl(x):\n    return 0"),
    Case("HumanEval: SystemExit(0) from the function", CHECK, "def dbl(x):\n    raise SystemExit(0)"),
    Case("HumanEval: an atexit hook that reports success", CHECK, textwrap.dedent("""
        import atexit
        atexit.register(lambda: print('{"ok": true}'))
        def dbl(x):
            raise SystemExit(0)
        """)),
    Case("HumanEval: patch the builtins check uses", CHECK_ABS,
         "import builtins\nbuiltins.abs = lambda value: 0\ndef dbl(x):\n    return 0"),
    Case("HumanEval: call the harness's own reporting", CHECK, textwrap.dedent("""
        import __main__, os
        for name in ("emit", "report"):
            try:
                getattr(__main__, name)({"i": 0, "status": "pass", "ok": True})
            except Exception:
                pass
        os._exit(0)
        """)),
    Case("HumanEval: define check itself", CHECK, "def check(candidate):\n    pass\ndef dbl(x):\n    return 0"),
    Case("HumanEval: kill the harness from the function", CHECK,
         "def dbl(x):\n    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return 0"),
    Case("HumanEval: print success markers", CHECK, "print('passed')\nprint('{\"ok\": true}')\ndef dbl(x):\n    return 0"),
    # -- 5. limits that leak
    Case("hold 1 GiB in memfds past RLIMIT_AS", expects("held"), textwrap.dedent("""
        import os
        held, fds = 0, []
        try:
            for _ in range(16):
                fd = os.memfd_create("hold")
                fds.append(fd)
                os.write(fd, b"x" * (64 << 20))
                held += 64 << 20
        except OSError:
            pass
        print("held" if held >= 1 << 30 else "refused")
        """), timeout=10),
    Case("hold 1 GiB in SysV shared memory", expects("held"), LIBC + textwrap.dedent("""
        libc.shmat.restype = ctypes.c_void_p
        size = 1 << 30
        shmid = libc.shmget(0, ctypes.c_size_t(size), 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
        held = False
        if shmid >= 0:
            address = libc.shmat(shmid, None, 0)
            if address not in (None, ctypes.c_void_p(-1).value):
                ctypes.memset(address, 1, size)
                libc.shmdt(ctypes.c_void_p(address))
                held = True
        print("held" if held else "refused")
        """), timeout=10),
    Case("fill /tmp past its bound", expects("held"), textwrap.dedent("""
        import os
        held = 0
        try:
            for i in range(24):
                with open(f"/tmp/fill{i}", "wb") as f:
                    f.write(b"x" * (32 << 20))
                held += 32 << 20
        except OSError:
            pass
        print("held" if held >= 512 << 20 else "refused")
        """), exposed_in=("plain",), timeout=10),
    Case("fill /dev/shm past its bound", expects("held"), textwrap.dedent("""
        held = 0
        try:
            for i in range(8):
                with open(f"/dev/shm/fill{i}", "wb") as f:
                    f.write(b"x" * (32 << 20))
                held += 32 << 20
        except OSError:
            pass
        print("held" if held >= 256 << 20 else "refused")
        """), exposed_in=("plain",), timeout=10),
    Case("fill the working directory past its bound", expects("held"), textwrap.dedent("""
        held = 0
        try:
            for i in range(24):
                with open(f"fill{i}", "wb") as f:
                    f.write(b"x" * (32 << 20))
                held += 32 << 20
        except OSError:
            pass
        print("held" if held >= 512 << 20 else "refused")
        """), exposed_in=("plain",), timeout=10),
    Case("hold 2.5 GiB across many processes, each under its own limit", expects("held"), textwrap.dedent("""
        import os, time
        children = []
        for _ in range(10):  # more than the run's bound (2048 + 256 + 64 MiB) together
            pid = os.fork()
            if pid == 0:
                block = bytearray(256 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(1)
                os._exit(0)
            children.append(pid)
        ok = all(os.waitpid(pid, 0)[1] == 0 for pid in children)
        print("held" if ok else "refused")
        """), timeout=20, needs_cgroup=True),
    # -- 6. what plain mode exposes (stopped by bwrap and unshare)
    Case("write a world-writable host directory", expects("written"), textwrap.dedent(f"""
        import os
        path = "/var/tmp/er-attack-{secrets.token_hex(6)}"
        try:
            open(path, "w").write("x")
            os.unlink(path)
            print("written")
        except OSError:
            print("refused")
        """), exposed_in=("plain",)),
]


def leak_case() -> Case:
    """Find the expected output anywhere it might leak: memory, scratch space, other processes' command lines and
    environments, and the files they name (the grader's tests file)."""
    token = "tok-" + secrets.token_hex(8)
    code = textwrap.dedent(r"""
        import gc, os, re
        pattern = re.compile(rb"tok-[0-9a-f]{16}")
        def found(data):
            match = pattern.search(data)
            if match:
                print(match.group().decode())
                raise SystemExit(0)
        for obj in gc.get_objects():
            for item in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()):
                if isinstance(item, str):
                    found(item.encode("utf-8", "replace"))
        def read(path):
            try:
                with open(path, "rb") as f:
                    found(f.read(1 << 20))
            except OSError:
                pass
        for top in (".", "/tmp", "/dev/shm"):
            for root, _, files in os.walk(top):
                for name in files:
                    read(os.path.join(root, name))
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for what in ("cmdline", "environ"):
                try:
                    data = open(f"/proc/{pid}/{what}", "rb").read()
                except OSError:
                    continue
                found(data)
                for arg in data.split(b"\0"):
                    if arg.startswith(b"/") and os.path.isfile(arg):
                        read(arg)
        print("nothing")
        """)
    return Case("read the expected output from anywhere it might leak", expects(token), code, exposed_in=("plain",),
                timeout=10)


HONEST = [
    Case("stdin/stdout (APPS)", {"inputs": ["1 2\n", "10 20\n"], "outputs": ["3\n", "30\n"]},
         "a, b = map(int, input().split())\nprint(a + b)"),
    Case("exit() after printing (needs the site builtins)", {"inputs": ["\n"], "outputs": ["3\n"]},
         "print(3)\nexit()"),
    Case("sys.exit(0) after printing", {"inputs": ["\n"], "outputs": ["3\n"]}, "import sys\nprint(3)\nsys.exit(0)"),
    Case("call-based with APPS wrapping", {"inputs": [[1, 2], [3, 4]], "outputs": [[3], [7]], "fn_name": "add"},
         "def add(a, b):\n    return a + b"),
    Case("LiveCodeBench functional, Solution method",
         [{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional", "metadata": {"func_name": "two"}}],
         "class Solution:\n    def two(self, nums, target):\n        return (0, 1)"),
    Case("LiveCodeBench stdin, a real answer within tolerance",
         [{"input": "1\n", "output": "0.333333333\n", "testtype": "stdin"}], "print(int(input()) / 3)"),
    Case("a real answer printed with few digits, within 1e-6",
         {"inputs": ["\n"], "outputs": ["3.14159265358979\n"]}, "print('%.7f' % 3.14159265358979)"),
    Case("HumanEval", CHECK, "def dbl(x):\n    return 2 * x"),
    Case("HumanEval, check calls a helper of the program",
         {"test": "def check(candidate):\n    assert candidate(3) == helper(3) + 1\n", "entry_point": "inc"},
         "def helper(x):\n    return x\ndef inc(x):\n    return helper(x) + 1"),
    Case("scratch files in the working directory and /tmp", {"inputs": ["5\n"], "outputs": ["10\n"]},
         "import os\nx = int(input())\nscratch = f'/tmp/er-honest-{os.getpid()}-{os.urandom(4).hex()}'\n"
         "open('a.txt', 'w').write(str(x))\nopen(scratch, 'w').write(str(x))\n"
         "print(int(open('a.txt').read()) + int(open(scratch).read()))\nos.unlink(scratch)"),
    Case("a megabyte in, a megabyte out", {"inputs": ["1\n" * 300_000], "outputs": ["1\n" * 300_000]},
         "import sys\nsys.stdout.write(sys.stdin.read())"),
    Case("a subprocess of its own", {"inputs": ["\n"], "outputs": ["7\n"]},
         "import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'print(7)'], capture_output=True, "
         "text=True).stdout.strip())"),
    Case("every process of a test is gone before the next one",
         {"inputs": ["start\n", "check\n"], "outputs": ["ok\n", "alone\n"]}, textwrap.dedent(f"""
        import os
        token = b"{SLEEP_TOKEN}"
        if input() == "start":
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", token.decode()])  # a daemon, left behind on purpose
            print("ok")
        else:
            def cmdline(pid):
                try:
                    return open(f"/proc/{{pid}}/cmdline", "rb").read()
                except OSError:
                    return b""
            left = [p for p in os.listdir("/proc") if p.isdigit() and token in cmdline(p)]
            print("company" if left else "alone")
        """)),
]


def completion(code: str) -> str:
    return f"<think>let me think</think>Here it is:\n```python\n{code}\n```\n"


@pytest.fixture(autouse=True, scope="module")
def plain_by_name_where_nothing_isolates():
    """Where no isolating sandbox works (a machine without bubblewrap or user namespaces), the default-mode tests
    choose plain by name, as a user would have to."""
    if any(sandbox.available(m) for m in sandbox.ISOLATING):
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setenv("ELASTIC_REASONING_SANDBOX", "plain")
    yield
    patch.undo()


@pytest.fixture(params=sandbox.MECHANISMS)
def mechanism(request) -> str:
    if not sandbox.available(request.param):
        pytest.skip(f"sandbox mechanism {request.param} is not available on this machine")
    return request.param


def grade(case: Case, mechanism: str, tmp_path) -> dict:
    """The score as a user gets it: the CLI under bwrap/unshare, the library under plain."""
    if mechanism == "plain":
        config = CodeRewardConfig(mechanism="plain", timeout_s=case.timeout)
        return score_code(completion(case.code), case.tests, config=config).as_dict()
    tests = tmp_path / f"tests-{secrets.token_hex(4)}.json"
    tests.write_text(json.dumps(case.tests))
    env = {k: v for k, v in os.environ.items() if k != "ELASTIC_REASONING_SANDBOX"}
    out = subprocess.run([sys.executable, "-m", "elastic_reasoning", "reward", "code", "--completion",
                          completion(case.code), "--tests", str(tests), "--timeout", str(case.timeout),
                          "--sandbox", mechanism], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert f"isolation: {mechanism}" in out.stderr  # the CLI says which isolation it used
    return json.loads(out.stdout)


@pytest.mark.parametrize("case", [*ATTACKS, leak_case()], ids=lambda c: c.name)
def test_every_attack_scores_0(case, mechanism, tmp_path):
    if mechanism in case.exposed_in:
        pytest.skip(f"{mechanism} mode exposes this by design ({sandbox.PLAIN_EXPOSES[:60]}...)")
    if case.needs_cgroup and not sandbox.cgroups_available():
        pytest.skip("memory as a whole is bounded only with a cgroup; none can be created here")
    result = grade(case, mechanism, tmp_path)
    assert result["score"] == 0.0, result
    if mechanism != "plain" or not case.exposed_in:
        assert result["sandbox"] == mechanism


@pytest.mark.parametrize("case", HONEST, ids=lambda c: c.name)
def test_every_honest_solution_scores_1(case, mechanism, tmp_path):
    result = grade(case, mechanism, tmp_path)
    assert result["score"] == 1.0, result


def test_loopback_network_is_unreachable(mechanism, tmp_path):
    if mechanism == "plain":
        pytest.skip("plain mode exposes the network, localhost included")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        # The test expects what only a connection to the grader's machine could produce.
        case = Case("connect to localhost", expects("connected"),
                    f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                    "    print('connected')\nexcept OSError:\n    print('refused')")
        assert grade(case, mechanism, tmp_path)["score"] == 0.0
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------- the property


def _lookup_program(answers: list[str]) -> str:
    return f"import sys\nanswers = {answers!r}\nsys.stdout.write(answers[int(input())])"


def _wrong(expected: str, how: int) -> str:
    """A wrong answer near ``expected``: what a policy might print hoping the checker is lenient."""
    token = expected.strip()
    if how == 0 and token.lstrip("-").isdigit():
        return str(int(token) + 1) + "\n"  # off by one
    if how == 1 and token.lstrip("-").isdigit():
        return f"{int(token) + 1}.0\n"  # off by one, as a float
    if how == 2:
        return expected.strip() + " 0\n"  # an extra token
    if how == 3:
        return expected + expected  # an extra line
    return (token.swapcase() if token.swapcase() != token else token + "x") + "\n"  # another word


@settings(max_examples=12, deadline=None)
@given(values=st.lists(st.one_of(st.integers(-10 ** 12, 10 ** 12), st.sampled_from(["YES", "NO", "Alice"])),
                       min_size=1, max_size=3),
       which=st.integers(0, 2), how=st.integers(0, 4))
def test_no_program_printing_a_wrong_answer_scores_1(values, which, how):
    expected = [f"{v}\n" for v in values]
    tests = {"inputs": [f"{i}\n" for i in range(len(values))], "outputs": expected}
    config = CodeRewardConfig(timeout_s=5.0)
    assert score_code(completion(_lookup_program(expected)), tests, config=config).score == 1.0
    answers = list(expected)
    which %= len(values)
    answers[which] = _wrong(expected[which], how)
    assert score_code(completion(_lookup_program(answers)), tests, config=config).score == 0.0
