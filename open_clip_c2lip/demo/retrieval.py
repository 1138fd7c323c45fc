"""Image <-> text retrieval recall on the held-out world images (``<root>/retrieval.json``)."""
import json
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch


def recall_at_k(similarity: torch.Tensor, caption_group: Sequence[int], k: int = 1) -> Dict[str, float]:
    """Recall@k of ``similarity [N_images, N_texts]`` (row i's match is column i).

    Items with equal ``caption_group`` are interchangeable answers (e.g. the same caption, or the
    same objects in another order): i2t counts a retrieved caption of the query image's group as
    correct, t2i an image of the query caption's group.
    """
    num = similarity.shape[0]
    if similarity.shape != (num, num) or len(caption_group) != num:
        raise ValueError(f"need a square similarity and one group per column, got {tuple(similarity.shape)} "
                         f"and {len(caption_group)} groups")
    groups = torch.as_tensor(list(caption_group))
    k = min(k, num)
    top_texts = similarity.topk(k, dim=1).indices  # [N, k]
    i2t = (groups[top_texts] == groups[:, None]).any(dim=1).float().mean().item()
    top_images = similarity.topk(k, dim=0).indices.T  # [N, k]
    t2i = (groups[top_images] == groups[:, None]).any(dim=1).float().mean().item()
    return {f"image_to_text_R@{k}": i2t, f"text_to_image_R@{k}": t2i}


@torch.no_grad()
def evaluate_retrieval(model, preprocess: Callable, tokenizer: Callable, data_root, k: int = 1,
                       progress: bool = True) -> Dict[str, float]:
    """Recall@k over ``<data_root>/retrieval.json`` (``[{"filename", "caption"[, "match"]}]``, images in
    ``val2017/``); a retrieved item counts as correct when its ``match`` key equals the query's."""
    from ..eval import ImageRef, encode_images, encode_texts
    data_root = Path(data_root)
    source = data_root / "retrieval.json"
    if not source.is_file():
        raise FileNotFoundError(f"retrieval set not found: {source}")
    items = json.loads(source.read_text())
    for index, item in enumerate(items):
        missing = {"filename", "caption"} - set(item)
        if missing:
            raise ValueError(f"{source}: item {index} lacks {sorted(missing)}")
    captions = [item["caption"] for item in items]
    group_of = {}  # items sharing "match" (default: the caption) are interchangeable answers
    groups = [group_of.setdefault(item.get("match", item["caption"]), len(group_of)) for item in items]
    refs = [ImageRef(data_root / "val2017" / item["filename"]) for item in items]
    image_features = encode_images(model, preprocess, refs, progress=progress)
    text_features = encode_texts(model, tokenizer, captions, progress=progress)
    result = recall_at_k(image_features @ text_features.T, groups, k=k)
    result["n"] = len(items)
    # A random ranking hits one of the query's own group (same caption) with this probability at k=1.
    sizes = torch.bincount(torch.as_tensor(groups)).float()
    result["chance_R@1"] = (sizes[groups] / len(items)).mean().item() if items else float("nan")
    return result
