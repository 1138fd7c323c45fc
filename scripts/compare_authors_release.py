"""Run ``C2LIPLoss`` next to the authors' released loss on identical inputs (docs/method.md, "What
differs from the authors' release").

The authors' code is not part of this repository: pass a checkout of their public release
(github.com/SamsungLabs/concept_centric_clip) with ``--authors-src``; its ``src/open_clip/loss.py``
is loaded as a standalone module (it imports only torch). Three measurements:

1. one process, float64: every loss term and every input gradient of both implementations;
2. two processes (gloo, CPU), the same global batch split in halves: what the authors' loss does,
   and whether ours gives the one-process loss (mean over ranks) and W x its gradient;
3. time of the whole loss with xac (forward + backward, fp32): their per-concept loop vs our closed form.

    python scripts/compare_authors_release.py --authors-src /path/to/concept_centric_clip \\
        --authors-commit 9d02526 --output benchmarks/authors_release.md
"""
import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_authors_loss(src: Path):
    path = src / "src" / "open_clip" / "loss.py"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; --authors-src must be a checkout of "
                         f"SamsungLabs/concept_centric_clip")
    spec = importlib.util.spec_from_file_location("authors_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_batch(seed: int, images: int, slots: int, tokens: int, dim: int, dtype=torch.float64):
    """A global batch: features, tokens and concepts (L2-normalized), each image 1..slots concepts."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)
    counts = torch.randint(1, slots + 1, (images,), generator=g)
    mask = torch.arange(slots)[None] < counts[:, None]
    return {
        "image_features": unit(images, dim), "text_features": unit(images, dim),
        "image_tokens": unit(images, tokens, dim), "concept_features": unit(images, slots, dim) * mask[..., None],
        "concept_mask": mask, "logit_scale": torch.tensor(10.0, dtype=dtype),
        "logit_bias": torch.tensor(-10.0, dtype=dtype),
    }


def authors_inputs(batch, rows=slice(None)):
    """The authors' call: concepts flattened to [N, D] with the (local) index of the owning image."""
    mask = batch["concept_mask"][rows]
    return dict(image_features=batch["image_features"][rows], text_features=batch["text_features"][rows],
                logit_scale=batch["logit_scale"], logit_bias=batch["logit_bias"],
                nounphrases_features=batch["concept_features"][rows][mask],
                nounphrases_indices=mask.nonzero()[:, 0], image_tokens=batch["image_tokens"][rows])


GRAD_KEYS = ("image_features", "text_features", "image_tokens", "concept_features", "logit_scale", "logit_bias")


def with_grad(batch):
    return {k: (v.clone().requires_grad_(True) if k in GRAD_KEYS else v.clone()) for k, v in batch.items()}


def one_process(authors, npc_weight=1.0, xac_weight=0.01):
    from open_clip_c2lip.loss import C2LIPLoss

    batch = make_batch(0, images=12, slots=4, tokens=20, dim=32)
    ours_in, theirs_in = with_grad(batch), with_grad(batch)
    ours = C2LIPLoss(npc_weight=npc_weight, xac_weight=xac_weight)(**ours_in, output_dict=True)
    theirs = authors.C2LIP_Loss(npc_loss_scale=npc_weight, xac_loss_scale=xac_weight)(
        **authors_inputs(theirs_in), output_dict=True)
    theirs_weighted = {"contrastive_loss": theirs["contrastive_loss"], "npc_loss": npc_weight * theirs["npc_loss"],
                       "xac_loss": xac_weight * theirs["xac_loss"]}
    sum(ours.values()).backward()
    theirs["loss"].backward()
    term_diff = max(abs(ours[k].item() - theirs_weighted[k].item()) for k in ours)
    grad_diff = {k: (ours_in[k].grad - theirs_in[k].grad).abs().max().item() for k in GRAD_KEYS}
    return {"terms": {k: (ours[k].item(), theirs_weighted[k].item()) for k in ours}, "term_diff": term_diff,
            "grad_diff": grad_diff, "num_concepts": int(batch["concept_mask"].sum())}


def _rank(rank, world, init_file, src, queue):
    import torch.distributed as dist

    from open_clip_c2lip.loss import C2LIPLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    authors = load_authors_loss(Path(src))
    batch = make_batch(0, images=12, slots=4, tokens=20, dim=32)
    rows = slice(rank * 6, (rank + 1) * 6)
    out = {"rank": rank}
    try:
        theirs = authors.C2LIP_Loss(rank=rank, world_size=world)(**authors_inputs(with_grad(batch), rows),
                                                                  output_dict=True)
        out["authors"] = f"ran: loss {theirs['loss'].item():.6f}"
    except Exception as error:  # what a user of the release meets under torchrun
        frame = traceback.extract_tb(error.__traceback__)[-1]
        out["authors"] = f"{type(error).__name__}: {error} (loss.py line {frame.lineno}: `{frame.line}`)"
    local = with_grad({k: (v[rows] if v.ndim else v) for k, v in batch.items()})
    ours = C2LIPLoss(rank=rank, world_size=world)(**local)
    ours.backward()
    out["ours_loss"] = ours.item()
    out["ours_grad_tokens"] = local["image_tokens"].grad.tolist()  # plain data: the process exits
    dist.barrier()
    dist.destroy_process_group()
    queue.put(out)


def two_processes(src: Path, world: int = 2):
    import torch.multiprocessing as mp

    from open_clip_c2lip.loss import C2LIPLoss

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, world, os.path.join(tmp, "init"), str(src), queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        results = sorted((queue.get(timeout=600) for _ in procs), key=lambda r: r["rank"])
        for p in procs:
            p.join(60)
    union = with_grad(make_batch(0, images=12, slots=4, tokens=20, dim=32))
    loss = C2LIPLoss()(**union)
    loss.backward()
    mean = sum(r["ours_loss"] for r in results) / world
    grads = torch.cat([torch.tensor(r["ours_grad_tokens"], dtype=torch.float64) for r in results])
    return {"authors": [r["authors"] for r in results], "loss_diff": abs(mean - loss.item()),
            "grad_diff": (grads - world * union["image_tokens"].grad).abs().max().item()}


def loss_timing(authors, images: int, slots: int, tokens: int, dim: int, repeats: int):
    """Forward + backward of the whole loss (contrastive + xac, npc off), fp32: the authors' C2LIP_Loss
    as released vs C2LIPLoss(npc_weight=0). xac dominates both."""
    from open_clip_c2lip.loss import C2LIPLoss

    batch = make_batch(1, images=images, slots=slots, tokens=tokens, dim=dim, dtype=torch.float32)
    batch["concept_mask"][:] = True  # every image owns `slots` concepts: N = images * slots
    ours_fn = C2LIPLoss(npc_weight=0.0, xac_weight=0.01)
    theirs_fn = authors.C2LIP_Loss(npc_loss=False, xac_loss=True, xac_loss_scale=0.01)
    runs = {"authors' C2LIP_Loss": [], "C2LIPLoss": []}
    results = {}
    for _ in range(repeats):
        for name in runs:
            inputs = with_grad(batch)
            start = time.perf_counter()
            if name == "C2LIPLoss":
                loss = ours_fn(**inputs)
            else:
                loss = theirs_fn(**authors_inputs(inputs), output_dict=True)["loss"]
            loss.backward()
            runs[name].append(time.perf_counter() - start)
            results[name] = (loss.item(), inputs["image_tokens"].grad, inputs["concept_features"].grad)
    (a_loss, a_tokens, a_concepts), (b_loss, b_tokens, b_concepts) = results.values()
    diff = max(abs(a_loss - b_loss), (a_tokens - b_tokens).abs().max().item(),
               (a_concepts - b_concepts).abs().max().item())
    return {name: min(times) for name, times in runs.items()}, diff


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-src", type=Path, required=True)
    parser.add_argument("--authors-commit", default=None, help="the checkout's commit, for the report")
    parser.add_argument("--output", type=Path, default=None, help="markdown report (default: print)")
    parser.add_argument("--images", type=int, default=96, help="M for the timing (T = 196, D = 768)")
    parser.add_argument("--concepts-per-image", type=int, default=1, help="N / M for the timing")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    authors = load_authors_loss(args.authors_src)
    commit = args.authors_commit or "(commit not given)"
    single = one_process(authors)
    multi = two_processes(args.authors_src)
    times, timing_diff = loss_timing(authors, args.images, args.concepts_per_image, 196, 768, args.repeats)
    num_concepts = args.images * args.concepts_per_image
    ratio = times["authors' C2LIP_Loss"] / times["C2LIPLoss"]
    from open_clip_c2lip.environment import markdown as environment

    load = os.getloadavg()
    lines = [
        "# C2LIPLoss next to the authors' released loss",
        "",
        f"`python scripts/compare_authors_release.py --authors-src SRC --images {args.images} "
        f"--concepts-per-image {args.concepts_per_image} --repeats {args.repeats}` with SRC a checkout of "
        f"SamsungLabs/concept_centric_clip at {commit}.",
        f"Environment: {environment()}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end.",
        "",
        "## 1. One process, float64 (12 images, 1-4 concepts each, T = 20, D = 32, scale 10, bias -10)",
        "",
        "| term | ours | authors' (times its weight) |",
        "|---|---|---|",
        *[f"| {k} | {a:.15g} | {b:.15g} |" for k, (a, b) in single["terms"].items()],
        "",
        f"Largest difference of a term: {single['term_diff']:.1e}. Largest difference of an input "
        "gradient: " + ", ".join(f"{k} {v:.1e}" for k, v in single["grad_diff"].items()) + ".",
        "",
        "## 2. Two processes (gloo), the same 12 images split 6 + 6",
        "",
        *[f"- authors' `C2LIP_Loss(rank={r}, world_size=2)`: {m}" for r, m in enumerate(multi["authors"])],
        f"- ours: mean over ranks of the returned loss minus the one-process loss: {multi['loss_diff']:.1e}; "
        f"largest difference of the image-token gradient from 2 x the one-process gradient: "
        f"{multi['grad_diff']:.1e} (float64).",
        "",
        f"## 3. Whole loss with xac (npc off), forward + backward, fp32 (M = {args.images}, "
        f"N = {num_concepts}, T = 196, D = 768; best of {args.repeats})",
        "",
        "| implementation | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in times.items()],
        "",
        f"Ratio: {ratio:.0f}x. Largest difference of the "
        f"loss and of the token and concept gradients: {timing_diff:.1e} (fp32).",
        "",
    ]
    report = "\n".join(lines)
    if args.output:
        args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
