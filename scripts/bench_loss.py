"""Benchmark the xac term: closed form (``open_clip_c2lip.loss.xac_similarity``) vs the authors'
per-concept loop, and vs a matmul-only lower bound with the same large products.

Each case (method x N) runs in a fresh subprocess so its peak memory is its own: on CPU the extra
peak RSS over the RSS before the measured run (``getrusage`` max RSS minus ``/proc/self/statm``), on
CUDA ``max_memory_allocated`` minus the allocation before it. Times are forward + backward of the
xac similarities ``[M, N]`` with a fixed upstream gradient; medians over ``--rounds`` subprocess
rounds (each the median of ``--repeats`` warm runs). The loop is slow: with ``--loop-concepts K`` it
runs only K concepts and its time and memory are extrapolated linearly to N (marked in the table).

    python scripts/bench_loss.py                       # CPU, writes benchmarks/bench_loss.md
    python scripts/bench_loss.py --device cuda --output benchmarks/bench_loss_cuda.md
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("closed_form", "closed_form_low_budget", "matmul_bound", "loop")


def loop_xac_similarity(image_tokens, concepts, temperature):
    """The authors' algorithm (a Python loop over concepts, autograd), written from METHOD.md §4."""
    import torch
    import torch.nn.functional as F

    rows, _, dim = image_tokens.shape
    columns = []
    for concept in concepts:
        query = concept.expand(rows, dim).unsqueeze(2)  # [M, D, 1]
        scores = torch.bmm(image_tokens, query).squeeze(2)  # [M, T]
        attention = torch.softmax(temperature * scores, dim=1)
        pooled = torch.bmm(attention.unsqueeze(1), image_tokens).squeeze(1)  # [M, D]
        columns.append((F.normalize(pooled, dim=-1, eps=1e-8) * concept).sum(-1))
    return torch.stack(columns, 1)


def matmul_bound(image_tokens, concepts):
    """Only the large products the closed form needs, each once and unchunked: scores S, the
    backward's dV and dC, the Gram matrix, H = G A (forward) and sum_n A A^T (backward)."""
    import torch

    rows, tokens, dim = image_tokens.shape
    flat = image_tokens.reshape(rows * tokens, dim)
    scores = flat @ concepts.T  # [M*T, N]
    grad_tokens = scores @ concepts
    grad_concepts = scores.T @ flat
    gram = torch.bmm(image_tokens, image_tokens.transpose(1, 2))
    attention = scores.view(rows, tokens, -1)
    gram_attention = torch.bmm(gram, attention)
    grad_gram = torch.bmm(attention, attention.transpose(1, 2))
    return grad_tokens, grad_concepts, gram_attention, grad_gram


def _current_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_case(case):
    """One measurement in this process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    generator = torch.Generator(device=device).manual_seed(0)
    rows, tokens, dim, num_concepts = case["rows"], case["tokens"], case["dim"], case["concepts"]
    run_concepts = min(num_concepts, case["loop_concepts"] or num_concepts) if case["method"] == "loop" \
        else num_concepts
    # In-place normalization keeps the set-up free of transient peaks that would hide the run's.
    image_tokens = torch.randn(rows, tokens, dim, generator=generator, device=device)
    image_tokens /= image_tokens.norm(dim=-1, keepdim=True)
    concepts = torch.randn(run_concepts, dim, generator=generator, device=device)
    concepts /= concepts.norm(dim=-1, keepdim=True)
    upstream = torch.randn(rows, run_concepts, generator=generator, device=device)

    def once(concepts=concepts, upstream=upstream):
        if case["method"] == "matmul_bound":
            matmul_bound(image_tokens, concepts)
            return
        tokens_leaf = image_tokens.requires_grad_()
        concepts_leaf = concepts.requires_grad_()
        if case["method"] == "loop":
            similarity = loop_xac_similarity(tokens_leaf, concepts_leaf, case["temperature"])
        else:
            from open_clip_c2lip.loss import xac_similarity
            similarity = xac_similarity(tokens_leaf, concepts_leaf, case["temperature"],
                                        memory_budget_mb=_budget(case))
        similarity.backward(upstream)
        tokens_leaf.grad = concepts_leaf.grad = None

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up on a few concepts (kernel selection, thread pools), then the first full run: peak memory.
    once(concepts[:4].detach(), upstream[:, :4])
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    start = time.perf_counter()
    once()
    sync()
    first_time = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    extra_peak = max(peak - base, 0)

    times = [first_time]
    if case["method"] != "loop":  # the loop's one (long) run is its timing
        times = []
        for _ in range(case["repeats"]):
            sync()
            start = time.perf_counter()
            once()
            sync()
            times.append(time.perf_counter() - start)

    result = dict(case, run_concepts=run_concepts, time_s=statistics.median(times),
                  extra_peak_mb=extra_peak / 2 ** 20)
    if case["method"].startswith("closed_form"):
        from open_clip_c2lip.loss import xac_memory_plan
        result["plan"] = dict(xac_memory_plan(rows, tokens, num_concepts, _budget(case))._asdict(),
                              budget_mb=_budget(case))
    if case["method"] == "loop" and case["check"]:
        result["max_abs_diff"] = _agreement(image_tokens.detach(), concepts.detach(), upstream, case)
    return result


def _budget(case):
    return case["low_budget_mb"] if case["method"] == "closed_form_low_budget" else case["budget_mb"]


def _agreement(image_tokens, concepts, upstream, case):
    """Max |difference| of similarities and gradients, closed form vs loop, on a few concepts."""
    from open_clip_c2lip.loss import xac_similarity

    concepts = concepts[:case["check"]]
    upstream = upstream[:, :case["check"]]
    outputs = []
    for fn in (loop_xac_similarity, xac_similarity):
        tokens_leaf = image_tokens.clone().requires_grad_()
        concepts_leaf = concepts.clone().requires_grad_()
        similarity = fn(tokens_leaf, concepts_leaf, case["temperature"])
        similarity.backward(upstream)
        outputs.append((similarity.detach(), tokens_leaf.grad, concepts_leaf.grad))
    return max((a - b).abs().max().item() for a, b in zip(*outputs))


def run_in_subprocess(case):
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), OPEN_CLIP_C2LIP_DISABLE="1")
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(results, args):
    """Median per (N, method); the loop is scaled linearly from run_concepts to N."""
    table = {}
    for num_concepts in args.concepts:
        for method in METHODS:
            runs = [r for r in results if r["concepts"] == num_concepts and r["method"] == method]
            if not runs:
                continue
            scale = num_concepts / runs[0]["run_concepts"]
            table[num_concepts, method] = {
                "time_s": statistics.median(r["time_s"] for r in runs) * scale,
                "extra_peak_mb": statistics.median(r["extra_peak_mb"] for r in runs) * scale,
                "runs": len(runs),
                "extrapolated_from": runs[0]["run_concepts"] if scale != 1 else None,
                "plan": runs[0].get("plan"),
                "max_abs_diff": max((r["max_abs_diff"] for r in runs if "max_abs_diff" in r), default=None),
            }
    return table


def write_markdown(table, args, path):
    import torch

    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = f"2-core CPU dev box ({platform.processor() or platform.machine()}, {args.threads} torch threads)"
    lines = [
        "# xac term: closed form vs per-concept loop vs matmul lower bound",
        "",
        f"Machine: {machine}; torch {torch.__version__}; fp32. Shapes: M={args.rows} local image rows, "
        f"T={args.tokens} tokens, D={args.dim}. Forward + backward of the xac similarities `[M, N]` "
        f"(`scripts/bench_loss.py`). Closed form: `xac_similarity` with its default "
        f"{args.budget_mb:g} MB budget, and with a {args.low_budget_mb:g} MB budget where that changes "
        f"the plan. Times are medians over {args.rounds} fresh-process rounds (each "
        f"the median of {args.repeats} warm runs; the loop: one run per round). Extra peak memory: "
        + ("`max_memory_allocated` over the allocation before the run."
           if args.device == "cuda" else
           "peak RSS (`getrusage`) over the RSS before the first full run (after a 4-concept warm-up), in a fresh process."),
        "",
        "| N | method | fwd+bwd time (s) | loop / this | this / matmul bound | extra peak memory (MB) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for num_concepts in args.concepts:
        loop = table.get((num_concepts, "loop"))
        bound = table.get((num_concepts, "matmul_bound"))
        for method in METHODS:
            row = table.get((num_concepts, method))
            if row is None:
                continue
            speedup = f"{loop['time_s'] / row['time_s']:.0f}x" if loop and method.startswith("closed") else "-"
            ratio = f"{row['time_s'] / bound['time_s']:.2f}x" if bound else "-"
            notes = []
            if row["plan"]:
                notes.append(f"budget {row['plan']['budget_mb']:g} MB: chunk {row['plan']['chunk_size']}, "
                             + ("S, A, H kept for backward" if row["plan"]["keep"] else "backward recomputes"))
            if row["extrapolated_from"]:
                notes.append(f"**extrapolated linearly from {row['extrapolated_from']} concepts**")
            if row["max_abs_diff"] is not None:
                notes.append(f"max abs diff vs closed form {row['max_abs_diff']:.1e}")
            memory = "-" if method == "matmul_bound" else f"{row['extra_peak_mb']:.0f}"
            lines.append(f"| {num_concepts} | {method} | {row['time_s']:.2f} | {speedup} | {ratio} | "
                         f"{memory} | {'; '.join(notes)} |")
    lines += ["", "Targets: closed form >= 50x faster than the loop, <= 2.5x the matmul bound, <= 2 GB "
              "extra peak memory at N=2304.", ""]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--concepts", type=int, nargs="+", default=[288, 2304])
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--budget-mb", type=float, default=None, help="closed-form budget (library default)")
    parser.add_argument("--low-budget-mb", type=float, default=256.0,
                        help="budget of the closed_form_low_budget case (forces chunks + recompute at N=2304)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-rounds", type=int, default=1)
    parser.add_argument("--loop-concepts", type=int, default=288,
                        help="concepts the loop really runs; its cost is extrapolated to N (0: all)")
    parser.add_argument("--check", type=int, default=16, help="concepts compared closed form vs loop (0: skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="benchmarks/bench_loss.md")
    parser.add_argument("--raw", default=None, help="also write the raw per-run JSON here")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.budget_mb is None:
        from open_clip_c2lip.loss import XAC_MEMORY_BUDGET_MB
        args.budget_mb = XAC_MEMORY_BUDGET_MB
    base = {k: getattr(args, k) for k in ("device", "rows", "tokens", "dim", "temperature", "repeats",
                                          "loop_concepts", "check", "threads", "budget_mb", "low_budget_mb")}
    from open_clip_c2lip.loss import xac_memory_plan

    results = []
    for round_index in range(args.rounds):
        for num_concepts in args.concepts:
            same_plan = (xac_memory_plan(args.rows, args.tokens, num_concepts, args.budget_mb)
                         == xac_memory_plan(args.rows, args.tokens, num_concepts, args.low_budget_mb))
            for method in METHODS:
                if method == "loop" and round_index >= args.loop_rounds:
                    continue
                if method == "closed_form_low_budget" and same_plan:
                    continue
                result = run_in_subprocess(dict(base, method=method, concepts=num_concepts))
                print(f"round {round_index} N={num_concepts} {method}: {result['time_s']:.3f} s "
                      f"({result['run_concepts']} concepts), +{result['extra_peak_mb']:.0f} MB", flush=True)
                results.append(result)
    if args.raw:
        Path(args.raw).write_text(json.dumps(results, indent=1))
    write_markdown(summarize(results, args), args, args.output)


if __name__ == "__main__":
    main()
