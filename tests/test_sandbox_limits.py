"""The sandbox fails closed and holds its limits: no silent fallback to plain, memory and disk bounded as a whole,
nothing of a run left behind even when the caller is killed. One promise per test, per mechanism where it applies.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from elastic_reasoning import sandbox
from elastic_reasoning.sandbox import SandboxConfig, SandboxUnavailable

IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=sandbox.MECHANISMS)
def mechanism(request) -> str:
    if not sandbox.available(request.param):
        pytest.skip(f"sandbox mechanism {request.param} is not available on this machine")
    return request.param


@pytest.fixture(params=sandbox.ISOLATING)
def isolating(request) -> str:
    if not sandbox.available(request.param):
        pytest.skip(f"sandbox mechanism {request.param} is not available on this machine")
    return request.param


def run_py(source: str, mechanism: str, **config) -> sandbox.SandboxResult:
    return sandbox.run_python(textwrap.dedent(source), config=SandboxConfig(mechanism=mechanism, **config))


def processes_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def sleeping(token: str) -> bool:
    for pid in processes_with(token):
        try:
            if open(f"/proc/{pid}/comm").read().strip() == "sleep":
                return True
        except OSError:
            pass
    return False


def wait_until_gone(token: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with(token)


# ------------------------------------------------------------------------------------------- fail closed


@pytest.fixture
def nothing_isolates(monkeypatch):
    """A machine without bubblewrap and without user namespaces."""
    real = sandbox.available
    monkeypatch.setattr(sandbox, "available", lambda m, config=None: m == "plain" or (m not in sandbox.ISOLATING
                                                                                        and real(m, config)))
    monkeypatch.delenv("ELASTIC_REASONING_SANDBOX", raising=False)


def test_auto_never_falls_back_to_plain(nothing_isolates):
    with pytest.raises(SandboxUnavailable, match="bubblewrap") as info:
        sandbox.detect("auto")
    assert "plain" in str(info.value) and "WITHOUT isolation" in str(info.value)  # how to opt in, and what it costs
    with pytest.raises(SandboxUnavailable):
        sandbox.run(["true"])


def test_the_code_reward_refuses_before_training_starts(nothing_isolates):
    from elastic_reasoning.rewards import get_reward

    with pytest.raises(SandboxUnavailable):
        get_reward("code")  # what training and evaluation build: it refuses at once, not at the first batch
    assert callable(get_reward("code", mechanism="plain"))  # unless plain is chosen by name


def test_plain_only_by_name_and_with_a_warning_that_says_what_is_exposed(nothing_isolates, monkeypatch, caplog):
    monkeypatch.setenv("ELASTIC_REASONING_SANDBOX", "plain")
    sandbox._ANNOUNCED.discard("plain")
    with caplog.at_level("WARNING", logger="elastic_reasoning.sandbox"):
        assert sandbox.detect("auto") == "plain"
    assert "WITHOUT isolation" in caplog.text and "localhost" in caplog.text and "/tmp" in caplog.text


def test_asking_for_a_missing_mechanism_is_an_error(nothing_isolates):
    with pytest.raises(SandboxUnavailable):
        sandbox.detect("bwrap")


@pytest.mark.parametrize("field, value", [("timeout_s", math.inf), ("timeout_s", math.nan), ("timeout_s", -1),
                                          ("timeout_s", 0), ("memory_mb", 0), ("disk_mb", -5), ("timeout_s", "6")])
def test_bad_limits_are_a_clear_error(field, value):
    from elastic_reasoning.rewards.code import CodeRewardConfig

    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})
    if field in ("timeout_s", "memory_mb"):
        with pytest.raises(ValueError, match=field):
            CodeRewardConfig(**{field: value})


# ------------------------------------------------------------------------------------------- limits that hold


def test_the_working_directory_and_tmp_are_bounded(isolating):
    result = run_py(
        """
        import os
        for where in (".", "/tmp"):
            written = 0
            try:
                with open(os.path.join(where, "fill"), "wb") as f:
                    while written < 200 << 20:
                        f.write(b"x" * (1 << 20))
                        written += 1 << 20
                    f.flush()
            except OSError as exc:
                print(where, "stopped", exc.errno)
            else:
                print(where, "wrote", written)
            os.unlink(os.path.join(where, "fill"))
        """,
        isolating, disk_mb=32, file_size_mb=512,
    )
    assert result.stdout.split("\n")[:2] == [". stopped 28", "/tmp stopped 28"], result.stdout + result.stderr  # ENOSPC


def test_dev_shm_is_bounded_and_dev_is_read_only(isolating):
    result = run_py(
        """
        import os
        try:
            open("/dev/shm/fill", "wb").write(b"x" * (40 << 20))
            print("shm wrote")
        except OSError as exc:
            print("shm stopped", exc.errno)
        try:
            open("/dev/new-file", "w").write("x")
            print("dev wrote")
        except OSError:
            print("dev refused")
        """,
        isolating, shm_mb=16, file_size_mb=512,
    )
    assert result.stdout.split() == ["shm", "stopped", "28", "dev", "refused"], result.stdout + result.stderr


def test_no_host_directory_is_made_for_a_namespaced_run(isolating, monkeypatch):
    # The program's files reach the sandbox through descriptors: nothing on the host disk to fill or leave behind.
    def refuse(*args, **kwargs):
        raise AssertionError("a host directory was made")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    result = sandbox.run_python("print(open('data/in.txt').read())", files={"data/in.txt": "payload"},
                                config=SandboxConfig(mechanism=isolating))
    assert result.ok and result.stdout.strip() == "payload"


def test_memfd_and_sysv_shm_are_refused_without_counting_on_a_cgroup():
    if not sandbox.available("bwrap") or sandbox.seccomp_filter() is None:
        pytest.skip("the seccomp filter is loaded by bwrap (the code harness loads it itself in every mode)")
    result = run_py(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            os.memfd_create("x")
            print("memfd allowed")
        except OSError as exc:
            print("memfd", exc.errno)
        print("shmget", libc.shmget(0, 1 << 20, 0o1600), ctypes.get_errno())
        print("ptrace", libc.ptrace(0, 0, None, None), ctypes.get_errno())
        """,
        "bwrap", cgroups=False,
    )
    assert result.stdout.split("\n")[:3] == ["memfd 1", "shmget -1 1", "ptrace -1 1"], result.stdout + result.stderr


def test_memory_is_bounded_as_a_whole_with_a_cgroup(mechanism):
    if not sandbox.cgroups_available():
        pytest.skip("no cgroup can be created here: memory is bounded per process only (RLIMIT_AS)")
    # Six processes of 150 MiB each stay under the per-process limit; together they pass the run's bound.
    result = run_py(
        """
        import os, time
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = bytearray(150 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(1)
                os._exit(0)
            children.append(pid)
        print("held" if all(os.waitpid(p, 0)[1] == 0 for p in children) else "killed")
        """,
        mechanism, memory_mb=256, disk_mb=32, shm_mb=16, timeout_s=20,
    )
    assert "held" not in result.stdout, result.stdout + result.stderr
    assert result.cgroup


# ------------------------------------------------------------------------------------------- nothing left behind


def test_a_daemon_with_a_clean_environment_does_not_outlive_the_run(mechanism):
    if mechanism == "plain" and not IS_ROOT:
        pytest.skip("plain mode for a non-root caller finds escaped processes only by their environment")
    token = "er-test-clean-daemon-" + secrets.token_hex(4)
    result = run_py(
        f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "{token}"], {{}})
            os._exit(0)
        print("parent done")
        """,
        mechanism,
    )
    assert result.ok, result.stderr
    assert wait_until_gone(token, 3) == []


def test_plain_runs_as_root_get_a_uid_of_their_own():
    if not IS_ROOT:
        pytest.skip("only root can give each run its own uid")
    uids = {sandbox.run(["/usr/bin/id", "-u"], config=SandboxConfig(mechanism="plain")).stdout.strip()
            for _ in range(3)}
    assert len(uids) == 3 and "0" not in uids and str(sandbox.NOBODY_UID) not in uids


KILLED_CALLER = """
import os
from elastic_reasoning import sandbox
sandbox.run(["/bin/sh", "-c", "exec sleep 600 " + os.environ["ER_TEST_TOKEN"]],
            config=sandbox.SandboxConfig(mechanism=os.environ["ER_TEST_MECHANISM"], timeout_s=3))
"""


def test_a_killed_caller_leaves_no_process_directory_or_cgroup(mechanism):
    token = f"{secrets.randbelow(10 ** 6)}.{secrets.randbelow(10 ** 6)}"  # sleep's argument: our marker
    env = {**os.environ, "ER_TEST_TOKEN": token, "ER_TEST_MECHANISM": mechanism}  # not on the caller's command line
    caller = subprocess.Popen([sys.executable, "-c", KILLED_CALLER], env=env)
    try:
        deadline = time.monotonic() + 30
        while not sleeping(token) and time.monotonic() < deadline:  # the program itself, not a wrapper, is running
            time.sleep(0.05)
        assert sleeping(token), "the run never started"
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()
    finally:
        if caller.poll() is None:
            caller.kill()
    # Namespaced runs die with the caller (setpriv --pdeathsig on the backstop, bwrap --die-with-parent, unshare
    # --kill-child); plain's backstop ends the program at its deadline (timeout + 5 s).
    assert wait_until_gone(token, 3 if mechanism != "plain" else 12) == []
    stale = [p for p in Path(tempfile.gettempdir()).glob(f"er-sandbox-{caller.pid}-*")]
    assert len(stale) == (1 if mechanism == "plain" else 0)  # namespaced runs never make one
    sandbox._sweep_stale_workdirs()  # what the next start does
    assert [p for p in stale if p.exists()] == []
    if sandbox.cgroups_available():
        roots = sandbox._CGROUPS["bases"][1]
        assert [p for root in roots for p in Path(root).glob(f"er-sandbox-{caller.pid}-*")]  # left by the kill
        sandbox._sweep_stale_cgroups(sandbox._CGROUPS["bases"])
        assert [p for root in roots for p in Path(root).glob(f"er-sandbox-{caller.pid}-*")] == []
