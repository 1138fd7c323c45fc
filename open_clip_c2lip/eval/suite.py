"""Running registered benchmarks on one model: each distinct image (with its crop box) and caption
is encoded once across all requested benchmarks, then each benchmark scores its items."""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

from .core import BENCHMARKS, Vocabulary
from .encode import encode_images, encode_texts

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


def evaluate(model, preprocess: Callable, tokenizer: Callable, benchmarks: Sequence[str],
             data_root, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 64,
             workers: int = 0, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = True, return_scores: bool = False):
    """Evaluate ``model`` on ``benchmarks`` read from ``data_root``.

    ``options`` maps a benchmark to its loader's keyword arguments, e.g.
    ``{"aro_vga": {"min_samples": 0}, "sugarcrepe": {"splits": ["swap_att"]}}``.
    Returns the results dict (see the module docstring), and with ``return_scores`` also the
    per-item score rows (a list of dicts).
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data-root folder not found: {data_root}")
    options = dict(options or {})
    names = expand_benchmarks(benchmarks)
    images, texts = Vocabulary(), Vocabulary()
    scorers = OrderedDict((name, BENCHMARKS[name](data_root, images, texts, **options.get(name, {})))
                          for name in names)
    _logger.info("encoding %d distinct images and %d distinct captions", len(images), len(texts))
    was_training = model.training
    model.eval()
    try:
        image_features = encode_images(model, preprocess, images.items, device=device, precision=precision,
                                       batch_size=batch_size, workers=workers, progress=progress)
        text_features = encode_texts(model, tokenizer, texts.items, device=device, precision=precision,
                                     batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    results, records = OrderedDict(), []
    for name, scorer in scorers.items():
        results[name], rows = scorer(image_features, text_features)
        records += rows
    return (results, records) if return_scores else results


def _is_count(key: str) -> bool:
    return key == "n" or key.startswith("n_")


def format_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown tables (one per benchmark) of a results dict; metric values as percentages, item
    counts (``n``, ``n_*``) as they are."""
    lines = []
    for benchmark, splits in results.items():
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
    return "\n".join(lines)
