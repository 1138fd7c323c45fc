#!/usr/bin/env python
"""CPU step time of open_clip_train's ``--precision`` choices: the real training entry point
(``python -m open_clip_c2lip.train`` = ``open_clip_train.main`` with the plugin), synthetic data.

open_clip_train's default ``--precision amp`` is fp16 autocast (``precision.get_autocast``), also
on CPU, where fp16 matmuls are slow. Each precision trains in a fresh process; the precisions are
interleaved over ``--rounds``. Step time = upstream's own ``Batch (t)`` log value with
``--log-every-n-steps 1`` (one step per log window), the first step of each run dropped (warm-up).
The ratio to the first precision is taken within each round (the box is shared and noisy)::

    OMP_NUM_THREADS=1 python scripts/bench_precision.py --precisions amp fp32 --steps 10 --rounds 2
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

STEP_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["amp", "fp32"])
    parser.add_argument("--model", default="C2LIP-Tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (first one dropped)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training runs")
    parser.add_argument("--no-c2lip", action="store_true", help="plain --siglip instead of --c2lip-loss")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    return parser.parse_args(argv)


def train_command(args: argparse.Namespace, precision: str, logs: Path) -> List[str]:
    return [sys.executable, "-m", "open_clip_c2lip.train",
            "--model", args.model, "--siglip" if args.no_c2lip else "--c2lip-loss",
            "--dataset-type", "synthetic", "--train-num-samples", str(args.batch_size * args.steps),
            "--batch-size", str(args.batch_size), "--epochs", "1", "--workers", "0",
            "--lr", "1e-4", "--warmup", "1", "--beta2", "0.98", "--eps", "1e-6", "--seed", "0",
            "--precision", precision, "--device", "cpu", "--log-every-n-steps", "1",
            "--save-frequency", "0", "--zeroshot-frequency", "0", "--logs", str(logs), "--name", "run"]


def run_once(args: argparse.Namespace, precision: str, workdir: Path) -> List[float]:
    """Seconds per step (upstream's log) of one fresh training run, the first step dropped."""
    logs = workdir / f"{precision}-{len(list(workdir.iterdir()))}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(train_command(args, precision, logs), env=env, capture_output=True, text=True)
    log_file = logs / "run" / "out.log"
    text = log_file.read_text() if log_file.is_file() else ""
    if proc.returncode != 0 or not text:
        raise RuntimeError(f"--precision {precision} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    times = [float(t) for t in STEP_TIME.findall(text)]
    if len(times) != args.steps:
        raise RuntimeError(f"--precision {precision}: {len(times)} step times logged, expected {args.steps}")
    return times[1:]


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    base = args.precisions[0]
    times: Dict[str, List[float]] = {p: [] for p in args.precisions}
    ratios: Dict[str, List[float]] = {p: [] for p in args.precisions}
    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        for round_index in range(args.rounds):
            shift = round_index % len(args.precisions)
            medians = {}
            for precision in args.precisions[shift:] + args.precisions[:shift]:
                run = run_once(args, precision, Path(tmp))
                times[precision] += run
                medians[precision] = statistics.median(run)
                print(f"round {round_index} --precision {precision}: median {medians[precision]:.3f} s/step, "
                      f"load {_load()}", file=sys.stderr, flush=True)
            for precision, median in medians.items():
                ratios[precision].append(median / medians[base])
    loss = "--siglip" if args.no_c2lip else "--c2lip-loss"
    lines = [
        f"`{args.model}` {loss}, batch {args.batch_size}, synthetic data, CPU, OMP_NUM_THREADS={args.threads}; "
        f"{args.steps} steps per run (first dropped) x {args.rounds} interleaved rounds, each run a fresh "
        f"`python -m open_clip_c2lip.train` process; step time = open_clip_train's `Batch (t)`. "
        f"Load average (1/5/15 min) at start {load_start}, at end {_load()}.",
        "",
        f"| --precision | s/step (median) | s/step (min) | vs {base} (pooled medians) | vs {base} per round (min-max) |",
        "|---|---|---|---|---|",
    ]
    base_median = statistics.median(times[base])
    for precision in args.precisions:
        median = statistics.median(times[precision])
        lines.append(f"| {precision} | {median:.2f} | {min(times[precision]):.2f} | {median / base_median:.2f}x | "
                     f"{min(ratios[precision]):.2f}-{max(ratios[precision]):.2f}x |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
