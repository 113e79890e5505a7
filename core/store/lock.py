"""Who holds the embedded store: an exclusive flock for the writer, a shared one for readers,
and a sparse copy for reading a store on a read-only disk."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from core.errors import StoreLocked


class ProcessLock:
    """An exclusive flock on a file that records who holds it.

    The kernel drops a flock when its process dies (even by kill -9), so a crash never
    leaves the store locked. With `wait` > 0 a busy lock is retried for that many seconds
    (`on_wait(holder, wait)` is called once, when waiting starts) before giving up.
    `while_busy()` is called each time the lock is found busy; it may raise to stop trying
    (core/store/host.py raises when the holder serves the store to other processes).
    """

    poll_seconds = 0.1

    def __init__(self, path: Path, what: str, wait: float = 0.0, on_wait=None, while_busy=None) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._acquire(what, wait, on_wait, while_busy)
        except BaseException:  # busy past the wait, or Ctrl-C while waiting
            os.close(self._fd)
            self._fd = -1
            raise
        with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not stop reads
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()} ({' '.join(Path(a).name for a in sys.argv[:2])})".encode(), 0)

    def _acquire(self, what: str, wait: float, on_wait, while_busy=None) -> None:
        deadline = time.monotonic() + max(0.0, wait)
        told = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if while_busy is not None:
                while_busy()
            if time.monotonic() >= deadline:
                if wait > 0:
                    raise StoreLocked(
                        f"The embedded store {what} is still in use by process {self._holder()} after waiting "
                        f"{wait:g}s. Wait longer (--wait SECONDS or STORE_LOCK_WAIT), stop it, or point the "
                        f"UI/CLI at a Qdrant server with QDRANT_URL."
                    )
                raise StoreLocked(
                    f"The embedded store {what} is in use by process {self._holder()}. Wait for it to finish "
                    f"(--wait SECONDS or STORE_LOCK_WAIT waits for it), stop it, or point the UI/CLI at a "
                    f"Qdrant server with QDRANT_URL."
                )
            if not told and on_wait is not None:
                on_wait(self._holder(), wait)
                told = True
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _holder(self) -> str:
        return os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip() or "another process"

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class ReadLock:
    """A shared flock on an existing lock file, for reading a store we cannot write: it waits
    for no one, but a writer (who wants it exclusive) cannot start while we read."""

    def __init__(self, path: Path, what: str) -> None:
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # no lock file in a folder nobody may write: nobody writes there
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(self._fd)
            raise StoreLocked(f"The embedded store {what} is in use by process {holder}. Wait for it to "
                              f"finish (or stop it).") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def copy_sparse(source: Path, target: Path) -> None:
    """Copy a folder tree keeping holes as holes (Edge's files are mostly unwritten space)."""
    for root, _, files in os.walk(source):
        folder = target / Path(root).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)  # writable, whatever the source's mode
        for name in files:
            with open(Path(root) / name, "rb") as src, open(folder / name, "wb") as dst:
                size = os.fstat(src.fileno()).st_size
                offset = 0
                while offset < size:
                    try:
                        start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                    except OSError as exc:
                        if exc.errno == errno.ENXIO:  # only a hole is left
                            break
                        raise
                    end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
                    src.seek(start)
                    dst.seek(start)
                    while start < end:
                        chunk = src.read(min(end - start, 1 << 20))
                        if not chunk:
                            break
                        dst.write(chunk)
                        start += len(chunk)
                    offset = end
                dst.truncate(size)
