"""The table surface of ``open_clip_train.data``: ``CsvDataset`` and ``get_dataset_fn``.

``patch_csv_data(module)`` (one of the plugin's hooks for ``open_clip_train.data``, idempotent; active
with or without ``--c2lip-loss``, so a baseline and a C2LIP run read a table alike) makes two
attribute replacements (``patches/open_clip_train-table-images.diff`` is the same change upstream):

1. ``CsvDataset`` becomes ``TableDataset`` (same constructor), which open_clip_train's
   ``get_csv_dataset`` builds for ``--train-data`` / ``--val-data`` tables:

   - read by ``open_clip_c2lip.fileio.tables`` (CSV/TSV as text cells, or parquet), so a parquet
     table trains (upstream reads it with ``pandas.read_csv``); a blank caption or a cell that is
     not an image path is an error naming the table and row;
   - relative image paths are relative to the table's folder (``tables.ImagePaths``; upstream: the
     working directory); a path that names another file, or the only file, under upstream's
     convention is an error at start-up naming both; so is a table whose first
     ``STARTUP_PROBE_ROWS`` images all do not exist;
   - images are decoded by ``open_clip_c2lip.fileio.images.open_rgb`` (EXIF orientation, every PIL
     mode as a viewer shows it; upstream: ``Image.open`` and the transform's ``convert("RGB")``);
   - a row whose image does not exist (counted ``skipped_incomplete``, as a webdataset sample without
     an image) or cannot be read or decoded (``skipped_undecodable``) is skipped, named in a warning
     and **replaced by a substitute row**: ``substitute_row(index, attempt, n)``, a fixed pseudo-random
     function of the row, so batches keep their size (a map-style dataset cannot drop an index, and
     DDP ranks must agree on batch shapes), runs are reproducible, and the substitutes of a missing
     folder's rows spread over the table instead of repeating one neighbour. After
     ``MAX_IMAGE_TRIES`` unusable rows in a row (about 90 % of the images gone) it raises, naming
     the table and the last failure. Counts go to ``count`` (the C2LIP packer's shared counters,
     reported each epoch; without ``--c2lip-loss`` only the warnings).

2. ``get_dataset_fn``: ``--dataset-type auto`` with a ``.parquet`` path gives ``get_csv_dataset``
   (upstream: ``ValueError``), as ``.csv`` / ``.tsv`` do.
"""
import functools
import logging
import math
import os
from typing import Any, Callable, List, Optional, Tuple

import torch

from ..fileio import tables
from ..fileio.images import ImageDecodeError, open_rgb
from .data_order import mix_seed

_logger = logging.getLogger(__name__)

_PATCHED = "__open_clip_c2lip_csv_data_patched__"
MAX_IMAGE_TRIES = 100
STARTUP_PROBE_ROWS = 100
# upstream's CsvDataset constructor, which TableDataset keeps (checked against the installed one in tests)
CSV_DATASET_PARAMETERS = ("input_filename", "transforms", "img_key", "caption_key", "sep", "tokenizer")
UPSTREAM_CSV_DATASET: Optional[type] = None  # open_clip_train's CsvDataset, kept by patch_csv_data


def substitute_row(index: int, attempt: int, num_rows: int) -> int:
    """The row tried in place of ``index`` at ``attempt`` >= 1: pseudo-random, a function of its arguments."""
    return mix_seed("substitute row", index, attempt) % num_rows


def _is_missing(cell: Any) -> bool:
    return cell is None or (isinstance(cell, float) and math.isnan(cell))


def _no_count(key: str, amount: int = 1) -> None:
    pass


class TableDataset(torch.utils.data.Dataset):
    """open_clip_train's ``CsvDataset`` for CSV/TSV/parquet tables (see the module docstring).

    ``__getitem__`` returns ``(transforms(rgb image), tokenizer([caption])[0])`` as upstream's;
    ``count(key)`` receives ``skipped_incomplete`` / ``skipped_undecodable`` for each skipped row.
    """

    def __init__(self, input_filename, transforms, img_key, caption_key, sep="\t", tokenizer=None,
                 count: Optional[Callable[..., None]] = None):
        table = tables.read_table(input_filename, sep)
        tables.require_columns(table, input_filename, [img_key, caption_key], sep)
        self.table_path = str(input_filename)
        self.paths = tables.ImagePaths(input_filename, img_key)
        self.images: List[str] = tables.column_values(table, img_key)
        self.paths.check(self.images)
        captions = tables.column_values(table, caption_key)
        self.captions = [None if _is_missing(c) else str(c) for c in captions]
        for row, caption in enumerate(self.captions):
            if caption is None or not caption.strip():
                raise tables.TableError(f"{self.where(row)}: empty caption in column {caption_key!r}")
        self.read_columns(table)
        self._check_images_exist()
        self.transforms = transforms
        self.tokenize = tokenizer
        self.count = count or _no_count

    def read_columns(self, table) -> None:
        """Subclasses read and check further columns of ``table`` here (the table is not kept)."""

    def where(self, row: int) -> str:
        line = "" if tables.is_parquet(self.table_path) else f" (line {row + 2})"
        return f"{self.table_path} row {row}{line}"

    def _check_images_exist(self) -> None:
        probe = self.images[:STARTUP_PROBE_ROWS]
        if probe and not any(os.path.exists(self.paths.resolve(cell)) for cell in probe):
            raise tables.TableError(
                f"{self.table_path}: none of the images of its first {len(probe)} row(s) exists, e.g. row 0: "
                f"{self.paths.resolve(probe[0])} (relative image paths are read relative to the table's "
                f"folder, {self.paths.folder})")

    def __len__(self) -> int:
        return len(self.captions)

    def text(self, row: int):
        return self.tokenize([self.captions[row]])[0]

    def load_image(self, index: int) -> Tuple[int, Any]:
        """``(row, RGB image)`` of ``index``, or of its first usable substitute (see the module doc)."""
        row, failures = index, []
        for attempt in range(MAX_IMAGE_TRIES):
            if attempt:
                row = substitute_row(index, attempt, len(self))
            path = self.paths.resolve(self.images[row])
            try:
                image = open_rgb(path)
            except FileNotFoundError:
                self.count("skipped_incomplete")
                failures.append(f"{self.where(row)}: image {path} does not exist")
                continue
            except (OSError, ImageDecodeError) as exc:
                self.count("skipped_undecodable")
                reason = str(exc) if isinstance(exc, ImageDecodeError) else f"{path}: {exc.strerror or exc}"
                failures.append(f"{self.where(row)}: image cannot be read ({reason})")
                continue
            for failure in failures:
                _logger.warning(f"C2LIP: skipping {failure}; row {row} trains in its place")
            return row, image
        raise RuntimeError(
            f"C2LIP: {MAX_IMAGE_TRIES} rows of {self.table_path} in a row (row {index} and its substitutes) have "
            f"no usable image; most of its images are missing or unreadable. Last: {failures[-1]}")

    def __getitem__(self, index: int):
        row, image = self.load_image(index)
        return self.transforms(image), self.text(row)


# ------------------------------------------------------------------------------------------------
# Installing the patches

def wrap_get_dataset_fn(module, original: Callable) -> Callable:
    """``get_dataset_fn`` that also maps ``--dataset-type auto`` + ``.parquet`` to ``get_csv_dataset``."""

    @functools.wraps(original)
    def get_dataset_fn(data_path, dataset_type):
        if dataset_type == "auto" and isinstance(data_path, str) and tables.is_parquet(data_path):
            return module.get_csv_dataset
        return original(data_path, dataset_type)

    return get_dataset_fn


def patch_csv_data(module) -> None:
    """Hook for ``open_clip_train.data`` (idempotent): ``CsvDataset`` -> ``TableDataset``,
    ``get_dataset_fn`` reads ``.parquet`` as a table."""
    global UPSTREAM_CSV_DATASET
    if getattr(module, _PATCHED, False):
        return
    UPSTREAM_CSV_DATASET = module.CsvDataset
    module.CsvDataset = TableDataset
    module.get_dataset_fn = wrap_get_dataset_fn(module, module.get_dataset_fn)
    setattr(module, _PATCHED, True)
