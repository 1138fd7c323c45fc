"""Reproducible training data order: a patch of ``open_clip_train.data`` (same seed -> same data).

Generic: an upstream fix that imports no C2LIP code (``wds`` imports ``wds_train_stages`` from here).

open_clip_train 3.3.0 seeds the shard shuffle from ``--seed`` and the epoch (``detshuffle2``) but
leaves three other sources of order to chance or to hidden global state:

- webdataset's within-worker sample shuffle, ``wds.shuffle(bufsize, initial)`` in
  ``get_wds_dataset``, draws its seed from the clock and pid (``webdataset.filters._shuffle`` with
  ``rng=None``), so two runs of one command see different batches;
- ``--dataset-resampled`` seeds ``ResampledShards2`` from the DataLoader worker seed, i.e. from the
  global torch RNG at the first iteration; without workers (``--workers 0``) it falls back to
  ``rank * 1000 + worker`` and draws the same shard sequence in every epoch, whatever ``--seed``;
- map-style data (CSV, synthetic) is shuffled by a ``RandomSampler`` drawing from the global torch
  RNG (single process: the order of epoch k depends on all RNG draws before it, so a resumed run
  sees other batches), or by a ``DistributedSampler`` whose seed is 0 whatever ``--seed`` (DDP).

``patch_data_order(module)`` (one of the plugin's import hooks for ``open_clip_train.data``,
idempotent; active whenever the plugin is, with or without ``--c2lip-loss``) wraps three builders so
that the order is a function of ``(--seed, epoch, rank, DataLoader worker)`` only — the idea of
upstream's ``detshuffle2``, extended by rank and worker where streams must differ:

1. ``get_wds_dataset`` (train): the ``_shuffle`` stage becomes ``WorkerSampleShuffle`` (same buffer
   sizes, rng seeded by ``(seed, epoch, rank, worker, pass)``); with ``--dataset-resampled``,
   ``ResampledShards2.worker_seed`` is set to ``(seed, rank, worker)`` (upstream adds the epoch).
2. ``get_csv_dataset`` / ``get_synthetic_dataset`` (train): the loader's sampler is a
   ``DistributedSampler(seed=--seed)`` in every case (one replica without DDP), so each epoch's
   permutation is ``randperm(n)`` from a generator seeded with ``seed + epoch`` (upstream's
   ``DataInfo.set_epoch`` advances it), split by rank under DDP.

Left as upstream: the shard shuffle (already ``seed + epoch``), the split of shards by node and
worker, and per-worker RNGs (augmentation): torch seeds each DataLoader worker's ``random``,
``torch`` and ``numpy`` from a base seed drawn from the main process's torch RNG, which
open_clip_train seeds with ``--seed + rank`` before building the data; with the order fixed above,
those draws are deterministic too. ``--seed`` < 0 keeps upstream's per-worker seeding of
``detshuffle2``. ``patches/open_clip_train-deterministic-data-order.diff`` is the same change
upstream; it seeds with the same function, so it gives the same order as this patch.
"""
import copy
import functools
import inspect
import random
from typing import Any, Callable

import torch

_PATCHED = "__open_clip_c2lip_data_order_patched__"


def mix_seed(*values: Any) -> int:
    """A 63-bit seed from ints / strings. ``random.Random`` seeds a ``str`` through sha512, so unlike
    ``hash()`` this is the same in every process; distinct tuples give unrelated seeds. Same function
    as ``deterministic_seed`` in the upstream diff (the two give the same order)."""
    return random.Random(repr(values)).getrandbits(63)


def worker_id() -> int:
    """The DataLoader worker index of this process (0 in the main process)."""
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else info.id


class WorkerSampleShuffle:
    """webdataset stage: a buffered sample shuffle whose rng is seeded by ``(seed, epoch, rank,
    worker, pass)``, in place of open_clip_train's clock-seeded ``wds.shuffle``.

    ``epoch`` is open_clip_train's ``SharedEpoch`` (set by ``DataInfo.set_epoch``). ``pass`` counts
    how often this worker restarted its shard list within the epoch (``with_epoch`` repeats it when
    a worker runs out of shards), so repeated passes are shuffled differently, reproducibly.
    Buffering is webdataset's own ``_shuffle`` with the same ``bufsize`` / ``initial``.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, epoch, rank: int = 0):
        self.bufsize, self.initial, self.seed, self.epoch, self.rank = bufsize, initial, seed, epoch, rank
        self._last_epoch, self._pass = None, 0

    def __call__(self, src):
        from webdataset.filters import _shuffle

        epoch = self.epoch.get_value()
        self._pass = self._pass + 1 if epoch == self._last_epoch else 0
        self._last_epoch = epoch
        rng = random.Random(mix_seed("samples", self.seed, epoch, self.rank, worker_id(), self._pass))
        return _shuffle(src, self.bufsize, self.initial, rng)


def resampled_worker_seed(seed: int, rank: int) -> int:
    """``ResampledShards2.worker_seed``: a function of ``(seed, rank, worker)``; upstream adds the epoch."""
    return mix_seed("shards", seed, rank, worker_id())


# ------------------------------------------------------------------------------------------------
# webdataset

def wds_train_stages(info) -> list:
    """The stage list of the wds train ``DataInfo`` (``WebLoader`` -> ``DataLoader`` -> ``DataPipeline``)."""
    try:
        stages = info.dataloader.pipeline[0].dataset.pipeline
    except (AttributeError, IndexError) as exc:
        raise RuntimeError(
            "C2LIP: open_clip_train's webdataset train loader no longer has the layout "
            "WebLoader.pipeline[0].dataset.pipeline; open_clip_c2lip.integration must follow") from exc
    if not isinstance(stages, list):
        raise RuntimeError("C2LIP: the webdataset train pipeline stages are not a list")
    return stages


def seed_wds_train(upstream, info, args) -> None:
    """Make a train ``DataInfo`` from ``get_wds_dataset`` reproducible (in place; see module doc)."""
    from webdataset.filters import _shuffle

    stages = wds_train_stages(info)
    rank = getattr(args, "rank", 0)
    shuffles = [i for i, stage in enumerate(stages) if getattr(stage, "f", None) is _shuffle]
    if len(shuffles) != 1 or info.shared_epoch is None:
        raise RuntimeError(
            f"C2LIP data order: expected one wds.shuffle stage and a shared epoch in open_clip_train's webdataset "
            f"train pipeline, found {len(shuffles)} and {info.shared_epoch!r}; open_clip_c2lip.integration.data_order must follow")
    stage = stages[shuffles[0]]
    kw = dict(zip(("bufsize", "initial"), stage.args), **stage.kw)
    stages[shuffles[0]] = WorkerSampleShuffle(kw["bufsize"], kw["initial"], args.seed, info.shared_epoch, rank)
    if isinstance(stages[0], upstream.ResampledShards2):
        if not stages[0].deterministic:
            raise RuntimeError("C2LIP data order: ResampledShards2 is no longer built with deterministic=True")
        stages[0].worker_seed = functools.partial(resampled_worker_seed, args.seed, rank)


def _wrap_get_wds_dataset(upstream, original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_wds_dataset(*call_args, **call_kwargs):
        info = original(*call_args, **call_kwargs)
        bound = signature.bind(*call_args, **call_kwargs)
        if bound.arguments["is_train"]:
            seed_wds_train(upstream, info, bound.arguments["args"])
        return info

    return get_wds_dataset


# ------------------------------------------------------------------------------------------------
# map-style datasets (CSV, synthetic)

def _wrap_map_style(upstream, original: Callable) -> Callable:
    """``get_csv_dataset`` / ``get_synthetic_dataset`` whose train loader samples with a seeded
    ``DistributedSampler`` (one replica without DDP), built by upstream's own DDP branch."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_dataset(*call_args, **call_kwargs):
        bound = signature.bind(*call_args, **call_kwargs)
        args = bound.arguments["args"]
        if not bound.arguments["is_train"]:
            return original(*call_args, **call_kwargs)
        sampler_class = upstream.DistributedSampler
        if args.distributed:
            seeded = functools.partial(sampler_class, seed=args.seed)
        else:
            seeded = functools.partial(sampler_class, num_replicas=1, rank=0, seed=args.seed)
        ddp_args = copy.copy(args)
        ddp_args.distributed = True  # upstream builds its sampler in the DDP branch only
        bound.arguments["args"] = ddp_args
        upstream.DistributedSampler = seeded
        try:
            info = original(*bound.args, **bound.kwargs)
        finally:
            upstream.DistributedSampler = sampler_class
        sampler = info.sampler
        if not (isinstance(sampler, sampler_class) and info.dataloader.sampler is sampler and sampler.seed == args.seed):
            raise RuntimeError(
                f"C2LIP data order: {original.__name__} no longer builds its train sampler with "
                "DistributedSampler(dataset) when args.distributed; open_clip_c2lip.integration.data_order must follow")
        sampler.set_epoch(bound.arguments.get("epoch", 0))
        return info

    return get_dataset


# ------------------------------------------------------------------------------------------------

def patch_data_order(module) -> None:
    """Patch ``open_clip_train.data`` in place (idempotent): reproducible train data order."""
    if getattr(module, _PATCHED, False):
        return
    module.get_wds_dataset = _wrap_get_wds_dataset(module, module.get_wds_dataset)
    module.get_csv_dataset = _wrap_map_style(module, module.get_csv_dataset)
    module.get_synthetic_dataset = _wrap_map_style(module, module.get_synthetic_dataset)
    setattr(module, _PATCHED, True)
