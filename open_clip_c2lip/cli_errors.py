"""How the export, eval and viz command lines end on an error the user can act on: one
``error: ...`` line on stderr and exit status 1, no traceback. Anything else (a bug) keeps its
traceback."""
import errno
import sys
from typing import Callable, Optional, Sequence

from .fileio import diskspace
from .hub import HubUnavailableError

# bad input (CheckpointError is a ValueError), a Hub that is needed but out of reach, a full disk
USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, HubUnavailableError, diskspace.DiskFullError)
# a path the user gave that cannot be written or read: no permission, a read-only file system
ACCESS_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)


def access_message(error: BaseException) -> Optional[str]:
    """``<path>: <reason>`` for a path that cannot be written or read (permission, read-only file
    system), else ``None``."""
    if isinstance(error, OSError) and error.errno in ACCESS_ERRNOS and error.filename is not None:
        return f"{error.filename}: {error.strerror}"
    return None


def run(main: Callable[[Optional[Sequence[str]]], object], argv: Sequence[str]) -> None:
    """``main(argv)``; a user error (or a full disk anywhere, e.g. a download into a cache) exits
    with ``error: <message>`` and status 1."""
    try:
        main(argv)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # a full disk surfaces as OSError, or as a library's error (safetensors)
        message = access_message(e) or diskspace.message(e)
        if message is None:
            raise
        sys.exit(f"error: {message}")
