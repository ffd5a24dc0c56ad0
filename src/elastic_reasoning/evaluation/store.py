"""The results store: one JSON line per (model, dataset, problem, sample, method, budget), in the output directory.

Guarantees:

* **Written as results complete**: each batch's rows are appended with one ``write`` and ``fsync``\\ ed before the next
  batch starts, so a kill loses at most the batch in flight.
* **Ctrl-C leaves it consistent**: SIGINT is held while rows are written and delivered right after, so a line is
  never half-written by an interrupt. A torn last line can only come from a hard kill (SIGKILL, power loss) during
  a write; it is detected when the store is opened and cut off (those results are computed again).
* **No duplicates**: a row whose key is already stored is not written again; resuming computes only missing keys.
* **One writer**: an advisory lock (``.lock``) makes a second ``eval`` on the same directory fail clearly.
* **Same settings**: ``config.json`` records what the results depend on (model, dataset, sampling, seed, texts...);
  a later run in the same directory with other settings is refused, naming what differs. Methods, budgets, the number
  of samples and ``--limit`` may change between runs: they only add keys.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

RESULTS = "results.jsonl"
CONFIG = "config.json"
KEY_FIELDS = ("model", "dataset", "problem_id", "sample", "method", "budget")
"""Every row has these; its key adds ``s``, the swept solution budget of a ``--solution-budgets`` grid (absent:
None, a run with one solution budget)."""


class StoreError(ValueError):
    """The store cannot be used as asked (other settings, another writer, a corrupt line)."""


def row_key(row: dict) -> tuple:
    return (*(row[f] for f in KEY_FIELDS), row.get("s"))


@contextlib.contextmanager
def sigint_held():
    """Hold SIGINT (Ctrl-C) for the duration; deliver it as KeyboardInterrupt afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


class ResultStore:
    """Append-only JSONL results with resume. Use as a context manager (it holds the directory's lock)."""

    def __init__(self, directory: str | Path, settings: dict[str, Any] | None = None):
        self.dir = Path(directory)
        self.path = self.dir / RESULTS
        self.settings = settings
        self.rows: list[dict] = []
        self.keys: set[tuple] = set()
        self._lock_file = None

    # -- opening ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "ResultStore":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise StoreError(f"another eval is writing {self.dir} (wait for it, or use another --output)") from None
        if self.settings is not None:
            self._check_settings()
        self.rows = self.read(self.dir, repair=True)
        self.keys = {row_key(r) for r in self.rows}
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _check_settings(self) -> None:
        path = self.dir / CONFIG
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise StoreError(f"{path} is not JSON; remove it or use another --output") from None
            differ = [k for k in sorted(set(stored) | set(self.settings)) if stored.get(k) != self.settings.get(k)]
            if differ:
                detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {self.settings.get(k)!r}" for k in differ)
                raise StoreError(f"{self.dir} holds results made with other settings ({detail}); use another "
                                 f"--output, or the same settings to resume")
        else:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, path)

    @staticmethod
    def read(directory: str | Path, *, repair: bool = False) -> list[dict]:
        """Rows of a store. A torn last line (hard kill mid-write) is cut off when ``repair``, else skipped."""
        path = Path(directory) / RESULTS
        if not path.exists():
            return []
        data = path.read_bytes()
        rows = []
        good_end = 0
        offset = 0
        lines = data.split(b"\n")
        for lineno, line in enumerate(lines, 1):
            last = lineno == len(lines)
            end = offset + len(line) + (0 if last else 1)
            if line.strip():
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or not all(f in row for f in KEY_FIELDS):
                        raise ValueError("not a result row")
                except ValueError as err:
                    if last:  # no newline after it: a write cut short
                        logger.warning("%s: torn last line (%d bytes) from an interrupted write: dropped", path,
                                       len(line))
                        break
                    raise StoreError(f"{path}: line {lineno} is not a result row ({err}); fix or remove it") from None
                if last:  # a complete row missing only its newline
                    logger.warning("%s: last line had no newline: kept", path)
                rows.append(row)
            good_end = end
            offset = end
        if repair and good_end < len(data):
            with open(path, "r+b") as f:
                f.truncate(good_end)
        if repair and data and good_end == len(data) and not data.endswith(b"\n"):
            with open(path, "ab") as f:
                f.write(b"\n")
        seen, unique = set(), []
        for r in rows:  # a store written by hand may repeat keys: the first wins
            k = row_key(r)
            if k not in seen:
                seen.add(k)
                unique.append(r)
        return unique

    # -- writing ------------------------------------------------------------------------------------------------
    def has(self, key: tuple) -> bool:
        return key in self.keys

    def append(self, rows: Iterable[dict]) -> int:
        """Write rows not stored yet, atomically with respect to Ctrl-C. Returns how many were written."""
        new = []
        for r in rows:
            k = row_key(r)
            if k not in self.keys:
                new.append(r)
                self.keys.add(k)
        if not new:
            return 0
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new).encode()
        with sigint_held():
            with open(self.path, "ab") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            self.rows.extend(new)
        return len(new)
