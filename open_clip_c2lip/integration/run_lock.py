"""One writer per run folder: an exclusive ``flock`` on ``<logs>/<name>/run.lock`` held for the run's life.

Generic (no C2LIP code). open_clip_train 3.3.0 lets two trainings with the same ``--logs``/``--name``
and ``--resume latest`` run into one folder (checkpoints from one, ``params.txt`` from the other, one
mixed ``out.log``). The hook of ``open_clip_train.main`` (``train_main``) takes this lock on the
global rank 0 before anything is written into the folder; a second run finds it held and stops with
an error naming the holder (pid, host, start time, command). The kernel drops a ``flock`` when its
process ends however it ends (SIGKILL included), so a dead run never blocks a requeue; the lock file
stays (it is reused, never deleted). DataLoader workers forked from the holder close their copy of
the descriptor, so the lock ends with the training process itself.

File systems without ``flock`` (e.g. Lustre mounted without ``-o flock``) give a warning and no
lock. ``patches/open_clip_train-run-lock.diff`` is the same change upstream.
"""
import datetime
import errno
import fcntl
import logging
import os
import socket
import sys
from typing import Dict, Optional

_logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# flock on a file system that does not implement it
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENOTSUP}

_held: Dict[str, int] = {}  # real path of the lock file -> descriptor, for this process's life


class RunFolderBusy(RuntimeError):
    """The run folder is locked by another running training; the message names it."""


def _close_in_child() -> None:
    # a forked child (DataLoader worker) must not keep the lock alive after the training process died
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def holder_line() -> str:
    """What the holder writes into the lock file: ``pid 123 on n01, started <ISO time>: <command>``
    (the upstream-ready diff writes the same first part, so either names the other)."""
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = " ".join([os.path.basename(sys.executable)] + sys.argv)[:2000]
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 65536, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "a process that has not written its details yet"


def acquire(folder: str) -> Optional[str]:
    """Lock ``folder`` (created if missing) for this process's life; returns the lock file's path,
    or None when the file system has no ``flock`` (logged as a warning). Idempotent in one process.

    Raises ``RunFolderBusy`` naming the holder when another process holds it.
    """
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    key = os.path.realpath(path)
    if key in _held:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise RunFolderBusy(
            f"run folder {folder} is in use by another training: {holder}. Two runs "
            f"writing one folder mix their checkpoints and logs; wait for that run to end, stop it, or "
            f"pass another --name") from None
    except OSError as error:
        os.close(fd)
        if error.errno in _UNSUPPORTED:
            _logger.warning("cannot lock the run folder %s (the file system does not support flock: %s); a "
                            "second training started into it would not be stopped", folder, error.strerror)
            return None
        raise
    data = (holder_line() + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    _held[key] = fd
    return path


def release(folder: str) -> None:
    """Release this process's lock on ``folder`` (no-op if it holds none)."""
    fd = _held.pop(os.path.realpath(os.path.join(folder, LOCK_NAME)), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
