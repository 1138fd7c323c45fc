"""The demo study's ``novel_half`` probe split by scene type, from the study's checkpoints.

``novel_half`` pairs a shown never-seen object's phrase with a false phrase that takes the colour
(or shape) of another object of the image. In scenes with two never-seen objects that other object
is never-seen too; in scenes with exactly one, it is a trained pair. This prints the probe's
accuracy (%) per variant and scene type, pooled over items of every world and training seed:

    python scripts/demo_novel_half_by_scene.py /work/demo_study --worlds 200 201 202 203 204 205 206 207

Scores are cosine similarities of open_clip's ``encode_image`` / ``encode_text`` on the saved
``epoch_1.pt`` of each run; an item is right iff the true phrase scores higher (a tie is wrong).
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

import open_clip_c2lip  # noqa: F401  (registers C2LIP-Tiny)

VARIANTS = ("siglip", "c2lip", "siglip_concepts")


def scene_types(eval_root: Path, held_out: set, items: List[dict]) -> List[int]:
    """Number of never-seen objects in each item's scene."""
    scenes = {r["filename"]: r["objects"] for r in json.loads((eval_root / "retrieval.json").read_text())}
    return [sum((o["colour"], o["shape"]) in held_out for o in scenes[it["filename"]]) for it in items]


@torch.no_grad()
def correct(checkpoint: Path, eval_root: Path, items: List[dict], tokenizer) -> List[bool]:
    """Per item: does the run's model score the true phrase above the false one?"""
    model, _, preprocess = open_clip.create_model_and_transforms("C2LIP-Tiny", pretrained=str(checkpoint))
    model.eval()
    files = sorted({it["filename"] for it in items})
    images = torch.stack([preprocess(Image.open(eval_root / "val2017" / f).convert("RGB")) for f in files])
    image_features = dict(zip(files, F.normalize(model.encode_image(images), dim=-1)))
    texts = sorted({it["caption"] for it in items} | {it["negative_caption"] for it in items})
    text_features = dict(zip(texts, F.normalize(model.encode_text(tokenizer(texts)), dim=-1)))
    return [bool(image_features[it["filename"]] @ text_features[it["caption"]]
                 > image_features[it["filename"]] @ text_features[it["negative_caption"]]) for it in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--worlds", type=int, nargs="+", required=True)
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    tokenizer = open_clip.get_tokenizer("C2LIP-Tiny")
    results: Dict[Tuple[str, int], List[bool]] = defaultdict(list)
    for world in args.worlds:
        world_dir = args.study_dir / f"world_{world}"
        held_out = {tuple(p) for p in json.loads((world_dir / "world" / "world.json").read_text())["files"]["held_out"]}
        eval_root = world_dir / "world" / "eval" / "unseen_pairs"
        items = list(json.loads((eval_root / "probes" / "novel_half.json").read_text()).values())
        types = scene_types(eval_root, held_out, items)
        for variant in VARIANTS:
            for seed in args.train_seeds:
                checkpoint = world_dir / "logs" / f"{variant}_t{seed}" / "checkpoints" / "epoch_1.pt"
                for kind, ok in zip(types, correct(checkpoint, eval_root, items, tokenizer)):
                    results[(variant, kind)].append(ok)
    print("| variant | scenes with 1 never-seen object | scenes with 2 never-seen objects |")
    print("|---|---|---|")
    for variant in VARIANTS:
        cells = [f"{100 * sum(results[(variant, k)]) / len(results[(variant, k)]):.1f} (n = {len(results[(variant, k)])})"
                 for k in (1, 2)]
        print(f"| {variant} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
