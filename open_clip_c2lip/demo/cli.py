"""``python -m open_clip_c2lip.demo``: build the world, train SigLIP and C2LIP variants, evaluate, report.

``--seed S`` (default 0) trains SigLIP and C2LIP once on world S. ``--seeds 0 1 2 3 4`` is the study:
for every seed S a new world (scenes, held-out colour-shape pairs and evaluation sets all drawn from
S) and every variant trained with ``open_clip_train --seed S`` (initialisation and data order), so
both the world seed and the training seed change between seeds; the variants of one seed share its
world and shards and differ only in their loss flags. The report gives, per metric, mean ± std over
seeds and the 95 % t interval of the paired (same seed) difference of each variant to SigLIP.

Outputs under ``--output-dir``: ``seed_S/world`` (shards and held-out sets), ``seed_S/logs``
(open_clip_train logs and checkpoints), ``seed_S/metrics`` (one JSON per finished run),
``results.json`` (settings, per-seed rows, summary), ``results.md``, ``results.png`` and
``attention.png`` (concept attention maps of SigLIP and C2LIP on a held-out image).
"""
import argparse
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from .variants import DEFAULT_SINGLE, VARIANTS, LossSettings, available, default_study
from .world import COLOURS, SHAPES, WorldSpec


@dataclass(frozen=True)
class Preset:
    """Budget-defining settings (benchmarks/demo.md says how they were chosen, on validation worlds)."""
    num_train: int
    num_eval: int
    steps: int
    batch_size: int
    lr: float
    warmup: int


PRESETS = {
    "default": Preset(num_train=4096, num_eval=300, steps=900, batch_size=64, lr=1e-3, warmup=50),
    "quick": Preset(num_train=512, num_eval=100, steps=30, batch_size=32, lr=1e-3, warmup=5),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="c2lip_demo", help="everything is written here (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (tiny world, few steps)")
    parser.add_argument("--seed", type=int, default=0,
                        help="one seed: world seed and training seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="the study: one world and one training seed per value, every variant per seed")
    parser.add_argument("--variants", "--runs", nargs="+", default=None, choices=list(VARIANTS),
                        help=f"variants to train (default: {' '.join(DEFAULT_SINGLE)} for one seed, all "
                             f"available for --seeds): " + "; ".join(f"{k}: {v.description}" for k, v in VARIANTS.items()))
    parser.add_argument("--parallel", type=int, default=2,
                        help="training runs at a time, 1 torch thread each (default: %(default)s, for a 2-core CPU)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps")
    parser.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--num-train", type=int, default=None, help="training images per world")
    parser.add_argument("--num-eval", type=int, default=None, help="images per held-out set")
    world = parser.add_argument_group("world (defaults: the world of benchmarks/demo.md)")
    world.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    world.add_argument("--colours", nargs="+", default=None, choices=sorted(COLOURS))
    world.add_argument("--min-objects", type=int, default=None)
    world.add_argument("--max-objects", type=int, default=None)
    world.add_argument("--grid", type=int, default=None, help="grid cells per side (one object per cell)")
    world.add_argument("--jitter", type=int, default=None, help="max shift of an object inside its cell, px")
    world.add_argument("--held-out-pairs", type=int, default=None,
                       help="colour-shape pairs never seen in training (evaluated separately)")
    parser.add_argument("--xac-temperature", type=float, default=1.0, help="C2LIP --c2lip-xac-temperature")
    parser.add_argument("--xac-weight", type=float, default=0.01, help="C2LIP --c2lip-xac-weight")
    parser.add_argument("--npc-weight", type=float, default=1.0, help="C2LIP --c2lip-npc-weight")
    parser.add_argument("--workers", type=int, default=1, help="dataloader workers per run")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild results.md/.png from the finished runs in "
                             "<output-dir>/results.json (e.g. of a study stopped early), for the variants "
                             "finished in every seed (or --variants)")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for name, value in vars(preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    overrides = {"shapes": args.shapes, "colours": args.colours, "min_objects": args.min_objects,
                 "max_objects": args.max_objects, "grid": args.grid, "jitter": args.jitter,
                 "held_out_pairs": args.held_out_pairs}
    try:
        args.world = WorldSpec(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        parser.error(str(exc))
    if args.steps < 1 or args.batch_size < 1 or args.num_train < args.batch_size or args.num_eval < 2:
        parser.error("need steps >= 1, batch_size >= 1, num_train >= batch_size and num_eval >= 2")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    args.study = args.seeds is not None
    if args.seeds is None:
        args.seeds = [args.seed]
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    if args.report_only:
        return args  # seeds and variants come from the saved results
    if args.variants is None:
        args.variants = default_study() if args.study else list(DEFAULT_SINGLE)
    missing = [v for v in args.variants if not available(v)]
    if missing:
        parser.error(f"variants {missing} need flags this plugin lacks: "
                     f"{[VARIANTS[v].requires_flag for v in missing]}")
    return args


def settings_of(args: argparse.Namespace):
    from .study import StudySettings
    return StudySettings(seeds=list(args.seeds), variants=list(args.variants), world=args.world,
                         num_train=args.num_train, num_eval=args.num_eval, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, wd=args.wd,
                         loss=LossSettings(npc_weight=args.npc_weight, xac_weight=args.xac_weight,
                                           xac_temperature=args.xac_temperature,
                                           max_concepts=args.world.max_objects),
                         workers=args.workers, parallel=args.parallel)


def machine_description() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()} (torch threads 1 per run)"


def attention_figure(output, record: Dict[str, Any], world_dir: Path, variants: Sequence[str]) -> Optional[Path]:
    """``viz`` concept attention maps of two variants on the first held-out-pair image with 3+ objects."""
    import json
    from .. import eval as c2eval
    from .. import viz
    from .world import Obj
    shown = [v for v in variants if v in record["runs"]][:2]
    root = world_dir / "eval" / "unseen_pairs"
    if len(shown) < 1 or not (root / "retrieval.json").is_file():
        return None
    items = json.loads((root / "retrieval.json").read_text())
    item = next((i for i in items if len(i["objects"]) >= 3), items[0])
    phrases = [Obj(o["shape"], o["colour"], o["cell"]).phrase for o in item["objects"]]
    models = [(name, *c2eval.load_model("C2LIP-Tiny", record["runs"][name]["checkpoint"])) for name in shown]
    return viz.visualize(root / "val2017" / item["filename"], item["caption"], models, output, concepts=phrases,
                         temperature=1.0)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    progress = not args.no_progress
    if threading.current_thread() is threading.main_thread():
        # SIGTERM -> SystemExit, so the training subprocesses are stopped instead of orphaned
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from .report import write_results
    from .runs import stop_all
    from .study import expected_seconds, run_study

    output_dir = Path(args.output_dir)
    if args.report_only:
        return report_only(args, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    expected = expected_seconds(settings)
    print(f"{len(args.seeds)} seed(s) {args.seeds} x {len(args.variants)} variant(s) {args.variants}, "
          f"{args.steps} steps x batch {args.batch_size} each, {args.parallel} at a time: expected "
          f"~{expected / 60:.0f} min on an idle 2-core CPU (longer under load)", flush=True)
    results: Dict[str, Any] = {
        "command": "python -m open_clip_c2lip.demo " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k != "world"},
        "world": args.world.to_dict(),
        "machine": machine_description(),
        "load_average_start": list(os.getloadavg()),
        "expected_s": expected,
    }
    start = time.perf_counter()

    def save_partial(partial: Dict[str, Any]) -> None:
        write_results(output_dir / "results.json", dict(results, seeds=partial["seeds"], finished=False,
                                                        elapsed_s=time.perf_counter() - start,
                                                        load_average_now=list(os.getloadavg())))

    try:
        study = run_study(settings, output_dir, progress=progress, on_update=save_partial)
    finally:
        stop_all()
    results.update(finished=True, total_s=time.perf_counter() - start, load_average_end=list(os.getloadavg()))
    return write_report(results, study["seeds"], args.variants, output_dir)


def report_only(args: argparse.Namespace, output_dir: Path) -> Dict[str, Any]:
    """Tables and figures from the runs saved in ``<output_dir>/results.json`` (no training)."""
    import json
    source = output_dir / "results.json"
    if not source.is_file():
        raise SystemExit(f"--report-only: no {source}")
    saved = json.loads(source.read_text())
    seeds = {int(seed): record for seed, record in saved.get("seeds", {}).items()}
    planned = saved["settings"]["variants"]
    complete = [v for v in planned if seeds and all(v in record["runs"] for record in seeds.values())]
    variants = args.variants or complete
    missing = [(seed, v) for v in variants for seed, record in seeds.items() if v not in record["runs"]]
    if not seeds or missing or not variants:
        raise SystemExit(f"--report-only: {source} lacks finished runs {missing or 'for any variant'}")
    finished_runs = sum(len(record["runs"]) for record in seeds.values())
    results = dict(saved, load_average_end=(saved.get("load_average_end") or saved.get("load_average_now")
                                            or list(os.getloadavg())),
                   total_s=saved.get("total_s") or saved.get("elapsed_s"),
                   report={"command": "python -m open_clip_c2lip.demo " + " ".join(sys.argv[1:]),
                                  "variants": variants, "finished_runs": finished_runs,
                                  "planned_runs": len(planned) * len(seeds),
                                  "study_finished": bool(saved.get("finished"))})
    return write_report(results, seeds, variants, output_dir)


def write_report(results: Dict[str, Any], seeds: Dict[int, Dict[str, Any]], variants: Sequence[str],
                 output_dir: Path) -> Dict[str, Any]:
    """Aggregate ``seeds`` over ``variants``; write results.json / .md / .png and attention.png."""
    from .report import (difference_table, is_shown, plot_study, seed_table, study_table, text_only_table,
                         write_results)
    from .study import aggregate, metric_names
    settings = results["settings"]
    summary = aggregate(seeds, variants)
    metrics = [m for m in metric_names(seeds) if is_shown(m)]
    results.update(seeds=seeds, summary=summary)
    title = (f"C2LIP-Tiny, {settings['steps']} steps x batch {settings['batch_size']}, seeds {list(seeds)}, "
             f"{settings['num_train']} train / {settings['num_eval']} held-out images per set and world")
    chance = {m: summary["per_variant"][variants[0]][m]["mean"]
              for m in metric_names(seeds) if m.endswith("chance_R@1") and m in summary["per_variant"].get(variants[0], {})}
    chance_note = "; ".join(f"{m}: {100 * v:.1f} %" for m, v in chance.items())
    tables = {
        "study": study_table(summary, variants, metrics),
        "differences": difference_table(summary, variants, metrics),
        "seeds": seed_table(seeds, results["settings"]["variants"], metrics),  # every finished run
        "text_only": text_only_table(seeds),
    }
    results["tables"] = tables
    write_results(output_dir / "results.json", results)
    wall = f"{results['total_s']:.0f} s" if results.get("total_s") is not None else "wall time not recorded"
    report = results.get("report")
    partial = (f" Report of {report['finished_runs']} of {report['planned_runs']} planned runs "
               f"(`{report['command']}`), variants {report['variants']}."
               if report and not report["study_finished"] else "")
    text = (f"{title}\n\n`{results['command']}`: {wall}, {results['machine']}, load average "
            f"{results['load_average_start'][0]:.1f} at the start, {results['load_average_end'][0]:.1f} at the end."
            f"{partial}\n\n"
            f"Mean ± std over seeds {summary['seeds']} (accuracies and recalls in %, attention ratio in "
            f"multiples of uniform):\n\n{tables['study']}\n\nRandom-ranking R@1: {chance_note}.\n\n"
            f"Paired difference to siglip, mean [95 % t interval] over seeds; bold: the interval excludes 0:\n\n"
            f"{tables['differences']}\n\nImage-blind caption scorers fitted on the training captions (a split "
            f"solvable by a surface cue would be far from 50 %), mean over seeds, %:\n\n{tables['text_only']}\n\n"
            f"Per seed:\n\n{tables['seeds']}\n")
    (output_dir / "results.md").write_text(text)
    plot_study(output_dir / "results.png", seeds, summary, variants, metrics, title=title)
    first = list(seeds)[0]
    figure = attention_figure(output_dir / "attention.png", seeds[first], output_dir / f"seed_{first}" / "world",
                              ["siglip", "c2lip"] if {"siglip", "c2lip"} <= set(variants) else variants)
    print(f"\n{text}\nwrote {output_dir / 'results.json'}, results.md, results.png"
          f"{', attention.png' if figure else ''} ({wall})")
    return results
