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
  ``open_clip_c2lip.fileio.tables`` (the reader training uses). Relative image paths of column
  ``image_key`` (default ``filepath``, when present) are rewritten for the output's folder: they name
  the same files by the rule training reads them with (relative to the table's folder,
  ``tables.ImagePaths``); a path that names another file relative to the working directory is an
  error.

A bad sample or row (json that is not an object, non-UTF-8 text, a missing or blank caption, a
caption spaCy fails on, two members of one extension) raises ``CaptionError`` naming it; with
``on_error="skip"`` it is counted instead and kept unchanged without concepts. A faulty file raises
``AnnotationError``; a damaged or truncated tar too (``fileio.tar``: bad headers are skipped to the
next valid one, as GNU tar does), or with ``skip`` every complete sample it keeps is written and
the kept and lost samples are counted. Outputs are written atomically (``fileio.atomic``) and get
their record (``records``); a full disk raises ``OutputSpaceError`` naming the output and the space
it needs, and leaves nothing of it.
"""
import contextlib
import json
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..fileio.atomic import atomic_output
from ..fileio.diskspace import DiskFullError, disk_full_as_error
from ..fileio.formats import (COMPRESSORS, SHARD_COMPRESSION, SHARD_SUFFIXES, FormatError, check_shard_format,
                              input_suffix)
from .extract import (DEFAULT_BATCH_SIZE, DEFAULT_CACHE_SIZE, AnnotationError, CaptionError, ConceptExtractor,
                      ConceptStats, check_caption, get_extractor)
from .records import _file_identity, read_record, record_path, write_record
from .spacy_pipeline import DEFAULT_SPACY_MODEL
from .text import DEFAULT_CLEAN

TABLE_CAPTION_KEYS = ("caption", "title")  # default caption column: ours, then open_clip's default
DEFAULT_IMAGE_KEY = "filepath"  # open_clip_train's --csv-img-key default
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
    image_key: Optional[str] = None  # tables: image path column; None: DEFAULT_IMAGE_KEY if present

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

    A damaged tar (bad headers inside it: skipped to the next valid header, as GNU tar does) or a
    truncated one (data ending early, a cut or corrupt compressed stream) raises, naming the file,
    what is damaged and how many samples were kept and lost, once the whole shard has been read;
    with ``on_error='skip'`` the kept samples are written and the damage counted as a failure
    (``ConceptStats.damaged``, ``salvaged``, ``lost``). A compressed shard (``SHARD_COMPRESSION``)
    is decompressed as it is read and written compressed the same way."""
    try:
        check_shard_format(input_path)
    except FormatError as exc:
        raise AnnotationError(str(exc)) from None
    return _annotate_tar(input_path, SHARD_COMPRESSION[input_suffix(input_path)], output_path, options, progress)


def _annotate_tar(input_path: str, compression: Optional[str], output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]]) -> ConceptStats:
    from ..fileio.tar import DamagedTarError, iter_tar_samples

    stats = ConceptStats()
    caption_key = options.caption_key or SHARD_CAPTION_KEY
    num_samples = 0
    damage: List[DamagedTarError] = []

    def items():
        nonlocal num_samples
        try:
            for sample in iter_tar_samples(input_path, compression=compression):
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
        except DamagedTarError as exc:
            if options.on_error != "skip":
                raise AnnotationError(f"{exc} (--on-error skip writes the kept samples)") from None
            damage.append(exc)  # end the stream normally: every kept sample is written
            return
        except tarfile.ReadError as exc:  # empty, or no tar header at all: nothing to keep
            raise AnnotationError(str(exc)) from None
        if num_samples == 0:
            raise AnnotationError(f"{input_path}: empty shard (no samples)")

    with atomic_output(output_path) as partial:
        _write_annotated_tar(partial, compression, options, items(), stats, progress)
        for exc in damage:
            stats.add_damage(exc.kept, exc.lost, exc.lost_exact)
            stats.add_failure(str(exc))
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
            if sample.key is not None:
                stats.samples += 1
                if progress is not None:
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
        image_key = table_image_key(input_path, columns, options)
        if image_key is not None:
            table = _relocate_image_paths(table, input_path, image_key, os.path.dirname(output_path) or ".")
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
        stats.samples += 1
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


def table_image_key(path: str, columns: List[str], options: AnnotateOptions) -> Optional[str]:
    """The image path column of a table: ``options.image_key`` (``TableError`` if absent), else
    ``DEFAULT_IMAGE_KEY`` when the table has it, else None (nothing to rewrite)."""
    from ..fileio import tables

    if options.image_key is None:
        return DEFAULT_IMAGE_KEY if DEFAULT_IMAGE_KEY in columns else None
    if options.image_key not in columns:
        raise tables.TableError(f"{path}: no image path column {options.image_key!r} (--image-key); columns are "
                                f"{columns}")
    return options.image_key


def _relocate_image_paths(table, input_path: str, image_key: str, output_folder: str):
    """``table`` with the relative paths of ``image_key`` rewritten to name the same files from
    ``output_folder``; ``TableError`` for a cell that is not a path or is ambiguous (``ImagePaths.check``)."""
    from ..fileio import tables

    cells = tables.column_values(table, image_key)
    paths = tables.ImagePaths(input_path, image_key)
    paths.check(cells)
    moved = [paths.relocated(cell, output_folder) for cell in cells]
    if hasattr(table, "column_names"):
        import pyarrow as pa

        index = tables.column_names(table).index(image_key)
        return table.set_column(index, table.schema.field(index), pa.array(moved, type=table.schema.field(index).type))
    table[image_key] = moved
    return table


class OutputSpaceError(AnnotationError):
    """An output that does not fit: the disk is full or the quota exceeded. Not a fault of the input:
    the CLI stops on it whatever ``--on-error`` says. The message names the output and the space it
    needs (``fileio.diskspace``)."""


def annotate_file(input_path: str, output_path: str, options: AnnotateOptions,
                  progress: Optional[Callable[[int], None]] = None) -> ConceptStats:
    """Annotate one shard or table into ``output_path`` (written atomically), then its record
    (``write_record``). A previous output of ours (valid record) is removed first, so a failure leaves
    no stale output behind; any other previous output is only replaced once the new one is complete,
    and its record is removed first: an output without a valid record is never taken as finished.
    A full disk raises ``OutputSpaceError`` (the output needs about its input's size) and leaves
    neither the output nor a partial file."""
    annotate = annotate_shard if input_suffix(input_path) in SHARD_SUFFIXES else annotate_table
    try:
        if read_record(output_path) is not None:
            os.remove(output_path)
        if os.path.exists(record_path(output_path)):
            os.remove(record_path(output_path))
        input_identity = _file_identity(input_path)  # before reading: a change while reading shows next time
        with disk_full_as_error(output_path, input_identity["size"]):
            stats = annotate(input_path, output_path, options, progress)
            try:
                write_record(input_path, input_identity, output_path, options, stats)
            except BaseException:
                os.remove(output_path)  # ours, written just now: without its record it would look unowned
                raise
        return stats
    except DiskFullError as exc:
        raise OutputSpaceError(str(exc)) from exc
    except AnnotationError:
        raise
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise AnnotationError(f"{input_path}: {type(exc).__name__}: {exc}") from exc
