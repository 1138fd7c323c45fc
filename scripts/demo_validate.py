"""Choose the demo's settings on VALIDATION worlds: train one variant, evaluate every checkpoint.

The pre-registered study's worlds (``preregistration.STUDY_WORLDS``) are refused: every setting is
chosen on other worlds (``preregistration.VALIDATION_WORLDS``). For each world seed this builds the
world with the demo's own ``build_world`` (same defaults and flags as ``python -m
open_clip_c2lip.demo``), trains ``--variant`` with the demo's run spec for ``--steps`` steps split
into epochs of ``--every`` steps (one checkpoint per epoch; the cosine schedule spans all of them)
and prints one markdown row per checkpoint (benchmarks/demo.md, "The budget").

``python scripts/demo_validate.py --seeds 300 301 --steps 900 --every 300 --output-dir /tmp/demo_val``
"""
import argparse
import os
import sys
import time
from pathlib import Path

SHOWN = ("seen_pairs/replace_att", "seen_pairs/replace_obj", "seen_pairs/add_obj", "seen_pairs/swap_att",
         "seen_pairs/i2t_R@1", "unseen_pairs/replace_obj", "unseen_pairs/swap_att", "unseen_pairs/novel_half")


def main(argv=None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from open_clip_c2lip.demo import cli, preregistration
    from open_clip_c2lip.demo.analysis import run_name
    from open_clip_c2lip.demo.build import build_world
    from open_clip_c2lip.demo.report import format_metric
    from open_clip_c2lip.demo.runs import train
    from open_clip_c2lip.demo.study import evaluate_run, flatten_metrics, run_specs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=int, default=50, help="steps between checkpoints")
    parser.add_argument("--variant", default="siglip")
    own, rest = parser.parse_known_args(argv)
    args = cli.parse_args(rest)
    if set(args.seeds) & set(preregistration.STUDY_WORLDS):
        parser.error(f"worlds {preregistration.STUDY_WORLDS} are the study's: validate on other world seeds")
    if args.steps % own.every:
        parser.error("--steps must be a multiple of --every")
    settings = cli.settings_of(args)
    settings.variants = [own.variant]
    print("| world | train seed | step | " + " | ".join(SHOWN) + " | train s | load |")
    print("|" + "---|" * (len(SHOWN) + 5))
    for seed in args.seeds:
        out = Path(args.output_dir) / f"world_{seed}"
        world = build_world(out / "world", args.world, args.num_train, args.num_eval, seed, progress=False,
                            reuse=True)
        for train_seed in args.train_seeds:
            spec = run_specs(settings, train_seed, world.train_pattern)[run_name(own.variant, train_seed)]
            epochs = args.steps // own.every
            spec.epochs, spec.save_frequency = epochs, 1
            spec.train_num_samples = own.every * args.batch_size
            start = time.perf_counter()
            train(spec, str(out / "logs"), progress=not args.no_progress)
            train_s = time.perf_counter() - start
            for epoch in range(1, epochs + 1):
                checkpoint = out / "logs" / spec.name / "checkpoints" / f"epoch_{epoch}.pt"
                metrics = flatten_metrics(evaluate_run(checkpoint, world, args.world))
                print(f"| {seed} | {train_seed} | {epoch * own.every} | "
                      + " | ".join(format_metric(m, metrics.get(m)) for m in SHOWN)
                      + f" | {train_s:.0f} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
