"""Run untrusted programs (model-written code) with the strongest isolation this machine offers, and never with less
than the caller asked for.

The code reward runs whatever the policy wrote, thousands of times per training step, on the user's machine. This
module is the one place that starts such programs. No torch, no third-party imports.

Every run gets:

* its own session and process group; the whole run is killed (``SIGKILL``) when the wall-clock limit passes, when
  the program ends (stragglers), or when the caller is interrupted (``KeyboardInterrupt`` and any other exception
  while waiting), and it dies with the caller when the caller itself is killed (``setpriv --pdeathsig`` on a
  ``timeout`` backstop, whose death ends ``bwrap --die-with-parent`` or ``unshare --kill-child``; in ``plain`` mode
  the backstop alone, at its deadline). Under ``bwrap``/``unshare`` the program is PID 1 of its own PID namespace,
  so a daemon that escapes the process group dies with the namespace;
* resource limits (``prlimit``): CPU seconds, address space, file size (which also bounds captured output), number
  of processes, open files; and, when this process may create cgroups (root, or a delegated cgroup v2 subtree), a
  memory + pids cgroup per run that bounds the run **as a whole** (every process, tmpfs and memfd pages included);
* writable space that is bounded and never on the host disk: under ``bwrap``/``unshare`` the working directory lives
  in a fresh ``/tmp`` tmpfs of ``disk_mb`` and ``/dev/shm`` is a tmpfs of ``shm_mb``; the program's files reach it
  through file descriptors, so no host directory exists to be left behind when the caller is killed. Without a
  cgroup, a seccomp filter refuses ``memfd_create``, ``memfd_secret`` and SysV ``shmget`` (memory outside
  ``RLIMIT_AS`` and outside any tmpfs), and ``ptrace``, ``process_vm_readv/writev`` and ``pidfd_getfd``;
* a scrubbed environment (``PATH``, ``HOME`` and ``TMPDIR`` pointing at the working directory, ``LANG``, a few Python
  settings; nothing of the parent's);
* when the caller is root, the program runs as ``nobody`` (uid 65534, configurable) so it cannot write root's files
  or signal the caller's processes, and so ``RLIMIT_NPROC`` is enforced (the kernel does not apply it to root); in
  ``plain`` mode each run gets a uid of its own, so every process of the run can be found and killed.

Mechanisms, detected once per process and named in the log (``sandbox: using ...``):

========== ====================================================================================================
``bwrap``   bubblewrap: new user, PID, network, IPC and UTS namespaces; the host filesystem mounted read-only;
            fresh size-bounded ``/tmp`` and ``/dev/shm``, read-only ``/dev``, fresh ``/proc``; the caller's home
            hidden; no capabilities; seccomp filter; dies with its parent.
``unshare`` util-linux ``unshare``: new user, PID, network, IPC, UTS and mount namespaces; every host mount
            remounted read-only, fresh size-bounded ``/tmp`` and ``/dev/shm``, then all capabilities dropped.
``plain``   no namespaces: limits, process group, scrubbed environment, a uid of its own when root. **Only when
            asked for by name**: ``auto`` never falls back to it (see :data:`PLAIN_EXPOSES`).
========== ====================================================================================================

``auto`` (the default) picks ``bwrap``, else ``unshare``, else raises :class:`SandboxUnavailable`: model-written code
never runs without isolation unless the user chose ``plain`` explicitly (``SandboxConfig.mechanism``, a reward's
``mechanism=``, ``reward code --sandbox``, or the environment variable ``ELASTIC_REASONING_SANDBOX``), and then a
warning says what is exposed. Asking for a mechanism that does not work here is an error too.

What it does **not** isolate:

* reading: the program can read every host file its uid may read (the filesystem is mounted read-only, not hidden;
  under ``bwrap`` the caller's home directory is hidden unless the Python used lives there);
* without a cgroup, memory as a whole: ``RLIMIT_AS`` is per process, so a run may hold up to
  ``max_processes x memory_mb`` plus its tmpfs space (pipe and socket buffers and kernel memory are not counted);
* the kernel and the CPU are shared (no VM): this is a strong process sandbox, not a defence against kernel exploits;
* ``plain`` mode: see :data:`PLAIN_EXPOSES`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import secrets
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

MECHANISMS = ("bwrap", "unshare", "plain")
ISOLATING = ("bwrap", "unshare")
NOBODY_UID = 65534
_PLAIN_UID_BASE = 0x6E720000  # plain mode as root: a uid of its own per run, from a range no distribution uses
_PLAIN_UID_SPAN = 0x10000
_MARKER_ENV = "ELASTIC_REASONING_SANDBOX_RUN"
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_HAS_SETPRIV = shutil.which("setpriv") is not None
_PREFIX = "er-sandbox-"

PLAIN_EXPOSES = (
    "plain mode runs model-written code WITHOUT isolation: it can read the command lines and environments of "
    "processes it may see (and so find and read the tests file named there), reach the network including services "
    "on localhost, write world-writable host directories (/tmp, /var/tmp, /dev/shm) with no size bound, read every "
    "file its uid may read, and, for a non-root caller, run as the caller's own user (signal, ptrace or write "
    "whatever that user can) and leave a daemon behind by killing the harness first"
)
"""What ``plain`` mode exposes; logged as a warning whenever it is chosen."""


class SandboxUnavailable(RuntimeError, ValueError):
    """No isolating mechanism works here and ``plain`` was not chosen explicitly (or the one asked for is missing).

    Also a ``ValueError`` (the configuration asks for what this machine cannot do), so every command reports it as
    its one-line error rather than a traceback."""


@dataclass
class SandboxConfig:
    """Limits and isolation of one sandboxed run."""

    timeout_s: float = 10.0
    """Wall-clock limit of the run, in seconds; the whole run is killed when it passes."""
    cpu_time_s: float | None = None
    """CPU-seconds limit per process (``RLIMIT_CPU``); ``None``: the wall-clock limit rounded up, plus 1."""
    memory_mb: int = 2048
    """Address-space limit per process (``RLIMIT_AS``), in MiB; with a cgroup, also the run's memory as a whole
    (plus ``disk_mb`` and ``shm_mb``, which tmpfs pages are charged against)."""
    file_size_mb: int = 64
    """Largest file the program may write (``RLIMIT_FSIZE``), in MiB; stdout and stderr are files, so this bounds
    a flood of output too."""
    disk_mb: int = 256
    """Size of the writable ``/tmp`` tmpfs that holds the working directory (``bwrap``/``unshare``), in MiB."""
    shm_mb: int = 64
    """Size of the private ``/dev/shm`` tmpfs (``bwrap``/``unshare``), in MiB."""
    max_processes: int = 64
    """Processes and threads the program may have at once (``RLIMIT_NPROC``, and ``pids.max`` with a cgroup)."""
    max_open_files: int = 256
    """Open file descriptors per process (``RLIMIT_NOFILE``)."""
    max_output_bytes: int = 16 * 1024 * 1024
    """Bytes of stdout (and of stderr) read back into the result; the rest is dropped and flagged."""
    mechanism: str = "auto"
    """``auto`` (``bwrap``, else ``unshare``, else an error) | ``bwrap`` | ``unshare`` | ``plain`` (no isolation;
    only by name); env ``ELASTIC_REASONING_SANDBOX`` overrides ``auto``."""
    cgroups: bool = True
    """Bound each run as a whole with its own memory and pids cgroup when this process may create one."""
    run_as_uid: int | None = None
    """Uid (and gid) the program runs as when the caller is root; ``None``: 65534 (nobody), or in ``plain`` mode a
    fresh uid per run. Ignored for non-root callers (they cannot change uid)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the program (the rest of the parent's environment is never passed)."""
    python: str | None = None
    """Python interpreter for :func:`run_python`; ``None``: this interpreter if the sandbox user can run it, else
    ``python3`` from the system path (env ``ELASTIC_REASONING_SANDBOX_PYTHON`` overrides)."""

    def __post_init__(self) -> None:
        _require_positive("timeout_s", self.timeout_s)
        if self.cpu_time_s is not None:
            _require_positive("cpu_time_s", self.cpu_time_s)
        for name in ("memory_mb", "file_size_mb", "disk_mb", "shm_mb", "max_processes", "max_open_files",
                     "max_output_bytes"):
            _require_positive(name, getattr(self, name), integer=True)


def _require_positive(name: str, value, *, integer: bool = False) -> None:
    """A clear ``ValueError`` for limits that are not finite positive numbers (inf, NaN, 0, negatives, strings)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        what = "a positive integer" if integer else "a finite positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")


@dataclass
class SandboxResult:
    """What one sandboxed run did."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    mechanism: str
    stdout_truncated: bool = False
    stdout_bytes: bytes = b""
    """stdout as bytes (``stdout`` is its UTF-8 decoding with replacement characters)."""
    cgroup: bool = False
    """Whether the run was bounded as a whole by a cgroup of its own."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# --------------------------------------------------------------------------------------------- seccomp

# Syscalls refused with EPERM. memfd_create, memfd_secret, shmget: memory that RLIMIT_AS does not count and no tmpfs
# bounds. ptrace, process_vm_readv/writev, pidfd_getfd: reaching into another process of the run (the code reward's
# harness holds the verdict channel). Numbers per architecture (include/uapi/asm-generic/unistd.h, arch/x86/entry/
# syscalls/syscall_64.tbl).
_SECCOMP_ARCHES = {
    # machine: (AUDIT_ARCH_*, {name: number})
    "x86_64": (0xC000003E, {"ptrace": 101, "shmget": 29, "process_vm_readv": 310, "process_vm_writev": 311,
                            "memfd_create": 319, "pidfd_getfd": 438, "memfd_secret": 447}),
    "aarch64": (0xC00000B7, {"ptrace": 117, "shmget": 194, "process_vm_readv": 270, "process_vm_writev": 271,
                             "memfd_create": 279, "pidfd_getfd": 438, "memfd_secret": 447}),
}
BLOCKED_SYSCALLS = tuple(_SECCOMP_ARCHES["x86_64"][1])


@functools.lru_cache(maxsize=None)
def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program (``struct sock_filter[]``) refusing :data:`BLOCKED_SYSCALLS` with EPERM and
    every syscall of a foreign ABI (x32, i386 on x86_64); ``None`` on an architecture not listed here."""
    machine = platform.machine()
    if machine not in _SECCOMP_ARCHES:
        return None
    arch, numbers = _SECCOMP_ARCHES[machine]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, ...|BPF_JGE, BPF_RET
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    blocked = sorted(numbers.values())
    n = len(blocked)
    # 0 ld arch; 1 arch ok?; 2 ld nr; 3 x32 (nr >= 0x40000000)?; 4.. blocked?; allow; deny
    deny_at = 4 + n + 1
    prog = [(ld_abs, 0, 0, 4), (jeq, 0, deny_at - 2, arch), (ld_abs, 0, 0, 0), (jge, deny_at - 4, 0, 0x40000000)]
    for k, nr in enumerate(blocked):
        here = 4 + k
        prog.append((jeq, deny_at - here - 1, 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, deny)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# --------------------------------------------------------------------------------------------- identity and paths


def _sandbox_ids(config: SandboxConfig, mechanism: str) -> tuple[int, int] | None:
    """(uid, gid) to switch to, or None when the caller cannot or need not switch."""
    if os.geteuid() != 0:
        return None
    if config.run_as_uid is None:
        uid = _fresh_uid() if mechanism == "plain" else NOBODY_UID
    else:
        uid = config.run_as_uid
    if uid == 0:
        raise ValueError("refusing to run untrusted code as root (run_as_uid=0)")
    return uid, uid


def _fresh_uid() -> int:
    """A uid no process uses now: plain runs as root get one each, so 'every process of the run' is 'every process
    of that uid' (found and killed after the run, even one that left the process group and scrubbed its env)."""
    for _ in range(16):
        uid = _PLAIN_UID_BASE + secrets.randbelow(_PLAIN_UID_SPAN)
        if not _pids_of_uid(uid):
            return uid
    raise RuntimeError("sandbox: no free uid for a plain run")


def _limit_args(config: SandboxConfig, *, nproc_uid: int | None) -> list[str]:
    cpu = config.cpu_time_s if config.cpu_time_s is not None else config.timeout_s + 1
    cpu = max(1, math.ceil(cpu))
    nproc = config.max_processes
    if nproc_uid is not None:
        # Plain mode as a non-root caller: RLIMIT_NPROC counts every task of that uid on the machine, zombies of an
        # earlier fork bomb included (they wait for init to reap them), so the limit is set above what exists now.
        nproc += _count_user_tasks(nproc_uid)
    return [
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={config.memory_mb * 1024 * 1024}",
        f"--fsize={config.file_size_mb * 1024 * 1024}",
        f"--nproc={nproc}",
        f"--nofile={config.max_open_files}",
    ]


def _proc_status_uid(pid: str) -> int | None:
    """The real uid of a live process (None for a zombie, which holds nothing and waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"State:") and b"Z" in line.split()[1:2]:
                    return None
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _pids_of_uid(uid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _proc_status_uid(p) == uid]


def _count_user_tasks(uid: int) -> int:
    """Tasks (threads included, zombies too) owned by ``uid``: what RLIMIT_NPROC counts."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        try:
            count += max(1, len(os.listdir(f"/proc/{pid}/task")))
        except OSError:
            count += 1
    return count


# Run inside the new user+mount namespace (as root of that namespace) before the program: fresh size-bounded /tmp and
# /dev/shm, the working directory inside /tmp, the program's files copied in from inherited descriptors, every host
# mount remounted read-only, all capabilities dropped. Arguments: workdir, /tmp size, /dev/shm size, file count, then
# (fd, name) pairs, then the program.
_UNSHARE_SCRIPT = r"""
set -u
wd="$1"; tmp_size="$2"; shm_size="$3"; n="$4"; shift 4
mount -t tmpfs -o "mode=1777,size=$tmp_size" tmpfs /tmp || exit 125
if [ -d /dev/shm ]; then mount -t tmpfs -o "mode=1777,size=$shm_size" tmpfs /dev/shm || exit 125; fi
mkdir -p "$wd" && cd "$wd" || exit 125
while [ "$n" -gt 0 ]; do
  fd="$1"; name="$2"; shift 2; n=$((n - 1))
  case "$name" in */*) mkdir -p "${name%/*}" || exit 125 ;; esac
  cat "/proc/self/fd/$fd" > "$name" || exit 125
done
while read -r _ _ _ _ mp _; do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/tmp|/tmp/*|/dev/shm|/dev/shm/*) continue ;; esac
  mount -o remount,bind,ro "$mp" 2>/dev/null
done < /proc/self/mountinfo
touch /.er-sandbox-probe 2>/dev/null && exit 125
exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
"""

# Waits until the parent has put this process into the run's cgroup, so nothing of the run starts outside it. The
# gate is stdin (a pipe); the program's own stdin (a memfd, mode 0777) is reopened through /proc after it opens.
_GATE_SCRIPT = 'fd="$1"; shift; read -r _ || exit 125; exec "$@" < "/proc/self/fd/$fd"'
# The unshare script reads files through /proc/self/fd because dash's redirections only take fds 0-9; those
# descriptors stay open in the program (copies of its own files), and the code harness closes them before any test.


def _bwrap_args(workdir: str, program: str, config: SandboxConfig, files: list[tuple[int, str]],
                seccomp_fd: int | None, *, disable_userns: bool) -> list[str]:
    args = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1"]
    if disable_userns:
        args += ["--unshare-user", "--disable-userns"]
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--size", str(config.disk_mb * 1024 * 1024), "--tmpfs", "/tmp",
             "--size", str(config.shm_mb * 1024 * 1024), "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev"]  # --dev makes a tmpfs the sandbox user owns: read-only, or it is unbounded space
    home = os.path.realpath(os.path.expanduser("~"))
    program_paths = {os.path.abspath(program), os.path.realpath(program)} if os.path.isabs(program) else set()
    if home not in ("/", "/tmp") and os.path.isdir(home) and not any(p.startswith(home + "/") for p in program_paths):
        args += ["--tmpfs", home, "--remount-ro", home]  # the caller's dotfiles (tokens, keys) stay out of sight
    args += ["--dir", workdir]
    made = {workdir}
    for fd, name in files:
        target = PurePosixPath(workdir, name)
        for parent in reversed(target.parents):
            if str(parent) not in made and str(parent).startswith(workdir + "/"):
                args += ["--dir", str(parent)]
                made.add(str(parent))
        args += ["--file", str(fd), str(target)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    args += ["--chdir", workdir]
    return args


def _wrap(mechanism: str, argv: list[str], workdir: str, config: SandboxConfig, ids: tuple[int, int] | None,
          files: list[tuple[int, str]], seccomp_fd: int | None) -> list[str]:
    """The full command line: death with the caller, namespace wrapper, resource limits, the program."""
    nproc_uid = os.getuid() if mechanism == "plain" and ids is None else None
    limits = ["prlimit", *_limit_args(config, nproc_uid=nproc_uid), "--"] if shutil.which("prlimit") else []
    # The uid switch by setpriv (an exec, no extra process) rather than by Popen lets Python start the run with
    # vfork: a training process holding gigabytes would otherwise copy its page tables for every candidate.
    switch = ["--reuid", str(ids[0]), "--regid", str(ids[1]), "--clear-groups"] if ids and _HAS_SETPRIV else []
    backstop = ["timeout", "-s", "KILL", str(math.ceil(config.timeout_s) + 5)] if shutil.which("timeout") else []
    if mechanism == "plain":  # the backstop outlives a killed caller and ends the program at its deadline
        return [*(["setpriv", *switch, "--"] if switch else []), *backstop, *limits, *argv]
    # Namespaced runs die with the caller: setpriv's parent-death signal ends the backstop, whose death ends bwrap
    # (--die-with-parent) or unshare's child (--kill-child) and with it the whole PID namespace. A caller killed in
    # the instant before a parent-death signal is armed leaves the run to the backstop's deadline (and its cgroup to
    # the sweep at the next start).
    dies_with_caller = ["setpriv", *switch, "--pdeathsig", "KILL", "--"] if _HAS_SETPRIV else []
    if mechanism == "bwrap":
        wrapper = _bwrap_args(workdir, argv[0], config, files, seccomp_fd,
                              disable_userns=_BWRAP_OPTIONS["disable_userns"])
        return [*dies_with_caller, *backstop, *wrapper, *limits, *argv]
    pairs = [item for fd, name in files for item in (str(fd), name)]
    dies_with_backstop = ["setpriv", "--pdeathsig", "KILL", "--"] if backstop and _HAS_SETPRIV else []
    return [*dies_with_caller, *backstop, *dies_with_backstop,
            "unshare", "--map-root-user", "--net", "--pid", "--ipc", "--uts", "--mount", "--fork",
            "--kill-child", "--mount-proc", "--propagation", "private",
            "/bin/sh", "-c", _UNSHARE_SCRIPT, "sandbox", workdir, f"{config.disk_mb}m", f"{config.shm_mb}m",
            str(len(files)), *pairs, *limits, *argv]


def _preexec_limits(config: SandboxConfig):  # only when the prlimit binary is missing
    import resource

    cpu = max(1, math.ceil(config.cpu_time_s if config.cpu_time_s is not None else config.timeout_s + 1))
    limits = [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_AS, config.memory_mb * 1024 * 1024),
        (resource.RLIMIT_FSIZE, config.file_size_mb * 1024 * 1024),
        (resource.RLIMIT_NOFILE, config.max_open_files),
    ]

    def apply():
        for which, value in limits:
            resource.setrlimit(which, (value, value))

    return apply


# --------------------------------------------------------------------------------------------- cgroups


def _own_start_time(pid: int | str = "self") -> str | None:
    """The start time of a process (clock ticks since boot): with the pid, names a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_tag() -> str:
    return f"{os.getpid()}-{_own_start_time()}"


def _owner_alive(name: str) -> bool:
    """Whether the process named in ``er-sandbox-<pid>-<start>-...`` still runs."""
    parts = name[len(_PREFIX):].split("-")
    if len(parts) < 2 or not parts[0].isdigit():
        return True  # not ours to judge
    return _own_start_time(parts[0]) == parts[1]


class _Cgroup:
    """One run's memory + pids cgroup (v2 unified, or v1 memory and pids hierarchies)."""

    def __init__(self, paths: list[str], version: int):
        self.paths = paths
        self.version = version

    @staticmethod
    def create(name: str, config: SandboxConfig, bases: tuple[int, list[str]]) -> "_Cgroup":
        version, roots = bases
        memory = (config.memory_mb + config.disk_mb + config.shm_mb) * 1024 * 1024
        pids = config.max_processes + 8  # the wrapper, bwrap or unshare, the shell, the harness
        paths = [os.path.join(root, name) for root in roots]
        group = _Cgroup([], version)
        try:
            for path in paths:
                os.mkdir(path)
                group.paths.append(path)
            if version == 2:
                _write(paths[0], "memory.max", memory)
                _write(paths[0], "memory.swap.max", 0, optional=True)
                _write(paths[0], "pids.max", pids)
            else:
                for path in paths:
                    if "/memory" in path:
                        _write(path, "memory.limit_in_bytes", memory)
                        _write(path, "memory.memsw.limit_in_bytes", memory, optional=True)
                    else:
                        _write(path, "pids.max", pids)
        except OSError:
            group.remove()
            raise
        return group

    def add(self, pid: int) -> None:
        for path in self.paths:
            _write(path, "cgroup.procs", pid)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.paths:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    found.update(int(x) for x in f.read().split())
            except OSError:
                pass
        return sorted(found)

    def kill(self) -> None:
        if self.version == 2 and _write(self.paths[0], "cgroup.kill", 1, optional=True):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)
        logger.error("sandbox: processes of cgroup %s did not die within 10 s", self.paths)

    def remove(self) -> None:
        for path in reversed(self.paths):
            for _ in range(200):  # the last exits are reaped asynchronously
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.005)


def _write(path: str, name: str, value, *, optional: bool = False) -> bool:
    try:
        with open(os.path.join(path, name), "w") as f:
            f.write(str(value))
        return True
    except OSError:
        if optional:
            return False
        raise


def _cgroup_bases() -> tuple[int, list[str]] | None:
    """Where this process may create cgroups for runs: (2, [dir]) or (1, [memory dir, pids dir]), or None."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        return None
    v1 = {}
    for _, controllers, path in lines:
        for controller in controllers.split(","):
            if controller in ("memory", "pids"):
                v1[controller] = os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"))
    if set(v1) == {"memory", "pids"} and all(os.access(p, os.W_OK) for p in v1.values()):
        return 1, [v1["memory"], v1["pids"]]
    unified = [path for hierarchy, controllers, path in lines if hierarchy == "0" and controllers == ""]
    if unified and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        base = os.path.join("/sys/fs/cgroup", unified[0].lstrip("/"))
        try:
            with open(os.path.join(base, "cgroup.subtree_control")) as f:
                enabled = set(f.read().split())
        except OSError:
            return None
        if {"memory", "pids"} <= enabled and os.access(base, os.W_OK):
            return 2, [base]
    return None


_CGROUPS: dict[str, tuple[int, list[str]] | None] = {}


def cgroups_available() -> bool:
    """Whether runs get a cgroup of their own here (probed once: a cgroup made, limited, joined and removed)."""
    with _LOCK:
        if "bases" not in _CGROUPS:
            _CGROUPS["bases"] = _probe_cgroups()
            _sweep_stale_cgroups(_CGROUPS["bases"])
        return _CGROUPS["bases"] is not None


def _probe_cgroups() -> tuple[int, list[str]] | None:
    bases = _cgroup_bases()
    if bases is None:
        return None
    name = f"{_PREFIX}{_owner_tag()}-probe{secrets.token_hex(3)}"
    try:
        group = _Cgroup.create(name, SandboxConfig(memory_mb=64, disk_mb=1, shm_mb=1), bases)
    except OSError as exc:
        logger.debug("sandbox: cannot create cgroups under %s: %s", bases[1], exc)
        return None
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", "read -r _"], stdin=subprocess.PIPE, close_fds=True)
        try:
            group.add(proc.pid)
            ok = all(str(proc.pid) in Path(p, "cgroup.procs").read_text().split() for p in group.paths)
        except OSError:
            ok = False
        proc.communicate(b"\n", timeout=10)
    finally:
        group.kill()
        group.remove()
    return bases if ok else None


def _sweep_stale_cgroups(bases: tuple[int, list[str]] | None) -> None:
    """Remove run cgroups whose owner process is gone (it was killed before it could remove them)."""
    if bases is None:
        return
    for root in bases[1]:
        try:
            names = [n for n in os.listdir(root) if n.startswith(_PREFIX) and not _owner_alive(n)]
        except OSError:
            continue
        for name in names:
            group = _Cgroup([os.path.join(root, name)], bases[0])
            group.kill()
            group.remove()


# --------------------------------------------------------------------------------------------- running


def _scrubbed_env(workdir: str, config: SandboxConfig, run_id: str) -> dict[str, str]:
    env = {
        "PATH": _SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        _MARKER_ENV: run_id,
    }
    env.update(config.env)
    return env


def _check_name(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or not path.parts or any(part in ("..", ".") for part in path.parts) or "\n" in name:
        raise ValueError(f"sandbox file name escapes the working directory: {name!r}")
    return str(path)


def _write_files(workdir: str, files: dict[str, str | bytes], ids: tuple[int, int] | None) -> None:
    root = Path(workdir)
    for name, content in files.items():
        path = root / _check_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if ids is not None:
            for p in [path, *[q for q in path.parents if root in q.parents]]:
                os.chown(p, *ids)


def _memfd(name: str, content: bytes) -> int:
    fd = os.memfd_create(name)  # close-on-exec; passed on explicitly with pass_fds
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _rmtree(path: str) -> None:
    def make_writable_and_retry(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)
    if os.path.exists(path):  # a second pass after permissions were fixed
        shutil.rmtree(path, ignore_errors=True)


def _sweep_stale_workdirs() -> None:
    """Remove plain-mode working directories whose owner process is gone (killed before it could remove them)."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        if not _owner_alive(name):
            _rmtree(os.path.join(root, name))


def _sweep_marker(run_id: str) -> int:
    """Kill every process whose environment carries this run's marker (plain mode, non-root: escaped daemons)."""
    needle = f"{_MARKER_ENV}={run_id}".encode()
    killed = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    os.kill(int(pid), signal.SIGKILL)
                    killed += 1
        except OSError:
            continue
    return killed


def _sweep_uid(uid: int) -> None:
    """Kill every process of a run's own uid (plain mode as root), until none is left."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)


def _kill_run(proc: subprocess.Popen, mechanism: str, run_id: str, ids: tuple[int, int] | None,
              cgroup: _Cgroup | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is not None:
        cgroup.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in uninterruptible sleep
        logger.error("sandbox: process group %d did not die within 10 s", proc.pid)
    if mechanism == "plain":
        if ids is not None and ids[0] >= _PLAIN_UID_BASE:
            _sweep_uid(ids[0])
        else:  # programs that left the process group are found by the marker; two passes catch a fork in flight
            for _ in range(2):
                if not _sweep_marker(run_id):
                    break


def _read_capped(f, cap: int) -> tuple[bytes, bool]:
    f.seek(0)
    data = f.read(cap + 1)
    return data[:cap], len(data) > cap


def _run_with(mechanism: str, argv: list[str], *, stdin: str | bytes = b"", files=None,
              config: SandboxConfig) -> SandboxResult:
    ids = _sandbox_ids(config, mechanism)
    run_id = secrets.token_hex(8)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    files = {_check_name(k): v.encode() if isinstance(v, str) else v for k, v in (files or {}).items()}
    use_cgroup = config.cgroups and cgroups_available()
    to_close: list[int] = []
    host_workdir = None
    try:
        file_fds: list[tuple[int, str]] = []
        seccomp_fd = None
        if mechanism in ISOLATING:
            workdir = f"/tmp/{_PREFIX}{run_id}"  # inside the sandbox's own /tmp; nothing on the host
            for name, content in files.items():
                fd = _memfd("er-file", content)
                to_close.append(fd)
                file_fds.append((fd, name))
            program = seccomp_filter() if mechanism == "bwrap" else None
            if program is not None:
                seccomp_fd = _memfd("er-seccomp", program)
                to_close.append(seccomp_fd)
        else:
            _sweep_once()
            host_workdir = workdir = tempfile.mkdtemp(prefix=f"{_PREFIX}{_owner_tag()}-")
            if ids is not None:
                os.chown(workdir, *ids)
            _write_files(workdir, files, ids)
        cmd = _wrap(mechanism, list(argv), workdir, config, ids, file_fds, seccomp_fd)
        pass_fds = [fd for fd, _ in file_fds] + ([seccomp_fd] if seccomp_fd is not None else [])
        return _execute(cmd, workdir, data, config, mechanism, ids, run_id, pass_fds, use_cgroup)
    finally:
        for fd in to_close:
            os.close(fd)
        if host_workdir:
            _rmtree(host_workdir)


def _execute(cmd: list[str], workdir: str, stdin: bytes, config: SandboxConfig, mechanism: str,
             ids: tuple[int, int] | None, run_id: str, pass_fds: list[int], use_cgroup: bool) -> SandboxResult:
    env = _scrubbed_env(workdir, config, run_id)
    cwd = workdir if mechanism == "plain" else "/"  # namespaced runs make their working directory themselves
    kwargs: dict = dict(cwd=cwd, env=env, start_new_session=True, close_fds=True)
    if ids is not None and not _HAS_SETPRIV:
        kwargs.update(user=ids[0], group=ids[1], extra_groups=[])
    if not shutil.which("prlimit"):
        kwargs["preexec_fn"] = _preexec_limits(config)
    cgroup = None
    gate_r = gate_w = None
    if use_cgroup:
        cgroup = _Cgroup.create(f"{_PREFIX}{_owner_tag()}-{run_id}", config, _CGROUPS["bases"])  # type: ignore[arg-type]
        gate_r, gate_w = os.pipe()
    stdin_fd = _memfd("er-stdin", stdin)
    if cgroup is not None:
        cmd = ["/bin/sh", "-c", _GATE_SCRIPT, "er-gate", str(stdin_fd), *cmd]
        pass_fds = [*pass_fds, stdin_fd]
    try:
        with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=stdin_fd if gate_r is None else gate_r, stdout=fout, stderr=ferr,
                                    pass_fds=pass_fds, **kwargs)
            timed_out = False
            try:
                if cgroup is not None:
                    os.close(gate_r)  # type: ignore[arg-type]
                    gate_r = None
                    cgroup.add(proc.pid)  # before the gate opens: nothing of the run starts outside the cgroup
                    os.write(gate_w, b"go\n")  # type: ignore[arg-type]
                    os.close(gate_w)  # type: ignore[arg-type]
                    gate_w = None
                proc.wait(timeout=config.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:  # always: on timeout, on normal exit (stragglers), on KeyboardInterrupt or any other exception
                _kill_run(proc, mechanism, run_id, ids, cgroup)
            duration = time.monotonic() - start
            stdout, truncated = _read_capped(fout, config.max_output_bytes)
            stderr, _ = _read_capped(ferr, config.max_output_bytes)
    finally:
        os.close(stdin_fd)
        for fd in (gate_r, gate_w):
            if fd is not None:
                os.close(fd)
        if cgroup is not None:
            cgroup.remove()
    return SandboxResult(
        returncode=None if timed_out else proc.returncode,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        duration_s=duration,
        mechanism=mechanism,
        stdout_truncated=truncated,
        stdout_bytes=stdout,
        cgroup=cgroup is not None,
    )


def run(argv: list[str], *, stdin: str | bytes = b"", files: dict[str, str | bytes] | None = None,
        config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``argv`` in a fresh sandbox; ``files`` are written into its working directory first.

    Never raises for what the program does (crash, timeout, flood); raises for bad arguments and, failing closed,
    :class:`SandboxUnavailable` when no isolation works here and ``plain`` was not chosen. Every process of the run
    is gone when this returns, and so is its working directory.
    """
    config = config or SandboxConfig()
    mechanism = detect(config.mechanism, config)
    return _run_with(mechanism, argv, stdin=stdin, files=files, config=config)


def run_python(source: str, *, stdin: str | bytes = b"", files: dict[str, str | bytes] | None = None,
               args: list[str] | None = None, config: SandboxConfig | None = None) -> SandboxResult:
    """Run Python ``source`` (written to ``main.py``) in a fresh sandbox with :func:`sandbox_python`."""
    config = config or SandboxConfig()
    mechanism = detect(config.mechanism, config)
    exe = sandbox_python(config)
    all_files = dict(files or {})
    all_files["main.py"] = source
    return _run_with(mechanism, [exe, "main.py", *(args or [])], stdin=stdin, files=all_files, config=config)


# --------------------------------------------------------------------------------------------- detection

_DETECTED: dict[tuple, str] = {}
_PYTHON: dict[tuple, str] = {}
_BWRAP_OPTIONS = {"disable_userns": False}
_LOCK = threading.RLock()
_SWEPT: list[bool] = []

_DESCRIPTIONS = {
    "bwrap": "bubblewrap: user/pid/net/ipc/uts namespaces, read-only host filesystem, private size-bounded /tmp "
             "and /dev/shm, no network",
    "unshare": "unshare: user/pid/net/ipc/uts/mount namespaces, host mounts read-only, private size-bounded /tmp "
               "and /dev/shm, no network",
    "plain": "plain process: rlimits, process group, scrubbed env; NO isolation (chosen explicitly)",
}

NO_ISOLATION = (
    "no sandbox that isolates model-written code works on this machine: install bubblewrap (apt-get install "
    "bubblewrap) or allow unprivileged user namespaces (for util-linux unshare). To run the code without isolation "
    "anyway, choose plain explicitly (ELASTIC_REASONING_SANDBOX=plain, mechanism='plain', or `reward code --sandbox "
    "plain`); " + PLAIN_EXPOSES + "."
)


def describe(mechanism: str) -> str:
    """One line saying what ``mechanism`` isolates."""
    return _DESCRIPTIONS[mechanism]


def _sweep_once() -> None:
    with _LOCK:
        if _SWEPT:
            return
        _SWEPT.append(True)
    _sweep_stale_workdirs()


def _probe(mechanism: str, config: SandboxConfig) -> bool:
    probe_config = SandboxConfig(timeout_s=20, memory_mb=512, run_as_uid=config.run_as_uid, cgroups=config.cgroups)
    try:
        result = _run_with(mechanism, ["/bin/sh", "-c", "cat probe.txt && touch written"], config=probe_config,
                           files={"probe.txt": "sandbox-ok"})
    except (OSError, ValueError) as exc:
        logger.debug("sandbox: %s probe failed to start: %s", mechanism, exc)
        return False
    ok = result.ok and result.stdout.strip() == "sandbox-ok"
    if not ok:
        logger.debug("sandbox: %s probe failed (rc=%s): %s", mechanism, result.returncode, result.stderr[-500:])
    return ok


def available(mechanism: str, config: SandboxConfig | None = None) -> bool:
    """Whether ``mechanism`` works on this machine (probed once, cached)."""
    config = config or SandboxConfig()
    key = (mechanism, os.geteuid(), config.run_as_uid)
    with _LOCK:
        if key in _DETECTED:
            return _DETECTED[key] == "ok"
        if mechanism == "plain":
            ok = True
        elif mechanism == "bwrap":
            ok = False
            if shutil.which("bwrap"):
                _BWRAP_OPTIONS["disable_userns"] = True
                ok = _probe("bwrap", config)
                if not ok:  # bubblewrap older than 0.8, or user namespaces limited: try without --disable-userns
                    _BWRAP_OPTIONS["disable_userns"] = False
                    ok = _probe("bwrap", config)
        elif mechanism == "unshare":
            ok = shutil.which("unshare") is not None and _probe("unshare", config)
        else:
            raise ValueError(f"unknown sandbox mechanism {mechanism!r}; choose from {MECHANISMS} or 'auto'")
        _DETECTED[key] = "ok" if ok else "no"
        return ok


_ANNOUNCED: set[str] = set()


def detect(requested: str = "auto", config: SandboxConfig | None = None) -> str:
    """The mechanism runs will use: ``requested``, or for ``auto`` the strongest *isolating* one that works here.

    ``ELASTIC_REASONING_SANDBOX`` in the environment overrides ``auto``. ``auto`` never means ``plain``: without
    ``bwrap`` or ``unshare`` it raises :class:`SandboxUnavailable` (fail closed). Logs the choice once per process;
    ``plain`` with a warning that says what it exposes.
    """
    if requested == "auto":
        requested = os.environ.get("ELASTIC_REASONING_SANDBOX", "auto").strip() or "auto"
    if requested == "auto":
        chosen = next((m for m in ISOLATING if available(m, config)), None)
        if chosen is None:
            raise SandboxUnavailable(NO_ISOLATION)
    else:
        if requested not in MECHANISMS:
            raise ValueError(f"unknown sandbox mechanism {requested!r}; choose from {MECHANISMS} or 'auto'")
        if not available(requested, config):
            raise SandboxUnavailable(f"sandbox mechanism {requested!r} is not available on this machine")
        chosen = requested
    if chosen not in _ANNOUNCED:
        _ANNOUNCED.add(chosen)
        if chosen == "plain":
            logger.warning("sandbox: using %s. WARNING: %s.", describe(chosen), PLAIN_EXPOSES)
        else:
            logger.info("sandbox: using %s%s", describe(chosen),
                        "; a memory+pids cgroup per run" if cgroups_available() else
                        "; limits per process (no cgroup can be created here)")
    return chosen


def sandbox_python(config: SandboxConfig | None = None) -> str:
    """A Python interpreter the sandbox user can run: the configured one, this one, or the system ``python3``.

    When the caller is root the program runs as ``nobody``, who often cannot reach a virtual environment under
    ``/root``; then the system interpreter is used (standard library only).
    """
    config = config or SandboxConfig()
    explicit = config.python or os.environ.get("ELASTIC_REASONING_SANDBOX_PYTHON")
    if explicit:
        return explicit
    key = (os.geteuid(), config.run_as_uid)
    with _LOCK:
        if key in _PYTHON:
            return _PYTHON[key]
    candidates = [sys.executable]
    system = shutil.which("python3", path=_SAFE_PATH)
    if system:
        candidates.append(system)
    probe_config = SandboxConfig(timeout_s=20, run_as_uid=config.run_as_uid, cgroups=False)
    chosen = None
    for exe in candidates:
        # plain on purpose: this asks whether the sandbox *uid* may run the file, not what the sandbox hides
        result = _run_with("plain", [exe, "-c", "print('py-ok')"], config=probe_config)
        if result.ok and result.stdout.strip() == "py-ok":
            chosen = exe
            break
    if chosen is None:
        raise RuntimeError(f"no Python interpreter the sandbox user can run (tried {candidates}); "
                           "set ELASTIC_REASONING_SANDBOX_PYTHON")
    if chosen != sys.executable:
        logger.info("sandbox: running Python programs with %s (the sandbox user cannot run %s)", chosen,
                    sys.executable)
    with _LOCK:
        _PYTHON[key] = chosen
    return chosen
