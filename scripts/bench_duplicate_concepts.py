"""Benchmark ``C2LIPLoss(duplicate_concepts="ignore")`` against the default ``"negative"`` rule.

Forward + backward of the whole loss (contrastive, npc, xac) on one process, fp32, with concept ids
drawn from ``--distinct`` texts so that most concepts have duplicates. The two rules are timed in
alternation (``--repeats`` pairs after two warm-up pairs), so their ratio is a paired measurement
that survives a shared, noisy machine. Writes a markdown table (``--output``).

    OMP_NUM_THREADS=1 python scripts/bench_duplicate_concepts.py
"""
import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from open_clip_c2lip.loss import C2LIPLoss


def make_batch(batch, slots, tokens, dim, length, distinct, seed=0):
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=g), dim=-1)

    ids = torch.randint(1, distinct + 1, (batch, slots, 1), generator=g).expand(batch, slots, length).contiguous()
    return dict(image_features=unit(batch, dim), text_features=unit(batch, dim), image_tokens=unit(batch, tokens, dim),
                concept_features=unit(batch, slots, dim), concept_mask=torch.ones(batch, slots, dtype=torch.bool),
                concept_ids=ids, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))


def step(loss_fn, batch) -> float:
    inputs = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in batch.items()}
    start = time.perf_counter()
    loss_fn(**inputs).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--concepts-per-image", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--distinct", type=int, default=50, help="distinct concept texts in the batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_duplicate_concepts.md"))
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    batch = make_batch(args.batch_size, args.concepts_per_image, args.tokens, args.dim, args.context_length, args.distinct)
    rules = {rule: C2LIPLoss(duplicate_concepts=rule) for rule in ("negative", "ignore")}
    times = {rule: [] for rule in rules}
    for index in range(args.repeats + 2):
        for rule, loss_fn in rules.items():
            elapsed = step(loss_fn, batch)
            if index >= 2:
                times[rule].append(elapsed)
    median = {rule: statistics.median(values) for rule, values in times.items()}
    load = os.getloadavg()
    num_concepts = args.batch_size * args.concepts_per_image
    lines = [
        "# duplicate_concepts: 'ignore' vs 'negative'", "",
        f"`OMP_NUM_THREADS={torch.get_num_threads()} python scripts/bench_duplicate_concepts.py` — M = {args.batch_size} images, "
        f"N = {num_concepts} concepts ({args.distinct} distinct texts), T = {args.tokens}, D = {args.dim}, ids of length "
        f"{args.context_length}, fp32, forward + backward of the whole C2LIPLoss, {args.repeats} alternating pairs.", "",
        f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at the end.", "",
        "| rule | median (s) | min (s) | vs negative |", "|---|---|---|---|",
    ]
    for rule in rules:
        lines.append(f"| {rule} | {median[rule]:.3f} | {min(times[rule]):.3f} | {median[rule] / median['negative']:.3f}× |")
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
