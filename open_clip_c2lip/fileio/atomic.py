"""Atomic file outputs: write a new temporary file next to the target, rename it when complete.

Every file the package writes goes through ``atomic_output``, so a reader never sees half a file,
a failure leaves no partial one behind, and no file that existed before is overwritten or deleted
except the target itself: the temporary is a new file (``O_EXCL``) under a name only this module
makes, ``.<name>.<8 hex digits>.c2lip-partial``. Its permissions come from the umask, like any file
``open(path, "w")`` creates (``tempfile.mkstemp`` would make it 0600). The writer holds an exclusive
``flock`` on it, so ``partial_files`` tells a running writer's partial from a killed one's leftover;
leftovers are reported by the callers, never deleted (a name is no proof of who made a file).
"""
import contextlib
import fcntl
import os
import re
import secrets
from typing import Dict, Iterable, Iterator, List, Set, Tuple

PARTIAL_SUFFIX = ".c2lip-partial"
_PARTIAL_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX))  # group 1: the target's name


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield the path of a new, empty file next to ``path``; rename it to ``path`` when the block
    completes, remove it when the block raises (``KeyboardInterrupt`` included)."""
    directory, name = os.path.split(os.path.abspath(path))
    while True:
        partial = os.path.join(directory, f".{name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # another partial of this target holds the name: draw another
            continue
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when this process ends, however it ends
        yield partial
        os.replace(partial, path)
    finally:
        try:
            if os.path.lexists(partial):
                os.remove(partial)
        finally:
            os.close(fd)


def partial_files(paths: Iterable[str]) -> Tuple[List[str], List[str]]:
    """``(live, leftover)``: files of ``atomic_output``'s name pattern for any of ``paths`` that a
    running writer holds (its ``flock``), and the others (a killed run's, or someone's file of that
    name). Each folder is listed once, however many targets it holds."""
    targets: Dict[str, Set[str]] = {}
    for path in paths:
        directory, name = os.path.split(os.path.abspath(path))
        targets.setdefault(directory, set()).add(name)
    live, leftover = [], []
    for directory, names in targets.items():
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            match = _PARTIAL_NAME.fullmatch(entry)
            candidate = os.path.join(directory, entry)
            if not match or match.group(1) not in names or not os.path.isfile(candidate):
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:  # gone meanwhile, or not readable: not ours to judge
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                leftover.append(candidate)
            except BlockingIOError:
                live.append(candidate)
            finally:
                os.close(fd)
    return live, leftover


def write_text(path: str, text: str) -> None:
    """``text`` to ``path`` (UTF-8) through ``atomic_output``."""
    with atomic_output(path) as partial, open(partial, "w", encoding="utf-8") as f:
        f.write(text)
