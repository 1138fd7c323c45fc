"""Benchmark the xac term: closed form (``open_clip_c2lip.xac.xac_similarity``) vs the authors'
per-concept loop, and vs a matmul-only lower bound with the same large products.

Each case (method x N) runs in a fresh subprocess so its peak memory is its own: on CPU the extra
peak RSS over the RSS before the measured run (``getrusage`` max RSS minus ``/proc/self/statm``), on
CUDA ``max_memory_allocated`` minus the allocation before it. Times are forward + backward of the
xac similarities ``[M, N]`` with a fixed upstream gradient. The closed form and the matmul bound are
timed in alternation inside one process (``--repeats`` pairs), so their ratio is a paired
measurement that survives a shared, noisy machine; medians over ``--rounds`` subprocess rounds. The
loop is slow: with ``--loop-concepts K`` it runs only K concepts and its time and memory are
extrapolated linearly to N (marked in the table).

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

METHODS = ("closed_form", "closed_form_low_budget", "loop")


def loop_xac_similarity(image_tokens, concepts, temperature):
    """The authors' algorithm (a Python loop over concepts, autograd), written from docs/method.md §3."""
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


def _budget(case):
    return case["low_budget_mb"] if case["method"] == "closed_form_low_budget" else case["budget_mb"]


def run_case(case):
    """One measurement in this process; returns a JSON-able dict."""
    import torch

    from open_clip_c2lip.xac import xac_memory_plan, xac_similarity

    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    generator = torch.Generator(device=device).manual_seed(0)
    rows, tokens, dim, num_concepts = case["rows"], case["tokens"], case["dim"], case["concepts"]
    is_loop = case["method"] == "loop"
    run_concepts = min(num_concepts, case["loop_concepts"] or num_concepts) if is_loop else num_concepts
    # In-place normalization keeps the set-up free of transient peaks that would hide the run's.
    image_tokens = torch.randn(rows, tokens, dim, generator=generator, device=device)
    image_tokens /= image_tokens.norm(dim=-1, keepdim=True)
    concepts = torch.randn(run_concepts, dim, generator=generator, device=device)
    concepts /= concepts.norm(dim=-1, keepdim=True)
    upstream = torch.randn(rows, run_concepts, generator=generator, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, *fn_args):
        sync()
        start = time.perf_counter()
        fn(*fn_args)
        sync()
        return time.perf_counter() - start

    def xac(concepts=concepts, upstream=upstream):
        tokens_leaf = image_tokens.requires_grad_()
        concepts_leaf = concepts.requires_grad_()
        if is_loop:
            similarity = loop_xac_similarity(tokens_leaf, concepts_leaf, case["temperature"])
        else:
            similarity = xac_similarity(tokens_leaf, concepts_leaf, case["temperature"],
                                        memory_budget_mb=_budget(case))
        similarity.backward(upstream)
        tokens_leaf.grad = concepts_leaf.grad = None

    # Warm-up on a few concepts (kernel selection, thread pools), then the first full run: peak memory.
    xac(concepts[:4].detach(), upstream[:, :4])
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    first_time = timed(xac)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()
    result = dict(case, run_concepts=run_concepts, extra_peak_mb=max(peak - base, 0) / 2 ** 20)

    if is_loop:  # its one (long) run is its timing
        result["time_s"] = first_time
        if case["check"]:
            result["max_abs_diff"] = _agreement(image_tokens.detach(), concepts.detach(), upstream, case)
        return result

    matmul_bound(image_tokens.detach(), concepts.detach())  # warm-up
    closed, bound = [], []
    for _ in range(case["repeats"]):
        closed.append(timed(xac))
        bound.append(timed(matmul_bound, image_tokens.detach(), concepts.detach()))
    result.update(time_s=statistics.median(closed), bound_time_s=statistics.median(bound),
                  bound_ratio=statistics.median(c / b for c, b in zip(closed, bound)),
                  plan=dict(xac_memory_plan(rows, tokens, num_concepts, _budget(case))._asdict(),
                            budget_mb=_budget(case)))
    return result


def _agreement(image_tokens, concepts, upstream, case):
    """Max |difference| of similarities and gradients, closed form vs loop, on a few concepts."""
    from open_clip_c2lip.xac import xac_similarity

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


def summarize(results, concept_counts):
    """Medians per (N, method) over rounds; the loop is scaled linearly from run_concepts to N."""
    table = {}
    for num_concepts in concept_counts:
        for method in METHODS:
            runs = [r for r in results if r["concepts"] == num_concepts and r["method"] == method]
            if not runs:
                continue
            scale = num_concepts / runs[0]["run_concepts"]
            row = {
                "time_s": statistics.median(r["time_s"] for r in runs) * scale,
                "extra_peak_mb": statistics.median(r["extra_peak_mb"] for r in runs) * scale,
                "rounds": len(runs),
                "extrapolated_from": runs[0]["run_concepts"] if scale != 1 else None,
                "plan": runs[0].get("plan"),
                "max_abs_diff": max((r["max_abs_diff"] for r in runs if "max_abs_diff" in r), default=None),
            }
            if method != "loop":
                row["bound_time_s"] = statistics.median(r["bound_time_s"] for r in runs)
                row["bound_ratio"] = statistics.median(r["bound_ratio"] for r in runs)
            table[num_concepts, method] = row
    return table


def write_markdown(table, args, path):
    import torch

    if args.device == "cuda":
        machine = torch.cuda.get_device_name()
    else:
        machine = (f"2-core CPU dev box ({platform.processor() or platform.machine()}, {args.threads} torch "
                   f"threads, shared with other jobs while measured)")
    memory_how = ("`max_memory_allocated` over the allocation before the run" if args.device == "cuda" else
                  "peak RSS (`getrusage`) over the RSS before the first full run (after a 4-concept "
                  "warm-up), in a fresh process")
    lines = [
        "# xac term: closed form vs per-concept loop vs matmul lower bound",
        "",
        f"Machine: {machine}; torch {torch.__version__}; fp32. M={args.rows} local image rows, T={args.tokens} "
        f"tokens, D={args.dim}; forward + backward of the xac similarities `[M, N]`; "
        f"{args.command}.",
        "",
        f"- closed form: `xac_similarity` with the default {args.budget_mb:g} MB budget, and with "
        f"{args.low_budget_mb:g} MB where that changes the plan (chunks, backward recomputes);",
        "- matmul bound: only the plain products the closed form needs (S, dV, dC, Gram, G·A, Σ A Aᵀ), "
        "each once; timed alternately with the closed form in the same process, `this / bound` is the "
        "median of the paired ratios (not the ratio of the two median times: the load on the shared "
        "machine varied between rounds);",
        "- loop: the authors' per-concept Python loop (autograd), written from the pooling equations of "
        "docs/method.md §3 (the authors' own `C2LIP_Loss`: benchmarks/authors_release.md);",
        f"- times: medians over {args.rounds} fresh-process rounds (closed form: each round the median of "
        f"{args.repeats} warm runs; loop: {args.loop_rounds} round(s) of one run); extra peak memory: "
        f"{memory_how}.",
        "",
        "| N | method | fwd+bwd time (s) | loop / this | this / matmul bound | extra peak memory (MB) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for num_concepts in args.concepts:
        loop = table.get((num_concepts, "loop"))
        for method in METHODS:
            row = table.get((num_concepts, method))
            if row is None:
                continue
            speedup = f"{loop['time_s'] / row['time_s']:.0f}x" if loop and method != "loop" else "-"
            ratio = f"{row['bound_ratio']:.2f}x" if "bound_ratio" in row else "-"
            notes = []
            if row["plan"]:
                notes.append(f"budget {row['plan']['budget_mb']:g} MB: chunk {row['plan']['chunk_size']}, "
                             + ("S, A, H kept for backward" if row["plan"]["keep"] else "backward recomputes"))
            if row["extrapolated_from"]:
                notes.append(f"**time and memory extrapolated linearly from {row['extrapolated_from']} "
                             f"concepts**")
            if row["max_abs_diff"] is not None:
                notes.append(f"max abs diff vs closed form (values, grads) {row['max_abs_diff']:.1e}")
            lines.append(f"| {num_concepts} | {method} | {row['time_s']:.2f} | {speedup} | {ratio} | "
                         f"{row['extra_peak_mb']:.0f} | {'; '.join(notes)} |")
        bound = table.get((num_concepts, "closed_form"))
        if bound:
            lines.append(f"| {num_concepts} | matmul_bound | {bound['bound_time_s']:.2f} | - | 1.00x | - | "
                         "paired with closed_form |")
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
                        help="budget of the closed_form_low_budget case (chunks + recompute at N=2304)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-rounds", type=int, default=1)
    parser.add_argument("--loop-concepts", type=int, default=288,
                        help="concepts the loop really runs; its cost is extrapolated to N (0: all)")
    parser.add_argument("--check", type=int, default=16, help="concepts compared closed form vs loop (0: skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="benchmarks/bench_loss.md")
    parser.add_argument("--raw", default=None, help="also write the raw per-run JSON here")
    parser.add_argument("--from-raw", default=None, help="only re-render the table from a --raw JSON")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    args.command = "`python scripts/bench_loss.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`"
    if args.from_raw:
        args.command = "`python scripts/bench_loss.py --raw RAW.json` (table: `--from-raw RAW.json`)"
        results = json.loads(Path(args.from_raw).read_text())
        first = results[0]
        for key in ("device", "rows", "tokens", "dim", "threads", "budget_mb", "low_budget_mb", "repeats"):
            setattr(args, key, first[key])
        args.concepts = sorted({r["concepts"] for r in results})
        args.rounds = max(sum(r["method"] == "closed_form" and r["concepts"] == n for r in results)
                          for n in args.concepts)
        args.loop_rounds = max(sum(r["method"] == "loop" and r["concepts"] == n for r in results)
                               for n in args.concepts)
        write_markdown(summarize(results, args.concepts), args, args.output)
        return
    from open_clip_c2lip.xac import XAC_MEMORY_BUDGET_MB, xac_memory_plan

    if args.budget_mb is None:
        args.budget_mb = XAC_MEMORY_BUDGET_MB
    base = {k: getattr(args, k) for k in ("device", "rows", "tokens", "dim", "temperature", "repeats",
                                          "loop_concepts", "check", "threads", "budget_mb", "low_budget_mb")}
    results = []
    for round_index in range(args.rounds):
        for num_concepts in args.concepts:
            same_plan = (xac_memory_plan(args.rows, args.tokens, num_concepts, args.budget_mb)
                         == xac_memory_plan(args.rows, args.tokens, num_concepts, args.low_budget_mb))
            for method in METHODS:
                if (method == "loop" and round_index >= args.loop_rounds
                        or method == "closed_form_low_budget" and same_plan):
                    continue
                result = run_in_subprocess(dict(base, method=method, concepts=num_concepts))
                print(f"round {round_index} N={num_concepts} {method}: {result['time_s']:.3f} s "
                      f"({result['run_concepts']} concepts), +{result['extra_peak_mb']:.0f} MB, "
                      f"bound ratio {result.get('bound_ratio', float('nan')):.2f}", flush=True)
                results.append(result)
    if args.raw:
        Path(args.raw).write_text(json.dumps(results, indent=1))
    write_markdown(summarize(results, args.concepts), args, args.output)


if __name__ == "__main__":
    main()
