"""The ``get_data`` surface of ``open_clip_train.data``: the train split's texts packed with concepts.

``patch_get_data`` (the plugin's hook) wraps ``get_data``, a pass-through unless ``--c2lip-loss`` was
parsed (``runtime.active()``): val and ImageNet are built by the original with the plain tokenizer;
the train split gets a ``TextPacker`` (``open_clip_c2lip.packing``) in the tokenizer's place, so every
sample's text is ``[1 + 2P, L]`` (``open_clip_c2lip.layout``), with the ``--c2lip-*`` settings passed
explicitly. One builder per upstream dataset function (``TRAIN_BUILDERS``):

- webdataset: ``wds.build_wds_train``; concepts come from ``json[concepts_key]`` (else the authors'
  ``nounphrases``).
- tables (CSV/TSV/parquet): ``ConceptCsvDataset`` replaces ``CsvDataset`` (the plugin's
  ``csv_data.TableDataset``) for the train build only; the concepts column holds a JSON list of
  strings per row (or a list column) and is validated when the dataset is built (errors name the
  file and row); skipped images are counted in the packer's counters.
- synthetic: concepts are extracted on the fly.

A sample without concepts has them extracted on the fly with spaCy (slow: warned once per process,
counted); whenever that can happen, the model is loaded and tried at start-up
(``check_concept_extraction``). Missing local shards are named at start-up (``check_local_shards``);
a train split without one full batch is an error (``check_batches``). Counters: each DataLoader
worker's packer (``TextPacker.stats``, logged every ``log_every`` samples and at the end of each
webdataset pass) also adds them to a shared table (``counters``), which the training process logs at
the end of every epoch.
"""
import copy
import functools
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional

from ..config import C2LIPConfig
from ..packing import SpacyConceptExtractor, TextPacker
from . import WRAPPED, runtime
from .counters import CountingPacker, ReportingLoader, SharedCounters
from .csv_data import TableDataset
from .wds import AUTHORS_CONCEPTS_KEY, build_wds_train

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Train builders, one per upstream dataset function

def _build_csv_train(upstream, args, preprocess, epoch, packer: TextPacker, config) -> Any:
    original = upstream.CsvDataset
    upstream.CsvDataset = functools.partial(ConceptCsvDataset, concepts_key=config.concepts_key)
    try:
        return upstream.get_csv_dataset(args, preprocess, is_train=True, epoch=epoch, tokenizer=packer)
    finally:
        upstream.CsvDataset = original


def _build_synthetic_train(upstream, args, preprocess, epoch, packer: TextPacker, config) -> Any:
    # the synthetic caption carries no concepts: the packer extracts them (warned once, counted)
    return upstream.get_synthetic_dataset(args, preprocess, is_train=True, epoch=epoch, tokenizer=packer)


# upstream dataset function name -> C2LIP train builder
TRAIN_BUILDERS: Dict[str, Callable] = {
    "get_wds_dataset": build_wds_train,
    "get_csv_dataset": _build_csv_train,
    "get_synthetic_dataset": _build_synthetic_train,
}


def make_packer(tokenizer, config: C2LIPConfig) -> TextPacker:
    """The train-split packer for ``config`` (spaCy ``config.spacy_model`` for samples without concepts)."""
    return CountingPacker(tokenizer, max_concepts=config.max_concepts,
                          concept_extractor=SpacyConceptExtractor(config.spacy_model))


def get_c2lip_data(upstream, original_get_data, args, preprocess_fns, epoch=0, tokenizer=None) -> Dict[str, Any]:
    """``get_data`` with the train split packed (``[B, 1 + 2P, L]`` texts); val / ImageNet plain."""
    config = runtime.config()
    eval_args = copy.copy(args)
    eval_args.train_data = None
    data = original_get_data(eval_args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
    data.pop("train", None)  # synthetic type: the original also built a plain train split
    if args.train_data or args.dataset_type == "synthetic":
        dataset_fn = upstream.get_dataset_fn(args.train_data, args.dataset_type)
        builder = next((b for name, b in TRAIN_BUILDERS.items() if dataset_fn is getattr(upstream, name, None)), None)
        if builder is None:
            raise NotImplementedError(
                f"C2LIP cannot pack train data built by {getattr(dataset_fn, '__name__', dataset_fn)!r}; "
                f"supported: {', '.join(TRAIN_BUILDERS)}")
        if dataset_fn is upstream.get_wds_dataset:
            check_local_shards(upstream, args.train_data)
        packer = make_packer(tokenizer, config)
        packer.counters = SharedCounters(args.workers)
        info = builder(upstream, args, preprocess_fns[0], epoch, packer, config)
        check_batches(info, args)
        if may_extract_concepts(info):
            check_concept_extraction(packer, config)
        info.c2lip_packer = packer  # this process's counters (each worker has its own copy)
        info.c2lip_counters = packer.counters  # all processes' counters
        info.dataloader = ReportingLoader(info.dataloader, packer.counters, epoch)
        data["train"] = info
        _logger.info(
            f"C2LIP: train texts packed as [1 + 2*{config.max_concepts}, L] rows; concepts from "
            f"{config.concepts_key!r} (or {AUTHORS_CONCEPTS_KEY!r}), spaCy {config.spacy_model!r} when missing")
    return dict(sorted(data.items(), key=lambda item: item[0] != "train"))  # train first, as upstream


# ------------------------------------------------------------------------------------------------
# Start-up checks (main process, once per get_data call)

_REMOTE_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # pipe:, s3:, http(s): ... (2+ letters: not C:)
PROBE_CAPTION = "a brown dog runs on the green grass."


def check_local_shards(upstream, train_data: str) -> List[str]:
    """Local shard files of ``--train-data`` that do not exist (remote URLs are not checked).

    Policy (as open_clip_train's nothrow reader, which img2dataset-style gapped shard lists rely on):
    missing shards are skipped, but loudly — named here at start-up, counted as ``missing_shards`` at
    every pass and in each epoch's data report. When every local shard is missing there is nothing to
    train on: ``FileNotFoundError``.
    """
    urls, _ = upstream.expand_urls(train_data)
    local = [url[len("file:"):] if url.startswith("file:") else url for url in urls
             if url.startswith("file:") or not _REMOTE_URL.match(url)]
    missing = [path for path in local if not os.path.isfile(path)]
    if missing and len(missing) == len(urls):
        raise FileNotFoundError(
            f"C2LIP: none of the {len(urls)} shard(s) of --train-data {train_data!r} exists "
            f"(first: {missing[0]})")
    if missing:
        listing = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        _logger.warning(
            f"C2LIP: {len(missing)} of the {len(urls)} shard(s) of --train-data do not exist and will be "
            f"skipped: {listing}. Each epoch's batches (--train-num-samples / sizes.json) are then made up by "
            "repeating samples of the other shards; the epoch data report counts them as missing_shards.")
    return missing


def check_batches(info, args) -> None:
    """A train split that cannot yield a single full batch is an error (open_clip_train drops the
    short last batch: CSV gives 0 steps, webdataset would loop)."""
    num_batches = getattr(info.dataloader, "num_batches", None)
    if num_batches == 0:
        num_samples = getattr(info.dataloader, "num_samples", "?")
        raise ValueError(
            f"C2LIP: --train-data {args.train_data!r} gives no full training batch: {num_samples} samples, "
            f"--batch-size {args.batch_size} x world size {args.world_size} (the last, short batch is dropped)")


def may_extract_concepts(info) -> bool:
    """Whether samples without concepts can reach the packer (CSV: a row without concepts; else: yes)."""
    dataset = getattr(info.dataloader, "dataset", None)
    rows = getattr(dataset, "concepts", None)
    if isinstance(dataset, ConceptCsvDataset) and isinstance(rows, list):
        return any(concepts is None for concepts in rows)
    return True


def check_concept_extraction(packer: TextPacker, config: C2LIPConfig) -> None:
    """Extract the concepts of one caption now, so that a missing or broken spaCy model is an error at
    start-up, not at the first sample without concepts (hours in, in a worker). Loads spaCy once in
    this process; forked DataLoader workers inherit it."""
    start = time.perf_counter()
    try:
        concepts = packer.concept_extractor([PROBE_CAPTION])
    except Exception as exc:
        raise RuntimeError(
            f"C2LIP: concepts missing from the training data are extracted on the fly with spaCy "
            f"(--c2lip-spacy-model {config.spacy_model!r}), and that fails: {exc}") from exc
    _logger.info(f"C2LIP: on-the-fly concept extraction ready (spaCy {config.spacy_model!r}, "
                 f"{time.perf_counter() - start:.1f} s; {PROBE_CAPTION!r} -> {concepts[0]})")


# ------------------------------------------------------------------------------------------------
# CSV

def _is_missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _parse_concepts_cell(cell: Any, where: str) -> Optional[List[str]]:
    if _is_missing(cell) or (isinstance(cell, str) and not cell.strip()):
        return None
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: concepts cell is not JSON ({exc}): {cell[:200]!r}") from None
    if not isinstance(cell, list) or not all(isinstance(c, str) for c in cell):
        raise ValueError(f"{where}: concepts must be a JSON list of strings, got {str(cell)[:200]!r}")
    return cell


class ConceptCsvDataset(TableDataset):
    """The train table with a concepts column (a JSON list of strings per row, or a list column).

    ``integration.csv_data.TableDataset`` (the plugin's ``CsvDataset``: CSV/TSV/parquet read as the
    concepts CLI reads them, image paths relative to the table's folder, images decoded as a viewer
    shows them, missing or undecodable images skipped, named and counted) plus concepts: each row's
    cell is checked when the dataset is built (errors name the file and row); rows with no concepts
    cell (or no concepts column at all) are extracted on the fly. Built with ``CsvDataset``'s
    arguments (``tokenizer`` is the packer, whose counters receive the skips).
    """

    def __init__(self, input_filename, transforms, img_key, caption_key, sep="\t", tokenizer=None,
                 concepts_key: str = "concepts"):
        self.concepts_key = concepts_key
        super().__init__(input_filename, transforms, img_key, caption_key, sep=sep, tokenizer=tokenizer,
                         count=tokenizer.count if isinstance(tokenizer, TextPacker) else None)

    def read_columns(self, table) -> None:
        from ..fileio import tables

        columns = tables.column_names(table)
        column = next((key for key in (self.concepts_key, AUTHORS_CONCEPTS_KEY) if key in columns), None)
        cells = tables.column_values(table, column) if column is not None else [None] * len(self.captions)
        self.concepts = [_parse_concepts_cell(cell, self.where(row)) for row, cell in enumerate(cells)]
        if column is None:
            _logger.warning(
                f"C2LIP: {self.table_path} has no {self.concepts_key!r} or {AUTHORS_CONCEPTS_KEY!r} column; all "
                "concepts are extracted on the fly with spaCy (slow)")

    def text(self, row: int):
        return self.tokenize([(self.captions[row], self.concepts[row])])[0]


# ------------------------------------------------------------------------------------------------
# Installing the patches

def wrap_get_data(upstream, original: Callable) -> Callable:
    """``get_data`` that builds the C2LIP train split when ``runtime.active()``, else the original."""
    if getattr(original, WRAPPED, False):
        return original

    @functools.wraps(original)
    def get_data(args, preprocess_fns, epoch=0, tokenizer=None):
        if not runtime.active():
            return original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        return get_c2lip_data(upstream, original, args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)

    setattr(get_data, WRAPPED, True)
    return get_data


def patch_get_data(data_module) -> None:
    """Hook for ``open_clip_train.data``: ``get_data`` -> ``wrap_get_data`` (idempotent)."""
    data_module.get_data = wrap_get_data(data_module, data_module.get_data)
