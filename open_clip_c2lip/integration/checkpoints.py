"""Training checkpoints that an interrupted save cannot spoil, and resume from the newest complete one.

Generic (no C2LIP code): the hook of ``open_clip_train.main`` (``train_main``) routes main's
``torch.save`` of a checkpoint through ``save_checkpoint`` and its ``--resume latest`` choice through
``select_resume_checkpoint``; ``patches/open_clip_train-atomic-checkpoints.diff`` is the same change
upstream.

Why: open_clip_train 3.3.0 writes ``epoch_N.pt`` (and ``tmp.pt`` before renaming it to
``epoch_latest.pt``) in place. A save cut short (SLURM time limit or preemption, a full disk, a kill)
leaves a 0-byte or truncated ``epoch_N.pt`` or ``tmp.pt``, and ``--resume latest`` takes the last
``*.pt`` by name, so every requeued run dies on it (``EOFError`` / ``PytorchStreamReader failed``).

- ``save_checkpoint``: ``torch.save`` into a new partial file next to the target (``atomic.atomic_output``:
  ``.<name>.<8 hex>.c2lip-partial``, invisible to ``*.pt`` globs), ``fsync``, a check that the zip
  archive is whole, ``rename`` over the target, ``fsync`` of the folder. At any interruption the
  target is either the previous file or the complete new one; a failure (``ENOSPC`` ...) removes the
  partial; a killed process leaves it behind under its partial name (reported at resume, never deleted).
- ``inspect_checkpoint`` / ``select_resume_checkpoint``: the newest *complete* training checkpoint,
  newest by its stored ``epoch`` (ties: upstream's name order); empty, truncated, corrupt (zip CRC) and
  foreign files are skipped, each with the reason. A file that is whole but unreadable for another
  reason (e.g. objects ``torch.load(weights_only=True)`` refuses) stops the resume instead of being
  skipped: training from an older checkpoint would overwrite it.
"""
import errno
import glob
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from typing import Iterable, List, Optional, Tuple

import torch

from ..fileio import atomic
from ..fileio.checkpoint import CheckpointError, read_checkpoint

_logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_PARTIAL_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}" + re.escape(atomic.PARTIAL_SUFFIX))


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; nothing was left at its path (the previous file, if any, is intact)."""


class UnreadableCheckpointError(RuntimeError):
    """A whole (undamaged) checkpoint file that cannot be read: resuming past it would lose it."""

    def __init__(self, message: str, path: Optional[str] = None):
        super().__init__(message)
        self.path = path


# ----------------------------------------------------------------------------------------- saving

def save_checkpoint(obj, path) -> None:
    """``torch.save(obj, path)``, atomically and durably (see the module docstring).

    Raises ``CheckpointSaveError`` (naming ``path`` and the cause, e.g. no space left on device) when
    the file cannot be written completely; ``path`` then still holds what it held before.
    """
    path = os.fspath(path)
    try:
        with atomic.atomic_output(path) as partial:
            with open(partial, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            problem = _archive_problem(partial)
            if problem:
                raise CheckpointSaveError(errno.EIO, f"the written file is incomplete ({problem})")
    except Exception as error:
        cause = _os_error(error)
        hint = " (no space left on device)" if cause is not None and cause.errno == errno.ENOSPC else ""
        raise CheckpointSaveError(
            cause.errno if cause is not None else errno.EIO,
            f"could not save checkpoint {path}{hint}: {cause if cause is not None else error}; nothing was "
            f"written there, earlier checkpoints are intact") from error
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _os_error(error: BaseException) -> Optional[OSError]:
    """The ``OSError`` behind ``error`` (torch wraps a failed write of its zip writer in a RuntimeError)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error
        error = error.__cause__ or error.__context__
    return None


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (a crash right after it must not undo it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename itself stays atomic
        pass
    finally:
        os.close(fd)


def _archive_problem(path: str) -> Optional[str]:
    """Why the torch zip archive at ``path`` is not whole (cheap: the end record and pickle entry)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist()):
                return "no data.pkl record"
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a whole zip archive: {error}"
    return None


# ----------------------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class CheckpointFile:
    """One candidate for ``--resume latest``: its path, stored epoch, and why it is unusable (None: complete)."""

    path: str
    epoch: Optional[int] = None
    problem: Optional[str] = None


def _damage(path: str) -> Optional[str]:
    """Full integrity check of a torch zip archive (reads it once): the first record failing its CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
        return f"{path} is corrupt ({error})"
    if bad is not None:
        return f"{path} is corrupt (its record {bad!r} fails the CRC check)"
    return None


def inspect_checkpoint(path: str) -> CheckpointFile:
    """Cheaply classify ``path``: complete training checkpoint (with its epoch) or why not.

    Empty, truncated (zip without end record), non-torch and damaged files get a ``problem`` string
    naming the file (``open_clip_c2lip.fileio.checkpoint.read_checkpoint``'s checks; zip checkpoints are
    memory-mapped, so their tensors are not read here). Raises ``UnreadableCheckpointError`` for a
    whole archive that still cannot be read.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as error:
        return CheckpointFile(path, problem=f"{path} cannot be read ({error.strerror or error})")
    if size == 0:
        return CheckpointFile(path, problem=f"{path} is empty (0 bytes): an interrupted save or copy")
    is_zip = head == _ZIP_MAGIC
    if (is_zip and not zipfile.is_zipfile(path)) or (len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head)):
        return CheckpointFile(path, problem=f"{path} is truncated ({size} bytes, its zip archive has no end "
                                            f"record): an interrupted save or copy")
    if not is_zip and not head.startswith(_PICKLE_PROTO):
        return CheckpointFile(path, problem=f"{path} is not a PyTorch checkpoint ({size} bytes starting {head!r})")
    try:
        _, metadata = read_checkpoint(path)
    except FileNotFoundError:
        return CheckpointFile(path, problem=f"{path} disappeared while it was read")
    except CheckpointError as error:
        damage = _damage(path) if is_zip else str(error)
        if damage is None:
            raise UnreadableCheckpointError(
                f"cannot resume: {path} is a whole checkpoint file (every zip record passes its CRC check) "
                f"but cannot be read: {error}. Resuming from an older checkpoint would overwrite it; move it "
                f"away to resume from the newest checkpoint before it", path) from error
        return CheckpointFile(path, problem=damage)
    epoch = metadata.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        return CheckpointFile(path, problem=f"{path} has no 'epoch' entry: a model-only state dict, "
                                            f"not an open_clip_train training checkpoint")
    return CheckpointFile(path, epoch=epoch)


def _natural_key(text: str) -> list:
    """Upstream ``get_latest_checkpoint``'s name order: digit runs compare as numbers."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", text.lower())]


@dataclass
class ResumeSelection:
    """What ``select_resume_checkpoint`` found: the chosen file (None: no complete one) and the skipped ones."""

    path: Optional[str] = None
    epoch: Optional[int] = None
    skipped: List[CheckpointFile] = field(default_factory=list)
    leftovers: List[Tuple[str, int, bool]] = field(default_factory=list)  # (path, bytes, a live writer's)

    def log(self, logger: logging.Logger = _logger) -> None:
        """One WARNING per skipped file and per partial-save leftover; INFO for the choice."""
        for skipped in self.skipped:
            logger.warning("resume: not usable: %s", skipped.problem)
        for path, size, live in self.leftovers:
            if live:
                logger.warning("resume: %s (%d bytes) is being written by another running process", path, size)
            else:
                logger.warning("resume: %s (%d bytes) is the leftover of a save that was interrupted (killed); "
                               "it is not a checkpoint and can be deleted", path, size)
        if self.path is not None:
            logger.info("resume: newest complete checkpoint is %s (epoch %d)", self.path, self.epoch)
        elif self.skipped:
            logger.warning("resume: none of the %d checkpoint file(s) is complete; training starts from scratch",
                           len(self.skipped))


def checkpoint_candidates(folder: str) -> List[str]:
    """The ``*.pt`` files under ``folder`` (recursively, as upstream's ``get_latest_checkpoint``)."""
    return glob.glob(os.path.join(glob.escape(folder), "**", "*.pt"), recursive=True)


def partial_leftovers(folder: str) -> List[Tuple[str, int, bool]]:
    """``(path, bytes, live)`` of ``save_checkpoint`` partial files in ``folder`` (see ``atomic.partial_files``)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    targets = [os.path.join(folder, m.group(1)) for m in map(_PARTIAL_NAME.fullmatch, names) if m]
    live, leftover = atomic.partial_files(targets)
    found = []
    for path, is_live in [(p, True) for p in live] + [(p, False) for p in leftover]:
        try:
            found.append((path, os.path.getsize(path), is_live))
        except OSError:
            continue
    return sorted(found)


def select_resume_checkpoint(paths: Iterable[str], folder: Optional[str] = None) -> ResumeSelection:
    """The newest complete training checkpoint among ``paths`` (see the module docstring).

    ``folder``: also list ``save_checkpoint`` leftovers there. The chosen file's zip records are
    CRC-checked (one read of it; the resume reads it next anyway); a failing one is skipped too.
    """
    selection = ResumeSelection(leftovers=partial_leftovers(folder) if folder else [])
    complete = []
    for path in sorted(set(paths), key=_natural_key):
        found = inspect_checkpoint(path)
        (complete if found.problem is None else selection.skipped).append(found)
    complete.sort(key=lambda c: (c.epoch, _natural_key(c.path)), reverse=True)
    for candidate in complete:
        damage = _damage(candidate.path) if zipfile.is_zipfile(candidate.path) else None
        if damage is not None:
            selection.skipped.append(replace(candidate, problem=damage))
            continue
        selection.path, selection.epoch = candidate.path, candidate.epoch
        break
    return selection
