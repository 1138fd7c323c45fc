"""``python -m open_clip_c2lip.demo``: build worlds, train SigLIP and C2LIP variants, evaluate, report.

``--seed W`` (default 0) trains SigLIP and C2LIP once on world W (training seed 0). The study:
``--seeds W1 W2 ...`` (world seeds: scenes, held-out colour-shape block, evaluation sets) x
``--train-seeds T1 T2 ...`` (``open_clip_train --seed T``: initialisation and data order) x
``--variants`` (default: the pre-registered siglip, c2lip and the control siglip_concepts). Every
variant of a world and training seed trains on the same shards in the same order; only the loss
flags differ. The pre-registered study (docs/demo_study.md):

    python -m open_clip_c2lip.demo --seeds 200 201 202 203 204 205 206 207 --train-seeds 0 1 --output-dir DIR

It prints the pre-registered analysis and its time estimate before it trains, saves every finished
run, and resumes where it stopped when rerun with the same arguments. The report averages the
training seeds within a world and compares variants over worlds (paired t and sign-flip tests,
bootstrap and t intervals, Holm-adjusted families; the spread within worlds is reported apart).

Outputs under ``--output-dir``: ``world_W/world`` (shards, held-out sets, ``world.json``),
``world_W/logs`` (open_clip_train logs and checkpoints), ``world_W/metrics`` (one JSON per finished
run), ``results.json`` (settings, environment, runs, summary), ``results.md``, ``results.png`` and
``attention.png`` (concept attention of C2LIP and SigLIP on a held-out image, and their difference).
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from ..fileio.atomic import write_text
from . import preregistration as prereg
from .variants import DEFAULT_SINGLE, VARIANTS, LossSettings, available
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
    "default": Preset(num_train=4096, num_eval=400, steps=900, batch_size=64, lr=1e-3, warmup=50),
    "quick": Preset(num_train=512, num_eval=100, steps=30, batch_size=32, lr=1e-3, warmup=5),
}

# settings that do not change any number (a resumed study may change them)
_RUNTIME_SETTINGS = ("parallel", "no_progress", "report_only", "output_dir")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="c2lip_demo", help="everything is written here (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (tiny world, few steps)")
    parser.add_argument("--seed", type=int, default=0, help="one world seed (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="the study's world seeds: one world per value, every variant and training seed on each")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=None,
                        help="open_clip_train --seed values, each trained on every world (default: 0)")
    parser.add_argument("--variants", "--runs", nargs="+", default=None, choices=list(VARIANTS),
                        help=f"variants to train (default: {' '.join(DEFAULT_SINGLE)} for one world, "
                             f"{' '.join(prereg.VARIANTS)} for --seeds): "
                             + "; ".join(f"{k}: {v.description}" for k, v in VARIANTS.items()))
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
    world.add_argument("--held-out-block", type=int, default=None,
                       help="K: K colours x K shapes never seen together in training (evaluated separately)")
    parser.add_argument("--xac-temperature", type=float, default=1.0, help="C2LIP --c2lip-xac-temperature")
    parser.add_argument("--xac-weight", type=float, default=0.01, help="C2LIP --c2lip-xac-weight")
    parser.add_argument("--npc-weight", type=float, default=1.0, help="C2LIP --c2lip-npc-weight")
    parser.add_argument("--workers", type=int, default=1, help="dataloader workers per run")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild results.md/.png from the finished runs in "
                             "<output-dir>/results.json (e.g. of a study stopped early), for the worlds where "
                             "every variant (default: every planned one, or --variants) finished")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for name, value in vars(preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    overrides = {"shapes": args.shapes, "colours": args.colours, "min_objects": args.min_objects,
                 "max_objects": args.max_objects, "grid": args.grid, "jitter": args.jitter,
                 "held_out_block": args.held_out_block}
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
    if args.train_seeds is None:
        args.train_seeds = [0]
    for flag, values in (("--seeds", args.seeds), ("--train-seeds", args.train_seeds)):
        if len(set(values)) != len(values):
            parser.error(f"{flag} repeats a seed: {values}")
    if args.report_only:
        return args  # worlds, seeds and variants come from the saved results
    if args.variants is None:
        args.variants = list(prereg.VARIANTS) if args.study else list(DEFAULT_SINGLE)
    missing = [v for v in args.variants if not available(v)]
    if missing:
        parser.error(f"variants {missing} need flags this plugin lacks: "
                     f"{[VARIANTS[v].requires_flag for v in missing]}")
    return args


def settings_of(args: argparse.Namespace):
    from .study import StudySettings
    spec = args.world
    return StudySettings(worlds=list(args.seeds), train_seeds=list(args.train_seeds), variants=list(args.variants),
                         world=spec, num_train=args.num_train, num_eval=args.num_eval, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, wd=args.wd,
                         loss=LossSettings(npc_weight=args.npc_weight, xac_weight=args.xac_weight,
                                           xac_temperature=args.xac_temperature, max_concepts=spec.max_objects,
                                           # balanced_scenes: every object count equally often
                                           concepts_per_image=(spec.min_objects + spec.max_objects) / 2),
                         workers=args.workers, parallel=args.parallel)


def _comparable(settings: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in settings.items() if k not in _RUNTIME_SETTINGS}


def is_preregistered(args: argparse.Namespace) -> bool:
    """Whether this command is the pre-registered study (its worlds, training seeds and variants, the
    default budget)."""
    budget = PRESETS["default"]
    return (tuple(args.seeds) == prereg.STUDY_WORLDS and tuple(args.train_seeds) == prereg.TRAIN_SEEDS
            and set(args.variants) == set(prereg.VARIANTS) and args.world == WorldSpec()
            and all(getattr(args, k) == v for k, v in vars(budget).items()))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    progress = not args.no_progress
    if threading.current_thread() is threading.main_thread():
        # SIGTERM -> SystemExit, so the training subprocesses are stopped instead of orphaned
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from .. import environment
    from .report import write_results
    from .runs import stop_all
    from .study import expected_seconds, finished_runs, run_study

    output_dir = Path(args.output_dir)
    if args.report_only:
        return report_only(args, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    command = "python -m open_clip_c2lip.demo " + " ".join(sys.argv[1:] if argv is None else argv)
    if set(prereg.VARIANTS) <= set(args.variants):
        print(prereg.text() + "\n", flush=True)
        if not is_preregistered(args):
            print("This command is not the pre-registered study (other worlds, training seeds, variants or "
                  "budget): its tests are exploratory.\n", flush=True)
    done = finished_runs(settings, output_dir)
    total = len(args.seeds) * len(args.train_seeds) * len(args.variants)
    expected = expected_seconds(settings, done)
    print(f"{len(args.seeds)} world(s) {args.seeds} x {len(args.train_seeds)} training seed(s) {args.train_seeds} x "
          f"{len(args.variants)} variant(s) {args.variants} = {total} runs of {args.steps} steps x batch "
          f"{args.batch_size}, {args.parallel} at a time; {done} finished earlier and reused: expected "
          f"~{expected / 60:.0f} min on an idle 2-core CPU (longer under load)", flush=True)
    env = environment.describe()
    env_line = environment.markdown(env)
    print(f"environment: {env_line}\n", flush=True)
    settings_record = {k: v for k, v in vars(args).items() if k != "world"}
    sitting = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "environment": env,
               "load_average_start": list(os.getloadavg()), "expected_s": expected, "reused_runs": done}
    sittings = []
    previous = output_dir / "results.json"
    if previous.is_file():
        saved = json.loads(previous.read_text())
        if _comparable(saved.get("settings", {})) == _comparable(json.loads(json.dumps(settings_record))):
            sittings = saved.get("sittings", [])
    sittings.append(sitting)
    results: Dict[str, Any] = {
        "command": command, "settings": settings_record, "world": args.world.to_dict(),
        "preregistered": is_preregistered(args), "preregistration": prereg.text(),
        "environment": env, "sittings": sittings,
    }
    start = time.perf_counter()

    def save_partial(worlds: Dict[int, Any]) -> None:
        sitting.update(elapsed_s=time.perf_counter() - start, load_average_now=list(os.getloadavg()))
        write_results(output_dir / "results.json", dict(results, worlds=worlds, finished=False))

    try:
        worlds = run_study(settings, output_dir, progress=progress, environment=env_line, on_update=save_partial)
    finally:
        stop_all()
    sitting.update(elapsed_s=time.perf_counter() - start, load_average_end=list(os.getloadavg()))
    results["finished"] = True
    return write_report(results, worlds, args.variants, args.train_seeds, output_dir)


def report_only(args: argparse.Namespace, output_dir: Path) -> Dict[str, Any]:
    """Tables and figures from the runs saved in ``<output_dir>/results.json`` (no training)."""
    from .analysis import complete_worlds
    source = output_dir / "results.json"
    if not source.is_file():
        raise SystemExit(f"--report-only: no {source}")
    saved = json.loads(source.read_text())
    worlds = {int(w): record for w, record in saved.get("worlds", {}).items()}
    train_seeds = saved["settings"]["train_seeds"]
    variants = args.variants or saved["settings"]["variants"]
    complete = complete_worlds(worlds, variants, train_seeds)
    if not complete:
        raise SystemExit(f"--report-only: {source} has no world where {variants} finished with training seeds "
                         f"{train_seeds}")
    finished = sum(len(record.get("runs", {})) for record in worlds.values())
    planned = len(saved["settings"]["seeds"]) * len(train_seeds) * len(saved["settings"]["variants"])
    results = dict(saved, report={"command": "python -m open_clip_c2lip.demo " + " ".join(sys.argv[1:]),
                                  "variants": variants, "finished_runs": finished, "planned_runs": planned,
                                  "complete_worlds": complete, "study_finished": bool(saved.get("finished"))})
    return write_report(results, worlds, variants, train_seeds, output_dir)


def _sittings_text(results: Mapping[str, Any]) -> str:
    from .. import environment
    lines = []
    for index, sitting in enumerate(results.get("sittings", []), 1):
        wall = f"{sitting['elapsed_s'] / 60:.0f} min" if sitting.get("elapsed_s") is not None else "—"
        loads = [sitting.get("load_average_start"), sitting.get("load_average_end") or sitting.get("load_average_now")]
        load = " → ".join(f"{l[0]:.1f}" for l in loads if l)
        lines.append(f"- sitting {index}: `{sitting['command']}`, started {sitting['started']}, {wall}, "
                     f"{sitting.get('reused_runs', 0)} runs reused, load average {load}; "
                     f"{environment.markdown(sitting['environment'])}")
    return "\n".join(lines)


def write_report(results: Dict[str, Any], worlds: Dict[int, Dict[str, Any]], variants: Sequence[str],
                 train_seeds: Sequence[int], output_dir: Path) -> Dict[str, Any]:
    """Summarize ``worlds`` over ``variants``; write results.json / .md / .png and attention.png."""
    from .analysis import metric_names, summarize
    from .figures import attention_figure, figure_rule, plot_study
    from .report import (DETERMINISM, blind_table, comparison_table, is_shown, ordered_metrics, run_table,
                         tests_table, variant_table, write_results)
    settings = results["settings"]
    summary = summarize(worlds, variants, train_seeds)
    metrics = ordered_metrics([m for m in metric_names(worlds) if is_shown(m)])
    results.update(worlds=worlds, summary=summary)
    title = (f"C2LIP-Tiny, {settings['steps']} steps x batch {settings['batch_size']}, worlds {summary['worlds']} "
             f"x training seeds {list(train_seeds)}, {settings['num_train']} train / {settings['num_eval']} held-out "
             f"images per set and world")
    chance = {}
    first = summary["per_variant"].get(variants[0], {})
    for metric, stats in first.items():
        if metric.endswith("chance_R@1"):
            chance[metric] = stats["mean"]
    tables = {
        "variants": variant_table(summary, variants, metrics),
        "comparisons": comparison_table(summary, metrics),
        "blind": blind_table(worlds),
        "runs": run_table(worlds, results["settings"]["variants"], train_seeds, metrics),
    }
    tests = summary.get("tests")
    if tests:
        tables["primary"] = tests_table(tests["primary"])
        tables["secondary"] = tests_table(tests["secondary"])
    results["tables"] = tables
    write_results(output_dir / "results.json", results)
    report = results.get("report")
    partial = (f"\n\nReport of {report['finished_runs']} of {report['planned_runs']} planned runs "
               f"(`{report['command']}`), complete worlds {report['complete_worlds']}, variants {report['variants']}."
               if report and not report["study_finished"] else "")
    sections = [title, f"`{results['command']}`{partial}", "Sittings (time, load, environment):\n\n"
                + _sittings_text(results), DETERMINISM]
    if tests:
        sections += [results["preregistration"],
                     f"## Primary endpoint (sign-flip test over worlds, Holm over {len(tests['primary'])})\n\n"
                     + tables["primary"],
                     f"## Secondary tests (paired t over worlds, Holm over {len(tests['secondary'])})\n\n"
                     + tables["secondary"]]
    chance_note = "; ".join(f"{m}: {100 * v:.1f} %" for m, v in chance.items())
    sections += [f"## Every variant\n\nMean over worlds of the world means (each the mean over training seeds) ± "
                 f"sd of the world means (pooled sd of the training seeds within a world); accuracies and recalls in "
                 f"%, attention ratio in multiples of uniform. Random-ranking R@1: {chance_note}.\n\n"
                 + tables["variants"],
                 "## Every comparison (unadjusted, descriptive)\n\n" + tables["comparisons"],
                 "## Image-blind rules (blind.py), % (mean over worlds, min–max)\n\nA split no surface cue separates "
                 "scores 50 under every rule; 0 and 100 are both cues.\n\n" + tables["blind"],
                 "## Every run\n\n" + tables["runs"]]
    text = "\n\n".join(sections) + "\n"
    write_text(str(output_dir / "results.md"), text)
    plot_study(output_dir / "results.png", worlds, summary, variants, metrics, title=title)
    shown = [v for v in ("c2lip", "siglip") if v in variants] or list(variants[:2])
    figure = attention_figure(output_dir / "attention.png", {w: worlds[w] for w in summary["worlds"]} or worlds,
                              output_dir, shown)
    print(f"\n{text}\nwrote {output_dir / 'results.json'}, results.md, results.png"
          f"{', attention.png (' + figure_rule() + ')' if figure else ''}")
    return results
