"""One operation at a time per environment: an flock that the kernel releases when its holder dies."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from stackops.errors import LockBusy
from stackops.files import private_dir

_held: dict[Path, int] = {}  # re-entrant within one process (a migration's backup inside its own lock)


@contextmanager
def env_lock(folder: Path, operation: str) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively, or raise LockBusy naming the holder; never blocks."""
    private_dir(folder)
    path = (folder / ".lock").resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockBusy(
                f"cannot start {operation}: {holder} holds {path}; wait for it to finish "
                "(the lock is released automatically when that process ends)"
            ) from None
        try:  # who holds it, for the message of the next one; a full disk must not stop prune from freeing it
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{operation} (pid {os.getpid()})\n".encode(), 0)
        except OSError:
            pass
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
            with suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
