"""Running registered benchmarks on one model: each distinct image (with its crop box) and caption
is encoded once across all requested benchmarks, then each benchmark scores its items.

A data root may hold only some benchmarks or splits (the demo's eval folder has three SugarCrepe
splits). What was asked for broadly (``all``, or a benchmark without a split list) is evaluated
where its annotation files are present; the absent ones are logged and listed under the results'
``_skipped`` key. What was named exactly (a benchmark, or a split given in ``splits``) must be
there: an absent one is an error, as is a request of which nothing is present.
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

from .core import BENCHMARK_FILES, BENCHMARK_SOURCES, BENCHMARKS, SPLIT_BENCHMARKS, SPLIT_OPTION, Vocabulary
from .encode import concat_features, encode_images, encode_texts

_logger = logging.getLogger(__name__)


def expand_benchmarks(benchmarks: Sequence[str]) -> List[str]:
    """Resolve ``all`` and validate names, keeping registry order and dropping duplicates."""
    names = []
    for benchmark in benchmarks:
        expanded = list(BENCHMARKS) if benchmark == "all" else [benchmark]
        for name in expanded:
            if name not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS) + ['all']}")
            if name not in names:
                names.append(name)
    return names


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _listed(files: Sequence[str], most: int = 6) -> str:
    """``files`` joined with commas, the middle of a long list elided (VL-CheckList has 56 corpora)."""
    if len(files) <= most:
        return ", ".join(files)
    return ", ".join(list(files[:most - 2]) + [f"... ({len(files)} files)", files[-1]])


def _where(name: str) -> str:
    source = BENCHMARK_SOURCES.get(name)
    return f"; get it from {source}" if source else ""


def plan_benchmarks(benchmarks: Sequence[str], data_root, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                    report: bool = True):
    """What of ``benchmarks`` the data root holds.

    Returns ``(run, skipped)``: ``run`` maps each benchmark to evaluate to its loader options (with
    ``splits`` narrowed to the present ones where splits were not given), ``skipped`` maps a
    benchmark to its absent annotation files (relative to ``data_root``). Raises
    ``FileNotFoundError`` for an explicitly named benchmark with no file present, and when
    nothing requested is present, and for an explicitly given split that is absent. With ``report``
    the absent parts are logged as warnings."""
    data_root = Path(data_root)
    options = dict(options or {})
    named = {b for b in benchmarks if b != "all"}
    run, skipped = OrderedDict(), OrderedDict()
    for name in expand_benchmarks(benchmarks):
        opts = dict(options.get(name, {}))
        files_of = BENCHMARK_FILES.get(name)
        if files_of is None:
            run[name] = opts
            continue
        files = OrderedDict(files_of(data_root))
        if name in SPLIT_BENCHMARKS and opts.get(SPLIT_OPTION) is not None:
            # splits named exactly must all be there (unknown names are the loader's to reject)
            missing = [_relative(files[s], data_root) for s in opts[SPLIT_OPTION] if s in files
                       and not files[s].is_file()]
            if missing:
                raise FileNotFoundError(f"{name}: requested split file(s) not found under {data_root}: "
                                        f"{', '.join(missing)}")
            run[name] = opts
            continue
        absent = [split for split, path in files.items() if not path.is_file()]
        expected = [_relative(files[split], data_root) for split in absent]
        if len(absent) == len(files):
            if name in named:
                raise FileNotFoundError(f"{name}: not found under {data_root} (expected {_listed(expected)})"
                                        f"{_where(name)}")
            skipped[name] = expected
            continue
        if absent:
            present = [split for split in files if split not in absent]
            opts[SPLIT_OPTION] = present
            skipped[name] = expected
            if report:
                _logger.warning("%s: %d of %d splits are absent under %s (%s); evaluating %s only. Select "
                                "splits explicitly (--%s-splits) to make a missing one an error", name, len(absent),
                                len(files), data_root, _listed(expected), _listed(present),
                                name.replace("_", "-"))
        run[name] = opts
    absent_benchmarks = [name for name in skipped if name not in run]
    if not run:
        raise FileNotFoundError(
            f"none of the requested benchmarks is under {data_root}: "
            + "; ".join(f"{name} (expected {_listed(files)}{_where(name)})" for name, files in skipped.items())
            + ". See --data-root in `python -m open_clip_c2lip.eval --help` for the layout")
    if absent_benchmarks and report:
        _logger.warning("not under %s, skipped: %s. Evaluating %s; choose benchmarks with --benchmark",
                        data_root, "; ".join(f"{n} ({_listed(skipped[n])}{_where(n)})" for n in absent_benchmarks),
                        ", ".join(run))
    return run, skipped


def evaluate(model, preprocess: Callable, tokenizer: Callable, benchmarks: Sequence[str],
             data_root, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 64,
             workers: int = 0, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = True, return_scores: bool = False):
    """Evaluate ``model`` on ``benchmarks`` read from ``data_root``.

    ``options`` maps a benchmark to its loader's keyword arguments, e.g.
    ``{"aro_vga": {"min_samples": 0}, "sugarcrepe": {"splits": ["swap_att"]}}``.
    Returns the results dict (see the package docstring; with a ``_skipped`` entry
    ``{benchmark: [absent annotation files]}`` when the data root lacks some, see
    :func:`plan_benchmarks`), and with ``return_scores`` also the per-item score rows (a list of dicts).
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data-root folder not found: {data_root}")
    run, skipped = plan_benchmarks(benchmarks, data_root, options)
    images, texts = Vocabulary(), Vocabulary()
    scorers, spans = OrderedDict(), []
    for name, opts in run.items():
        first_image, first_text = len(images), len(texts)
        scorers[name] = BENCHMARKS[name](data_root, images, texts, **opts)
        not_texts = [t for t in texts.items[first_text:] if not isinstance(t, str)]
        if not_texts:  # the tokenizer would fail on it after every image was encoded
            raise ValueError(f"{name}: {len(not_texts)} caption(s) read from {data_root} are not texts, e.g. "
                             f"{not_texts[0]!r:.80}")
        spans.append((name, first_image, len(images), first_text, len(texts)))
    _logger.info("encoding %d distinct images and %d distinct captions", len(images), len(texts))
    was_training = model.training
    model.eval()
    image_parts, text_parts = [], []
    try:
        # benchmark by benchmark (a progress bar each), each encoding only what no earlier one had
        for name, image_start, image_end, text_start, text_end in spans:
            if image_end > image_start:
                image_parts.append(encode_images(
                    model, preprocess, images.items[image_start:image_end], device=device, precision=precision,
                    batch_size=batch_size, workers=workers, progress=progress, desc=f"{name} images"))
            if text_end > text_start:
                text_parts.append(encode_texts(
                    model, tokenizer, texts.items[text_start:text_end], device=device, precision=precision,
                    batch_size=batch_size, progress=progress, desc=f"{name} texts"))
    finally:
        model.train(was_training)
    image_features, text_features = concat_features(image_parts), concat_features(text_parts)
    results, records = OrderedDict(), []
    for name, scorer in scorers.items():
        results[name], rows = scorer(image_features, text_features)
        records += rows
    if skipped:
        results["_skipped"] = dict(skipped)
    return (results, records) if return_scores else results


def _is_count(key: str) -> bool:
    return key in ("n", "ties") or key.startswith("n_")


def format_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown tables (one per benchmark) of a results dict; metric values as percentages, item
    counts (``n``, ``n_*``) as they are."""
    lines = []
    for benchmark, splits in results.items():
        if benchmark == "_skipped":
            continue
        metrics, counts = [], ["n"]
        for values in splits.values():
            metrics += [k for k in values if not _is_count(k) and k not in metrics]
            counts += [k for k in values if _is_count(k) and k not in counts]
        lines += [f"### {benchmark}", "", "| split | " + " | ".join(metrics + counts) + " |",
                  "|---" * (len(metrics) + len(counts) + 1) + "|"]
        for split, values in splits.items():
            cells = [f"{100 * values[m]:.2f}" if values.get(m) is not None else "" for m in metrics]
            cells += [str(values.get(c, "")) for c in counts]
            lines.append(f"| {split} | " + " | ".join(cells) + " |")
        lines.append("")
    for benchmark, files in results.get("_skipped", {}).items():
        lines.append(f"not evaluated (absent from the data root): {benchmark}: {', '.join(files)}")
    return "\n".join(lines)
