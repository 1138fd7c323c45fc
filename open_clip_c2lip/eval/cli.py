"""Compositionality evaluation suite: SugarCrepe, SugarCrepe++, ARO VG-R / VG-A, Winoground.

The command line of ``python -m open_clip_c2lip.eval`` (see the package docstring for layout and
output).
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..fileio.atomic import write_text
from ..loading import add_model_args, load_model, model_kwargs
from .core import BENCHMARKS
from .encode import PRECISIONS
from .sugarcrepe import SUGARCREPE_SPLITS
from .sugarcrepe_pp import SUGARCREPE_PP_SPLITS
from .suite import evaluate, format_markdown, plan_benchmarks


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created) through ``atomic.atomic_output``: no partial
    file is left, and the file's permissions follow the umask."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(str(path), text)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.eval", description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--benchmark", nargs="+", default=["all"], choices=list(BENCHMARKS) + ["all"])
    parser.add_argument("--data-root", required=True, type=Path,
                        help="folder holding the benchmarks' files, any subset of: val2017/ (COCO 2017 val), "
                             "sugarcrepe/<split>.json, sugarcrepe_pp/<split>.json, "
                             "aro_vgr/visual_genome_relation.json + aro_vgr/images/, "
                             "aro_vga/visual_genome_attribution.json + aro_vga/images/, "
                             "winoground/examples.jsonl + winoground/images/ (the demo's <output>/world/eval "
                             "is one). With --benchmark all, absent benchmarks and splits are skipped and listed")
    parser.add_argument("--output", required=True, type=Path, help="results JSON (written atomically)")
    parser.add_argument("--save-scores", type=Path, default=None, help="per-item scores as JSON Lines")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--aro-min-samples", type=int, default=None,
                        help="drop ARO relations / attribute pairs with fewer items from the averages "
                             "(default: 0 for aro_vgr, 25 for aro_vga, as the ARO authors' published protocol)")
    parser.add_argument("--sugarcrepe-splits", nargs="+", default=None, choices=SUGARCREPE_SPLITS)
    parser.add_argument("--sugarcrepe-pp-splits", nargs="+", default=None, choices=SUGARCREPE_PP_SPLITS)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    options: Dict[str, Dict[str, Any]] = {}
    if args.aro_min_samples is not None:
        options["aro_vgr"] = options["aro_vga"] = {"min_samples": args.aro_min_samples}
    if args.sugarcrepe_splits:
        options["sugarcrepe"] = {"splits": args.sugarcrepe_splits}
    if args.sugarcrepe_pp_splits:
        options["sugarcrepe_pp"] = {"splits": args.sugarcrepe_pp_splits}
    return options


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("open_clip_c2lip").setLevel(logging.INFO)
    if not args.data_root.is_dir():
        raise FileNotFoundError(f"--data-root folder not found: {args.data_root}")
    plan_benchmarks(args.benchmark, args.data_root, _options(args), report=False)  # fail before the model load
    model, preprocess, tokenizer = load_model(args.model, args.pretrained, **model_kwargs(args))
    results, records = evaluate(
        model, preprocess, tokenizer, args.benchmark, args.data_root, device=args.device,
        precision=args.precision, batch_size=args.batch_size, workers=args.workers, options=_options(args),
        progress=not args.no_progress, return_scores=True)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    if args.save_scores is not None:
        atomic_write_text(args.save_scores, "".join(json.dumps(r, default=float) + "\n" for r in records))
    print(format_markdown(results))
    print(f"results written to {args.output}")
    return results
