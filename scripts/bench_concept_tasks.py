#!/usr/bin/env python
"""Concepts CLI throughput when the inputs are split over K tasks (a cluster array), in CPU seconds.

Writes the COCO captions (``--captions``) into ``--shards`` webdataset shards (1 KB dummy images),
then for each K in ``--tasks`` runs the K tasks (``--task-index I --task-count K``) one after
another, each a fresh ``python -m open_clip_c2lip.concepts`` process, as array tasks are: interpreter
start, imports, spaCy load, its share. Reports each K's total CPU seconds (user + sys of the task
processes and their workers) and wall seconds, the captions per CPU second, and, from the totals at
two values of K, the fixed cost of one task and the rate of the work itself (``total = K * fixed +
captions / rate``). Checks that every K writes byte-identical outputs::

    OMP_NUM_THREADS=1 python scripts/bench_concept_tasks.py --output benchmarks/concept_tasks.md

The captions come from ``$C2LIP_TEST_DATA/coco_captions_val2017.json`` (default folder: the
repository's sibling ``shared/data``), or ``--captions``.
"""
import argparse
import hashlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("C2LIP_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
DEFAULT_CAPTIONS = DATA / "coco_captions_val2017.json"


def write_shards(folder: Path, captions, count: int) -> str:
    per = -(-len(captions) // count)
    for shard in range(count):
        with tarfile.open(folder / f"{shard:06d}.tar", "w") as tar:
            for index, caption in enumerate(captions[shard * per:(shard + 1) * per], start=shard * per):
                for extension, data in (("jpg", b"\xff" * 1024), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"k{index:07d}.{extension}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / ("{%06d..%06d}.tar" % (0, count - 1)))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average %.2f, %.2f, %.2f" % os.getloadavg()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.glob("*.tar")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def fit(k1: int, cpu1: float, k2: int, cpu2: float, captions: int) -> tuple:
    """``(fixed, rate)`` of ``total CPU s = K * fixed + captions / rate`` through two measurements
    (``K`` tasks took ``cpu`` CPU seconds): CPU s per task, captions per CPU s."""
    fixed = (cpu2 - cpu1) / (k2 - k1) if k2 != k1 else float("nan")
    work = cpu1 - k1 * fixed
    return fixed, captions / work if work > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default=str(DEFAULT_CAPTIONS), help="COCO captions JSON")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=1, help="measure every K this many times")
    parser.add_argument("--limit", type=int, default=None, help="use the first N captions (default all)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    with open(args.captions) as f:
        captions = [a["caption"] for a in sorted(json.load(f)["annotations"], key=lambda a: a["id"])]
    captions = captions[:args.limit]
    uptime_before = uptime()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows, digests, fits = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        pattern = write_shards(Path(tmp), captions, args.shards)
        for repeat in range(args.repeats):
            measured = []
            for count in args.tasks:
                out = Path(tmp) / f"out-{repeat}-{count}"
                load, cpu, wall = os.getloadavg()[0], children_cpu(), time.perf_counter()
                for index in range(count):
                    subprocess.run([sys.executable, "-m", "open_clip_c2lip.concepts", pattern, "--output-dir",
                                    str(out), "--quiet", "--task-index", str(index), "--task-count", str(count)],
                                   env=env, check=True, stdout=subprocess.DEVNULL)
                measured.append((count, children_cpu() - cpu))
                rows.append((repeat, count, children_cpu() - cpu, time.perf_counter() - wall, load,
                             os.getloadavg()[0]))
                digests[repeat, count] = digest(out)
            fits.append(fit(*measured[0], *measured[-1], len(captions)))
    k1, k2 = args.tasks[0], args.tasks[-1]
    from open_clip_c2lip.environment import describe

    command = "OMP_NUM_THREADS=1 python scripts/bench_concept_tasks.py " + " ".join(sys.argv[1:])
    lines = [
        "# Concepts CLI over K tasks (`scripts/bench_concept_tasks.py`)", "",
        f"Command: `{command}`", "",
        f"{len(captions)} COCO val2017 captions in {args.shards} shards (1 KB dummy images); the K tasks of each row "
        "run one after another, each a fresh process (interpreter, imports, spaCy load, its share), "
        "OMP_NUM_THREADS=1, `--processes 1`.",
        f"Machine: {platform.machine()} CPU box, {os.cpu_count()} cores visible, shared with other jobs (load "
        "average before / after each row below): CPU seconds are the figure to read, wall seconds are inflated.", "",
        "| round | K tasks | CPU s (all tasks) | wall s | captions / CPU s | load before / after |",
        "|---|---|---|---|---|---|",
    ]
    for repeat, count, cpu, wall, before, after in rows:
        lines.append(f"| {repeat} | {count} | {cpu:.1f} | {wall:.1f} | {len(captions) / cpu:.0f} | "
                     f"{before:.1f} / {after:.1f} |")
    lines += ["", f"Per round, from K = {k1} and K = {k2} (`total CPU s = K * fixed + captions / rate`):", ""]
    lines += [f"- round {i}: fixed cost of one task {fixed:.1f} CPU s, the work itself {rate:.0f} captions per CPU "
              "second" for i, (fixed, rate) in enumerate(fits)]
    rates = sorted(rate for _, rate in fits)
    lines += [
        "",
        f"Captions per CPU second of the work itself: **{statistics.mean(rates):.0f}** (mean of {len(rates)} "
        f"round(s), range {rates[0]:.0f}-{rates[-1]:.0f}); fixed cost of one task "
        f"{statistics.mean(f for f, _ in fits):.1f} CPU s.",
        f"Outputs byte-identical for every K and round: {len(set(digests.values())) == 1}.", "",
        f"`uptime` before: `{uptime_before}`", "",
        f"`uptime` after: `{uptime()}`", "",
        "Environment (`open_clip_c2lip.environment.describe()`):", "", "```",
        json.dumps(describe(), indent=1), "```",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
