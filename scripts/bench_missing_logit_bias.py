"""First SigLIP losses from a CLIP checkpoint (no ``logit_bias``): bias 0 (open_clip 3.3.0's fill) vs the
model's initial -10 (what ``open_clip_c2lip`` keeps, ``integration/logit_bias.py``).

Per seed: C2LIP-Tiny without a bias is trained as a CLIP model (``ClipLoss``, AdamW, logit scale
clamped to ln 100 as open_clip_train does) on synthetic image-caption pairs, and saved without a bias,
i.e. a CLIP checkpoint; a second copy has its logit scale set to 100, where released CLIP / OpenCLIP
checkpoints sit (open_clip_train's clamp; a short run on Tiny stays far below). Each is then loaded as open_clip_train ``--siglip`` does (``init_logit_scale=log 10,
init_logit_bias=-10``, ``pretrained=``): the scale comes from the checkpoint, the bias is either 0 or
-10. Reported: the SigLIP loss on a held-out batch before any SigLIP step (the "first loss") and after
``--siglip-steps`` steps of SigLIP fine-tuning (same batches, same seed for both biases), over seeds
(mean, sd, 95 % t interval of the per-seed ratio / difference).

    python scripts/bench_missing_logit_bias.py              # writes benchmarks/missing_logit_bias.md
"""
import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]
THINGS = ["dog", "ball", "cat", "car", "hat", "cup", "lamp", "chair"]
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def synthetic_pairs(count: int, generator: torch.Generator, tokenizer):
    """``count`` random 64 px colour-grid images with captions naming two random colour-object pairs."""
    grids = torch.rand(count, 3, 8, 8, generator=generator)
    images = torch.nn.functional.interpolate(grids, size=64, mode="nearest") * 2 - 1
    picks = torch.randint(0, len(COLOURS), (count, 4), generator=generator).tolist()
    captions = [f"a {COLOURS[a]} {THINGS[b]} next to a {COLOURS[c]} {THINGS[d]}" for a, b, c, d in picks]
    return images, tokenizer(captions)


def clip_checkpoint(seed: int, steps: int, batch_size: int, path: Path) -> None:
    import open_clip
    from open_clip.loss import ClipLoss

    torch.manual_seed(seed)
    model = open_clip.create_model("C2LIP-Tiny", init_logit_scale=math.log(1 / 0.07), init_logit_bias=None)
    tokenizer = open_clip.get_tokenizer("C2LIP-Tiny")
    generator = torch.Generator().manual_seed(seed)
    images, texts = synthetic_pairs(batch_size * 8, generator, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_fn = ClipLoss()
    model.train()
    for step in range(steps):
        rows = torch.randint(0, len(images), (batch_size,), generator=generator)
        image_features, text_features, scale = model(images[rows], texts[rows])
        loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    state = model.state_dict()
    assert "logit_bias" not in state
    torch.save({"epoch": 1, "state_dict": state}, path)
    torch.save({"epoch": 1, "state_dict": {**state, "logit_scale": torch.tensor(math.log(100))}},
               path.with_name(f"{path.stem}_scale100.pt"))


def siglip_losses(checkpoint: Path, bias: float, seed: int, steps: int, batch_size: int):
    """(first loss, loss after ``steps`` SigLIP steps), both on the same held-out batch."""
    import open_clip
    from open_clip.loss import SigLipLoss

    torch.manual_seed(seed)
    model = open_clip.create_model("C2LIP-Tiny", pretrained=str(checkpoint), init_logit_scale=math.log(10),
                                   init_logit_bias=-10)
    with torch.no_grad():
        model.logit_bias.fill_(bias)
    tokenizer = open_clip.get_tokenizer("C2LIP-Tiny")
    generator = torch.Generator().manual_seed(10_000 + seed)
    held_images, held_texts = synthetic_pairs(batch_size, generator, tokenizer)
    train_images, train_texts = synthetic_pairs(batch_size * steps, generator, tokenizer)
    loss_fn = SigLipLoss()

    def held_out_loss():
        model.eval()
        with torch.no_grad():
            return loss_fn(*model(held_images, held_texts)).item()

    first = held_out_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    for step in range(steps):
        model.train()
        rows = slice(step * batch_size, (step + 1) * batch_size)
        loss = loss_fn(*model(train_images[rows], train_texts[rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return first, held_out_loss()


def interval(values):
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    sd = statistics.stdev(values)
    half = T_975.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return mean, sd, mean - half, mean + half


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--clip-steps", type=int, default=300)
    parser.add_argument("--siglip-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "missing_logit_bias.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import open_clip_c2lip  # noqa: F401  (registers C2LIP-Tiny)
    from open_clip_c2lip.environment import markdown

    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            checkpoint = Path(tmp) / f"clip_{seed}.pt"
            clip_checkpoint(seed, args.clip_steps, args.batch_size, checkpoint)
            for variant in (checkpoint, checkpoint.with_name(f"{checkpoint.stem}_scale100.pt")):
                scale = torch.load(variant, weights_only=True)["state_dict"]["logit_scale"].exp().item()
                zero = siglip_losses(variant, 0.0, seed, args.siglip_steps, args.batch_size)
                kept = siglip_losses(variant, -10.0, seed, args.siglip_steps, args.batch_size)
                rows.append({"seed": seed, "scale": scale, "zero": zero, "kept": kept,
                             "variant": "set to 100" if variant != checkpoint else "as trained"})
                print(f"seed {seed}: logit scale {scale:.1f}; first loss bias 0 {zero[0]:.2f}, bias -10 "
                      f"{kept[0]:.2f}; after {args.siglip_steps} steps {zero[1]:.2f} vs {kept[1]:.2f}", file=sys.stderr)
    summaries = []
    for variant in ("as trained", "set to 100"):
        chosen = [r for r in rows if r["variant"] == variant]
        ratio = interval([r["zero"][0] / r["kept"][0] for r in chosen])
        after = interval([r["zero"][1] - r["kept"][1] for r in chosen])
        summaries += [
            f"Checkpoint logit scale {variant}: first loss, bias 0 / bias -10: mean {ratio[0]:.2f}x (sd {ratio[1]:.2f}, "
            f"95 % CI {ratio[2]:.2f} to {ratio[3]:.2f}, n = {len(chosen)} seeds); held-out loss after "
            f"{args.siglip_steps} SigLIP steps, bias 0 minus bias -10: mean {after[0]:.2f} (sd {after[1]:.2f}, "
            f"95 % CI {after[2]:.2f} to {after[3]:.2f}).",
            "",
        ]
    lines = [
        "# SigLIP from a CLIP checkpoint: missing logit_bias filled with 0 vs kept at -10",
        "",
        f"`python scripts/bench_missing_logit_bias.py --seeds {args.seeds} --clip-steps {args.clip_steps} "
        f"--siglip-steps {args.siglip_steps} --batch-size {args.batch_size}` ({time.time() - started:.0f} s).",
        "",
        "C2LIP-Tiny trained as CLIP (no bias) on synthetic pairs, then loaded as `open_clip_train --siglip` does; "
        f"SigLIP loss (open_clip `SigLipLoss`, sum over the {args.batch_size}x{args.batch_size} pairs / batch) "
        "on a held-out batch. Bias 0 is open_clip 3.3.0's `load_checkpoint` fill; -10 is the model's initial bias, "
        "which `open_clip_c2lip` keeps.",
        "",
        f"| seed | checkpoint logit scale | first loss, bias 0 | first loss, bias -10 | after {args.siglip_steps} steps, bias 0 | after {args.siglip_steps} steps, bias -10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['scale']:.1f} | {r['zero'][0]:.2f} | {r['kept'][0]:.2f} | "
                     f"{r['zero'][1]:.2f} | {r['kept'][1]:.2f} |")
    lines += ["", *summaries, markdown(), ""]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
