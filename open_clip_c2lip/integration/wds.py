"""The webdataset surface of ``open_clip_train.data``: the shard reader and the train pipeline's stages.

1. ``tarfile_to_samples_nothrow`` (``patch_shard_reader``, the plugin's hook, always active):
   upstream's shard reader, but with webdataset's end-of-shard marker turned off
   (``eof_value=None``) where the installed webdataset has one (>= 0.2.96). Upstream's
   ``group_by_keys_nothrow`` reads ``filesample["fname"]`` and crashes with ``KeyError: 'fname'`` on
   the marker ``{}`` at the end of the first shard (mlfoundations/open_clip#935).
   ``patches/open_clip_train-wds-eof.diff`` is the same fix upstream.
2. ``build_wds_train`` (called by ``train_data`` when ``--c2lip-loss`` is active): upstream's train
   pipeline with five stages located by identity (an error names any that moved): the concepts stage
   ``AttachConcepts`` is inserted before the ``map_dict`` stage, the decode stage runs with a
   handler that names the shard and key of a sample it skips, the shard reader reads each shard on
   its own (one group per shard, ``patches/open_clip_train-group-per-shard.diff``) and names and
   counts missing / unreadable / damaged / truncated / empty shards, ``select(filter_no_caption_or_no_image)``
   becomes ``DropIncomplete`` (names and counts what it drops) and ``batched`` runs inside
   ``FullBatchGuard``: a pass that cannot fill one batch raises (naming its shards and counts)
   instead of being restarted forever by ``with_epoch``; ``PassLog`` does the same for a
   ``--dataset-resampled`` pass, which never ends by itself. Bad samples are skipped as upstream's
   nothrow policy does, but each skip is logged with its shard and key and counted in the packer's
   counters (``open_clip_c2lip.integration.counters``).
"""
import functools
import inspect
import itertools
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..concepts.text import MAX_PARSE_CHARS
from ..packing import TextPacker, process_label
from ..fileio.tar import DamagedTarError, iter_tar_stream_files
from .data_order import wds_train_stages

# the concepts field of the authors' data, read when --c2lip-concepts-key is absent
AUTHORS_CONCEPTS_KEY = "nounphrases"

_logger = logging.getLogger(__name__)


class UnusableSampleError(ValueError):
    """A training sample whose text or concepts cannot be used; the message names shard and key."""


# ------------------------------------------------------------------------------------------------
# The shard reader: end-of-shard fix (+ per-shard reading and counting in C2LIP train pipelines)

@functools.lru_cache(maxsize=None)
def _eof_kwargs(tar_file_expander) -> Tuple[Tuple[str, Any], ...]:
    """``eof_value=None`` when webdataset's ``tar_file_expander`` yields an end-of-shard marker."""
    parameters = inspect.signature(tar_file_expander).parameters
    return (("eof_value", None),) if "eof_value" in parameters else ()


def tarfile_to_samples_nothrow(src, handler=None, packer: Optional[TextPacker] = None,
                               passes: Optional["PassLog"] = None):
    """open_clip_train's ``tarfile_to_samples_nothrow`` without webdataset's end-of-shard marker.

    With ``packer`` (C2LIP train pipelines: the counts go to its counters), each shard is opened and
    expanded on its own so that a missing, unreadable, damaged, truncated or empty shard is logged by
    name and counted (``missing_shards``, ``unreadable_shards``, ``damaged_shards``,
    ``truncated_shards``, ``empty_shards``, ``lost_samples``; ``shards_read``, ``samples_read``):
    shards are read by ``fileio.tar.iter_tar_stream_files``, the concepts CLI's damage rule (damaged
    headers skipped to the next valid one as GNU tar does, a cut detected; every complete sample
    trains, the ones that lost members are left out and counted); ``passes``
    (a ``PassLog``) records the shards of the current pass and stops a resampled pass that can never
    yield a sample.
    """
    from open_clip_train import data as upstream

    handler = handler or upstream.log_and_continue
    if packer is None:
        streams = upstream.url_opener(src, handler=handler)
        files = upstream.tar_file_expander(streams, handler=handler, **dict(_eof_kwargs(upstream.tar_file_expander)))
        return upstream.group_by_keys_nothrow(files, handler=handler)
    shards = passes.track(src) if passes is not None else src
    files = _expand_each_shard(shards, packer)
    samples = _group_each_shard(files, handler)
    return _reject_repeated_members(_count(samples, packer, "samples_read"), packer, passes)


def patch_shard_reader(data_module) -> None:
    """Hook for ``open_clip_train.data``: its ``tarfile_to_samples_nothrow`` becomes ours (idempotent)."""
    data_module.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


def _group_each_shard(files, handler):
    """Upstream's ``group_by_keys_nothrow`` on each shard read alone: it groups by key only, so a
    shard ending with ``k.jpg`` and the next one starting with ``k.txt`` would become one sample of
    two shards (one's image, the other's caption)."""
    from open_clip_train import data as upstream

    for read, shard_files in itertools.groupby(files, key=lambda f: f["__read__"]):
        for sample in upstream.group_by_keys_nothrow(shard_files, handler=handler):
            sample["__read__"] = read  # webdataset's decoders and to_tuple ignore "__" keys
            yield sample


def _count(samples, packer: TextPacker, key: str):
    for sample in samples:
        packer.count(key)
        yield sample


def _sample_id(sample: Dict[str, Any]) -> Tuple[Any, Any, Any]:
    return sample.get("__read__"), sample.get("__url__"), sample.get("__key__")


def _reject_repeated_members(samples, packer: TextPacker, passes: Optional["PassLog"] = None):
    """Skip, name and count (``skipped_bad_samples``) a sample with two members of one extension
    (``k.txt`` twice). Upstream's ``group_by_keys_nothrow`` starts a new sample at the repeated
    extension, so it would train the first part on one of the captions and drop the rest as
    incomplete; the concepts CLI fails such a sample too. The parts are consecutive here (before the
    shuffle buffer), so ``itertools.groupby`` on (read, shard, key) collects them. Counted as one sample
    read (the parts were counted as read; the extra ones are taken back) that left the buffer
    (``PassLog``)."""
    for _, parts in itertools.groupby(samples, key=_sample_id):
        group = list(parts)
        if len(group) == 1:
            yield group[0]
            continue
        members = [sorted(k for k in part if not k.startswith("__")) for part in group]
        repeated = sorted({k for i, m in enumerate(members) for k in m if any(k in o for o in members[:i])})
        packer.count("samples_read", 1 - len(group))
        packer.count("skipped_bad_samples")
        if passes is not None:
            passes.left_buffer += 1
        _logger.warning(f"C2LIP: skipping sample ({_where(group[0])}): it has {len(group)} members of "
                        f"extension(s) {repeated} (webdataset split it into parts {members}); one "
                        "sample has one member per extension")


def _expand_shard(url: str, stream) -> Any:
    """webdataset's ``tar_file_expander`` for one opened shard, read by ``fileio.tar.iter_tar_stream_files``:
    damaged headers are skipped to the next valid one (as GNU tar does), samples that lost members are
    left out, and ``DamagedTarError`` after the kept samples says what was damaged or cut."""
    for fname, data in iter_tar_stream_files(stream, url):
        yield {"fname": fname, "data": data, "__url__": url}


def _expand_each_shard(shards, packer: TextPacker):
    """Open and expand shard by shard; count and name each shard that is missing, unreadable,
    damaged, truncated or empty, and the samples damage lost. Never yields webdataset's end-of-shard
    marker."""
    from open_clip_train import data as upstream

    for read, shard in enumerate(shards):
        url = shard.get("url")
        failure: List[Exception] = []

        def record(exc: Exception) -> bool:
            if not failure:  # one count per shard, however many errors it raises
                failure.append(exc)
            return True

        num_files = 0
        for source in upstream.url_opener([shard], handler=record):
            try:
                for filesample in _expand_shard(source["url"], source["stream"]):
                    num_files += 1
                    filesample["__read__"] = read  # which read of a shard: samples never span two
                    yield filesample
            except Exception as exc:  # upstream's nothrow policy: the shard's rest is skipped, counted
                record(exc)
        if failure:
            exc = failure[0]
            missing = isinstance(exc, FileNotFoundError) and num_files == 0
            if missing:
                packer.count("missing_shards")
                _logger.warning(f"C2LIP: shard {url} does not exist; skipped")
            elif isinstance(exc, DamagedTarError):
                for key, on in (("damaged_shards", exc.damaged), ("truncated_shards", exc.truncated)):
                    if on:
                        packer.count(key)
                packer.count("lost_samples", exc.lost)
                _logger.warning(f"C2LIP: shard {url} is {'damaged' if exc.damaged else 'truncated'}; the "
                                f"{exc.kept} complete samples it keeps train ({exc})")
            else:
                packer.count("unreadable_shards")
                _logger.warning(
                    f"C2LIP: shard {url} is unreadable ({type(exc).__name__}: {exc.args[0] if exc.args else ''}); "
                    f"{num_files} files were read from it; what the error cut off is skipped")
            continue
        packer.count("shards_read")
        if num_files == 0:
            packer.count("empty_shards")
            _logger.warning(f"C2LIP: shard {url} holds no samples (empty or unreadable)")


# ------------------------------------------------------------------------------------------------
# webdataset train stages

def _where(sample: Dict[str, Any]) -> str:
    return f"shard {sample.get('__url__', '?')}, key {sample.get('__key__', '?')!r}"


def sample_text(sample: Dict[str, Any], concepts_key: str) -> Tuple[str, Optional[List[str]]]:
    """``(caption, concepts)`` of a decoded wds sample; ``concepts`` None when the data has none.

    Raises ``UnusableSampleError`` naming the shard and key for an empty caption, a ``json`` that is not
    an object, or concepts that are not a list of strings.
    """
    caption = sample.get("text")
    if not isinstance(caption, str):
        raise UnusableSampleError(f"{_where(sample)}: caption is {type(caption).__name__}, expected text")
    if not caption.strip():
        raise UnusableSampleError(f"{_where(sample)}: empty caption")
    meta = sample.get("json")
    if meta is None:
        return caption, None
    if not isinstance(meta, dict):
        raise UnusableSampleError(f"{_where(sample)}: json is {type(meta).__name__}, expected an object")
    for key in (concepts_key, AUTHORS_CONCEPTS_KEY):
        if key in meta:
            concepts = meta[key]
            if not isinstance(concepts, list) or not all(isinstance(c, str) for c in concepts):
                raise UnusableSampleError(
                    f"{_where(sample)}: json[{key!r}] must be a list of strings, got {json.dumps(concepts)[:200]}")
            return caption, concepts
    return caption, None


class AttachConcepts:
    """wds stage before ``map_dict``: ``sample["text"]`` -> ``(caption, concepts)`` for the packer.

    Bad samples are skipped (upstream's nothrow policy for train shards), logged with shard and key
    and counted (``skipped_bad_samples``). At the end of a pass the worker's counters are logged
    (a pass that cannot fill one batch is stopped by ``FullBatchGuard``).
    """

    def __init__(self, packer: TextPacker, concepts_key: str):
        self.packer = packer
        self.concepts_key = concepts_key

    def __call__(self, src):
        for sample in src:
            try:
                sample["text"] = sample_text(sample, self.concepts_key)
            except UnusableSampleError as exc:
                self.packer.count("skipped_bad_samples")
                _logger.warning(f"C2LIP: skipping sample: {exc}")
                continue
            if sample["text"][1] is None and len(sample["text"][0]) > MAX_PARSE_CHARS:
                _logger.warning(f"C2LIP: {_where(sample)}: caption of {len(sample['text'][0])} characters; "
                                f"its concepts are parsed from the first {MAX_PARSE_CHARS} after cleaning")
            yield sample
        self.packer.log_summary("end of this worker's pass over its shards")


def _skip_and_report(exc: Exception, current: Dict[str, Any], packer: TextPacker, stage: str) -> bool:
    packer.count("skipped_undecodable")
    _logger.warning(f"C2LIP: skipping sample ({current.get('where', '?')}): {stage} failed with {exc!r}")
    return True


class ReportSkips:
    """Runs an upstream wds stage (``FilterFunction``) with a handler that names the shard and key of
    the sample it skips and counts it (``skipped_undecodable``); otherwise identical."""

    def __init__(self, stage, packer: TextPacker, name: str):
        self.stage = stage
        self.packer = packer
        self.name = name

    def __call__(self, src):
        current: Dict[str, Any] = {}

        def tap(samples):
            for sample in samples:
                current["where"] = _where(sample)
                yield sample

        handler = functools.partial(_skip_and_report, current=current, packer=self.packer, stage=self.name)
        return self.stage.f(tap(src), *self.stage.args, **dict(self.stage.kw, handler=handler))


def _stage_index(stages: list, matches: Callable[[Any], bool], what: str) -> int:
    found = [i for i, stage in enumerate(stages) if matches(stage)]
    if len(found) != 1:
        raise RuntimeError(
            f"C2LIP: expected exactly one {what} stage in open_clip_train's webdataset train pipeline, found "
            f"{len(found)}; open_clip_train or webdataset changed and open_clip_c2lip.integration.wds must follow")
    return found[0]


def _is_filter(stage, function) -> bool:
    return getattr(stage, "f", None) is function


# ------------------------------------------------------------------------------------------------
# Passes: no input may make training hang

class PassLog:
    """What one worker's current pass over its shards has read; shared by the reader, ``DropIncomplete``
    and ``FullBatchGuard`` of one pipeline (so of one process), reset when a pass starts.

    ``resampled_shards``: for ``--dataset-resampled``, the distinct shard URLs the sampler draws from
    (weight > 0). Such a pass never ends by itself: once every one of them has been read in the pass,
    no sample was usable and every sample read by then has left the shuffle buffer (so has been
    judged), ``track`` raises instead of drawing shards forever.
    """

    def __init__(self, packer: TextPacker, batch_size: int, num_workers: int = 0,
                 resampled_shards: Optional[Sequence[str]] = None):
        self.packer = packer
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.resampled_shards = frozenset(resampled_shards) if resampled_shards else None
        self.start()

    def start(self) -> None:
        self.shards: Dict[str, None] = {}  # distinct URLs read in this pass, in order (bounded by the list)
        self.usable = 0           # samples that reached the batcher
        self.left_buffer = 0      # samples that left the sample shuffle buffer (judged downstream)
        self.batches = 0
        self._at_start = dict(self.packer.stats)
        self._read_at_coverage: Optional[int] = None

    def counts(self) -> Dict[str, int]:
        """The worker's counters for this pass only."""
        return {key: value - self._at_start.get(key, 0) for key, value in self.packer.stats.items()}

    def track(self, shards):
        """Pass-through of the shard dicts that records their URLs (and stops a hopeless resampled pass)."""
        for shard in shards:
            if self.resampled_shards is not None:
                self._check_resampled()
            self.shards[shard.get("url")] = None
            yield shard

    def _check_resampled(self) -> None:
        # cheap while a resampled pass trains (usable > 0): this runs once per shard drawn
        if (self.usable or len(self.shards) < len(self.resampled_shards)
                or not self.resampled_shards.issubset(self.shards)):
            return
        read = self.counts().get("samples_read", 0)
        if self._read_at_coverage is None:
            self._read_at_coverage = read
        if read == 0 or self.left_buffer >= self._read_at_coverage:
            raise RuntimeError(self.describe(
                f"every one of the {len(self.resampled_shards)} shards of --train-data was drawn "
                "(--dataset-resampled) and not one sample was usable"))

    def describe(self, what: str) -> str:
        counts = self.counts()
        shards = list(self.shards)
        listing = ", ".join(str(url) for url in shards[:10]) + (f" and {len(shards) - 10} more" if len(shards) > 10 else "")
        hint = "; or lower --batch-size" if self.usable else ""
        if self.num_workers > 1 and self.resampled_shards is None:
            hint += "; or use fewer --workers (each worker reads only its share of the shards)"
        return (
            f"C2LIP: training cannot fill a batch [{process_label()}]: {what}. This pass read {len(shards)} "
            f"shard(s): {listing}. Shards: missing={counts.get('missing_shards', 0)}, "
            f"unreadable={counts.get('unreadable_shards', 0)}, damaged={counts.get('damaged_shards', 0)}, "
            f"truncated={counts.get('truncated_shards', 0)}, empty={counts.get('empty_shards', 0)}. "
            f"Samples: read={counts.get('samples_read', 0)}, lost to damage={counts.get('lost_samples', 0)}, "
            f"skipped incomplete="
            f"{counts.get('skipped_incomplete', 0)}, undecodable={counts.get('skipped_undecodable', 0)}, "
            f"bad={counts.get('skipped_bad_samples', 0)}, usable={self.usable}; --batch-size {self.batch_size} "
            "(open_clip_train drops a short last batch and would restart this pass forever). Fix or remove "
            f"the shards and samples named in the warnings above{hint}.")


class DropIncomplete:
    """Upstream's ``select(filter_no_caption_or_no_image)`` stage, naming and counting what it drops
    (``skipped_incomplete``); it is the stage right after the sample shuffle buffer, so it also
    counts the samples that left that buffer (``PassLog.left_buffer``)."""

    def __init__(self, predicate: Callable[[Dict[str, Any]], bool], packer: TextPacker, passes: PassLog):
        self.predicate = predicate
        self.packer = packer
        self.passes = passes

    def __call__(self, src):
        for sample in src:
            self.passes.left_buffer += 1
            if self.predicate(sample):
                yield sample
                continue
            self.packer.count("skipped_incomplete")
            files = sorted(k for k in sample if not k.startswith("__"))
            _logger.warning(f"C2LIP: skipping sample ({_where(sample)}): no image (jpg/jpeg/png/webp) or no "
                            f"caption (txt) file; it has {files}")


class FullBatchGuard:
    """Runs upstream's train ``batched`` stage; a pass that ends without one full batch raises.

    open_clip_train batches train data with ``partial=False`` and repeats passes until the epoch's
    batch count (``with_epoch``), so a pass without a full batch would be restarted forever. A pass
    that ends after at least one batch is counted (``rollovers``): the epoch goes on with repeated
    samples, as upstream.
    """

    def __init__(self, stage, passes: PassLog):
        self.stage = stage
        self.passes = passes

    def __call__(self, src):
        passes = self.passes
        passes.start()

        def tap(samples):
            for sample in samples:
                passes.usable += 1
                yield sample

        for batch in self.stage(tap(src)):
            passes.batches += 1
            yield batch
        if passes.batches == 0:
            what = ("a full pass over this worker's shards gave no usable sample" if not passes.usable else
                    f"a full pass over this worker's shards gave {passes.usable} usable sample(s), fewer "
                    f"than one batch")
            raise RuntimeError(passes.describe(what))
        passes.packer.count("rollovers")


# ------------------------------------------------------------------------------------------------


def build_wds_train(upstream, args, preprocess, epoch, packer: TextPacker, config) -> Any:
    """``get_wds_dataset``'s train ``DataInfo`` with the C2LIP stages (see the module docstring)."""
    from webdataset import filters

    info = upstream.get_wds_dataset(args, preprocess, is_train=True, epoch=epoch, tokenizer=packer)
    stages = wds_train_stages(info)
    resampled = None
    if getattr(args, "dataset_resampled", False):
        urls, weights = upstream.expand_urls(args.train_data, args.train_data_upsampling_factors)
        resampled = [url for i, url in enumerate(urls) if weights is None or weights[i] > 0]
    passes = PassLog(packer, args.batch_size, args.workers, resampled)
    reader = _stage_index(stages, lambda s: s is upstream.tarfile_to_samples_nothrow, "tarfile_to_samples_nothrow")
    stages[reader] = functools.partial(tarfile_to_samples_nothrow, packer=packer, passes=passes)
    select = _stage_index(stages, lambda s: _is_filter(s, filters._select)
                          and s.args[:1] == (upstream.filter_no_caption_or_no_image,), "select(filter_no_caption_or_no_image)")
    stages[select] = DropIncomplete(upstream.filter_no_caption_or_no_image, packer, passes)
    batched = _stage_index(stages, lambda s: _is_filter(s, filters._batched), "batched")
    stages[batched] = FullBatchGuard(stages[batched], passes)
    decode = _stage_index(stages, lambda s: _is_filter(s, filters._decode), "decode")
    stages[decode] = ReportSkips(stages[decode], packer, "decode")
    map_dict = _stage_index(stages, lambda s: _is_filter(s, filters._map_dict), "map_dict")
    stages.insert(map_dict, AttachConcepts(packer, config.concepts_key))
    return info

