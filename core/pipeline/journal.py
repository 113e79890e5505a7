"""Intent records for writes that take several steps, and named crash points for tests.

A multi-step write (a batch of `add`: thumbnails, head points, points; a `remove`: head points,
points, thumbnails) first records what it is about to do in `DATA_DIR/journal/<collection>/`,
then does the steps, then deletes the record. A record left behind by a killed process is
replayed by the next `add` or `remove`, which finishes or undoes those steps, so a rerun ends in
the state of a clean run. The writer holds a flock on its record while it lives, so a replay
never touches the record of a process that is still running (several workers on one server).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.store.diskspace import writing

CRASH_ENV = "SHOE_SEARCH_CRASH_AT"
_crash_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Test hook: with SHOE_SEARCH_CRASH_AT=name (or name:N, the N-th time) the process kills
    itself here with SIGKILL, as a power cut or `kill -9` would. Unset: does nothing."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _crash_hits[name] += 1
    if _crash_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    """Intent records under one folder (one folder per collection)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @contextlib.contextmanager
    def intent(self, op: str, **data: Any) -> Iterator[None]:
        """Record {op, **data} durably, run the block, then drop the record. If the block raises
        (or the process dies), the record stays for `pending()` to hand to the next writer."""
        name = f"{op}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp, final = self.directory / f".{name}.tmp", self.directory / f"{name}.json"
        with writing(self.directory, f"recording the {op} in the journal"):
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until this block ends: a live writer's record is not replayed
            payload = json.dumps({"op": op, **data}).encode()
            written = 0
            while written < len(payload):
                written += os.write(fd, payload[written:])
            os.fsync(fd)
            os.replace(tmp, final)  # visible only once complete; the flock moves with the file
            _fsync_dir(self.directory)
        except BaseException as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                with writing(self.directory, f"recording the {op} in the journal"):
                    raise
            raise
        try:
            yield
            final.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def pending(self) -> Iterator[dict[str, Any]]:
        """Records left by processes that died; each is deleted once the caller has replayed it
        (the loop moved on to the next), so a crash during replay replays it again."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.iterdir()):
            if path.suffix != ".json" and not (path.suffix == ".tmp" and _older_than(path, 3600)):
                continue  # a young .tmp may be a live writer's, between creating and locking it
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                if path.suffix == ".json":
                    with open(fd, "rb", closefd=False) as handle:
                        text = handle.read()
                    try:
                        record = json.loads(text)
                    except ValueError:  # written whole, then renamed: only a hand edit breaks one
                        record = None
                    if isinstance(record, dict):
                        yield record
                path.unlink(missing_ok=True)  # replayed (a .tmp never started its steps)
            finally:
                os.close(fd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
