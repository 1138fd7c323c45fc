"""Concept attention maps: where each concept of a caption attends over an image's patches.

For one image and each concept ``c`` of the caption (spaCy noun phrases, see
:mod:`open_clip_c2lip.concepts`), the XAC attention over the patch tokens is
``a_t = softmax_t(lambda * cos(c, v_t))`` (the xac attention of ``docs/method.md``), with ``v_t`` the per-patch joint
embeddings of the MAP head's value path (:func:`open_clip_c2lip.model.image_token_features`) and
``c`` the concept encoded by the text tower as its own text. Maps are shown relative to uniform
attention (``T * a_t``, 1 = uniform) and upsampled over the image as the model sees it, on one
colour scale shared by every panel and centred on uniform (white = 1, red above, blue below), so
a near-uniform map looks near white: at the training temperature 1 the weights are close to uniform.
The figure has one row per concept, so captions with many concepts stay readable.

With ``--compare OTHER`` a last column shows ``T * (a_first - a_other)``: green where the first
model attends more, violet where it attends less (matplotlib ``PiYG``, as the paper's Fig. 2).

``python -m open_clip_c2lip.viz --model C2LIP-Tiny --pretrained epoch_5.pt --image cat.jpg
--caption "a cat on a red sofa" --compare C2LIP-Tiny --compare-pretrained epoch_0.pt --output cat.png``
"""
import argparse
import io
import sys
import textwrap
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F

from . import cli_errors
from .fileio.atomic import atomic_output
from .fileio.diskspace import MIN_FREE_BYTES, check_free_space, disk_full_as_error
from .loading import add_model_args, load_model, model_kwargs


def token_grid(model, image_size, num_tokens: int):
    """Patch grid ``(rows, cols)`` for an input of ``image_size (H, W)``; ``num_tokens`` may include
    prefix tokens. Uses the timm patch embedding's size rule, else assumes a square grid."""
    patch_embed = getattr(getattr(getattr(model, "visual", None), "trunk", None), "patch_embed", None)
    if hasattr(patch_embed, "dynamic_feat_size"):
        rows, cols = patch_embed.dynamic_feat_size(tuple(image_size))
    elif hasattr(patch_embed, "patch_size"):
        rows, cols = (s // p for s, p in zip(image_size, patch_embed.patch_size))
    else:
        rows = cols = int(round(num_tokens ** 0.5))
    rows, cols = int(rows), int(cols)
    if rows * cols > num_tokens:
        raise ValueError(f"patch grid {rows}x{cols} has more cells than the {num_tokens} image tokens")
    return rows, cols


@torch.no_grad()
def concept_attention_maps(model, image: torch.Tensor, concepts: Sequence[str], tokenizer: Callable,
                           temperature: float = 1.0) -> torch.Tensor:
    """XAC attention of each concept over the patches of one preprocessed image.

    ``image [3, H, W]`` -> ``[N, rows, cols]`` attention weights (each map sums to 1 over the
    patch tokens; prefix tokens pooled by the MAP head, if any, are left out of the map).
    """
    from .xac import concept_attention
    from .model import image_token_features
    if not concepts:
        raise ValueError("no concepts to visualize")
    device = next(model.parameters()).device
    _, image_tokens = image_token_features(model, image[None].to(device))
    concept_features = model.encode_text(tokenizer(list(concepts)).to(device), normalize=True)
    weights = concept_attention(image_tokens[0].float(), concept_features.float(), temperature)  # [N, T]
    rows, cols = token_grid(model, image.shape[-2:], weights.shape[1])
    return weights[:, weights.shape[1] - rows * cols:].reshape(len(concepts), rows, cols).cpu()


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """``[N, rows, cols]`` -> ``[N, H, W]`` bilinear."""
    return F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def display_image(model, image: torch.Tensor):
    """A preprocessed ``[3, H, W]`` image back in [0, 1], ``[H, W, 3]`` numpy (what the model sees)."""
    mean = torch.tensor(model.visual.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(model.visual.image_std, dtype=torch.float32).view(3, 1, 1)
    return (image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def render(picture, concepts: Sequence[str], maps: Sequence[torch.Tensor], labels: Sequence[str],
           output, temperature: float = 1.0) -> Path:
    """Write the figure: one row per concept; columns: the image, one overlay per model and, for two
    models, their difference (first - second).

    ``picture [H, W, 3]`` in [0, 1]; ``maps`` one ``[N, H, W]`` tensor per model, relative to
    uniform attention (``T * a``). One colour bar per column, shared by its panels, so any number
    of concepts stays readable. Returns the PNG path (written atomically, after checking that its
    bytes fit; a full disk raises ``diskspace.DiskFullError``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator
    difference = len(maps) == 2
    num_rows, num_cols = len(concepts), 1 + len(maps) + int(difference)
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(2.3 * num_cols, 2.2 * num_rows + 0.9), squeeze=False,
                             layout="constrained")
    # One colour scale for every overlay, centred on uniform attention (T * a = 1, white): a near-uniform
    # map (lambda = 1 on cosines) looks near white instead of being stretched to a full per-panel range.
    peak = max(float(m.max()) for m in maps)
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(2.0, peak))
    bound = max(max(float((a - b).abs().max()) for a, b in zip(*maps)), 1e-12) if difference else 1.0
    overlays, differences = [], []
    for row, concept in enumerate(concepts):
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(textwrap.fill(concept, 24), fontsize=10)
        for col, model_maps in enumerate(maps, 1):
            heat = model_maps[row]
            axes[row, col].imshow(picture)
            overlays.append(axes[row, col].imshow(heat.numpy(), cmap="RdBu_r", norm=norm, alpha=0.65))
            axes[row, col].set_xlabel(f"{float(heat.min()):.2f}–{float(heat.max()):.2f} × uniform", fontsize=8)
        if difference:
            axes[row, -1].imshow(picture, alpha=0.35)
            differences.append(axes[row, -1].imshow((maps[0][row] - maps[1][row]).numpy(), cmap="PiYG",
                                                    vmin=-bound, vmax=bound, alpha=0.8))
    titles = ["image"] + [textwrap.fill(label, 24) for label in labels]
    titles += [textwrap.fill(f"{labels[0]} − {labels[1]}", 24)] if difference else []
    for col, title in enumerate(titles):
        axes[0, col].set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"concept attention softmax_t({temperature:g} · cos(c, v_t)), relative to uniform", fontsize=10)
    bars = [(overlays, axes[:, 1:1 + len(maps)], "T·a (1 = uniform attention)")]
    if difference:
        bars.append((differences, axes[:, -1:], f"T·Δa; green: more in {labels[0]}"))
    for shown, columns, label in bars:
        bar = fig.colorbar(shown[0], ax=list(columns.flat), location="bottom", shrink=0.9, aspect=20 * len(columns[0]),
                           pad=0.01)
        bar.set_label(textwrap.fill(label, 30 * len(columns[0])), fontsize=9)
        bar.locator = MaxNLocator(nbins=4 * len(columns[0]), symmetric=shown is differences)
        bar.update_ticks()
        bar.ax.tick_params(labelsize=8)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=130, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
    data, output = buffer.getvalue(), Path(output)
    with disk_full_as_error(output, len(data)):
        check_free_space(output, len(data))
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(str(output)) as partial, open(partial, "wb") as f:
            f.write(data)
    return output


def visualize(image_path, caption: str, models: Sequence[tuple], output, *, concepts: Optional[List[str]] = None,
              temperature: float = 1.0, spacy_model: Optional[str] = None) -> Path:
    """Render the concept attention maps of ``caption`` on ``image_path`` for one or two models.

    ``models``: ``(label, model, preprocess, tokenizer)`` tuples. The image is shown as the first
    model preprocesses it; the other model's maps are upsampled to the same size.
    """
    from PIL import Image
    if not 1 <= len(models) <= 2:
        raise ValueError("give one model, or two to compare")
    if concepts is None:
        from .concepts import extract_concepts
        options = {"spacy_model": spacy_model} if spacy_model else {}
        concepts = extract_concepts([caption], **options)[0]
    with Image.open(image_path) as image:
        image = image.convert("RGB")
    first = models[0][2](image)
    height, width = first.shape[-2:]
    all_maps = []
    for _, model, preprocess, tokenizer in models:
        maps = concept_attention_maps(model.eval(), preprocess(image), concepts, tokenizer, temperature)
        num_tokens = maps.shape[1] * maps.shape[2]
        all_maps.append(upsample(maps * num_tokens, (height, width)))
    return render(display_image(models[0][1], first), concepts, all_maps, [m[0] for m in models], output,
                  temperature)


def _label(model_name: str, pretrained: Optional[str]) -> str:
    # the checkpoint is what tells two runs of one architecture apart; open_clip_train writes every
    # run's checkpoints as <logs>/<run name>/checkpoints/epoch_N.pt, so the run name goes in too
    if not pretrained:
        return model_name
    path = Path(pretrained)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{model_name} {path.parent.parent.name}/{path.name}"
    return f"{model_name} {path.name}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.viz", description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument("--caption", required=True)
    parser.add_argument("--concepts", nargs="+", default=None, help="concepts to show (default: extracted with spaCy)")
    parser.add_argument("--spacy-model", default=None)
    parser.add_argument("--compare", default=None, help="second model (name or local-dir:DIR) for a difference map")
    parser.add_argument("--compare-pretrained", default=None)
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature lambda (training: 1.0)")
    parser.add_argument("--output", required=True, type=Path)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    if not args.image.is_file():
        raise FileNotFoundError(f"--image not found: {args.image}")
    check_free_space(args.output, MIN_FREE_BYTES, at_least=True)  # a full disk is said before the models load
    kwargs = model_kwargs(args)
    models = [(_label(args.model, args.pretrained), *load_model(args.model, args.pretrained, **kwargs))]
    if args.compare:
        # --tokenizer is the first model's; a second architecture brings its own
        compare_kwargs = {**kwargs, "tokenizer": kwargs["tokenizer"] if args.compare == args.model else None}
        models.append((_label(args.compare, args.compare_pretrained),
                       *load_model(args.compare, args.compare_pretrained, **compare_kwargs)))
    output = visualize(args.image, args.caption, models, args.output, concepts=args.concepts,
                       temperature=args.temperature, spacy_model=args.spacy_model)
    print(f"attention maps written to {output}")
    return output


if __name__ == "__main__":
    cli_errors.run(main, sys.argv[1:])
