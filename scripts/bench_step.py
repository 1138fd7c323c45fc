#!/usr/bin/env python
"""Optimizer-step time and peak memory: C2LIP (``text`` / ``span`` concept modes) vs plain SigLIP.

Every variant trains the same randomly initialised model on the same batch: ``siglip`` is the plain
open_clip model with ``open_clip.loss.SigLipLoss`` on the caption rows ``[B, L]``; ``c2lip-text`` and
``c2lip-span`` swap the class with ``enable_c2lip`` and use ``C2LIPLoss`` on the packed texts
``[B, 1+2P, L]``. One step = forward, loss, backward, AdamW step, zero_grad. Each variant runs in a
fresh subprocess (so its peak RSS is its own), variants are interleaved over ``--rounds`` (the order
rotates every round) and the reported time is the median over all timed steps of all rounds. The
spread is reported per round: each round's median step time of a variant over siglip's in the same
round (min-max over rounds), which is what a shared, noisy machine can still compare.

CPU, real data (default): COCO val2017 captions from ``$C2LIP_TEST_DATA`` (the tests' data setting), concepts from
``extract_concepts``, packed by the real ``TextPacker``::

    OMP_NUM_THREADS=1 python scripts/bench_step.py --model C2LIP-Tiny --batch-size 32

GPU comparison, random init, synthetic token ids (no Hub access needed)::

    python scripts/bench_step.py --model ViT-B-16-SigLIP-C2 --base-model ViT-B-16-SigLIP \\
        --device cuda --precision amp_bf16 --batch-size 96 --synthetic
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

VARIANTS = ("siglip", "c2lip-text", "c2lip-span")
# the tests' data setting (tests/conftest.py): $C2LIP_TEST_DATA, else <repo>/../shared/data
DEFAULT_CAPTIONS = (Path(os.environ.get("C2LIP_TEST_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
                    / "coco_captions_val2017.json")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="C2LIP-Tiny", help="model trained by the C2LIP variants")
    parser.add_argument("--base-model", default=None,
                        help="model of the siglip variant (default: --model, plain class)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp_bf16", "bf16"),
                        help="amp_bf16: fp32 weights + bf16 autocast; bf16: pure bf16 weights")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-concepts", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per round")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--captions", type=Path, default=DEFAULT_CAPTIONS,
                        help="COCO captions JSON (annotations[].caption)")
    parser.add_argument("--synthetic", action="store_true",
                        help="random token ids and spans instead of tokenized COCO captions")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of one step per variant")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the step table: CPU time of each piece of the step, in-process")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here")
    parser.add_argument("--machine", default="2-core CPU dev box", help="machine name for the table")
    # internal: one variant in this process
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.base_model = args.base_model or args.model
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    return args


# ----------------------------------------------------------------------------- inputs (parent)

def load_captions(path: Path, count: int) -> List[str]:
    """First ``count`` captions of a COCO captions JSON, in file order."""
    if not path.is_file():
        raise FileNotFoundError(f"captions file {path} not found (pass --captions or --synthetic)")
    with open(path) as f:
        annotations = json.load(f).get("annotations")
    if not annotations:
        raise ValueError(f"{path}: no 'annotations' list of COCO captions")
    captions = [a["caption"].strip() for a in annotations[:count]]
    if len(captions) < count:
        raise ValueError(f"{path}: {len(captions)} captions, need {count}")
    return captions


def real_packed_texts(model_name: str, batch_size: int, max_concepts: int, captions_path: Path):
    """Packed texts ``[B, 1+2P, L]`` of real COCO captions with spaCy concepts, via the real packer."""
    import open_clip
    import open_clip_c2lip  # noqa: F401  registers the C2 model names
    from open_clip_c2lip.concepts import extract_concepts
    from open_clip_c2lip.packing import TextPacker

    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # e.g. SigLIP's HF tokenizer with no Hub access
        raise SystemExit(f"cannot load the tokenizer of {model_name} ({type(exc).__name__}: {exc}); "
                         f"pass --synthetic to benchmark with random token ids")
    captions = load_captions(captions_path, batch_size)
    concepts = extract_concepts(captions)
    packer = TextPacker(tokenizer, max_concepts=max_concepts)
    return packer(list(zip(captions, concepts)))


def synthetic_packed_texts(model_name: str, batch_size: int, max_concepts: int, seed: int = 0):
    """Random packed texts ``[B, 1+2P, L]``: caption ids, concepts = caption sub-spans as own rows.

    Concepts are drawn from a small pool of spans so that, like real captions ("a man", "the
    table"), some concept rows repeat across the batch.
    """
    import torch
    import open_clip
    import open_clip_c2lip  # noqa: F401
    from open_clip_c2lip.layout import pack_rows

    text_cfg = open_clip.get_model_config(model_name)["text_cfg"]
    context_length = text_cfg.get("context_length", 77)
    vocab_size = text_cfg.get("vocab_size", 49408)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(1, vocab_size, (4 * max_concepts, 3), generator=gen)
    rows = []
    for _ in range(batch_size):
        num_concepts = int(torch.randint(1, max_concepts + 1, (1,), generator=gen))
        picks = torch.randperm(len(pool), generator=gen)[:num_concepts]
        caption = torch.zeros(context_length, dtype=torch.long)
        concept_ids = torch.zeros(num_concepts, context_length, dtype=torch.long)
        span_masks = torch.zeros(num_concepts, context_length, dtype=torch.long)
        pos = 0
        for k, pick in enumerate(picks.tolist()):
            words = pool[pick]
            caption[pos:pos + 3] = words
            concept_ids[k, :3] = words
            span_masks[k, pos:pos + 3] = 1
            pos += 3
        caption[pos:min(pos + 4, context_length)] = torch.randint(1, vocab_size, (min(4, context_length - pos),),
                                                                  generator=gen)
        rows.append(pack_rows(caption, concept_ids, span_masks, max_concepts))
    return torch.stack(rows)


def concept_row_stats(texts) -> Dict[str, int]:
    """Total non-empty concept rows and unique ones among them (what text-mode dedup encodes)."""
    import torch
    from open_clip_c2lip.layout import unpack_texts

    _, concept_ids, _ = unpack_texts(texts)
    rows = concept_ids.reshape(-1, concept_ids.shape[-1])
    rows = rows[rows.ne(0).any(dim=1)]
    return {"total": int(rows.shape[0]), "unique": int(torch.unique(rows, dim=0).shape[0])}


# ----------------------------------------------------------------------------- one variant (worker)

def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _peak_rss_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(args: argparse.Namespace) -> Dict[str, float]:
    import torch
    import open_clip
    import open_clip_c2lip  # noqa: F401
    from open_clip.loss import SigLipLoss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    texts = torch.load(args.inputs)["texts"]
    c2lip = args.worker != "siglip"
    model_name = args.model if c2lip else args.base_model

    torch.manual_seed(0)
    # open_clip_train's --siglip init (main.py)
    model = open_clip.create_model(model_name, output_dict=True, init_logit_scale=math.log(10),
                                   init_logit_bias=-10.0)
    if c2lip:
        from open_clip_c2lip.loss import C2LIPLoss
        from open_clip_c2lip.model import enable_c2lip
        model = enable_c2lip(model, concept_mode=args.worker.split("-", 1)[1])
        loss_fn = C2LIPLoss(npc_weight=1.0, xac_weight=0.01)
    else:
        texts = texts[:, 0]
        loss_fn = SigLipLoss()
    model = model.to(device)
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)

    image_size = model.visual.image_size
    image_size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(texts.shape[0], 3, *image_size, generator=gen).to(device)
    if args.precision == "bf16":
        images = images.to(torch.bfloat16)
    texts = texts.to(device)
    use_amp = args.precision == "amp_bf16"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = model(images, texts)
            losses = loss_fn(**out, output_dict=True)
            total = sum(losses.values())
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # as open_clip_train's train_one_epoch after every step
            model.logit_scale.clamp_(0, math.log(100))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_after_build = _current_rss_mib()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(args.steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    result = {"times": times, "cpu_times": cpu_times,
              "model_stats": dict(getattr(model, "c2lip_last_stats", {}) or {})}
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        result["peak_mem_mib"] = _peak_rss_mib()
        result["rss_after_build_mib"] = rss_after_build
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
            sync()
        sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(f"==== profile {args.worker}\n" + prof.key_averages().table(sort_by=sort_by, row_limit=25),
              file=sys.stderr)
    return result


# ----------------------------------------------------------------------------- driver

def spawn_variant(args: argparse.Namespace, variant: str, inputs: Path, workdir: Path) -> Dict[str, float]:
    result_path = workdir / f"{variant}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--inputs", str(inputs),
           "--result", str(result_path), "--model", args.model, "--base-model", args.base_model,
           "--device", args.device, "--precision", args.precision, "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {variant} failed with exit code {proc.returncode}: {' '.join(cmd)}")
    return json.loads(result_path.read_text())


def _ms(values: List[float]) -> float:
    return statistics.median(values) * 1e3


def ratio_key(args: argparse.Namespace) -> str:
    """Which times the ratios use: process CPU time on CPU (robust on a shared machine, where wall
    time includes waiting for a core), wall time on CUDA."""
    return "times" if args.device.startswith("cuda") else "cpu_times"


def round_ratios(round_results: Dict[str, Dict], key: str) -> Dict[str, float]:
    """One round's median step time of each variant over siglip's median in the same round."""
    if "siglip" not in round_results:
        return {}
    base = statistics.median(round_results["siglip"][key])
    return {variant: statistics.median(result[key]) / base for variant, result in round_results.items()}


def _load() -> str:
    try:
        return "/".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def format_table(args: argparse.Namespace, results: Dict[str, Dict], stats: Dict[str, int]) -> str:
    """Markdown table: times, the ratio to siglip (pooled medians and per-round min-max), images/s
    (batch / median wall step time) and peak memory."""
    on_cuda = args.device.startswith("cuda")
    key = ratio_key(args)
    base = results.get("siglip")
    memory_cols = ["peak GPU mem allocated (MiB)"] if on_cuda else \
        ["peak RSS (MiB)", "peak RSS - RSS after model build (MiB)"]
    time_cols = ["wall (ms, median)", "wall (ms, min)"] + ([] if on_cuda else ["CPU time (ms, median)"])
    what = "wall" if on_cuda else "CPU time"
    header = (["variant"] + time_cols + [f"vs siglip ({what})", f"vs siglip per round (min-max, {what})",
                                         "images/s (wall)"] + memory_cols)
    data = "synthetic token ids" if args.synthetic else "COCO val2017 captions, spaCy concepts, TextPacker"
    lines = [
        f"Machine: {args.machine}. Model `{args.model}` (siglip baseline: `{args.base_model}`, plain class), "
        f"random init, batch {args.batch_size}, max concepts {args.max_concepts}, precision {args.precision}, "
        f"device {args.device}, {args.threads} thread(s); data: {data}.",
        f"Step = forward + loss + backward + AdamW step. Medians over {args.steps} timed steps x {args.rounds} "
        f"interleaved rounds (order rotated every round) after {args.warmup} warmup steps per round; each "
        f"variant in a fresh subprocess. Load average (1/5/15 min) at start {getattr(args, 'load_start', 'n/a')}, "
        f"at end {getattr(args, 'load_end', 'n/a')}.",
        f"Concept rows in the batch: {stats['total']} non-empty, {stats['unique']} unique "
        f"(text-mode dedup encodes {stats['unique']}/{stats['total']} = "
        f"{stats['unique'] / max(stats['total'], 1):.2f} of them).",
        *text_mode_note(results, args),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for variant, result in results.items():
        row = [variant, f"{_ms(result['times']):.1f}", f"{min(result['times']) * 1e3:.1f}"]
        if not on_cuda:
            row.append(f"{_ms(result['cpu_times']):.1f}")
        row.append(f"{_ms(result[key]) / _ms(base[key]):.2f}x" if base else "-")
        per_round = result.get("round_ratios") or []
        row.append(f"{min(per_round):.2f}-{max(per_round):.2f}x" if per_round else "-")
        row.append(f"{args.batch_size / statistics.median(result['times']):.1f}")
        row.append(f"{result['peak_mem_mib']:.0f}")
        if not on_cuda:
            row.append(f"{result['step_mem_mib']:.0f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _cpu_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median process CPU time of ``fn()`` in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times) * 1e3


def breakdown(args: argparse.Namespace, texts) -> str:
    """Markdown table: CPU time of the pieces of a step (forward parts, loss, fwd+bwd, AdamW)."""
    import torch
    import open_clip
    from open_clip.loss import SigLipLoss
    from open_clip_c2lip.layout import unpack_texts
    from open_clip_c2lip.loss import C2LIPLoss
    from open_clip_c2lip.model import disable_c2lip, enable_c2lip, encode_packed_text, image_token_features

    torch.set_num_threads(args.threads)
    repeats = max(args.steps, 3)
    torch.manual_seed(0)
    model = open_clip.create_model(args.model, output_dict=True, init_logit_scale=math.log(10),
                                   init_logit_bias=-10.0).train()
    image_size = model.visual.image_size
    image_size = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    images = torch.randn(texts.shape[0], 3, *image_size, generator=torch.Generator().manual_seed(1))
    captions, concept_ids, _ = unpack_texts(texts)
    rows = torch.cat([captions, concept_ids.reshape(-1, concept_ids.shape[-1])])
    unique_rows = torch.unique(rows, dim=0)
    pieces = [
        ("encode_image forward (pooled)", lambda: model.encode_image(images)),
        ("image_token_features forward (pooled + per-token MAP value path)",
         lambda: image_token_features(model, images)),
        (f"encode_text forward, {len(captions)} captions", lambda: model.encode_text(captions)),
        (f"encode_text forward, the {len(unique_rows)} unique rows of text mode (captions, concepts, padding)",
         lambda: model.encode_text(unique_rows)),
        ("packed text forward, text mode", lambda: encode_packed_text(model, texts, "text")),
        ("packed text forward, span mode", lambda: encode_packed_text(model, texts, "span")),
    ]

    def plain_step():
        SigLipLoss()(**model(images, captions)).backward()
        model.zero_grad(set_to_none=True)

    pieces.append(("siglip fwd + bwd", plain_step))
    for mode in ("text", "span"):
        enable_c2lip(model, concept_mode=mode)
        out = model(images, texts)
        detached = {k: v.detach().requires_grad_(v.is_floating_point()) if torch.is_tensor(v) else v
                    for k, v in out.items()}
        results = []
        results.append((f"C2LIPLoss fwd + bwd alone ({mode})",
                        _cpu_ms(lambda: C2LIPLoss()(**detached).backward(), repeats)))

        def c2lip_step():
            C2LIPLoss()(**model(images, texts)).backward()
            model.zero_grad(set_to_none=True)

        results.append((f"c2lip-{mode} fwd + bwd", _cpu_ms(c2lip_step, repeats)))
        disable_c2lip(model)
        pieces += [(name, value) for name, value in results]
    lines = [f"CPU time, {args.model}, batch {len(captions)}, {args.threads} thread(s), "
             f"median of {repeats} repeats, in-process.", "", "| piece | ms |", "|---|---|"]
    for name, piece in pieces:  # timed in this order: the steps above leave no gradients behind
        value = piece if isinstance(piece, float) else _cpu_ms(piece, repeats)
        lines.append(f"| {name} | {value:.1f} |")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    lines.append(f"| AdamW step | {_cpu_ms(optimizer.step, repeats):.1f} |")
    return "\n".join(lines) + "\n"


def text_mode_note(results: Dict[str, Dict], args: argparse.Namespace) -> List[str]:
    """The model's own text-mode dedup count (``c2lip_last_stats``) vs encoding every row."""
    stats = results.get("c2lip-text", {}).get("model_stats") or {}
    if "encoded_text_rows" not in stats:
        return []
    all_rows = stats["captions"] + stats["concept_slots"]
    return [f"Model text-mode stats: {stats['encoded_text_rows']} text rows encoded instead of {all_rows} "
            f"({stats['captions']} captions + {stats['concept_slots']} concept slots, "
            f"{stats['concepts']} of them valid): {all_rows / stats['encoded_text_rows']:.2f}x fewer rows."]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_variant(args)
        args.result.write_text(json.dumps(result))
        return 0

    import torch
    if args.synthetic:
        texts = synthetic_packed_texts(args.model, args.batch_size, args.max_concepts)
    else:
        texts = real_packed_texts(args.model, args.batch_size, args.max_concepts, args.captions)
    if args.breakdown:
        table = breakdown(args, texts)
        print(table)
        if args.output:
            args.output.write_text(table)
        return 0
    stats = concept_row_stats(texts)
    results: Dict[str, Dict] = {}
    args.load_start = _load()
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        workdir = Path(tmp)
        inputs = workdir / "inputs.pt"
        torch.save({"texts": texts}, inputs)
        for round_index in range(args.rounds):
            shift = round_index % len(args.variants)
            round_results = {}
            for variant in args.variants[shift:] + args.variants[:shift]:
                result = spawn_variant(args, variant, inputs, workdir)
                round_results[variant] = result
                merged = results.setdefault(variant, {"times": [], "cpu_times": [], "peak_mem_mib": 0.0,
                                                      "step_mem_mib": 0.0})
                merged["times"] += result["times"]
                merged["cpu_times"] += result["cpu_times"]
                merged["peak_mem_mib"] = max(merged["peak_mem_mib"], result["peak_mem_mib"])
                step_mem = result["peak_mem_mib"] - result.get("rss_after_build_mib", 0.0)
                merged["step_mem_mib"] = max(merged["step_mem_mib"], step_mem)
                merged["model_stats"] = result["model_stats"]
                print(f"round {round_index} {variant}: median wall {_ms(result['times']):.1f} ms, "
                      f"CPU {_ms(result['cpu_times']):.1f} ms, peak {result['peak_mem_mib']:.0f} MiB, "
                      f"load {_load()}", file=sys.stderr)
            for variant, ratio in round_ratios(round_results, ratio_key(args)).items():
                results[variant].setdefault("round_ratios", []).append(ratio)
    args.load_end = _load()
    table = format_table(args, results, stats)
    print(table)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
