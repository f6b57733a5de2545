"""One process per run directory: an exclusive OS lock, held from the start of a run to its end.

Two identical commands started at once (two terminals, a resubmitted array job, `--continue` from
a second node) would otherwise both train into the same folder and overwrite each other's files.
The lock is `flock` on a hidden file beside the run directory, `.<run>.lock` (beside, not inside:
the folder itself may not exist yet, and `--overwrite` swaps it for a staging folder). The kernel
drops the lock when its process ends, however it ends, so a killed run never blocks the next one;
on Linux NFS, `flock` is carried out as a POSIX lock on the server, so it holds across nodes too.
The file names the holder (process id, host, start time) for the message the second process shows,
and is removed when the run ends; one left by a killed process is simply taken over.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from typing import Callable, Optional

from utils.errors import UserError


class RunLockedError(UserError, RuntimeError):
    """Another process is writing the run directory."""


# run directory -> open lock file of this process. A process runs its scripts one after another
# (the demo, the tests), so a new run of a directory this process already holds takes the lock
# over from the earlier one, which has ended (finished or failed).
_HELD: dict[str, "RunLock"] = {}


def lock_path(run_dir: str) -> str:
    """The lock file of `run_dir`: `.<name>.lock` in its parent folder."""
    parent, name = os.path.split(os.path.normpath(os.path.abspath(run_dir)))
    return os.path.join(parent, f".{name}.lock")


class RunLock:
    """The exclusive lock of one run directory (`acquire`, then `release` when the run ends)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = os.path.normpath(run_dir)
        self.path = lock_path(run_dir)
        self._fd: Optional[int] = None

    def acquire(self, wait: bool = False, on_wait: Callable[[str], None] = print) -> None:
        """Take the lock; if another process holds it, raise RunLockedError, or wait (`wait=True`)."""
        key = os.path.abspath(self.run_dir)
        if key in _HELD:
            _HELD.pop(key).release()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._lock(fd, wait, on_wait)
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed this file as it ended: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        _HELD[key] = self

    def _lock(self, fd: int, wait: bool, on_wait: Callable[[str], None]) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = self.holder()
            if not wait:
                raise RunLockedError(
                    f"{self.run_dir} is being written by {holder}; wait for that run to end or stop it "
                    f"(with --continue this command waits for it). Lock file: {self.path}") from None
            on_wait(f"waiting: {self.run_dir} is being written by {holder}")
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks until the holder ends

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def holder(self) -> str:
        """'process PID on HOST since TIME', as the holder wrote it into the lock file."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                pid, host, since = handle.read().split(" ", 2)
            return f"process {pid} on {host} since {since.strip()}"
        except (OSError, ValueError):  # the holder has not written its name yet
            return "another process"

    def release(self) -> None:
        """Remove the lock file and let the next process in (a waiting one then locks a new file)."""
        if self._fd is not None:
            if _same_file(self._fd, self.path):
                os.remove(self.path)  # while still locked: nobody can take it between removal and close
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        key = os.path.abspath(self.run_dir)
        if _HELD.get(key) is self:
            del _HELD[key]


def release_all() -> None:
    """Release every run lock this process holds (a script's end, however it ended)."""
    for lock in list(_HELD.values()):
        lock.release()


def _same_file(fd: int, path: str) -> bool:
    """True when `path` still names the open file `fd` (not removed, nor replaced by a new file)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
