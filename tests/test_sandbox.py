"""The sandbox's promises, one per test, under every isolation mechanism this machine offers.

Each adversarial program gets a unique token in its command line (or a marker file name), so the test can check
from the host that no process of the run is left and that nothing was written where it must not be.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from elastic_reasoning import sandbox
from elastic_reasoning.sandbox import SandboxConfig

IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=sandbox.MECHANISMS)
def mechanism(request) -> str:
    if not sandbox.available(request.param):
        pytest.skip(f"sandbox mechanism {request.param} is not available on this machine")
    return request.param


def run_py(source: str, mechanism: str, **config) -> sandbox.SandboxResult:
    return sandbox.run_python(textwrap.dedent(source), config=SandboxConfig(mechanism=mechanism, **config))


def processes_with(token: str) -> list[int]:
    """Host pids whose command line contains ``token``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def assert_no_leftovers(token: str) -> None:
    deadline = time.monotonic() + 2  # the kernel tears a PID namespace down asynchronously
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(token) == [], "a process of the run outlived it"


def host_can_still_fork() -> bool:
    return subprocess.run(["true"], timeout=10).returncode == 0


def sleeper(token: str) -> str:
    """A Python statement that replaces the process with a long sleep whose command line carries ``token``."""
    return f"os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', '{token}'])"


# ------------------------------------------------------------------------------------------- ordinary behaviour


def test_a_correct_program_runs_and_its_output_comes_back(mechanism):
    result = sandbox.run_python("print(sum(int(x) for x in input().split()))", stdin="2 3 4\n",
                                config=SandboxConfig(mechanism=mechanism))
    assert result.ok and result.stdout == "9\n" and result.mechanism == mechanism


def test_the_working_directory_is_writable_and_removed_afterwards(mechanism):
    result = run_py(
        """
        import os
        open("scratch.txt", "w").write("hello")
        os.makedirs("locked/inner"); os.chmod("locked", 0)  # even an unreadable directory must be cleaned up
        print(os.getcwd())
        """,
        mechanism,
    )
    assert result.ok, result.stderr
    workdir = result.stdout.strip()
    assert workdir and not os.path.exists(workdir)


def test_files_are_placed_in_the_working_directory(mechanism):
    result = sandbox.run_python("print(open('data/in.txt').read())", files={"data/in.txt": "payload"},
                                config=SandboxConfig(mechanism=mechanism))
    assert result.ok and result.stdout.strip() == "payload"


def test_a_file_name_cannot_escape_the_working_directory():
    with pytest.raises(ValueError):
        sandbox.run(["true"], files={"../escape.txt": "x"})


def test_the_log_names_the_mechanism_in_use(caplog):
    sandbox._ANNOUNCED.clear()  # the choice is announced once per process
    with caplog.at_level("INFO", logger="elastic_reasoning.sandbox"):
        chosen = sandbox.detect("auto")
    assert f"sandbox: using {sandbox.describe(chosen).split(':')[0]}" in caplog.text


def test_auto_picks_the_strongest_available_mechanism(monkeypatch):
    monkeypatch.delenv("ELASTIC_REASONING_SANDBOX", raising=False)
    strongest = next((m for m in sandbox.ISOLATING if sandbox.available(m)), None)
    if strongest is None:
        pytest.skip("no isolating mechanism here (auto then refuses; see test_sandbox_limits.py)")
    assert sandbox.detect("auto") == strongest


def test_asking_for_an_unknown_mechanism_is_an_error():
    with pytest.raises(ValueError):
        sandbox.detect("docker")


# ------------------------------------------------------------------------------------------- adversarial programs


def test_infinite_loop_is_stopped_at_the_wall_clock_limit(mechanism):
    start = time.monotonic()
    result = run_py("while True: pass", mechanism, timeout_s=1.0)
    assert result.timed_out and not result.ok
    assert time.monotonic() - start < 5


def test_sleeping_forever_is_stopped_at_the_wall_clock_limit(mechanism):
    token = "er-test-sleep-" + secrets.token_hex(4)
    result = run_py(f"import os, sys\n{sleeper(token)}", mechanism, timeout_s=1.0)
    assert result.timed_out
    assert_no_leftovers(token)


def test_fork_bomb_is_contained_and_leaves_nothing_behind(mechanism):
    token = "er-test-forkbomb-" + secrets.token_hex(4)
    source = f"""
        import os, sys
        if len(sys.argv) < 2:
            os.execv(sys.executable, [sys.executable, 'main.py', '{token}'])
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    result = run_py(source, mechanism, timeout_s=2.0, max_processes=32)
    assert not result.ok
    assert_no_leftovers(token)
    assert host_can_still_fork()


def test_the_run_after_a_fork_bomb_can_still_fork(mechanism):
    # The bomb's zombies may wait a moment for init to reap them; they must not count against the next run.
    run_py("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", mechanism, timeout_s=1.0,
           max_processes=32)
    result = run_py("import os\npid = os.fork()\nif pid == 0: os._exit(0)\nos.waitpid(pid, 0)\nprint('forked')",
                    mechanism, max_processes=32)
    assert result.ok and result.stdout.strip() == "forked", result.stderr


def test_memory_bomb_fails_inside_its_limit(mechanism):
    result = run_py(
        """
        blocks = []
        while True:
            blocks.append(bytearray(50 * 1024 * 1024))
        """,
        mechanism,
        memory_mb=512,
        timeout_s=10.0,
    )
    assert not result.ok and not result.timed_out
    assert "MemoryError" in result.stderr


def test_a_flood_of_output_is_cut_at_the_file_size_limit(mechanism):
    start = time.monotonic()
    result = run_py(
        """
        import sys
        chunk = "x" * 65536
        while True:
            sys.stdout.write(chunk)
        """,
        mechanism,
        file_size_mb=1,
        timeout_s=5.0,
    )
    assert not result.ok
    assert len(result.stdout) <= 1024 * 1024
    assert time.monotonic() - start < 5, "the flood should fail at the size limit, not run to the timeout"


def test_output_beyond_the_read_back_cap_is_flagged(mechanism):
    result = run_py("print('y' * 5000)", mechanism, max_output_bytes=100)
    assert result.ok and len(result.stdout) == 100 and result.stdout_truncated


def test_writing_outside_the_working_directory_fails_even_where_permissions_allow(mechanism):
    if mechanism == "plain":
        pytest.skip("plain mode protects host files only by Unix permissions; /var/tmp is world-writable")
    target = Path("/var/tmp") / f"er-test-escape-{secrets.token_hex(4)}"
    try:
        result = run_py(f"open({str(target)!r}, 'w').write('pwned')", mechanism)
        assert not result.ok
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_remounting_the_host_read_write_does_not_help(mechanism):
    if mechanism == "plain":
        pytest.skip("plain mode has no read-only mounts to undo")
    target = f"/var/tmp/er-test-remount-{secrets.token_hex(4)}"
    try:
        result = sandbox.run(["/bin/sh", "-c", f"mount -o remount,bind,rw / 2>/dev/null; mount -o remount,rw / "
                                               f"2>/dev/null; touch {target}"],
                             config=SandboxConfig(mechanism=mechanism))
        assert not result.ok and not os.path.exists(target)
    finally:
        if os.path.exists(target):
            os.unlink(target)


def test_the_callers_own_files_cannot_be_written(mechanism, tmp_path):
    if mechanism == "plain" and not IS_ROOT:
        pytest.skip("plain mode for a non-root caller runs as the caller's own user")
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    os.chmod(tmp_path, 0o755)
    result = run_py(f"open({str(victim)!r}, 'w').write('pwned')", mechanism)
    assert not result.ok
    assert victim.read_text() == "original"


def test_the_parents_environment_is_not_visible(mechanism, monkeypatch):
    secret = "er-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("ER_TEST_API_KEY", secret)
    result = run_py(
        """
        import os
        print(dict(os.environ))
        for pid in os.listdir('/proc'):  # also try every other process's environment
            if pid.isdigit():
                try:
                    print(open(f'/proc/{pid}/environ', 'rb').read())
                except OSError:
                    pass
        """,
        mechanism,
    )
    assert result.ok, result.stderr
    if mechanism == "plain" and not IS_ROOT:
        assert secret not in result.stdout.split("\n")[0]  # the program's own environment is still scrubbed
        pytest.skip("plain mode for a non-root caller can read the caller's processes' environments in /proc")
    assert secret not in result.stdout


def test_no_tcp_connection_to_a_listener_on_localhost(mechanism):
    if mechanism == "plain":
        pytest.skip("plain mode has no network isolation (install bubblewrap or allow user namespaces)")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        result = run_py(
            f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'exfiltrated')
                print('connected')
            except OSError as exc:
                print('refused', exc)
            """,
            mechanism,
        )
        assert result.stdout.startswith("refused"), result.stdout + result.stderr
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_a_daemon_does_not_outlive_the_run(mechanism):
    token = "er-test-daemon-" + secrets.token_hex(4)
    result = run_py(
        f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {sleeper(token)}
            os._exit(0)
        print('parent done')
        """,
        mechanism,
        timeout_s=5.0,
    )
    assert result.ok and "parent done" in result.stdout
    assert_no_leftovers(token)


def test_killing_its_parent_harms_neither_the_caller_nor_leaves_processes(mechanism):
    token = "er-test-parricide-" + secrets.token_hex(4)
    result = run_py(
        f"""
        import os, signal, sys, time
        for target in (os.getppid(), -os.getpgid(0)):  # the parent, then the whole process group
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        {sleeper(token)}
        """,
        mechanism,
        timeout_s=2.0,
    )
    assert not result.ok
    assert_no_leftovers(token)  # and this test process, the caller, is still running


def test_killing_every_process_it_can_signal_harms_nothing_outside(mechanism):
    if mechanism == "plain" and not IS_ROOT:
        pytest.skip("plain mode for a non-root caller: kill(-1) reaches every process of the caller's user")
    token = "er-test-killall-" + secrets.token_hex(4)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = run_py(f"import os, signal, sys\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n"
                        f"{sleeper(token)}", mechanism, timeout_s=2.0)
        assert not result.ok
        assert bystander.poll() is None, "a process outside the sandbox was killed"
        assert_no_leftovers(token)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_crash_by_deep_recursion_is_just_a_failed_run(mechanism):
    result = run_py(
        """
        import sys
        sys.setrecursionlimit(10**8)
        def down(n):  # recursion through a builtin grows the C stack: a segmentation fault, not a RecursionError
            return max([n], key=down)
        down(0)
        """,
        mechanism,
        timeout_s=10.0,
    )
    assert not result.ok and not result.timed_out
    assert host_can_still_fork()


def test_an_interrupted_caller_kills_the_run(mechanism):
    token = "er-test-interrupt-" + secrets.token_hex(4)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.7)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_py(f"import os, sys\n{sleeper(token)}", mechanism, timeout_s=30.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_no_leftovers(token)
    leftovers = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("er-sandbox-*")
                 if p.stat().st_mtime > time.time() - 5]
    assert leftovers == []


def test_runs_in_parallel_threads_stay_separate(mechanism):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        return sandbox.run_python("import sys; print(int(input()) * 2)", stdin=f"{i}\n",
                                  config=SandboxConfig(mechanism=mechanism)).stdout.strip()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(8))) == [str(2 * i) for i in range(8)]
