#!/usr/bin/env python
"""Throughput of the compositionality eval: images/s and captions/s through ``eval.evaluate``.

Writes a stand-in ColorSwap root (``--pairs`` examples: 2 distinct ``--size`` JPEGs and 2 distinct
captions each) to a temporary folder and evaluates it with a random-init model (no weights are
downloaded), interleaving ``--rounds`` rounds after a warm-up. Reported: the whole ``evaluate``
call per image (reading the annotation, decoding, preprocessing, encoding the images and the
captions, scoring), and to show where its time goes, decoding + preprocessing alone (the
DataLoader without the model), image encoding (``encode_images``) and caption encoding
(``encode_texts``).

    OMP_NUM_THREADS=1 python scripts/bench_eval.py --output benchmarks/eval_throughput.md
    python scripts/bench_eval.py --device cuda --model ViT-B-16 --precision amp_bf16 \\
        --batch-size 256 --workers 8 --pairs 2000      # on a GPU node (prints this line too)

``ViT-B-16`` (random init) stands in for a B/16 model with open_clip's bundled tokenizer, so nothing
is downloaded; a SigLIP tokenizer would come from the Hugging Face Hub.
"""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

GPU_COMMAND = ("python scripts/bench_eval.py --device cuda --model ViT-B-16 --precision amp_bf16 "
               "--batch-size 256 --workers 8 --pairs 2000 --output benchmarks/eval_throughput_gpu.md")
EVAL_GPU_COMMAND = ("python -m open_clip_c2lip.eval --model ViT-B-16-SigLIP --pretrained CKPT --device cuda "
                    "--precision fp32 --batch-size 256 --workers 8 --benchmark all --data-root ROOT "
                    "--output results.json --csv row.csv")


def write_root(root: Path, pairs: int, size) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    folder = root / "colorswap"
    (folder / "images").mkdir(parents=True)
    items = []
    colours = ["red", "blue", "green", "yellow", "white", "black", "pink", "brown"]
    for i in range(pairs):
        for k in (1, 2):
            blocks = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
            pixels = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))
            pixels = (pixels.astype(np.int16) + rng.integers(-20, 20, pixels.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"img_{i}_{k}.jpg", quality=90)
        a, b = colours[i % 8], colours[(i // 8 + 1 + i) % 8]
        items.append({"id": i, "caption_1": f"a {a} cup on a {b} table number {i}",
                      "caption_2": f"a {b} cup on a {a} table number {i}", "image_1": f"images/img_{i}_1.jpg",
                      "image_2": f"images/img_{i}_2.jpg", "image_source": "stand-in", "caption_source": "stand-in"})
    (folder / "test.json").write_text(json.dumps(items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="C2LIP-Tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "amp", "amp_bf16"])
    parser.add_argument("--pairs", type=int, default=256, help="ColorSwap examples (2 images, 2 captions each)")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="markdown file for the table")
    parser.add_argument("--append", action="store_true", help="append to --output (another model's section)")
    args = parser.parse_args()

    import torch
    from open_clip_c2lip import environment
    from open_clip_c2lip.eval import ImageRef, encode_images, encode_texts, evaluate, load_model
    from open_clip_c2lip.eval.encode import _ImageDataset

    load_before = os.getloadavg()
    model, preprocess, tokenizer = load_model(args.model, None, device=args.device)
    n_images, n_texts = 2 * args.pairs, 2 * args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_root(root, args.pairs, tuple(args.size))
        refs = [ImageRef(p) for p in sorted((root / "colorswap" / "images").iterdir())]

        def full(workers):
            evaluate(model, preprocess, tokenizer, ["colorswap"], root, device=args.device,
                     precision=args.precision, batch_size=args.batch_size, workers=workers, progress=False)

        def decode(workers):
            loader = torch.utils.data.DataLoader(_ImageDataset(refs, preprocess), batch_size=args.batch_size,
                                                 num_workers=workers)
            for _ in loader:
                pass

        def images(workers):
            encode_images(model, preprocess, refs, device=args.device, precision=args.precision,
                          batch_size=args.batch_size, workers=workers, progress=False)

        def texts(workers):
            encode_texts(model, tokenizer, captions, device=args.device, precision=args.precision,
                         batch_size=args.batch_size, progress=False)

        captions = [c for item in json.loads((root / "colorswap" / "test.json").read_text())
                    for c in (item["caption_1"], item["caption_2"])]
        # (row name, function, workers, items counted, unit)
        settings = [(f"evaluate (images + captions + scoring), workers={w}", full, w, n_images, "images/s")
                    for w in args.workers]
        settings += [(f"decode + preprocess only, workers={w}", decode, w, n_images, "images/s")
                     for w in args.workers]
        settings += [(f"encode_images (decode + model), workers={w}", images, w, n_images, "images/s")
                     for w in args.workers]
        settings += [("encode_texts (tokenize + model)", texts, 0, n_texts, "captions/s")]
        full(args.workers[0])  # warm-up
        times = {name: [] for name, *_ in settings}
        cpu = {name: [] for name, *_ in settings}
        for _ in range(args.rounds):
            for name, fn, workers, _, _ in settings:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(workers)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    load_after = os.getloadavg()
    env = environment.describe()
    lines = [
        f"# Compositionality eval throughput: {args.model}, {args.device}",
        "",
        f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python scripts/bench_eval.py --model {args.model} "
        f"--device {args.device} --precision {args.precision} --pairs {args.pairs} --size {args.size[0]} "
        f"{args.size[1]} --batch-size {args.batch_size} --workers {' '.join(map(str, args.workers))} "
        f"--rounds {args.rounds}`",
        "",
        f"Stand-in ColorSwap root: {n_images} distinct {args.size[0]}x{args.size[1]} JPEGs and {n_texts} distinct "
        f"captions; random-init {args.model}, {args.precision}; median of {args.rounds} interleaved rounds after a "
        f"warm-up. Load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"({env['cpu_count']} CPUs, shared: read the rows as ratios within this run).",
        "",
        "| setting | median s | min s | throughput (median) | main-process CPU s (median) |",
        "|---|---|---|---|---|",
    ]
    for name, _, workers, count, unit in settings:
        median = statistics.median(times[name])
        cpu_s = f"{statistics.median(cpu[name]):.3f}" + (" (+ worker)" if workers else "")
        lines.append(f"| {name} | {median:.3f} | {min(times[name]):.3f} | {count / median:.1f} {unit} | {cpu_s} |")
    lines += ["", f"Environment: {environment.markdown(env)}", "", "On a GPU node:", "", "```bash", GPU_COMMAND,
              EVAL_GPU_COMMAND, "```", ""]
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "a" if args.append else "w", encoding="utf-8") as f:
            f.write(("\n" if args.append else "") + text)


if __name__ == "__main__":
    main()
