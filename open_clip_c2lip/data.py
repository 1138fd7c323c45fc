"""Patches of ``open_clip_train.data``: the webdataset end-of-shard fix and packed train texts.

``patch_train_data(module)`` replaces two attributes of ``open_clip_train.data`` (the plugin's
bootstrap calls it when that module is imported; it is idempotent):

1. ``tarfile_to_samples_nothrow`` (always): upstream's shard reader, but with webdataset's
   end-of-shard marker turned off (``eof_value=None``) where the installed webdataset has one
   (>= 0.2.96). Upstream's ``group_by_keys_nothrow`` reads ``filesample["fname"]`` and crashes with
   ``KeyError: 'fname'`` on the marker ``{}`` at the end of the first shard
   (mlfoundations/open_clip#935). ``patches/open_clip_train-wds-eof.diff`` is the same fix upstream.
2. ``get_data`` (pass-through unless ``open_clip_c2lip.runtime.active()``): val and ImageNet are
   built by the original with the plain tokenizer; the train split gets a ``TextPacker`` in the
   tokenizer's place, so every sample's text is ``[1 + 2P, L]`` (``open_clip_c2lip.layout``):

   - webdataset: concepts come from ``json[concepts_key]`` (else the authors' ``nounphrases``).
     Three stages of the train pipeline are located by identity (an error names any that moved):
     the concepts stage ``AttachConcepts`` is inserted before the ``map_dict`` stage, the decode
     stage runs with a handler that names the shard and key of a sample it skips, and the shard
     reader also warns about empty shards. Bad samples are skipped as upstream's nothrow policy
     does, but each skip is logged with its shard and key and counted.
   - CSV: ``ConceptCsvDataset`` replaces ``CsvDataset`` for the train build only; the concepts
     column holds a JSON list of strings per row and is validated when the dataset is built
     (errors name the file and row).
   - synthetic: concepts are extracted on the fly.

   A sample without concepts has them extracted on the fly with spaCy (slow: warned once per
   process, counted). Counters live in the packer of each DataLoader worker (``TextPacker.stats``,
   logged every ``log_every`` samples; webdataset workers also log them at the end of each pass).
"""
import copy
import functools
import inspect
import json
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from PIL import Image

from . import runtime
from .concepts import MAX_PARSE_CHARS
from .packing import SpacyConceptExtractor, TextPacker

AUTHORS_CONCEPTS_KEY = "nounphrases"
_PATCHED = "__open_clip_c2lip_data_patched__"

_logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A training sample whose text or concepts cannot be used; the message names shard and key."""


# ------------------------------------------------------------------------------------------------
# Patch 1: end-of-shard fix (+ empty-shard reporting in C2LIP train pipelines)

@functools.lru_cache(maxsize=None)
def _eof_kwargs(tar_file_expander) -> Tuple[Tuple[str, Any], ...]:
    """``eof_value=None`` when webdataset's ``tar_file_expander`` yields an end-of-shard marker."""
    parameters = inspect.signature(tar_file_expander).parameters
    return (("eof_value", None),) if "eof_value" in parameters else ()


def tarfile_to_samples_nothrow(src, handler=None, stats: Optional[TextPacker] = None):
    """open_clip_train's ``tarfile_to_samples_nothrow`` without webdataset's end-of-shard marker.

    With ``stats`` (a packer: C2LIP train pipelines), each shard is expanded on its own so that a
    shard without a single file is logged by name and counted (``empty_shards``).
    """
    from open_clip_train import data as upstream

    handler = handler or upstream.log_and_continue
    eof = dict(_eof_kwargs(upstream.tar_file_expander))
    streams = upstream.url_opener(src, handler=handler)
    if stats is None:
        files = upstream.tar_file_expander(streams, handler=handler, **eof)
    else:
        files = _expand_each_shard(streams, handler, eof, stats)
    return upstream.group_by_keys_nothrow(files, handler=handler)


def _expand_each_shard(streams, handler, eof, stats: TextPacker):
    from open_clip_train import data as upstream

    for stream in streams:
        num_files = 0
        for filesample in upstream.tar_file_expander([stream], handler=handler, **eof):
            num_files += 1
            yield filesample
        stats.count("shards_read")
        if num_files == 0:
            stats.count("empty_shards")
            _logger.warning(f"C2LIP: shard {stream.get('url')} holds no samples (empty or unreadable)")


# ------------------------------------------------------------------------------------------------
# webdataset train stages

def _where(sample: Dict[str, Any]) -> str:
    return f"shard {sample.get('__url__', '?')}, key {sample.get('__key__', '?')!r}"


def sample_text(sample: Dict[str, Any], concepts_key: str) -> Tuple[str, Optional[List[str]]]:
    """``(caption, concepts)`` of a decoded wds sample; ``concepts`` None when the data has none.

    Raises ``BadSampleError`` naming the shard and key for an empty caption, a ``json`` that is not
    an object, or concepts that are not a list of strings.
    """
    caption = sample.get("text")
    if not isinstance(caption, str):
        raise BadSampleError(f"{_where(sample)}: caption is {type(caption).__name__}, expected text")
    if not caption.strip():
        raise BadSampleError(f"{_where(sample)}: empty caption")
    meta = sample.get("json")
    if meta is None:
        return caption, None
    if not isinstance(meta, dict):
        raise BadSampleError(f"{_where(sample)}: json is {type(meta).__name__}, expected an object")
    for key in (concepts_key, AUTHORS_CONCEPTS_KEY):
        if key in meta:
            concepts = meta[key]
            if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
                raise BadSampleError(
                    f"{_where(sample)}: json[{key!r}] must be a list of strings, got {json.dumps(concepts)[:200]}")
            return caption, concepts
    return caption, None


class AttachConcepts:
    """wds stage before ``map_dict``: ``sample["text"]`` -> ``(caption, concepts)`` for the packer.

    Bad samples are skipped (upstream's nothrow policy for train shards), logged with shard and key
    and counted (``skipped_bad_samples``). At the end of a pass the worker's counters are logged;
    a pass without one sample raises (upstream would otherwise loop forever on empty data).
    """

    def __init__(self, packer: TextPacker, concepts_key: str):
        self.packer = packer
        self.concepts_key = concepts_key

    def __call__(self, src):
        yielded = 0
        for sample in src:
            try:
                sample["text"] = sample_text(sample, self.concepts_key)
            except BadSampleError as exc:
                self.packer.count("skipped_bad_samples")
                _logger.warning(f"C2LIP: skipping sample: {exc}")
                continue
            if sample["text"][1] is None and len(sample["text"][0]) > MAX_PARSE_CHARS:
                _logger.warning(f"C2LIP: {_where(sample)}: caption of {len(sample['text'][0])} characters; "
                                f"its concepts are parsed from the first {MAX_PARSE_CHARS} after cleaning")
            yielded += 1
            yield sample
        self.packer.log_summary("end of this worker's pass over its shards")
        if yielded == 0:
            raise RuntimeError(
                "C2LIP: a full pass over this worker's training shards gave no usable sample (empty shards "
                f"or only bad samples; see the warnings above). Counters: {self.packer.stats}")


def _skip_and_report(exc: Exception, current: Dict[str, Any], stats: TextPacker, stage: str) -> bool:
    stats.count("skipped_undecodable")
    _logger.warning(f"C2LIP: skipping sample ({current.get('where', '?')}): {stage} failed with {exc!r}")
    return True


class ReportSkips:
    """Runs an upstream wds stage (``FilterFunction``) with a handler that names the shard and key of
    the sample it skips and counts it (``skipped_undecodable``); otherwise identical."""

    def __init__(self, stage, stats: TextPacker, name: str):
        self.stage = stage
        self.stats = stats
        self.name = name

    def __call__(self, src):
        current: Dict[str, Any] = {}

        def tap(samples):
            for sample in samples:
                current["where"] = _where(sample)
                yield sample

        handler = functools.partial(_skip_and_report, current=current, stats=self.stats, stage=self.name)
        return self.stage.f(tap(src), *self.stage.args, **dict(self.stage.kw, handler=handler))


def _stage_index(stages: list, matches: Callable[[Any], bool], what: str) -> int:
    found = [i for i, stage in enumerate(stages) if matches(stage)]
    if len(found) != 1:
        raise RuntimeError(
            f"C2LIP: expected exactly one {what} stage in open_clip_train's webdataset train pipeline, found "
            f"{len(found)}; open_clip_train or webdataset changed and open_clip_c2lip.data must follow")
    return found[0]


def _sample_stages(info) -> list:
    """The stage list of the wds train ``DataInfo`` (``WebLoader`` -> ``DataLoader`` -> ``DataPipeline``)."""
    try:
        stages = info.dataloader.pipeline[0].dataset.pipeline
    except (AttributeError, IndexError) as exc:
        raise RuntimeError(
            "C2LIP: open_clip_train's webdataset train loader no longer has the layout "
            "WebLoader.pipeline[0].dataset.pipeline; open_clip_c2lip.data must follow") from exc
    if not isinstance(stages, list):
        raise RuntimeError("C2LIP: the webdataset train pipeline stages are not a list")
    return stages


def _is_filter(stage, function) -> bool:
    return getattr(stage, "f", None) is function


# ------------------------------------------------------------------------------------------------
# Train builders, one per upstream dataset function

def _build_wds_train(upstream, args, preprocess, epoch, packer: TextPacker, config) -> Any:
    from webdataset import filters

    info = upstream.get_wds_dataset(args, preprocess, is_train=True, epoch=epoch, tokenizer=packer)
    stages = _sample_stages(info)
    reader = _stage_index(stages, lambda s: s is upstream.tarfile_to_samples_nothrow, "tarfile_to_samples_nothrow")
    stages[reader] = functools.partial(tarfile_to_samples_nothrow, stats=packer)
    decode = _stage_index(stages, lambda s: _is_filter(s, filters._decode), "decode")
    stages[decode] = ReportSkips(stages[decode], packer, "decode")
    map_dict = _stage_index(stages, lambda s: _is_filter(s, filters._map_dict), "map_dict")
    stages.insert(map_dict, AttachConcepts(packer, config.concepts_key))
    return info


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
    "get_wds_dataset": _build_wds_train,
    "get_csv_dataset": _build_csv_train,
    "get_synthetic_dataset": _build_synthetic_train,
}


def make_packer(tokenizer, config: runtime.C2LIPConfig) -> TextPacker:
    """The train-split packer for the runtime config (spaCy extraction for samples without concepts)."""
    return TextPacker(tokenizer, max_concepts=config.max_concepts,
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
        packer = make_packer(tokenizer, config)
        data["train"] = builder(upstream, args, preprocess_fns[0], epoch, packer, config)
        data["train"].c2lip_packer = packer  # this process's counters (each worker has its own copy)
        _logger.info(
            f"C2LIP: train texts packed as [1 + 2*{config.max_concepts}, L] rows; concepts from "
            f"{config.concepts_key!r} (or {AUTHORS_CONCEPTS_KEY!r}), spaCy {config.spacy_model!r} when missing")
    return dict(sorted(data.items(), key=lambda item: item[0] != "train"))  # train first, as upstream


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


class ConceptCsvDataset(torch.utils.data.Dataset):
    """open_clip_train's ``CsvDataset`` plus a concepts column (a JSON list of strings per row).

    Built with the same arguments as ``CsvDataset`` (``tokenizer`` is the packer). The table is read
    by ``open_clip_c2lip.tables.read_table``, as the concepts CLI reads it: every cell is text (a
    caption "N/A" or "null" is that text), only an empty cell is empty. Rows are checked when the
    dataset is built: a blank caption or malformed concepts raise an error naming the file and row.
    Rows with no concepts cell (or no concepts column at all) are extracted on the fly.
    """

    def __init__(self, input_filename, transforms, img_key, caption_key, sep="\t", tokenizer=None,
                 concepts_key: str = "concepts"):
        from . import tables

        frame = tables.read_table(input_filename, sep)
        tables.require_columns(frame, input_filename, [img_key, caption_key], sep)
        self.images = frame[img_key].tolist()
        self.captions = [None if _is_missing(c) else str(c) for c in frame[caption_key].tolist()]
        column = next((key for key in (concepts_key, AUTHORS_CONCEPTS_KEY) if key in frame.columns), None)
        cells = frame[column].tolist() if column is not None else [None] * len(frame)
        self.concepts = []
        for row, (caption, cell) in enumerate(zip(self.captions, cells)):
            where = f"{input_filename} row {row} (line {row + 2})"
            if caption is None or not caption.strip():
                raise ValueError(f"{where}: empty caption in column {caption_key!r}")
            self.concepts.append(_parse_concepts_cell(cell, where))
        if column is None:
            _logger.warning(
                f"C2LIP: {input_filename} has no {concepts_key!r} or {AUTHORS_CONCEPTS_KEY!r} column; all "
                "concepts are extracted on the fly with spaCy (slow)")
        self.transforms = transforms
        self.tokenize = tokenizer

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, idx: int):
        images = self.transforms(Image.open(str(self.images[idx])))
        texts = self.tokenize([(self.captions[idx], self.concepts[idx])])[0]
        return images, texts


# ------------------------------------------------------------------------------------------------
# Installing the patches

def _wrap_get_data(upstream, original: Callable) -> Callable:
    @functools.wraps(original)
    def get_data(args, preprocess_fns, epoch=0, tokenizer=None):
        if not runtime.active():
            return original(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)
        return get_c2lip_data(upstream, original, args, preprocess_fns, epoch=epoch, tokenizer=tokenizer)

    get_data.__open_clip_c2lip_original__ = original
    return get_data


def patch_train_data(module) -> None:
    """Patch ``open_clip_train.data`` in place (idempotent): end-of-shard fix and ``get_data``."""
    if getattr(module, _PATCHED, False):
        return
    module.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow
    module.get_data = _wrap_get_data(module, module.get_data)
    setattr(module, _PATCHED, True)
