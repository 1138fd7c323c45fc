"""Where a model's concept attention goes: mass on the named object's patches (held-out images).

For an image and the phrase of one of its objects ("a red ring"), the XAC attention
``a_t = softmax_t(λ · cos(c, v_t))`` (``open_clip_c2lip.viz.concept_attention_maps``; ``loss.concept_attention``)
is summed over the patches whose centre lies in the object's grid cell. Uniform attention puts
``k / T`` there (``k`` object patches of ``T``); the ratio ``mass / (k / T)`` says how many times
uniform the object gets (1 = no localisation). ``top1`` is the fraction of phrases whose single
most-attended patch is one of the object's: a scale-free check, meaningful even when the weights
are close to uniform (temperature 1).
"""
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch


def object_patches(cell: int, grid: int, rows: int, cols: int, image_size: int) -> List[int]:
    """Flat indices of the ``rows x cols`` patches whose centre lies in world ``cell`` of a ``grid x grid``
    layout of an ``image_size`` px image."""
    cell_px = image_size / grid
    cell_row, cell_col = divmod(cell, grid)
    patch_h, patch_w = image_size / rows, image_size / cols
    inside = []
    for r in range(rows):
        for c in range(cols):
            y, x = (r + 0.5) * patch_h, (c + 0.5) * patch_w
            if cell_row * cell_px <= y < (cell_row + 1) * cell_px and cell_col * cell_px <= x < (cell_col + 1) * cell_px:
                inside.append(r * cols + c)
    return inside


@torch.no_grad()
def attention_mass(model, preprocess: Callable, tokenizer: Callable, data_root, grid: int, image_size: int,
                   temperature: float = 1.0, only_pairs: Optional[Sequence] = None,
                   limit: Optional[int] = None) -> Dict[str, float]:
    """Mean attention mass on the named object over ``<data_root>/retrieval.json`` items (with ``objects``).

    ``only_pairs``: measure only objects whose (colour, shape) is in this set (the held-out pairs).
    Returns ``{"mass", "uniform", "ratio", "top1", "n"}`` (means over measured phrases).
    """
    from PIL import Image
    from ..viz import concept_attention_maps
    from .world import Obj
    data_root = Path(data_root)
    items = json.loads((data_root / "retrieval.json").read_text())
    if limit is not None:
        items = items[:limit]
    model.eval()
    mass, uniform, top1 = [], [], []
    wanted = None if only_pairs is None else {tuple(p) for p in only_pairs}
    for item in items:
        if "objects" not in item:
            raise ValueError(f"{data_root / 'retrieval.json'}: item {item.get('filename')} has no 'objects'")
        objects = [o for o in item["objects"] if wanted is None or (o["colour"], o["shape"]) in wanted]
        if not objects:
            continue
        with Image.open(data_root / "val2017" / item["filename"]) as image:
            pixels = preprocess(image.convert("RGB"))
        phrases = [Obj(o["shape"], o["colour"], o["cell"]).phrase for o in objects]
        maps = concept_attention_maps(model, pixels, phrases, tokenizer, temperature)  # [N, rows, cols]
        rows, cols = maps.shape[1:]
        flat = maps.reshape(len(phrases), -1)
        for index, obj in enumerate(objects):
            patches = object_patches(obj["cell"], grid, rows, cols, image_size)
            mass.append(flat[index, patches].sum().item())
            uniform.append(len(patches) / (rows * cols))
            top1.append(float(int(flat[index].argmax()) in patches))
    n = len(mass)
    if not n:
        return {"mass": None, "uniform": None, "ratio": None, "top1": None, "n": 0}
    mean_mass, mean_uniform = sum(mass) / n, sum(uniform) / n
    return {"mass": mean_mass, "uniform": mean_uniform, "ratio": mean_mass / mean_uniform,
            "top1": sum(top1) / n, "n": n}
