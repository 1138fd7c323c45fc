"""Records of finished outputs of the concepts CLI: what a rerun may skip, redo, or must not touch.

After each output is complete, its record ``NAME.concepts.json`` is written next to it: the input
(path, size, mtime_ns as of before it was read), the options that matter, the output's own size
and mtime_ns (proof it is still ours), and its stats, failures included. ``output_state`` tells a
rerun what to do with an output from its record.
"""
import json
import os
from typing import Any, Dict, Optional

from ..fileio.atomic import write_text
from ..fileio.formats import SHARD_SUFFIXES, input_suffix
from .extract import ConceptStats

RECORD_SUFFIX = ".concepts.json"
RECORD_VERSION = 1


def record_path(output_path: str) -> str:
    """``{output}.concepts.json``: the record written next to each finished output."""
    return output_path + RECORD_SUFFIX


def _file_identity(path: str) -> Dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def record_options(input_path: str, options) -> Dict[str, Any]:
    """The options an output's content depends on (a change means the output must be redone)."""
    recorded = {"concepts_key": options.concepts_key, "caption_key": options.caption_key,
                "clean": options.clean, "spacy_model": options.spacy_model, "fallback": options.fallback}
    if input_suffix(input_path) not in SHARD_SUFFIXES:
        recorded["csv_separator"] = options.csv_separator
        recorded["image_key"] = options.image_key
    return recorded


def write_record(input_path: str, input_identity: Dict[str, int], output_path: str,
                 options, stats: ConceptStats) -> None:
    """Write ``record_path(output_path)`` atomically, after the output: the input it came from (path,
    size, mtime_ns as of before it was read), the options that matter, the output's own size and
    mtime_ns (proof it is still ours), and its stats, failures included."""
    record = {"version": RECORD_VERSION, "input": os.path.abspath(input_path), **{
        f"input_{k}": v for k, v in input_identity.items()}, **{
        f"output_{k}": v for k, v in _file_identity(output_path).items()},
        "options": record_options(input_path, options), "stats": stats.to_dict()}
    write_text(record_path(output_path), json.dumps(record, ensure_ascii=False))


def read_record(output_path: str) -> Optional[Dict[str, Any]]:
    """The record of ``output_path``, or None when there is none, it is unreadable, or the output
    changed since it was written (then it is not provably the output we wrote)."""
    try:
        with open(record_path(output_path), encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            return None
        ConceptStats.from_dict(record["stats"])
        identity = _file_identity(output_path)
        if (record["output_size"], record["output_mtime_ns"]) != (identity["size"], identity["mtime_ns"]):
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _is_record(path: str) -> bool:
    """Whether ``path`` holds a record this module wrote (whatever output it describes now)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        return isinstance(record, dict) and record.get("version") == RECORD_VERSION and {
            "input", "options", "stats", "output_size"} <= set(record)
    except (OSError, ValueError):
        return False


FINISHED, REDO, UNOWNED, TODO = "finished", "redo", "unowned", "todo"


def output_state(input_path: str, output_path: str, options,
                 record: Optional[Dict[str, Any]] = None) -> str:
    """What a rerun does with ``output_path``: ``TODO`` (none yet), ``FINISHED`` (its record matches the
    input and options: skip it, reporting its recorded failures), ``REDO`` (ours, but the input or
    options changed since: annotate again), ``UNOWNED`` (no valid record: an older version's or someone
    else's file; only ``--overwrite`` replaces it)."""
    if not os.path.exists(output_path):
        # a file where the record goes that is not a record of ours: someone else's, not replaced
        record_file = record_path(output_path)
        return UNOWNED if os.path.lexists(record_file) and not _is_record(record_file) else TODO
    record = read_record(output_path) if record is None else record
    if record is None:
        return UNOWNED
    identity = _file_identity(input_path)
    same = (record.get("input") == os.path.abspath(input_path)
            and (record.get("input_size"), record.get("input_mtime_ns")) == (identity["size"], identity["mtime_ns"])
            and record.get("options") == json.loads(json.dumps(record_options(input_path, options))))
    return FINISHED if same else REDO
