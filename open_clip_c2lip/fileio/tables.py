"""The one reader of caption tables (CSV/TSV text tables and parquet).

Used by the concepts CLI, the CSV training reader (``open_clip_c2lip.integration.train_data.ConceptCsvDataset``) and
``scripts/make_shards.py``, so a table reads the same everywhere:

- Text tables are split by ``sep``, default a tab like open_clip_train's ``--csv-separator``
  (whatever the file's extension). ``"\\t"`` typed literally (backslash, t) means a tab.
- Every cell is text: ``N/A``, ``NA``, ``None``, ``null``, ``nan`` are captions like any other (pandas
  would make them missing values), and numbers keep their spelling. Only an empty cell is empty.
- Blank lines are rows (with empty cells), so they are reported as rows, not dropped silently.
- A missing column is reported with the columns found and, when the header line looks split by
  another separator, which ``--csv-separator`` to pass.
- **Relative image paths are relative to the table's folder** (``ImagePaths``), as a portable
  dataset expects, in training, ``scripts/make_shards.py`` and the concepts CLI alike (which rewrites
  them for the folder its output lands in). open_clip_train alone reads them relative to the working
  directory: a path that names a file under that convention and another file, or none, under ours
  is an error naming both (``ImagePaths.check``), never a silent choice.
"""
import os
import re
from typing import Any, Dict, List, Optional, Sequence

from ..messages import excerpt

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
DEFAULT_CSV_SEPARATOR = "\t"  # open_clip_train's --csv-separator default
_ESCAPES = {"\\t": "\t", "tab": "\t", "\\n": "\n"}
_LIKELY_SEPARATORS = ("\t", ",", ";", "|")


class TableError(ValueError):
    """A table that cannot be read as asked; the message names the file and what is wrong."""


def parse_separator(text: str) -> str:
    """A ``--csv-separator`` value: one character; ``\\t`` typed literally or ``tab`` mean a tab."""
    sep = _ESCAPES.get(text, text)
    if len(sep) != 1:
        raise TableError(f"--csv-separator must be one character (or '\\t'), got {text!r}")
    return sep


def is_parquet(path: str) -> bool:
    return os.path.splitext(path)[1].lower() == ".parquet"


def read_table(path: str, sep: str = DEFAULT_CSV_SEPARATOR):
    """A ``pandas.DataFrame`` of ``str`` cells (text tables) or a ``pyarrow.Table`` (``.parquet``)."""
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq
            return pq.read_table(path)
        import pandas as pd
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                           skip_blank_lines=False)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's problem, said as such
        raise TableError(f"{path}: unreadable table ({type(exc).__name__}: {exc})") from exc


def read_column_names(path: str, sep: str = DEFAULT_CSV_SEPARATOR) -> List[str]:
    """The columns of a table without reading its rows (``TableError`` if it cannot be read)."""
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq
            return list(pq.read_schema(path).names)
        import pandas as pd
        return list(pd.read_csv(path, sep=sep, dtype=str, nrows=0).columns)
    except Exception as exc:  # noqa: BLE001 - as read_table
        raise TableError(f"{path}: unreadable table ({type(exc).__name__}: {exc})") from exc


def column_names(table) -> List[str]:
    return list(table.column_names if hasattr(table, "column_names") else table.columns)


def column_values(table, name: str) -> List[Any]:
    return table.column(name).to_pylist() if hasattr(table, "column_names") else table[name].tolist()


def require_columns(table, path: str, names: Sequence[str], sep: str, what: str = "column") -> None:
    """Raise ``TableError`` naming the file, the missing columns, the columns found and, for a text
    table whose header seems split by another separator, the ``--csv-separator`` to use."""
    columns = column_names(table)
    missing = [name for name in names if name not in columns]
    if not missing:
        return
    message = f"{path}: no {what}(s) {missing}; columns are {columns}"
    if not is_parquet(path):
        header = sep.join(columns)
        others = [s for s in _LIKELY_SEPARATORS if s != sep and s in header]
        if others:
            message += (f"; the header looks separated by {others[0]!r}, not {sep!r}: pass "
                        f"--csv-separator {others[0]!r}" + (" (open_clip_train's default is a tab)"
                                                            if sep != DEFAULT_CSV_SEPARATOR else ""))
    raise TableError(message)


def write_text_table(frame, path: str, sep: str) -> None:
    """Write a DataFrame read by ``read_table`` back with the same separator (cells as text)."""
    frame.to_csv(path, sep=sep, index=False)


# ------------------------------------------------------------------------------------------------
# Image paths in tables: one rule

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_relative_path(cell: str) -> bool:
    """A relative file path: not absolute and not a URL (``https://...``, kept as written)."""
    return not os.path.isabs(cell) and not _URL.match(cell)


class ImagePaths:
    """The image path rule of a table: a relative path is relative to the table's folder.

    ``folder`` is the folder of the table's path as given (joined to the working directory, symlinks
    not resolved); ``resolve(cell)`` joins a relative cell to it (absolute paths and URLs stay as
    they are). ``check``
    finds the cells where the working-directory convention of open_clip_train names an existing file
    that ours does not: another file, or one where ours finds none.
    """

    def __init__(self, table_path: str, column: str, cwd: Optional[str] = None):
        self.table_path = str(table_path)
        self.column = column
        self.cwd = os.getcwd() if cwd is None else cwd
        self.folder = os.path.dirname(os.path.join(self.cwd, self.table_path)) or os.sep
        self._dir_exists: Dict[str, bool] = {}
        self._moved: Dict[Any, str] = {}  # (cell's folder, output folder) -> that folder from the output's

    def resolve(self, cell: str) -> str:
        return os.path.join(self.folder, cell) if is_relative_path(cell) else cell

    def _cwd_file(self, cell: str) -> Optional[str]:
        """``cwd/cell`` if it is an existing file (its folder's existence cached: one stat per folder
        in the usual case of a working directory without such folders)."""
        path = os.path.join(self.cwd, cell)
        folder = os.path.dirname(path)
        exists = self._dir_exists.get(folder)
        if exists is None:
            exists = self._dir_exists[folder] = os.path.isdir(folder)
        return path if exists and os.path.isfile(path) else None

    def conflict(self, cell: str) -> Optional[str]:
        """Why ``cell`` names different files under the two conventions, or None when it does not."""
        if not is_relative_path(cell):
            return None
        other = self._cwd_file(cell)
        if other is None:
            return None
        ours = self.resolve(cell)
        if not os.path.exists(ours):
            return (f"{cell!r} is {ours} relative to the table's folder, which does not exist, but "
                    f"{other} (relative to the working directory) does")
        if not os.path.samefile(ours, other):
            return (f"{cell!r} is {ours} relative to the table's folder and a different file, {other}, "
                    "relative to the working directory")
        return None

    def check(self, cells: Sequence[Any]) -> None:
        """``TableError`` naming the table, the column, the rows and both files of every cell that is
        not a path (empty, not text) or means another file under the working-directory convention.
        Nothing to compare when the table's folder is the working directory."""
        bad_cells = [row for row, cell in enumerate(cells) if not isinstance(cell, str) or not cell.strip()]
        if bad_cells:
            row = bad_cells[0]
            raise TableError(
                f"{self.table_path} row {row}: column {self.column!r} holds {excerpt(cells[row])}, not an image "
                f"path ({len(bad_cells)} such row(s))")
        if os.path.realpath(self.folder) == os.path.realpath(self.cwd):
            return
        conflicts = [(row, why) for row, cell in enumerate(cells) if (why := self.conflict(cell)) is not None]
        if conflicts:
            row, why = conflicts[0]
            raise TableError(
                f"{self.table_path}: {len(conflicts)} relative image path(s) of column {self.column!r} name "
                f"different files relative to the table's folder ({self.folder}) and to the working "
                f"directory ({self.cwd}), e.g. row {row}: {why}. Relative image paths are read relative to "
                "the table's folder (open_clip_train alone reads them relative to the working directory): "
                "make them relative to the table's folder, or absolute.")

    def relocated(self, cell: str, folder: str) -> str:
        """``cell`` rewritten for a copy of the table in ``folder``: the same file by the same rule.

        Absolute paths and URLs are kept. A relative cell gets the lexical path from ``folder`` when the OS
        resolves that to the same place (``..`` after a symlink does not go back where it came from),
        else the path between the physical folders."""
        if not is_relative_path(cell):
            return cell
        head, name = os.path.split(cell)
        key = (head, folder)
        moved = self._moved.get(key)
        if moved is None:
            source = os.path.join(self.folder, head)
            target = os.path.join(self.cwd, folder)
            moved = os.path.relpath(os.path.normpath(source), os.path.normpath(target))
            if os.path.realpath(os.path.join(target, moved)) != os.path.realpath(source):
                moved = os.path.relpath(os.path.realpath(source), os.path.realpath(target))
            self._moved[key] = moved
        return name if moved == "." else os.path.join(moved, name)
