"""Free space for the files the export, eval and viz CLIs write, and full-disk errors that say so.

A full disk (``ENOSPC``) or an exhausted quota (``EDQUOT``) becomes ``DiskFullError``: one line
naming the file and the space it needs, which the CLIs print as ``error: ...``. The writers check
``shutil.disk_usage`` up front where the size is cheap to know and still turn a failing write into
this error (other processes fill disks too). Their outputs are atomic, so nothing partial stays.
"""
import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Rust I/O errors (safetensors) keep the errno only in their text: "... (os error 28)"
_RUST_ERRNO_TEXT = tuple(f"(os error {code})" for code in DISK_FULL_ERRNOS)
_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB")
# refused up front for outputs whose size is known only at the end (results, scores, figures):
# less than this free means a disk that is full for any practical purpose
MIN_FREE_BYTES = 1 << 20

Size = Union[int, Callable[[], int]]


def human_bytes(size: int) -> str:
    """``size`` in binary units: ``512 bytes``, ``1.5 KiB``, ``355.1 MiB``."""
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} bytes" if unit == 0 else f"{value:.1f} {_UNITS[unit]}"


def format_bytes(size: int) -> str:
    """``size`` exactly and readably: ``812,623,880 bytes (775.0 MiB)``."""
    return f"{size:,} bytes ({human_bytes(size)})" if size >= 1024 else f"{size} bytes"


def existing_folder(path) -> Path:
    """The folder ``path`` would be written into, or its nearest existing ancestor (where
    ``disk_usage`` can look; folders made on the way live on the same file system)."""
    folder = Path(os.path.abspath(path))
    folder = folder if folder.is_dir() else folder.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


def free_bytes(path) -> int:
    """Bytes an unprivileged process may still write on the file system holding ``path``."""
    return shutil.disk_usage(existing_folder(path)).free


class DiskFullError(OSError):
    """A file that does not fit: ``path`` needs ``needed`` bytes (``None``: unknown), ``free`` were free."""

    def __init__(self, path, needed: Optional[int] = None, free: Optional[int] = None, code: int = errno.ENOSPC,
                 at_least: bool = False):
        self.path, self.needed, self.free = Path(path), needed, free
        problem = "the disk quota is exceeded" if code == errno.EDQUOT else "no space left on the device"
        message = f"{problem} for {self.path}"
        if needed is not None:
            message += f": it needs {'at least' if at_least else 'about'} {format_bytes(needed)}"
        if free is not None:
            message += f"{',' if needed is not None else ':'} {format_bytes(free)} free in {existing_folder(path)}"
        super().__init__(message)
        self.errno = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def _chain(error: Optional[BaseException]) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def disk_full_errno(error: BaseException) -> Optional[int]:
    """``ENOSPC`` / ``EDQUOT`` when ``error`` (or an error it was raised from) is a full disk, else ``None``."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return link.errno
        for code, marker in zip(DISK_FULL_ERRNOS, _RUST_ERRNO_TEXT):
            if marker in str(link):
                return code
    return None


def check_free_space(path, needed: int, at_least: bool = False) -> None:
    """Raise ``DiskFullError`` when fewer than ``needed`` bytes are free where ``path`` would be
    written (``at_least``: ``needed`` is a lower bound, as :data:`MIN_FREE_BYTES`)."""
    free = free_bytes(path)
    if free < needed:
        raise DiskFullError(path, needed, free, at_least=at_least)


@contextlib.contextmanager
def disk_full_as_error(path, needed: Optional[Size] = None) -> Iterator[None]:
    """Turn a full disk or quota inside the block into ``DiskFullError`` for ``path`` (``needed``:
    bytes, or a callable giving them at failure time)."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        code = disk_full_errno(e)
        if code is None:
            raise
        size = needed() if callable(needed) else needed
        try:
            free = free_bytes(path)
        except OSError:
            free = None
        raise DiskFullError(path, size, free, code) from e


def message(error: BaseException) -> Optional[str]:
    """A one-line full-disk message for any error (e.g. a download into a cache), else ``None``."""
    if isinstance(error, DiskFullError):
        return str(error)
    code = disk_full_errno(error)
    if code is None:
        return None
    filename = next((e.filename for e in _chain(error) if isinstance(e, OSError) and e.filename), None)
    if filename:
        return str(DiskFullError(filename, code=code))
    problem = "the disk quota is exceeded" if code == errno.EDQUOT else "no space left on the device"
    return f"{problem} ({str(error).strip().splitlines()[0]})"
