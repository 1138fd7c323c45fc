"""Pair choices of the single-phrase probes (``<root>/probes/*.json``, SugarCrepe's item format).

An item is right iff cos(image, caption) > cos(image, negative_caption), a tie counts as wrong
(SugarCrepe's rule, as in ``open_clip_c2lip.eval``). Items with a ``kind`` are also scored per kind.
"""
import json
from pathlib import Path
from typing import Callable, Dict

import torch


def choice_accuracy(image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: image ``i`` is closer to ``positive[i]`` than to ``negative[i]`` (all ``[N, D]``,
    L2-normalized)."""
    return (image_features * positive).sum(-1) > (image_features * negative).sum(-1)


@torch.no_grad()
def evaluate_probes(model, preprocess: Callable, tokenizer: Callable, data_root,
                    progress: bool = False) -> Dict[str, dict]:
    """``{probe: {"acc", "n", "ties", "kinds": {kind: {"acc", "n"}}}}`` for every file in
    ``<data_root>/probes``; ``{}`` when there is none."""
    from ..eval import ImageRef, encode_images, encode_texts
    data_root = Path(data_root)
    files = sorted((data_root / "probes").glob("*.json"))
    if not files:
        return {}
    probes = {path.stem: list(json.loads(path.read_text()).values()) for path in files}
    filenames = sorted({item["filename"] for items in probes.values() for item in items})
    texts = sorted({item[key] for items in probes.values() for item in items
                    for key in ("caption", "negative_caption")})
    for name, items in probes.items():
        for index, item in enumerate(items):
            missing = {"filename", "caption", "negative_caption"} - set(item)
            if missing:
                raise ValueError(f"{data_root / 'probes' / name}.json: item {index} lacks {sorted(missing)}")
    image_index = {f: i for i, f in enumerate(filenames)}
    text_index = {t: i for i, t in enumerate(texts)}
    image_features = encode_images(model, preprocess, [ImageRef(data_root / "val2017" / f) for f in filenames],
                                   progress=progress)
    text_features = encode_texts(model, tokenizer, texts, progress=progress)
    results = {}
    for name, items in probes.items():
        images = image_features[[image_index[i["filename"]] for i in items]]
        positive = text_features[[text_index[i["caption"]] for i in items]]
        negative = text_features[[text_index[i["negative_caption"]] for i in items]]
        correct = choice_accuracy(images, positive, negative)
        ties = ((images * positive).sum(-1) == (images * negative).sum(-1)).sum().item()
        kinds = {}
        for kind in sorted({i.get("kind") for i in items} - {None}):
            chosen = torch.tensor([i.get("kind") == kind for i in items])
            kinds[kind] = {"acc": correct[chosen].float().mean().item(), "n": int(chosen.sum())}
        results[name] = {"acc": correct.float().mean().item(), "n": len(items), "ties": int(ties), "kinds": kinds}
    return results
