"""Compositionality evaluation suite: the vl_compo study's benchmarks and SugarCrepe++ (``core.BENCHMARKS``).

The command line of ``python -m open_clip_c2lip.eval`` (see the package docstring for layout and
output).
"""
import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ..fileio.atomic import write_text
from ..fileio.diskspace import MIN_FREE_BYTES, check_free_space, disk_full_as_error
from ..loading import add_model_args, load_model, model_kwargs
from .core import BENCHMARKS
from .encode import PRECISIONS
from .sugarcrepe import SUGARCREPE_SPLITS
from .sugarcrepe_pp import SUGARCREPE_PP_SPLITS
from .valse import VALSE_PIECES
from .vl_checklist import VL_CHECKLIST_CORPORA
from .whatsup import WHATSUP_SUBSETS
from .report import add_report_args, check_figure_path, check_report_args, write_report
from .suite import evaluate, format_markdown, plan_benchmarks
from .zeroshot import add_clip_benchmark_args, clip_benchmark_datasets, run_clip_benchmark


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` (its folder created) through ``atomic.atomic_output``: no partial
    file is left, and the file's permissions follow the umask. Too little free space (checked
    first) or a full disk while writing raises ``diskspace.DiskFullError`` naming the bytes needed."""
    size = len(text.encode("utf-8"))
    with disk_full_as_error(path, size):
        check_free_space(path, size)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(str(path), text)


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before the model is loaded when an output could not be written at the end of the run:
    a path that is a folder, a parent that is a file or not writable, two outputs on one path, an
    output on the comparison CSV, a figure without a file type matplotlib knows."""
    outputs = {"--output": args.output, "--save-scores": args.save_scores, "--csv": args.csv, "--figure": args.figure}
    seen = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file path")
        parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
        if not parent.is_dir():
            raise ValueError(f"{flag} {path}: {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{flag} {path}: {parent} is not writable")
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{flag} and {seen[key]} are the same file: {path}")
        seen[key] = flag
    if args.compare is not None and Path(args.compare).resolve() in seen:
        raise ValueError(f"{seen[Path(args.compare).resolve()]} would overwrite the --compare CSV {args.compare}")
    if args.figure is not None:
        check_figure_path(args.figure)


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
                             "is one), "
                             "aro_coco_order/coco_karpathy_test.json + aro_coco_order/val2014/, "
                             "aro_flickr_order/flickr30k_test.json + aro_flickr_order/flickr30k-images/, "
                             "valse/<piece>.json + valse/images/, "
                             "imagecode/valid_data.json + imagecode/image-sets/<set>/img<X>.jpg, "
                             "vl_checklist/ (the VL-CheckList repository's corpus/ and data/ + vg/, hake/, swig/), "
                             "whatsup/<6 JSONs> + whatsup/{controlled_images,controlled_clevr,val2017,vg_images}/, colorswap/, crepe/, eqben/, mmvp_vlm/, svo_probes/ (release layouts: docs/benchmarks/<name>.md). "
                             "With --benchmark all, absent benchmarks and splits are skipped and listed")
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
    parser.add_argument("--valse-splits", nargs="+", default=None, choices=VALSE_PIECES)
    parser.add_argument("--whatsup-splits", nargs="+", default=None, choices=list(WHATSUP_SUBSETS))
    parser.add_argument("--vl-checklist-splits", nargs="+", default=None, choices=VL_CHECKLIST_CORPORA,
                        metavar="TYPE/CORPUS", help="VL-CheckList corpora, e.g. Attribute/color/vaw")
    parser.add_argument("--mmvp-prompt", default=None,
                        help='prefix of MMVP-VLM statements (default: the official "a photo of "; "" for none)')
    parser.add_argument("--no-progress", action="store_true")
    add_clip_benchmark_args(parser)
    add_report_args(parser)
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    options: Dict[str, Dict[str, Any]] = {}
    if args.aro_min_samples is not None:
        options["aro_vgr"] = options["aro_vga"] = {"min_samples": args.aro_min_samples}
    if args.sugarcrepe_splits:
        options["sugarcrepe"] = {"splits": args.sugarcrepe_splits}
    if args.sugarcrepe_pp_splits:
        options["sugarcrepe_pp"] = {"splits": args.sugarcrepe_pp_splits}
    for name in ("valse", "whatsup", "vl_checklist"):
        if getattr(args, f"{name}_splits"):
            options[name] = {"splits": getattr(args, f"{name}_splits")}
    if args.mmvp_prompt is not None:
        options["mmvp_vlm"] = {"prompt": args.mmvp_prompt}
    return options


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("open_clip_c2lip").setLevel(logging.INFO)
    if not args.data_root.is_dir():
        raise FileNotFoundError(f"--data-root folder not found: {args.data_root}")
    # everything that can be checked fails here, before the model is loaded
    plan_benchmarks(args.benchmark, args.data_root, _options(args), report=False)
    check_outputs(args)
    zeroshot = clip_benchmark_datasets(args)
    check_report_args(args, zeroshot)
    for path in filter(None, (args.output, args.save_scores)):  # a full disk is said before the evaluation
        check_free_space(path, MIN_FREE_BYTES, at_least=True)
    model, preprocess, tokenizer = load_model(args.model, args.pretrained, **model_kwargs(args))
    results, records = evaluate(
        model, preprocess, tokenizer, args.benchmark, args.data_root, device=args.device,
        precision=args.precision, batch_size=args.batch_size, workers=args.workers, options=_options(args),
        progress=not args.no_progress, return_scores=True)
    if zeroshot:
        # the compositionality results are kept if clip_benchmark fails
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
        results["clip_benchmark"], absent = run_clip_benchmark(
            model, preprocess, tokenizer, args.clip_benchmark_root, zeroshot, device=args.device,
            batch_size=args.batch_size, workers=args.workers, classnames_file=args.clip_benchmark_classnames,
            templates_file=args.clip_benchmark_templates)
        if absent:
            results.setdefault("_skipped", {}).update({f"clip_benchmark/{d}": f for d, f in absent.items()})
        if "_skipped" in results:  # keep _skipped last
            results["_skipped"] = results.pop("_skipped")
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    if args.save_scores is not None:
        atomic_write_text(args.save_scores, "".join(json.dumps(r, default=float) + "\n" for r in records))
    print(format_markdown(results))
    print(f"results written to {args.output}")
    write_report(args, results)
    return results
