"""The code reward's harness: runs inside the sandbox, starts every test of one candidate, and never judges outputs.

Run by the sandbox's interpreter with ``-S`` (compiled once into a ``.pyc`` by that interpreter, or sent as source),
so: standard library only, no package imports, any Python >= 3.8. The reward module imports it only for the
plain-value codec (:func:`dumps_plain`, :func:`loads_plain`).

Protocol. The spec arrives on stdin (``marshal``: the code, the inputs, limits; never an expected output or anything
derived from one). For each test the harness writes one frame to its stdout: a JSON header line (texts as hex), then
``header["n"]`` raw bytes (the test's stdout for stdin/stdout tests, the encoded return value for call-based ones).
The reward, outside the sandbox, compares those bytes with the expected outputs.

Why a candidate cannot forge or reach the verdict channel:

* the harness's stdout is never inherited: every test process replaces fds 0-2 and closes every other descriptor
  before the candidate's code runs;
* the harness makes itself non-dumpable (``PR_SET_DUMPABLE`` 0), so a process of the same uid cannot ptrace it,
  open ``/proc/<harness>/fd/*`` or take its descriptors with ``pidfd_getfd``; a seccomp filter refuses ``ptrace``,
  ``pidfd_getfd`` and ``process_vm_*`` outright; in a PID namespace it is PID 1, which its descendants cannot kill;
* a test's outputs are read only after **every** process of that test is dead (``kill(-1)`` as PID 1 of the
  namespace, else the whole descendant tree: the harness is a child subreaper, so orphans come back to it) and its
  scratch space wiped, so nothing of one test reaches the next;
* a call-based test's value crosses as plain data (:func:`to_plain`: exact builtin types only, no subclasses, no
  objects), so the worst a forged value can do is claim an output: the comparison happens outside;
* HumanEval's ``check`` runs **here**, not in the candidate's process: the candidate's function is a remote
  procedure in its own process, called with and returning plain values, so no ``__eq__``, exit, ``atexit`` hook,
  marker or file of the candidate's decides anything.
"""

import _signal as signal  # the C module: "signal" would import enum and functools (5 ms per candidate)
import marshal
import os
import select
import struct
import sys
import time

# Only cheap modules at the top: every candidate pays for this interpreter's start. json (and the re it pulls in) is
# imported where values are encoded, traceback where a failure is reported.

# --------------------------------------------------------------------------------------------- plain values
# A value crosses process boundaries as JSON where lists, numbers, strings, bools and None are themselves, and every
# other builtin container is an object with one tag key. Only exact builtin types are accepted (``type(v) is int``),
# so a subclass with a custom __eq__, __hash__ or __str__ never reaches a comparison.

def to_plain(value, _depth=0):
    """A JSON-able structure for ``value``; ``TypeError`` for anything that is not an exact builtin value."""
    if _depth > 500:
        raise TypeError("value nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is float or kind is str:
        return value
    if kind is list:
        return [to_plain(v, _depth + 1) for v in value]
    if kind is tuple:
        return {"tuple": [to_plain(v, _depth + 1) for v in value]}
    if kind is dict:
        return {"dict": [[to_plain(k, _depth + 1), to_plain(v, _depth + 1)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {kind.__name__: [to_plain(v, _depth + 1) for v in value]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError("not a plain value: " + kind.__name__)


def _tagged(obj):
    if len(obj) != 1:
        raise ValueError("malformed plain value")
    (tag, body), = obj.items()
    if tag == "tuple":
        return tuple(body)
    if tag == "set":
        return set(body)
    if tag == "frozenset":
        return frozenset(body)
    if tag == "dict":
        return {k: v for k, v in body}
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(*body)
    raise ValueError("unknown plain value tag " + repr(tag))


def _parse_int(text):
    if len(text) < 4000:
        return int(text)
    from decimal import Decimal  # no int-to-str digit limit on this path

    return int(Decimal(text))


def dumps_plain(value):
    import json

    return json.dumps(to_plain(value), separators=(",", ":"))


def loads_plain(text):
    """The value :func:`dumps_plain` encoded, rebuilt from fresh builtin objects; ``ValueError`` if malformed."""
    import json

    return json.loads(text, object_hook=_tagged, parse_int=_parse_int)


# --------------------------------------------------------------------------------------------- protecting the harness

PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 4, 22, 36, 38
SECCOMP_MODE_FILTER = 2


_LIBC = []


def _prctl(option, arg=0, arg3=0):
    import ctypes

    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    args = [ctypes.c_ulong(a) for a in (arg, arg3, 0, 0)]
    if _LIBC[0].prctl(ctypes.c_int(option), *args) != 0:
        raise OSError(ctypes.get_errno(), "prctl(%d) failed" % option)


def lock_down(seccomp_hex):
    """Before any candidate code exists in a process: no ptrace access to the harness, orphans come back to it,
    and (when given) the seccomp filter for every process of the run."""
    import ctypes

    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if seccomp_hex:
        program = bytes.fromhex(seccomp_hex)

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buffer = ctypes.create_string_buffer(program, len(program))
        fprog = SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def _site_builtins():
    """``exit``, ``quit`` and ``help``, which ``site`` would add (the harness runs with ``-S``)."""
    import builtins

    try:
        import _sitebuiltins
    except ImportError:  # pragma: no cover - every CPython has it
        return
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()


# --------------------------------------------------------------------------------------------- frames


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def emit(header, payload=b""):
    """One frame: a JSON header line (numbers, fixed words, and text as hex, so no JSON encoder is needed), then
    ``n`` raw bytes."""
    fields = []
    for key, value in header.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"%s"' % (value.encode("utf-8", "replace").hex() if key.endswith("_hex") else value)
        fields.append('"%s":%s' % (key, text))
    fields.append('"n":%d' % len(payload))
    _write_all(1, ("{" + ",".join(fields) + "}\n").encode() + payload)


def _read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _scratch(directory):
    """An anonymous file in ``directory`` (``O_TMPFILE``: no name any process could open)."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        path = os.path.join(directory, ".er-%s" % os.urandom(8).hex())
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.unlink(path)
        return fd


def _read_capped(fd, cap):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, left = [], cap + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    return data[:cap], len(data) > cap


# --------------------------------------------------------------------------------------------- processes


def _children_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(root):
    children, found, todo = _children_map(), [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def kill_everything(kill_minus_one):
    """Kill every process of the run but this one and reap them all: nothing of a test outlives it."""
    deadline = time.monotonic() + 10
    me = os.getpid()
    while True:
        if kill_minus_one:
            try:
                os.kill(-1, signal.SIGKILL)  # as PID 1 of the run's PID namespace: every other process of the run
            except OSError:
                pass
        else:
            for pid in _descendants(me):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            return  # no child left: as a subreaper (or PID 1), every descendant would be our child by now
        if time.monotonic() > deadline:
            raise RuntimeError("processes of a test did not die within 10 s")
        time.sleep(0.001)


def wipe(directory, keep=()):
    """Remove everything a test left in ``directory`` (which the next test must not see)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.path in keep:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)  # the test may have made it unreadable
                wipe(entry.path)
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _wait(pid, timeout):
    """True when the child ended within ``timeout`` seconds (its status is then still there to collect)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        return bool(ready)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.002)
    return False


def _enter_test_process(stdio, keep, cpu_seconds):
    """In a freshly forked test process, before any candidate code: its own stdin/stdout/stderr, no other
    descriptor of the harness, ptrace-able like any process again, its own CPU limit."""
    import resource  # imported by main() before the first fork: a lookup here

    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    keep = sorted(set(keep))
    low = 3
    for fd in keep + [1 << 20]:
        if fd >= low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.setpgid(0, 0)
    _prctl(PR_SET_DUMPABLE, 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


def _exit_child(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# --------------------------------------------------------------------------------------------- stdin/stdout and call


def _stdio_or_call(spec, code, i, cpu_seconds, workdir):
    kind = spec["kind"]
    files = [_scratch(workdir) for _ in range(4)]  # stdin, stdout, stderr, return value
    stdin, stdout, stderr, result = files
    if kind == "stdio":
        _write_all(stdin, spec["cases"][i].encode("utf-8", "surrogateescape"))
        os.lseek(stdin, 0, os.SEEK_SET)
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the test process: from here on the candidate's code may run
        try:
            _enter_test_process((stdin, stdout, stderr), [result], cpu_seconds)
            sys.argv = ["solution.py"]
            scope = {"__name__": "__main__" if kind == "stdio" else "solution", "__builtins__": __builtins__,
                     "__file__": "solution.py"}
            try:
                exec(code, scope)
            except SystemExit as exc:  # a program ending itself is an ordinary end of a stdin/stdout test
                if kind != "stdio":
                    raise
                if exc.code not in (None, 0):
                    if not isinstance(exc.code, int):
                        print(exc.code, file=sys.stderr)
                    _exit_child(exc.code if isinstance(exc.code, int) and 0 < exc.code < 256 else 1)
            if kind == "call":
                name = spec["fn_name"]
                solution = scope.get("Solution")
                fn = getattr(solution(), name) if isinstance(solution, type) else scope[name]
                _write_all(result, dumps_plain(fn(*spec["cases"][i])).encode())
            _exit_child(0)
        except BaseException:  # noqa: B036 - the test process reports every failure the same way
            try:
                import traceback

                traceback.print_exc()
            finally:
                _exit_child(1)
    in_time = _wait(pid, spec["timeout"])
    status = None
    if in_time:
        _, status = os.waitpid(pid, 0)
    return start, in_time, status, files


# --------------------------------------------------------------------------------------------- HumanEval's check


class _Timeout(BaseException):
    pass


class CandidateError(Exception):
    """The candidate's function raised (the type is named), died, or answered with something malformed."""


def _alarm(signum, frame):
    raise _Timeout()


def _send(fd, message):
    data = message.encode()
    _write_all(fd, struct.pack(">Q", len(data)) + data)


def _receive(fd, limit):
    def exactly(n):
        chunks, left = [], n
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack(">Q", exactly(8))
    if size > limit:
        raise CandidateError("answer larger than %d bytes" % limit)
    return exactly(size).decode("utf-8")


class _Remote:
    """The candidate's program, in its own process; functions of it are called with and return plain values."""

    def __init__(self, requests, answers, limit):
        self.requests, self.answers, self.limit = requests, answers, limit

    def function(self, name):
        remote = self

        def call(*args, **kwargs):
            try:
                _send(remote.requests, dumps_plain([name, list(args), kwargs]))
                answer = loads_plain(_receive(remote.answers, remote.limit))
            except (OSError, EOFError):
                raise CandidateError("the candidate's process ended") from None
            except (ValueError, TypeError, RecursionError) as exc:
                raise CandidateError("malformed exchange with the candidate: %s" % exc) from None
            if type(answer) is not list or len(answer) != 2 or answer[0] not in ("value", "raised"):
                raise CandidateError("malformed answer from the candidate")
            if answer[0] == "raised":
                raise _builtin_exception(answer[1])
            return answer[1]

        call.__name__ = call.__qualname__ = name
        return call


def _builtin_exception(payload):
    """What the candidate raised, as the builtin exception of that name (so a check may expect a ValueError)."""
    import builtins

    name, message = (payload + ["", ""])[:2] if type(payload) is list else ("", "")
    kind = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - exceptions with unusual constructors
            pass
    return CandidateError("%s: %s" % (name, message))


def _serve(scope, requests, answers):
    """The candidate's side: answer calls until the harness closes the pipe."""
    while True:
        try:
            name, args, kwargs = loads_plain(_receive(requests, 1 << 30))
        except EOFError:
            _exit_child(0)
        try:
            answer = ["value", to_plain(scope[name](*args, **kwargs))]
        except Exception as exc:  # noqa: BLE001 - reported by type name; SystemExit and the like end the process
            answer = ["raised", [type(exc).__name__, str(exc)[:1000]]]
        _send(answers, json_dumps(answer))


class _CheckGlobals(dict):
    """Without the benchmark's prompt, names the test uses but does not define (its helpers) are functions of the
    candidate's program, as in HumanEval's own harness, which runs check after the candidate's code."""

    def __init__(self, remote, builtins_names):
        super().__init__()
        self._remote, self._builtins = remote, builtins_names

    def __missing__(self, name):
        if name in self._builtins or name.startswith("__"):
            raise KeyError(name)
        return self._remote.function(name)


def _program(spec, code, test_code, prompt_code, cpu_seconds, workdir):
    import builtins

    stdin, stdout, stderr = [_scratch(workdir) for _ in range(3)]
    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _enter_test_process((stdin, stdout, stderr), [requests_r, answers_w], cpu_seconds)
            scope = {"__name__": "solution", "__builtins__": __builtins__, "__file__": "solution.py"}
            exec(code, scope)
            _serve(scope, requests_r, answers_w)
        except BaseException:  # noqa: B036
            try:
                import traceback

                traceback.print_exc()
            finally:
                _exit_child(1)
    os.close(requests_r)
    os.close(answers_w)
    remote = _Remote(requests_w, answers_r, spec["output_cap"])
    if prompt_code is not None:
        namespace = {"__name__": "__check__", "__builtins__": builtins}
        exec(prompt_code, namespace)  # the benchmark's own stub and helpers (trusted data, never the candidate's)
    else:
        namespace = _CheckGlobals(remote, set(dir(builtins)))
        namespace.update({"__name__": "__check__", "__builtins__": builtins})
    candidate = remote.function(spec["entry_point"])
    namespace[spec["entry_point"]] = candidate
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, spec["timeout"], 0.05)  # and again every 50 ms: a bare except cannot stop it
    status = "error"
    try:
        try:
            exec(test_code, namespace)
            namespace["check"](candidate)
            status = "pass"
        except _Timeout:
            status = "timeout"
        except AssertionError:
            status = "wrong"
        except BaseException:  # noqa: B036 - the check failing any other way is a failed test, not the harness's end
            status = "error"
            import traceback

            traceback.print_exc(limit=3, file=stderr_note)
        finally:
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:  # the timer fired once more on the way out
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)
        status = "timeout"
    signal.signal(signal.SIGALRM, previous)
    os.close(requests_w)
    os.close(answers_r)
    for fd in (stdin, stdout):
        os.close(fd)
    return start, status, stderr


class _Note:
    """Where the harness keeps the last failure of a check, for the frame's stderr field."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text = (self.text + text)[-2000:]

    def flush(self):
        pass


stderr_note = _Note()


# --------------------------------------------------------------------------------------------- main


def json_dumps(value):
    import json

    return json.dumps(value, separators=(",", ":"))


def main():
    spec = marshal.loads(_read_all(0))  # written by the reward (plain dicts, lists, text, numbers): never a candidate
    os.closerange(3, 1 << 16)  # descriptors the launcher left open (copies of files, a drained gate)
    lock_down(spec.get("seccomp"))
    _site_builtins()
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    sys.path[:] = [""] + list(spec.get("sys_path") or [])
    workdir = os.getcwd()
    scratch = [workdir] + (["/tmp", "/dev/shm"] if spec.get("private_tmp") else [])
    kill_minus_one = bool(spec.get("kill_minus_one"))
    cpu_seconds = max(1, int(spec["timeout"]) + 1)
    cap = spec["output_cap"]
    try:
        code = compile(spec["code"], "solution.py", "exec")
        test_code = compile(spec["program"], "test.py", "exec") if spec["kind"] == "program" else None
        prompt = spec.get("prompt")
        prompt_code = compile(prompt, "prompt.py", "exec") if prompt else None
    except BaseException as exc:  # noqa: B036 - a program that does not compile fails every test
        emit({"compile_error_hex": repr(exc)[:2000]})
        return
    import resource  # noqa: F401 - once here, not in every test process

    if spec["kind"] != "stdio":
        json_dumps(None)  # import json once here, not in every test process
    skip = False
    for i in range(len(spec["cases"])):
        if skip:
            emit({"i": i, "status": "skipped"})
            continue
        if spec["kind"] == "program":
            start, status, stderr = _program(spec, code, test_code, prompt_code, cpu_seconds, workdir)
            kill_everything(kill_minus_one)
            header = {"i": i, "status": status, "seconds": round(time.monotonic() - start, 4)}
            note = stderr_note.text
            stderr_note.text = ""
            header["stderr_hex"] = (_read_capped(stderr, 2000)[0].decode("utf-8", "replace") + note)[-2000:]
            os.close(stderr)
            payload = b""
            if status == "timeout":
                skip = not spec["run_all_after_timeout"]
        else:
            start, in_time, status, files = _stdio_or_call(spec, code, i, cpu_seconds, workdir)
            kill_everything(kill_minus_one)
            header = {"i": i, "seconds": round(time.monotonic() - start, 4)}
            if not in_time:
                header["status"] = "timeout"
                skip = not spec["run_all_after_timeout"]
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                header["status"] = "ok"
            else:
                header["status"] = "error"
            source = files[1] if spec["kind"] == "stdio" else files[3]
            payload, header["truncated"] = _read_capped(source, cap)
            header["stderr_hex"] = _read_capped(files[2], 2000)[0].decode("utf-8", "replace")
            for fd in files:
                os.close(fd)
        for directory in scratch:
            wipe(directory, keep=(workdir,))
        emit(header, payload)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:  # noqa: B036 - any failure of the harness itself fails the candidate (closed)
        try:
            emit({"fatal_hex": repr(exc)[:2000]})
        finally:
            os._exit(1)
