"""``python -m open_clip_c2lip.demo``: build the world, train SigLIP and C2LIP, evaluate, report.

Both runs use the same world, seed, batch size, steps and schedule; they differ only in the loss
flags (``--siglip`` vs ``--c2lip-loss``). Outputs under ``--output-dir``: ``world/`` (shards and
held-out sets), ``logs/`` (open_clip_train logs and checkpoints), ``results.json``,
``results.md`` and ``results.png``.
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

from .evalsets import NEGATIVES
from .world import COLOURS, SHAPES, WorldSpec


@dataclass(frozen=True)
class Preset:
    """Budget-defining settings; ``default`` is sized for <= 10 min on a 2-core CPU."""
    num_train: int
    num_eval: int
    steps: int
    batch_size: int
    lr: float
    warmup: int


PRESETS = {
    "default": Preset(num_train=8192, num_eval=1000, steps=600, batch_size=64, lr=1e-3, warmup=50),
    "quick": Preset(num_train=512, num_eval=200, steps=40, batch_size=32, lr=1e-3, warmup=5),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="c2lip_demo", help="everything is written here (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run (tiny world, few steps)")
    parser.add_argument("--seed", type=int, default=0, help="world and training seed")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup", type=int, default=None, help="warmup steps")
    parser.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--num-train", type=int, default=None, help="distinct training images")
    parser.add_argument("--num-eval", type=int, default=None, help="held-out images")
    world = parser.add_argument_group("world (defaults: the world of benchmarks/demo.md)")
    world.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES))
    world.add_argument("--colours", nargs="+", default=None, choices=sorted(COLOURS))
    world.add_argument("--min-objects", type=int, default=None)
    world.add_argument("--max-objects", type=int, default=None)
    parser.add_argument("--xac-temperature", type=float, default=1.0, help="C2LIP --c2lip-xac-temperature")
    parser.add_argument("--xac-weight", type=float, default=0.01, help="C2LIP --c2lip-xac-weight")
    parser.add_argument("--npc-weight", type=float, default=1.0, help="C2LIP --c2lip-npc-weight")
    parser.add_argument("--workers", type=int, default=1, help="dataloader workers per run")
    parser.add_argument("--runs", nargs="+", default=["siglip", "c2lip"], choices=["siglip", "c2lip"])
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    for name, value in vars(preset).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    overrides = {"shapes": args.shapes, "colours": args.colours, "min_objects": args.min_objects,
                 "max_objects": args.max_objects}
    try:
        args.world = WorldSpec(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        parser.error(str(exc))
    if args.steps < 1 or args.batch_size < 1 or args.num_train < args.batch_size or args.num_eval < 2:
        parser.error("need steps >= 1, batch_size >= 1, num_train >= batch_size and num_eval >= 2")
    return args


def run_specs(args: argparse.Namespace, train_pattern: str) -> Dict[str, Any]:
    """The two runs' specs: identical data, seed and schedule; only the loss flags differ."""
    from .runs import RunSpec
    loss_args = {
        "siglip": ["--siglip"],
        "c2lip": ["--c2lip-loss", "--c2lip-npc-weight", str(args.npc_weight),
                  "--c2lip-xac-weight", str(args.xac_weight),
                  "--c2lip-xac-temperature", str(args.xac_temperature),
                  "--c2lip-max-concepts", str(args.world.max_objects)],
    }
    # No random resized crop: it would shift objects off the patch grid and blur the thin shapes
    # that make shapes as visible as colours (benchmarks/demo.md); both runs get the same input.
    # open_clip_train picks AdamW beta2/eps by model name ("vit" -> 0.98 / 1e-6, else 0.999 / 1e-8);
    # C2LIP-Tiny is a ViT whose name does not say so: pass the ViT values (those the world was tuned with).
    extra_args = ["--aug-cfg", "scale=(1.0,1.0)", "--beta2", "0.98", "--eps", "1e-6", "--wd", str(args.wd)]
    # one epoch of steps * batch samples: webdataset repeats the shards within the epoch as needed
    return {name: RunSpec(name=name, loss_args=loss_args[name], train_data=train_pattern,
                          train_num_samples=args.steps * args.batch_size, batch_size=args.batch_size,
                          lr=args.lr, warmup=args.warmup, seed=args.seed, workers=args.workers,
                          extra_args=extra_args)
            for name in args.runs}


def evaluate_checkpoint(checkpoint: Path, eval_root: str, splits: Sequence[str], progress: bool) -> Dict[str, Any]:
    """SugarCrepe-style accuracies (``open_clip_c2lip.eval``) and retrieval recall of one checkpoint."""
    from .. import eval as c2eval
    from .retrieval import evaluate_retrieval
    model, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", str(checkpoint))
    results = c2eval.evaluate(model, preprocess, tokenizer, ["sugarcrepe"], eval_root,
                              options={"sugarcrepe": {"splits": list(splits)}}, progress=progress)
    return {"sugarcrepe": results["sugarcrepe"],
            "retrieval": evaluate_retrieval(model, preprocess, tokenizer, eval_root, progress=progress)}


def machine_description() -> str:
    return f"{platform.machine()} CPU, {os.cpu_count()} cores, {platform.system()} (torch threads 1 per run)"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    progress = not args.no_progress
    if threading.current_thread() is threading.main_thread():
        # SIGTERM -> SystemExit, so runs.train stops its training subprocess instead of orphaning it
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from .build import build_world
    from .report import comparison_table, plot_results, write_results
    from .runs import read_train_log, train

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = args.world
    splits = list(NEGATIVES)
    timings: Dict[str, float] = {}

    start = time.perf_counter()
    world = build_world(output_dir / "world", spec, args.num_train, args.num_eval, args.seed, progress=progress)
    timings["world"] = time.perf_counter() - start

    splits = [split for split in splits if world.eval_counts[split] > 0]
    skipped = [split for split in NEGATIVES if split not in splits]
    if skipped:
        print(f"eval splits not applicable to this world (no scene can host their negative): {skipped}")
    logs_dir = str(output_dir / "logs")
    runs: Dict[str, Dict[str, Any]] = {}
    for name, run in run_specs(args, world.train_pattern).items():
        start = time.perf_counter()
        checkpoint = train(run, logs_dir, progress=progress)
        timings[f"train_{name}"] = time.perf_counter() - start
        start = time.perf_counter()
        runs[name] = evaluate_checkpoint(checkpoint, world.eval_root, splits, progress)
        timings[f"eval_{name}"] = time.perf_counter() - start
        runs[name].update(checkpoint=str(checkpoint), steps=run.steps, command=run.command(logs_dir),
                          curves=read_train_log(run, logs_dir).to_dict())

    table = comparison_table(runs, splits)
    title = (f"C2LIP-Tiny, {args.steps} steps x batch {args.batch_size}, seed {args.seed}, "
             f"{args.num_train} train / {args.num_eval} held-out images")
    results = {
        "settings": {k: v for k, v in vars(args).items() if k != "world"},
        "world": spec.to_dict(),
        "eval_counts": world.eval_counts,
        "splits_not_applicable": skipped,
        "machine": machine_description(),
        "timings_s": timings,
        "runs": runs,
        "table": table,
    }
    write_results(output_dir / "results.json", results)
    note = (f"\n\nNot applicable to this world (no held-out scene can host the negative): {', '.join(skipped)}."
            if skipped else "")
    (output_dir / "results.md").write_text(f"{title}\n\n{table}{note}\n")
    plot_results(output_dir / "results.png", runs, splits, title=title)
    print(f"\n{title}\n\n{table}\n\nwrote {output_dir / 'results.json'}, results.md, results.png "
          f"(total {sum(timings.values()):.0f} s)")
    return results
