"""Annotating one file: a webdataset shard or a table gets each sample's concepts.

- shards (``.tar``, or compressed as webdataset reads them: ``.tar.gz``/``.tgz``, ``.tar.bz2``,
  ``.tar.xz``, written back compressed the same way): each sample's ``json`` member gains the
  concepts key (default ``concepts``); a ``json`` member is created, after the sample's last member
  and with its header fields (mode, owner, mtime), when the sample has none. Every other member is
  copied byte-for-byte (its tar header blocks and data), in the input's order. The caption is the
  member whose extension is ``caption_key`` (default ``txt``) or, if the sample has no such member,
  that field of the sample's json.
- tables (``.csv``, ``.tsv``, ``.parquet``): a column named ``concepts_key`` is added (replaced if
  present) holding a JSON list per row, e.g. ``["a dog", "a red ball"]``. The caption column is
  ``caption_key`` or, by default, ``caption`` and else open_clip's ``title``. Read and written by
  ``open_clip_c2lip.fileio.tables`` (the reader training uses).

A bad sample or row (json that is not an object, non-UTF-8 text, a missing or blank caption, a
caption spaCy fails on, two members of one extension) raises ``CaptionError`` naming it; with
``on_error="skip"`` it is counted instead and kept unchanged without concepts. A faulty file raises
``AnnotationError``; a damaged tar (cut inside a member or a header, or missing its end-of-archive
blocks) too, or with ``skip`` its complete samples are written and counted as salvaged. Outputs are
written atomically (``fileio.atomic``) and get their record (``records``).
"""
import contextlib
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..fileio.atomic import atomic_output
from ..fileio.formats import (COMPRESSORS, SHARD_COMPRESSION, SHARD_SUFFIXES, FormatError, check_shard_format,
                              decompressed, input_suffix)
from .extract import (DEFAULT_BATCH_SIZE, DEFAULT_CACHE_SIZE, AnnotationError, CaptionError, ConceptExtractor,
                      ConceptStats, check_caption, get_extractor)
from .records import _file_identity, read_record, record_path, write_record
from .spacy_pipeline import DEFAULT_SPACY_MODEL
from .text import DEFAULT_CLEAN

TABLE_CAPTION_KEYS = ("caption", "title")  # default caption column: ours, then open_clip's default
SHARD_CAPTION_KEY = "txt"


@dataclass
class AnnotateOptions:
    concepts_key: str = "concepts"
    caption_key: Optional[str] = None
    on_error: str = "raise"  # or "skip"
    spacy_model: str = DEFAULT_SPACY_MODEL
    batch_size: int = DEFAULT_BATCH_SIZE
    n_process: int = 1
    fallback: bool = True
    clean: str = DEFAULT_CLEAN
    csv_separator: str = "\t"  # open_clip_train's --csv-separator default

    def extractor(self) -> ConceptExtractor:
        return get_extractor(self.spacy_model, self.batch_size, self.n_process, self.fallback,
                             DEFAULT_CACHE_SIZE, self.clean)


def _checked(caption_or_error: Any, where: str, stats: ConceptStats, on_error: str) -> Optional[str]:
    """The caption if usable; else raise (``on_error='raise'``) or count a failure and return None."""
    try:
        if isinstance(caption_or_error, Exception):
            raise CaptionError(str(caption_or_error))
        return check_caption(caption_or_error, where)
    except CaptionError as exc:
        if on_error != "skip":
            raise
        stats.add_failure(str(exc))
        return None


def _concepts_or_failure(concepts: Any, where: str, stats: ConceptStats, on_error: str) -> Optional[List[str]]:
    """A pipe result: the concepts, or (a ``CaptionError``) raised / counted with ``where`` -> None."""
    if not isinstance(concepts, CaptionError):
        return concepts
    message = f"{where}: {concepts}"
    if on_error != "skip":
        raise CaptionError(message)
    stats.add_failure(message)
    return None


def _shard_caption(sample, caption_key: str, where: str):
    """Caption of a shard sample, or a ``CaptionError`` saying why there is none."""
    data = sample.member(caption_key)
    if data is not None:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return CaptionError(f"{where}: member .{caption_key} is not valid UTF-8 ({exc})")
    meta = sample.json_object(where)
    if isinstance(meta, Exception):
        return meta
    if meta is None or caption_key not in meta:
        return CaptionError(f"{where}: no caption: no .{caption_key} member and no json field "
                            f"{caption_key!r} (members: {', '.join(sample.extensions)})")
    return meta[caption_key]


def annotate_shard(input_path: str, output_path: str, options: AnnotateOptions,
                   progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Copy a webdataset shard adding the concepts to each sample's json (see module docstring).

    A damaged tar (cut inside a member or header, no end-of-archive blocks) raises naming the file
    and the sample where it breaks; with ``on_error='skip'`` the complete samples before the damage
    are written, counted as salvaged, and the damage counted as a failure. A compressed shard
    (``SHARD_COMPRESSION``) is read through a decompressed temporary copy next to the output and
    written compressed the same way; a cut or corrupt compressed stream is damage of the same kind."""
    try:
        check_shard_format(input_path)
    except FormatError as exc:
        raise AnnotationError(str(exc)) from None
    with contextlib.ExitStack() as stack:
        compression = SHARD_COMPRESSION[input_suffix(input_path)]
        tar, stream_problem = None, None
        if compression is not None:
            tar, stream_problem = decompressed(input_path, compression,
                                                os.path.dirname(os.path.abspath(output_path)), stack)
        return _annotate_tar(input_path, tar, stream_problem, compression, output_path, options, progress)


def _annotate_tar(input_path: str, tar, stream_problem: Optional[str], compression: Optional[str],
                  output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]]) -> ConceptStats:
    from ..fileio.tar import TruncatedTarError, iter_tar_samples

    stats = ConceptStats()
    caption_key = options.caption_key or SHARD_CAPTION_KEY
    num_samples = 0
    damage: List[str] = []

    def damaged(message: str) -> None:
        if options.on_error != "skip":
            raise AnnotationError(f"{message} (--on-error skip keeps them)")
        damage.append(message)  # end the stream normally: every sample read so far is written

    def items():
        nonlocal num_samples
        try:
            for sample in iter_tar_samples(input_path, fileobj=tar):
                if sample.key is None:  # not a sample member (directory, __meta__ file): copy as is
                    yield None, (sample, None, None)
                    continue
                num_samples += 1
                where = f"{input_path}: sample {sample.key!r}"
                if sample.problem is not None:  # this sample's fault only: raise or count, copy it as is
                    _checked(CaptionError(f"{where} {sample.problem}"), where, stats, options.on_error)
                    yield None, (sample, None, where)
                    continue
                meta = sample.json_object(where)
                caption = _checked(_shard_caption(sample, caption_key, where), where, stats, options.on_error)
                if caption is not None and isinstance(meta, Exception):
                    caption = _checked(meta, where, stats, options.on_error)
                yield caption, (sample, meta, where)
        except TruncatedTarError as exc:
            damaged(f"{exc}" + (f"; {stream_problem}" if stream_problem else ""))
            return
        except tarfile.ReadError as exc:  # not even the first header: nothing to salvage
            if stream_problem is None:
                if compression is None:
                    raise
                raise AnnotationError(f"{input_path}: the decompressed {compression} data is not a tar ({exc})") from exc
            raise AnnotationError(f"{input_path}: {stream_problem}; no tar header could be read ({exc})") from exc
        if stream_problem is not None:  # the tar ended cleanly inside the damaged stream
            damaged(f"{input_path}: {stream_problem} ({num_samples} complete samples before it)")
            return
        if num_samples == 0:
            raise AnnotationError(f"{input_path}: empty shard (no samples)")

    with atomic_output(output_path) as partial:
        _write_annotated_tar(partial, compression, options, items(), stats, progress)
        for message in damage:
            stats.salvaged += num_samples
            stats.add_failure(f"{message} (the {num_samples} complete samples were written)")
    return stats


def _write_annotated_tar(partial: str, compression: Optional[str], options: AnnotateOptions, items,
                         stats: ConceptStats, progress: Optional[Callable[[int], None]]) -> None:
    from ..fileio.tar import end_of_archive, json_member_info, member_bytes

    with open(partial, "wb") as raw, (COMPRESSORS[compression](raw) if compression else contextlib.nullcontext(raw)) as out:
        size = 0
        for concepts, (sample, meta, where) in options.extractor().pipe(items, stats=stats):
            concepts = _concepts_or_failure(concepts, where, stats, options.on_error)
            chunks = list(sample.raw)  # unchanged members: their exact bytes
            if concepts is not None:
                extensions = sample.extensions
                if "json" in extensions:
                    position = extensions.index("json")
                    meta[options.concepts_key] = concepts
                    chunks[position] = member_bytes(*json_member_info(sample.members[position][0], meta))
                else:
                    chunks.append(member_bytes(*json_member_info(
                        sample.members[-1][0], {options.concepts_key: concepts}, name=f"{sample.key}.json")))
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            if progress is not None and sample.key is not None:
                progress(1)
        out.write(end_of_archive(size))


def annotate_table(input_path: str, output_path: str, options: AnnotateOptions,
                   progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Copy a CSV/TSV/parquet table adding a concepts column (JSON list per row).

    Read and written by ``open_clip_c2lip.fileio.tables`` (the reader training uses): text tables split by
    ``options.csv_separator``, every cell text."""
    from ..fileio import tables

    stats = ConceptStats()
    try:
        table = tables.read_table(input_path, options.csv_separator)
        columns = tables.column_names(table)
        if options.caption_key is not None:
            caption_key = options.caption_key
        else:
            caption_key = next((k for k in TABLE_CAPTION_KEYS if k in columns), TABLE_CAPTION_KEYS[0])
        tables.require_columns(table, input_path, [caption_key], options.csv_separator, "caption column")
    except tables.TableError as exc:
        raise AnnotationError(str(exc)) from exc
    captions = tables.column_values(table, caption_key)
    if not captions:
        raise AnnotationError(f"{input_path}: empty table (no rows)")

    def items():
        for row, caption in enumerate(captions):
            where = f"{input_path}: row {row} column {caption_key!r}"
            yield _checked(caption, where, stats, options.on_error), where

    cells: List[Optional[str]] = []
    for concepts, where in options.extractor().pipe(items(), stats=stats):
        concepts = _concepts_or_failure(concepts, where, stats, options.on_error)
        cells.append(None if concepts is None else json.dumps(concepts, ensure_ascii=False))
        if progress is not None:
            progress(1)

    with atomic_output(output_path) as partial:
        if hasattr(table, "column_names"):
            import pyarrow as pa
            import pyarrow.parquet as pq
            column = pa.array(cells, type=pa.string())
            if options.concepts_key in columns:
                table = table.set_column(columns.index(options.concepts_key), options.concepts_key, column)
            else:
                table = table.append_column(options.concepts_key, column)
            pq.write_table(table, partial)
        else:
            table[options.concepts_key] = cells
            tables.write_text_table(table, partial, options.csv_separator)
    return stats


def annotate_file(input_path: str, output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Annotate one shard or table into ``output_path`` (written atomically), then its record
    (``write_record``). A previous output of ours (valid record) is removed first, so a failure leaves
    no stale output behind; any other previous output is only replaced once the new one is complete,
    and its record is removed first: an output without a valid record is never taken as finished."""
    annotate = annotate_shard if input_suffix(input_path) in SHARD_SUFFIXES else annotate_table
    try:
        if read_record(output_path) is not None:
            os.remove(output_path)
        if os.path.exists(record_path(output_path)):
            os.remove(record_path(output_path))
        input_identity = _file_identity(input_path)  # before reading: a change while reading shows next time
        stats = annotate(input_path, output_path, options, progress)
        write_record(input_path, input_identity, output_path, options, stats)
        return stats
    except AnnotationError:
        raise
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise AnnotationError(f"{input_path}: {type(exc).__name__}: {exc}") from exc
