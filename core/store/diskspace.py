"""Free-space checks before writes, and write errors a user can act on.

Qdrant Edge maps its files into memory and grows them by writing into the mapping: on a full
disk the kernel answers with SIGBUS, which kills the process with no message and no chance to
clean up. So every write first checks that the disk keeps a margin (MIN_FREE_DISK_MB) and stops
with one line when it would not.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from core.errors import DiskFull, ReadOnlyData

DEFAULT_MIN_FREE_MB = 100
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


def free_mb(path: Path) -> float:
    """Free space (for an unprivileged user) on the filesystem holding `path`, in MB."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:  # not created yet: its filesystem is its parent's
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize / 2**20


def require_free_space(path: Path, min_free_mb: int, doing: str, extra_mb: float = 0) -> None:
    """Raise DiskFull unless `path`'s disk has `min_free_mb` (+ `extra_mb`) MB free."""
    free = free_mb(path)
    if free < min_free_mb + extra_mb:
        need = f"{min_free_mb} MB" + (f" + {extra_mb:.0f} MB for this step" if extra_mb else "")
        raise DiskFull(
            f"only {int(free * 10) / 10:.1f} MB free on the disk of {path}, below MIN_FREE_DISK_MB ({need}): stopped before "
            f"{doing}. Free some space (or lower MIN_FREE_DISK_MB), then rerun the same command.")


def is_read_only_error(exc: OSError) -> bool:
    return exc.errno in _READ_ONLY


def write_error(exc: OSError, doing: str = "", path: Path | None = None) -> DiskFull | ReadOnlyData | None:
    """The error a user can act on for a full disk or an unwritable place; None for other errors."""
    where = exc.filename or path
    while_doing = f" while {doing}" if doing else ""
    if exc.errno in _FULL:
        return DiskFull(f"the disk of {where} is full: stopped{while_doing}. Free some space, "
                        f"then rerun the same command.")
    if exc.errno in _READ_ONLY:
        return ReadOnlyData(f"{exc.strerror}: {where}{while_doing}. Check its permissions (or choose "
                            f"another place); a read-only DATA_DIR can still be searched.")
    return None


@contextlib.contextmanager
def writing(path: Path, doing: str) -> Iterator[None]:
    """Turn a full disk or a read-only folder met while `doing` into one clear error."""
    try:
        yield
    except OSError as exc:
        error = write_error(exc, doing, path)
        if error is None:
            raise
        raise error from exc
