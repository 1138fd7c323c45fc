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
"""
import os
from typing import Any, List, Sequence

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
