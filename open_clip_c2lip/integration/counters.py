"""Data counters of a C2LIP training run: summed over DataLoader workers, reported every epoch.

Each DataLoader worker holds its own copy of the train packer, so counts made in a worker do not
reach the training process by themselves (the packer's ``log_every`` summary comes from each worker,
every 10,000 samples). ``SharedCounters`` puts every count into a row of one shared-memory int64
tensor ``[1 + workers, K]`` (row 0: the process that built the data, which also counts when
``--workers 0``; row ``1 + i``: worker ``i``); each process writes only its own row, so no lock is
needed. ``CountingPacker`` is the train ``TextPacker`` whose ``count`` also adds to that tensor, and
``ReportingLoader`` wraps the train DataLoader so that the training process logs the counters
(this epoch's and the run's totals) each time an epoch's iteration ends — the last one is the
report for the whole run.

Keys: the packer's ``packing.STAT_KEYS`` and the data path's ``DATA_KEYS`` below. A key not in
either list (a newer counter) still counts in its process's ``stats`` and worker logs; it is named
once in a warning as missing from the epoch report.
"""
import logging
import os
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

from ..packing import STAT_KEYS, TextPacker

_logger = logging.getLogger(__name__)

DATA_KEYS = (
    "shards_read",          # shards opened and read to their end (empty ones included)
    "missing_shards",       # shard files that do not exist: skipped (upstream's nothrow policy)
    "unreadable_shards",    # shards that failed to open or broke while read: the rest of the shard is lost
    "damaged_shards",       # tars with bad headers inside: skipped to the next valid header (GNU tar's
                            # rule), every complete sample on either side trains
    "truncated_shards",     # tars whose data ends early (cut inside a member / header, no end-of-archive
                            # blocks, a damaged compressed stream): the complete samples before the cut train
    "lost_samples",         # samples of damaged / truncated shards left out because they lost members
    "empty_shards",         # shards read without a single file
    "samples_read",         # samples grouped from shard files (webdataset)
    "skipped_incomplete",   # samples without an image or a caption file (upstream's filter)
    "skipped_undecodable",  # samples whose image / text / json failed to decode
    "skipped_bad_samples",  # samples with an unusable caption or concepts
    "rollovers",            # a worker's pass over its shards ended before the epoch did: it restarts,
                            # so samples repeat within the epoch (upstream's roll-over)
)

# what the epoch report leads with: (label, keys summed)
_HEADLINE: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("shards read", ("shards_read",)),
    ("missing", ("missing_shards",)),
    ("unreadable", ("unreadable_shards",)),
    ("damaged", ("damaged_shards",)),
    ("truncated", ("truncated_shards",)),
    ("empty", ("empty_shards",)),
    ("samples read", ("samples_read",)),
    ("lost", ("lost_samples",)),
    ("skipped", ("skipped_incomplete", "skipped_undecodable", "skipped_bad_samples")),
    ("packed", ("samples",)),
    ("rollovers", ("rollovers",)),
)
_WARN_KEYS = ("missing_shards", "unreadable_shards", "damaged_shards", "truncated_shards", "empty_shards",
              "lost_samples", "skipped_incomplete",
              "skipped_undecodable", "skipped_bad_samples")


def _worker_row() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id


class SharedCounters:
    """Named int64 counters in shared memory, one row per process (``[1 + num_workers, K]``).

    Picklable for DataLoader workers (fork and spawn: torch shares the storage, not a copy).
    """

    def __init__(self, num_workers: int, keys: Sequence[str] = STAT_KEYS + DATA_KEYS):
        self.keys: Tuple[str, ...] = tuple(dict.fromkeys(keys))
        self.index: Dict[str, int] = {key: i for i, key in enumerate(self.keys)}
        self.table = torch.zeros(1 + max(0, int(num_workers)), len(self.keys), dtype=torch.int64).share_memory_()
        self._unknown_warned = set()
        self._row = None  # (pid, this process's row as a numpy view of the shared table), made on first add

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_row"] = None  # a view is per process: rebuilt from the (shared) table after unpickling
        return state

    def add(self, key: str, amount: int = 1) -> None:
        column = self.index.get(key)
        if column is None:
            if key not in self._unknown_warned:
                self._unknown_warned.add(key)
                _logger.warning(f"C2LIP: data counter {key!r} is not in open_clip_c2lip.integration.counters' keys; "
                                "it is logged by each worker but not in the epoch report")
            return
        if self._row is None or self._row[0] != os.getpid():  # first add in this (maybe forked) process
            # numpy indexing costs ~0.1 us where a tensor element update costs ~10 us: add runs several
            # times per sample in every worker
            self._row = (os.getpid(), self.table[min(_worker_row(), self.table.shape[0] - 1)].numpy())
        self._row[1][column] += int(amount)

    def totals(self) -> Dict[str, int]:
        """Every counter summed over the processes."""
        return dict(zip(self.keys, self.table.sum(dim=0).tolist()))


class CountingPacker(TextPacker):
    """``TextPacker`` whose counts also go to ``counters`` (a ``SharedCounters``) when it is set."""

    counters: Optional[SharedCounters] = None

    def count(self, key: str, amount: int = 1) -> None:
        super().count(key, amount)
        if self.counters is not None and amount:
            self.counters.add(key, amount)


def _rank_label() -> str:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return f"rank {dist.get_rank()}/{dist.get_world_size()}"
    return ""


def format_report(totals: Dict[str, int], previous: Optional[Dict[str, int]] = None) -> str:
    """``label=value`` text of the counters (minus ``previous``): headline first, then the rest."""
    previous = previous or {}
    delta = {key: value - previous.get(key, 0) for key, value in totals.items()}
    headline = [f"{label}={sum(delta.get(k, 0) for k in keys)}" for label, keys in _HEADLINE]
    shown = {k for _, keys in _HEADLINE for k in keys if len(keys) == 1}
    rest = [f"{key}={value}" for key, value in delta.items() if key not in shown]
    return ", ".join(headline) + " | " + ", ".join(rest)


class ReportingLoader:
    """The train DataLoader, logging the data counters each time an epoch's iteration ends.

    Attribute access (``num_batches``, ``num_samples``, ``pipeline`` ...) goes to the wrapped loader.
    The report is a WARNING when shards were missing / unreadable / empty or samples were skipped
    this epoch, else INFO.
    """

    def __init__(self, loader, counters: SharedCounters, epoch: int = 0):
        self.loader = loader
        self.counters = counters
        self.epoch = epoch
        self._previous: Dict[str, int] = {}

    def __getattr__(self, name):
        if name in ("loader", "counters"):  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        yield from self.loader
        self.report()
        self.epoch += 1

    def report(self) -> Dict[str, int]:
        """Log this epoch's and the run's counters; returns the run's totals."""
        totals = self.counters.totals()
        this_epoch = {key: value - self._previous.get(key, 0) for key, value in totals.items()}
        problems = any(this_epoch.get(key, 0) for key in _WARN_KEYS)
        where = _rank_label()
        level = logging.WARNING if problems else logging.INFO
        _logger.log(level, f"C2LIP data counters, epoch {self.epoch}{' ' + where if where else ''}: "
                           f"{format_report(totals, self._previous)}")
        _logger.log(level, f"C2LIP data counters, run total to epoch {self.epoch}: {format_report(totals)}")
        if any(this_epoch.get(key) for key in ("missing_shards", "unreadable_shards", "damaged_shards", "truncated_shards")):
            _logger.warning(
                "C2LIP: shards of --train-data were missing or unreadable this epoch (damaged or truncated ones included; "
                "named in the warnings above); the epoch's batches were made up by repeating the readable samples")
        self._previous = totals
        return totals
