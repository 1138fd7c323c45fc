#!/usr/bin/env python
"""Cost of the train reader's damage handling, as a ratio within one run.

Reads one local shard (``--samples`` samples of jpg / txt / json members, ``--image-bytes`` random
bytes per image) to the end with webdataset's ``tar_file_iterator`` (upstream's reader: ``tarfile``
stream mode, stops silently at a bad header or a cut) and with
``open_clip_c2lip.fileio.tar.iter_tar_stream_files`` (the C2LIP train reader: its own forward-only
header scan, ``fileio.tarscan``, resynchronising after damage; groups samples and judges the ones
next to damage; checks the end-of-archive blocks). Interleaved over ``--rounds``; min and median
seconds per pass, and CPU seconds.

    OMP_NUM_THREADS=1 python scripts/bench_shard_reader.py --output benchmarks/shard_reader.md
"""
import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path


def write_shard(path: Path, samples: int, image_bytes: int) -> str:
    with tarfile.open(path, "w") as tar:
        for index in range(samples):
            for name, data in ((f"k{index:06d}.jpg", os.urandom(image_bytes)), (f"k{index:06d}.txt", b"a dog on a mat"),
                               (f"k{index:06d}.json", b'{"concepts": ["a dog", "a mat"]}')):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-bytes", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    import webdataset
    from webdataset.tariterators import tar_file_iterator

    from open_clip_c2lip.fileio.tar import iter_tar_stream_files

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_shard(Path(tmp) / "bench.tar", args.samples, args.image_bytes)

        def upstream() -> int:
            with open(path, "rb") as f:
                return sum(1 for _ in tar_file_iterator(f))

        def c2lip() -> int:
            with open(path, "rb") as f:
                return sum(1 for _ in iter_tar_stream_files(f, path))

        readers = {"webdataset tar_file_iterator": upstream, "c2lip iter_tar_stream_files": c2lip}
        assert len({reader() for reader in readers.values()}) == 1  # warm-up; same files
        wall = {name: [] for name in readers}
        cpu = {name: [] for name in readers}
        for _ in range(args.rounds):
            for name, reader in readers.items():
                w, c = time.perf_counter(), time.process_time()
                reader()
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
        size_mb = os.path.getsize(path) / 2**20
    load_after = os.getloadavg()[0]
    (base, ours) = readers
    lines = [
        "# Train shard reader: cost of the damage handling", "",
        f"`OMP_NUM_THREADS=1 python scripts/bench_shard_reader.py` — one local shard, {args.samples} samples "
        f"x 3 members ({size_mb:.1f} MiB), read to the end, {args.rounds} interleaved rounds after a warm-up; "
        f"webdataset {webdataset.__version__}.",
        f"Machine: {os.cpu_count()}-core CPU box, load average {load_before:.1f} before / {load_after:.1f} after "
        "(shared: the ratio is the figure to read).", "",
        "| reader | min s / pass | median s / pass | median CPU s / pass |", "|---|---|---|---|",
    ]
    for name in readers:
        lines.append(f"| {name} | {min(wall[name]):.3f} | {statistics.median(wall[name]):.3f} | "
                     f"{statistics.median(cpu[name]):.3f} |")
    lines += ["", f"c2lip / webdataset: **{min(wall[ours]) / min(wall[base]):.3f}x** min wall, "
                  f"**{statistics.median(cpu[ours]) / statistics.median(cpu[base]):.3f}x** median CPU time"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
