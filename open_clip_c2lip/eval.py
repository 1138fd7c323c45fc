"""Compositionality evaluation suite: SugarCrepe, SugarCrepe++, ARO VG-R / VG-A, Winoground.

Reads the benchmarks' official files from local folders (never downloads) under one ``--data-root``::

    val2017/                                    COCO 2017 val images (SugarCrepe, SugarCrepe++)
    sugarcrepe/<split>.json                     RAIVNLab/sugar-crepe data/*.json
    sugarcrepe_pp/<split>.json                  Sri-Harsha/scpp data/*.json
    aro_vgr/visual_genome_relation.json + aro_vgr/images/
    aro_vga/visual_genome_attribution.json + aro_vga/images/
    winoground/examples.jsonl + winoground/images/

Every distinct image (with its crop box) and every distinct caption is encoded once across all
requested benchmarks; scores are cosine similarities of L2-normalized features. All comparisons
are strict (``>``), as in the official scripts, so a tie counts as wrong.

Output (values are fractions in [0, 1], ``n`` counts items)::

    {"<benchmark>": {"<split>": {"<metric>": value, "n": items}, "_average": {...}}}

- ``sugarcrepe``: ``acc`` per split; ``_average`` has ``micro`` (all items pooled), ``macro`` (mean
  of split accuracies) and ``add`` / ``replace`` / ``swap``, each the *micro* average over the
  items of that category's splits (the SugarCrepe authors' tables use micro averages).
- ``sugarcrepe_pp``: ``itt`` and ``tot`` per split; ``_average`` holds their macro averages
  (``itt``, ``tot``) and micro averages (``itt_micro``, ``tot_micro``).
- ``aro_vgr`` / ``aro_vga``: ``acc`` per relation / attribute pair (``attr0_attr1``) on the image
  cropped to the item's bbox; ``_average`` has ``acc`` (macro over the kept splits, the ARO
  number) and ``acc_micro``. Splits with fewer than ``min_samples`` items are dropped (counted
  and logged): 25 for VG-A (the ARO repository's ``VG_Attribution.evaluate_scores``), 0 for VG-R
  (its ``VG_Relation.evaluate_scores`` keeps every relation); ``--aro-min-samples`` sets both.
- ``winoground``: ``text``, ``image``, ``group`` per ``collapsed_tag`` (``all`` without tags);
  ``_average`` is over all items (the official Winoground scores).

CLI: ``python -m open_clip_c2lip.eval --model NAME --pretrained FILE --benchmark all
--data-root DIR --output results.json``.
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_logger = logging.getLogger(__name__)

SUGARCREPE_SPLITS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
SUGARCREPE_PP_SPLITS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
PRECISIONS = ("fp32", "amp", "amp_bf16")
# SigLIP preprocessing (open_clip.pretrained._slpcfg); every C2 architecture is SigLIP-style.
SIGLIP_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                     "resize_mode": "squash"}
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_IMAGE_SUFFIXES = ("", ".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------------------
# Loaded benchmarks: distinct images / captions, interned across benchmarks

@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to a PIL box ``(left, upper, right, lower)``."""
    path: Path
    box: Optional[Tuple[float, float, float, float]] = None


class Vocabulary:
    """Interns hashable items (image refs, captions) so each distinct one is encoded once."""

    def __init__(self):
        self.items: List[Any] = []
        self._index: Dict[Any, int] = {}

    def add(self, item) -> int:
        index = self._index.get(item)
        if index is None:
            index = self._index[item] = len(self.items)
            self.items.append(item)
        return index

    def __len__(self) -> int:
        return len(self.items)


# A scorer maps (image_features [N_img, D], text_features [N_txt, D]), both L2-normalized,
# to (results {split: {metric: value, "n": n}, "_average": {...}}, per-item score rows).
Scorer = Callable[[torch.Tensor, torch.Tensor], Tuple[Dict[str, Dict[str, float]], List[Dict[str, Any]]]]
BenchmarkLoader = Callable[..., Scorer]

BENCHMARKS: "OrderedDict[str, BenchmarkLoader]" = OrderedDict()


def register_benchmark(name: str):
    """Register ``loader(data_root, images, texts, **options) -> Scorer`` under ``name``."""
    def decorator(loader: BenchmarkLoader) -> BenchmarkLoader:
        BENCHMARKS[name] = loader
        return loader
    return decorator


def list_benchmarks() -> List[str]:
    return list(BENCHMARKS)


def _require_file(path: Path, benchmark: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark}: expected file not found: {path}")
    return path


def _require_dir(path: Path, benchmark: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{benchmark}: expected image folder not found: {path}")
    return path


def _load_json(path: Path, benchmark: str):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        size = path.stat().st_size
        hint = " (0-byte file: a failed download?)" if size == 0 else ""
        raise ValueError(f"{benchmark}: {path} is not valid JSON{hint}: {e}") from e


def _field(item: Mapping, key: str, source: Path, item_id) -> Any:
    if not isinstance(item, Mapping):
        raise ValueError(f"{source}: item {item_id!r} is not an object: {item!r:.80}")
    if key not in item:
        raise ValueError(f"{source}: item {item_id!r} lacks field {key!r} (has {sorted(item)})")
    return item[key]


def _check_images(paths: Sequence[Path], folder: Path, source: Path) -> None:
    missing = sorted({p.name for p in paths if not p.is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) referenced by {source} are missing from {folder}: {shown}")


def _resolve_image(folder: Path, name: str) -> Path:
    """``folder/name``, trying common suffixes for names stored without one (Winoground)."""
    for suffix in _IMAGE_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return folder / name


def _split_names(requested: Optional[Sequence[str]], known: Sequence[str], benchmark: str) -> Sequence[str]:
    if requested is None:
        return known
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise ValueError(f"{benchmark}: unknown split(s) {unknown}; known: {list(known)}")
    return list(requested)


def _items_of(data, source: Path):
    """(item id, item) pairs of a JSON dict keyed by id (SugarCrepe) or a list (SugarCrepe++, ARO)."""
    if isinstance(data, Mapping):
        return list(data.items())
    if isinstance(data, list):
        return [(item.get("id", i) if isinstance(item, Mapping) else i, item) for i, item in enumerate(data)]
    raise ValueError(f"{source}: expected a JSON object or list, got {type(data).__name__}")


def _pair_similarity(image_features: torch.Tensor, text_features: torch.Tensor,
                     image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (image, text) index pair -> ``[N]`` float64."""
    image_index = torch.as_tensor(image_index, dtype=torch.long)
    text_index = torch.as_tensor(text_index, dtype=torch.long)
    sims = (image_features[image_index] * text_features[text_index]).sum(-1)
    return sims.double().numpy()


def _text_similarity(text_features: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _pair_similarity(text_features, text_features, a, b)


# ------------------------------------------------------------------------------------------------
# Metrics (pure functions of similarities; strict comparisons as in the official scripts)

def selection_correct(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """SugarCrepe / ARO: correct iff sim(image, positive) > sim(image, negative). ``[N]`` bool."""
    return np.asarray(positive) > np.asarray(negative)


def sugarcrepe_pp_correct(image_p1: np.ndarray, image_p2: np.ndarray, image_neg: np.ndarray,
                          p1_p2: np.ndarray, p1_neg: np.ndarray, p2_neg: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """SugarCrepe++ ITT (image-to-text) and TOT (text-only) correctness, each ``[N]`` bool.

    ITT: cos(I, P1) > cos(I, N) and cos(I, P2) > cos(I, N).
    TOT: cos(P1, P2) > cos(P1, N) and cos(P1, P2) > cos(P2, N).
    """
    itt = (np.asarray(image_p1) > image_neg) & (np.asarray(image_p2) > image_neg)
    tot = (np.asarray(p1_p2) > p1_neg) & (np.asarray(p1_p2) > p2_neg)
    return itt, tot


def winoground_correct(c0_i0: np.ndarray, c0_i1: np.ndarray, c1_i0: np.ndarray,
                       c1_i1: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Winoground text, image and group correctness from the four caption-image scores, ``[N]`` bool."""
    text = (np.asarray(c0_i0) > c1_i0) & (np.asarray(c1_i1) > c0_i1)
    image = (np.asarray(c0_i0) > c0_i1) & (np.asarray(c1_i1) > c1_i0)
    return text, image, text & image


def _fraction(correct: np.ndarray) -> Optional[float]:
    """Fraction of true entries; ``None`` (JSON null) when there are no items."""
    return float(np.mean(correct)) if len(correct) else None


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


# ------------------------------------------------------------------------------------------------
# Benchmarks

def _coco_caption_splits(data_root: Path, name: str, split_names: Sequence[str], images: Vocabulary,
                         texts: Vocabulary, caption_fields: Dict[str, str]) -> "OrderedDict[str, Dict[str, list]]":
    """Rows of each SugarCrepe(++)-style split file ``<data_root>/<name>/<split>.json``: item ``id``,
    ``image`` index (COCO files in ``<data_root>/val2017``) and, per key of ``caption_fields``, the
    text index of that item field."""
    image_dir = _require_dir(data_root / "val2017", name)
    per_split = OrderedDict()
    for split in split_names:
        source = _require_file(data_root / name / f"{split}.json", name)
        rows = {"id": [], "image": [], **{key: [] for key in caption_fields}}
        paths = []
        for item_id, item in _items_of(_load_json(source, name), source):
            path = image_dir / _field(item, "filename", source, item_id)
            paths.append(path)
            rows["id"].append(item_id)
            rows["image"].append(images.add(ImageRef(path)))
            for key, item_field in caption_fields.items():
                rows[key].append(texts.add(_field(item, item_field, source, item_id)))
        _check_images(paths, image_dir, source)
        per_split[split] = rows
    return per_split


@register_benchmark("sugarcrepe")
def load_sugarcrepe(data_root: Path, images: Vocabulary, texts: Vocabulary,
                    splits: Optional[Sequence[str]] = None) -> Scorer:
    """SugarCrepe: ``sugarcrepe/<split>.json`` (dict of ``filename, caption, negative_caption``)."""
    name = "sugarcrepe"
    per_split = _coco_caption_splits(data_root, name, _split_names(splits, SUGARCREPE_SPLITS, name), images,
                                     texts, {"pos": "caption", "neg": "negative_caption"})

    def score(image_features, text_features):
        results, records, pooled = OrderedDict(), [], {}
        for split, rows in per_split.items():
            pos = _pair_similarity(image_features, text_features, rows["image"], rows["pos"])
            neg = _pair_similarity(image_features, text_features, rows["image"], rows["neg"])
            correct = selection_correct(pos, neg)
            pooled[split] = correct
            results[split] = {"acc": _fraction(correct), "n": len(correct)}
            records += [{"benchmark": name, "split": split, "id": i, "pos": p, "neg": q, "correct": bool(c)}
                        for i, p, q, c in zip(rows["id"], pos, neg, correct)]
        everything = np.concatenate(list(pooled.values())) if pooled else np.zeros(0, dtype=bool)
        average = {"micro": _fraction(everything),
                   "macro": _mean([r["acc"] for r in results.values()])}
        for category in ("add", "replace", "swap"):
            members = [c for s, c in pooled.items() if s.split("_")[0] == category]
            if members:
                average[category] = _fraction(np.concatenate(members))
        average["n"] = len(everything)
        results["_average"] = average
        return results, records

    return score


@register_benchmark("sugarcrepe_pp")
def load_sugarcrepe_pp(data_root: Path, images: Vocabulary, texts: Vocabulary,
                       splits: Optional[Sequence[str]] = None) -> Scorer:
    """SugarCrepe++: ``sugarcrepe_pp/<split>.json`` (list of ``filename, caption, caption2, negative_caption``)."""
    name = "sugarcrepe_pp"
    per_split = _coco_caption_splits(data_root, name, _split_names(splits, SUGARCREPE_PP_SPLITS, name), images,
                                     texts, {"p1": "caption", "p2": "caption2", "neg": "negative_caption"})

    def score(image_features, text_features):
        results, records, pooled = OrderedDict(), [], {"itt": [], "tot": []}
        for split, rows in per_split.items():
            sims = {key: _pair_similarity(image_features, text_features, rows["image"], rows[key])
                    for key in ("p1", "p2", "neg")}
            p1_p2 = _text_similarity(text_features, rows["p1"], rows["p2"])
            p1_neg = _text_similarity(text_features, rows["p1"], rows["neg"])
            p2_neg = _text_similarity(text_features, rows["p2"], rows["neg"])
            itt, tot = sugarcrepe_pp_correct(sims["p1"], sims["p2"], sims["neg"], p1_p2, p1_neg, p2_neg)
            pooled["itt"].append(itt)
            pooled["tot"].append(tot)
            results[split] = {"itt": _fraction(itt), "tot": _fraction(tot), "n": len(itt)}
            records += [{"benchmark": name, "split": split, "id": i, "image_p1": a, "image_p2": b,
                         "image_neg": c, "p1_p2": d, "p1_neg": e, "p2_neg": f, "itt": bool(g), "tot": bool(h)}
                        for i, a, b, c, d, e, f, g, h in zip(rows["id"], sims["p1"], sims["p2"], sims["neg"],
                                                            p1_p2, p1_neg, p2_neg, itt, tot)]
        split_results = list(results.values())
        average = {}
        for metric in ("itt", "tot"):
            average[metric] = _mean([r[metric] for r in split_results])
        for metric in ("itt", "tot"):
            average[f"{metric}_micro"] = _fraction(np.concatenate(pooled[metric]) if pooled[metric] else [])
        average["n"] = sum(r["n"] for r in split_results)
        results["_average"] = average
        return results, records

    return score


def _load_aro(name: str, annotation: str, group_of: Callable[[Mapping, Path, Any], str],
              default_min_samples: int, data_root: Path, images: Vocabulary, texts: Vocabulary,
              min_samples: Optional[int]) -> Scorer:
    """ARO VG-Relation / VG-Attribution: image cropped to the item's bbox, true vs false caption."""
    folder = data_root / name
    source = _require_file(folder / annotation, name)
    image_dir = _require_dir(folder / "images", name)
    min_samples = default_min_samples if min_samples is None else min_samples
    data = _load_json(source, name)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of test cases, got {type(data).__name__}")
    rows = {"id": [], "group": [], "image": [], "true": [], "false": []}
    paths = []
    for index, item in enumerate(data):
        path = image_dir / _field(item, "image_path", source, index)
        x, y, w, h = (float(_field(item, key, source, index)) for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
        if w <= 0 or h <= 0:
            raise ValueError(f"{source}: item {index} has an empty bbox (w={w}, h={h})")
        paths.append(path)
        rows["id"].append(index)
        rows["group"].append(group_of(item, source, index))
        rows["image"].append(images.add(ImageRef(path, (x, y, x + w, y + h))))
        rows["true"].append(texts.add(_field(item, "true_caption", source, index)))
        rows["false"].append(texts.add(_field(item, "false_caption", source, index)))
    _check_images(paths, image_dir, source)
    groups = np.asarray(rows["group"], dtype=object)

    def score(image_features, text_features):
        true = _pair_similarity(image_features, text_features, rows["image"], rows["true"])
        false = _pair_similarity(image_features, text_features, rows["image"], rows["false"])
        correct = selection_correct(true, false)
        results, kept, dropped = OrderedDict(), [], []
        for group in sorted(set(rows["group"])):
            mask = groups == group
            if mask.sum() < min_samples:
                dropped.append(int(mask.sum()))
                continue
            kept.append(mask)
            results[group] = {"acc": _fraction(correct[mask]), "n": int(mask.sum())}
        if dropped:
            _logger.warning("%s: dropped %d split(s) with fewer than %d items (%d items) from the averages "
                            "(min_samples; set --aro-min-samples 0 to keep them)", name, len(dropped),
                            min_samples, sum(dropped))
        kept_mask = np.any(kept, axis=0) if kept else np.zeros(len(correct), bool)
        accs = [r["acc"] for r in results.values()]
        results["_average"] = {"acc": _mean(accs),
                               "acc_micro": _fraction(correct[kept_mask]), "n": int(kept_mask.sum())}
        records = [{"benchmark": name, "split": g, "id": i, "true": t, "false": f, "correct": bool(c),
                    "kept": bool(k)}
                   for i, g, t, f, c, k in zip(rows["id"], rows["group"], true, false, correct, kept_mask)]
        return results, records

    return score


def _relation_of(item, source, index) -> str:
    return str(_field(item, "relation_name", source, index))


def _attribute_pair_of(item, source, index) -> str:
    attributes = _field(item, "attributes", source, index)
    if not isinstance(attributes, (list, tuple)) or len(attributes) != 2:
        raise ValueError(f"{source}: item {index} field 'attributes' must be a 2-element list, got {attributes!r}")
    return f"{attributes[0]}_{attributes[1]}"


@register_benchmark("aro_vgr")
def load_aro_vgr(data_root: Path, images: Vocabulary, texts: Vocabulary,
                 min_samples: Optional[int] = None) -> Scorer:
    """ARO VG-Relation: ``aro_vgr/visual_genome_relation.json`` + ``aro_vgr/images/``; splits = relations."""
    return _load_aro("aro_vgr", "visual_genome_relation.json", _relation_of, 0,
                     data_root, images, texts, min_samples)


@register_benchmark("aro_vga")
def load_aro_vga(data_root: Path, images: Vocabulary, texts: Vocabulary,
                 min_samples: Optional[int] = None) -> Scorer:
    """ARO VG-Attribution: ``aro_vga/visual_genome_attribution.json`` + ``aro_vga/images/``; splits = attribute pairs."""
    return _load_aro("aro_vga", "visual_genome_attribution.json", _attribute_pair_of, 25,
                     data_root, images, texts, min_samples)


@register_benchmark("winoground")
def load_winoground(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """Winoground: ``winoground/examples.jsonl`` (``id, image_0, image_1, caption_0, caption_1[, collapsed_tag]``)
    + ``winoground/images/`` (``image_k`` names with or without suffix, e.g. ``ex_0_img_0.png``)."""
    name = "winoground"
    source = _require_file(data_root / name / "examples.jsonl", name)
    image_dir = _require_dir(data_root / name / "images", name)
    rows = {key: [] for key in ("id", "tag", "i0", "i1", "c0", "c1")}
    paths = []
    with open(source, "r", encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{source}:{line_number}: invalid JSON line: {e}") from e
            item_id = item.get("id", line_number) if isinstance(item, Mapping) else line_number
            for k in (0, 1):
                path = _resolve_image(image_dir, str(_field(item, f"image_{k}", source, item_id)))
                paths.append(path)
                rows[f"i{k}"].append(images.add(ImageRef(path)))
                rows[f"c{k}"].append(texts.add(_field(item, f"caption_{k}", source, item_id)))
            rows["id"].append(item_id)
            rows["tag"].append(str(item.get("collapsed_tag", "all")))
    _check_images(paths, image_dir, source)
    tags = np.asarray(rows["tag"], dtype=object)

    def score(image_features, text_features):
        s = {f"c{c}_i{i}": _pair_similarity(image_features, text_features, rows[f"i{i}"], rows[f"c{c}"])
             for c in (0, 1) for i in (0, 1)}
        text, image, group = winoground_correct(s["c0_i0"], s["c0_i1"], s["c1_i0"], s["c1_i1"])
        results = OrderedDict()
        for tag in sorted(set(rows["tag"])):
            mask = tags == tag
            results[tag] = {"text": _fraction(text[mask]), "image": _fraction(image[mask]),
                            "group": _fraction(group[mask]), "n": int(mask.sum())}
        results["_average"] = {"text": _fraction(text), "image": _fraction(image), "group": _fraction(group),
                               "n": len(text)}
        records = [{"benchmark": name, "split": rows["tag"][j], "id": rows["id"][j],
                    **{key: float(v[j]) for key, v in s.items()},
                    "text": bool(text[j]), "image": bool(image[j]), "group": bool(group[j])}
                   for j in range(len(text))]
        return results, records

    return score


# ------------------------------------------------------------------------------------------------
# Encoding

class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, refs: Sequence[ImageRef], preprocess: Callable):
        self.refs = refs
        self.preprocess = preprocess

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, index):
        from PIL import Image
        ref = self.refs[index]
        try:
            with Image.open(ref.path) as image:
                image = image.convert("RGB")
        except Exception as e:
            raise ValueError(f"cannot read image {ref.path}: {e}") from e
        if ref.box is not None:
            image = image.crop(ref.box)
        return self.preprocess(image)


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` in ``PRECISIONS`` (fp32: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "amp" else torch.bfloat16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def encode_images(model, preprocess: Callable, refs: Sequence[ImageRef], *, device: str = "cpu",
                  precision: str = "fp32", batch_size: int = 64, workers: int = 0,
                  progress: bool = True) -> torch.Tensor:
    """L2-normalized image features ``[N, D]`` (fp32, CPU) of ``refs``, in order."""
    from tqdm import tqdm
    loader = torch.utils.data.DataLoader(_ImageDataset(refs, preprocess), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    features = []
    for images in tqdm(loader, desc="images", disable=not progress, leave=False):
        with autocast(device, precision):
            out = model.encode_image(images.to(device))
        features.append(F.normalize(out.float(), dim=-1).cpu())
    return torch.cat(features) if features else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], *, device: str = "cpu",
                 precision: str = "fp32", batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """L2-normalized text features ``[N, D]`` (fp32, CPU) of ``texts``, in order."""
    from tqdm import tqdm
    features = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="texts", disable=not progress, leave=False):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        with autocast(device, precision):
            out = model.encode_text(tokens)
        features.append(F.normalize(out.float(), dim=-1).cpu())
    return torch.cat(features) if features else torch.zeros(0, 0)


# ------------------------------------------------------------------------------------------------
# Python API

def expand_benchmarks(benchmarks: Sequence[str]) -> List[str]:
    """Resolve ``all`` and validate names, keeping registry order and dropping duplicates."""
    names = []
    for benchmark in benchmarks:
        expanded = list(BENCHMARKS) if benchmark == "all" else [benchmark]
        for name in expanded:
            if name not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS) + ['all']}")
            if name not in names:
                names.append(name)
    return names


def evaluate(model, preprocess: Callable, tokenizer: Callable, benchmarks: Sequence[str],
             data_root, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 64,
             workers: int = 0, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = True, return_scores: bool = False):
    """Evaluate ``model`` on ``benchmarks`` read from ``data_root``.

    ``options`` maps a benchmark to its loader's keyword arguments, e.g.
    ``{"aro_vga": {"min_samples": 0}, "sugarcrepe": {"splits": ["swap_att"]}}``.
    Returns the results dict (see the module docstring), and with ``return_scores`` also the
    per-item score rows (a list of dicts).
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"--data-root folder not found: {data_root}")
    options = dict(options or {})
    names = expand_benchmarks(benchmarks)
    images, texts = Vocabulary(), Vocabulary()
    scorers = OrderedDict((name, BENCHMARKS[name](data_root, images, texts, **options.get(name, {})))
                          for name in names)
    _logger.info("encoding %d distinct images and %d distinct captions", len(images), len(texts))
    was_training = model.training
    model.eval()
    try:
        image_features = encode_images(model, preprocess, images.items, device=device, precision=precision,
                                       batch_size=batch_size, workers=workers, progress=progress)
        text_features = encode_texts(model, tokenizer, texts.items, device=device, precision=precision,
                                     batch_size=batch_size, progress=progress)
    finally:
        model.train(was_training)
    results, records = OrderedDict(), []
    for name, scorer in scorers.items():
        results[name], rows = scorer(image_features, text_features)
        records += rows
    return (results, records) if return_scores else results


def format_markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown tables (one per benchmark) of a results dict; metric values as percentages."""
    lines = []
    for benchmark, splits in results.items():
        metrics = []
        for values in splits.values():
            metrics += [k for k in values if k != "n" and k not in metrics]
        lines += [f"### {benchmark}", "", "| split | " + " | ".join(metrics) + " | n |",
                  "|---" * (len(metrics) + 2) + "|"]
        for split, values in splits.items():
            cells = [f"{100 * values[m]:.2f}" if values.get(m) is not None else "" for m in metrics]
            lines.append(f"| {split} | " + " | ".join(cells) + f" | {values.get('n', '')} |")
        lines.append("")
    return "\n".join(lines)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder, so no partial file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------------------------
# Model loading with the model's real preprocessing

def plugin_entry(model_name: str):
    """The plugin registry's entry (``open_clip_c2lip.registry.lookup``) for a C2 name, else ``None``."""
    try:
        from .registry import lookup
    except ImportError:  # registry stripped from a build: fall back to the naming rule
        return None
    return lookup(model_name)


def is_plugin_model(model_name: str) -> bool:
    """True for names the C2LIP plugin adds (``*-C2`` twins and the package's own configs)."""
    if plugin_entry(model_name) is not None:
        return True
    config_dir = Path(__file__).resolve().parent / "model_configs"
    return model_name.endswith("-C2") or (config_dir / f"{model_name}.json").is_file()


def plugin_preprocess_cfg(model_name: str) -> Dict[str, Any]:
    """The preprocessing the plugin gives a C2 name (SigLIP), or ``{}`` for other names."""
    entry = plugin_entry(model_name)
    if entry is not None:
        return dict(entry.preprocess)
    return dict(SIGLIP_PREPROCESS) if is_plugin_model(model_name) else {}


def tag_preprocess_cfg(model_name: str) -> Dict[str, Any]:
    """Preprocess values (mean, std, interpolation, resize_mode) on which all of ``model_name``'s
    pretrained tags agree; keys where tags disagree are left out with a warning."""
    import open_clip
    cfgs = [open_clip.get_pretrained_cfg(model_name, tag) for tag in open_clip.list_pretrained_tags_by_model(model_name)]
    agreed, disagreed = {}, []
    for key in _PREPROCESS_KEYS:
        values = {tuple(v) if isinstance(v, (list, tuple)) else v for v in (c.get(key) for c in cfgs) if v is not None}
        if len(values) == 1:
            agreed[key] = values.pop()
        elif len(values) > 1:
            disagreed.append(key)
    if disagreed:
        warnings.warn(f"pretrained tags of {model_name} disagree on {disagreed}; open_clip defaults are used "
                      f"for those unless set with --image-mean/--image-std/--image-interpolation/"
                      f"--image-resize-mode")
    return agreed


def resolve_preprocess_cfg(model_name: str, pretrained: Optional[str] = None,
                           overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Preprocess values to force on ``create_model``: the ones open_clip would lose, plus ``overrides``.

    A pretrained *tag* or a ``local-dir:``/``hf-hub:`` bundle already carries its preprocessing.
    A checkpoint file (or random init) would get open_clip's OpenAI defaults, so it takes the
    values all of the name's tags agree on; plugin names without tags get SigLIP preprocessing.
    """
    import open_clip
    forced: Dict[str, Any] = {}
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    is_tag = bool(pretrained) and bool(open_clip.get_pretrained_cfg(model_name, pretrained))
    if not has_schema and not is_tag:
        forced = tag_preprocess_cfg(model_name) or plugin_preprocess_cfg(model_name)
    forced.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return forced


def load_model(model_name: str, pretrained: Optional[str] = None, *, device: str = "cpu",
               image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
               image_interpolation: Optional[str] = None, image_resize_mode: Optional[str] = None):
    """``(model, preprocess, tokenizer)`` for any open_clip name, with the model's real preprocessing.

    ``model_name`` may be a built-in or plugin name (with ``pretrained`` a tag or checkpoint file)
    or a ``local-dir:``/``hf-hub:`` bundle. The model is in eval mode on ``device`` (fp32 weights;
    mixed precision is applied with autocast at encoding time).
    """
    import open_clip
    if pretrained and not model_name.startswith(("local-dir:", "hf-hub:")) \
            and not open_clip.get_pretrained_cfg(model_name, pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained {pretrained!r} is neither a pretrained tag of {model_name} "
                                f"({open_clip.list_pretrained_tags_by_model(model_name)}) nor an existing file")
    forced = resolve_preprocess_cfg(model_name, pretrained, {
        "mean": image_mean, "std": image_std, "interpolation": image_interpolation,
        "resize_mode": image_resize_mode})
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, image_mean=forced.get("mean"),
        image_std=forced.get("std"), image_interpolation=forced.get("interpolation"),
        image_resize_mode=forced.get("resize_mode"))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model / preprocessing flags shared by the eval and viz CLIs."""
    parser.add_argument("--model", required=True,
                        help="open_clip model name (built-in, C2 plugin name) or local-dir:DIR / hf-hub:ID")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (ignored for local-dir:)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-mean", type=float, nargs=3, default=None, metavar="M")
    parser.add_argument("--image-std", type=float, nargs=3, default=None, metavar="S")
    parser.add_argument("--image-interpolation", default=None, choices=["bicubic", "bilinear", "random"])
    parser.add_argument("--image-resize-mode", default=None, choices=["shortest", "longest", "squash"])


def model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(device=args.device, image_mean=args.image_mean, image_std=args.image_std,
                image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode)


# ------------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.eval", description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--benchmark", nargs="+", default=["all"], choices=list(BENCHMARKS) + ["all"])
    parser.add_argument("--data-root", required=True, type=Path, help="folder holding the benchmarks' files")
    parser.add_argument("--output", required=True, type=Path, help="results JSON (written atomically)")
    parser.add_argument("--save-scores", type=Path, default=None, help="per-item scores as JSON Lines")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--aro-min-samples", type=int, default=None,
                        help="drop ARO relations / attribute pairs with fewer items from the averages "
                             "(default: 0 for aro_vgr, 25 for aro_vga, as the ARO repository's code)")
    parser.add_argument("--sugarcrepe-splits", nargs="+", default=None, choices=SUGARCREPE_SPLITS)
    parser.add_argument("--sugarcrepe-pp-splits", nargs="+", default=None, choices=SUGARCREPE_PP_SPLITS)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _options(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    options: Dict[str, Dict[str, Any]] = {}
    if args.aro_min_samples is not None:
        options["aro_vgr"] = options["aro_vga"] = {"min_samples": args.aro_min_samples}
    if args.sugarcrepe_splits:
        options["sugarcrepe"] = {"splits": args.sugarcrepe_splits}
    if args.sugarcrepe_pp_splits:
        options["sugarcrepe_pp"] = {"splits": args.sugarcrepe_pp_splits}
    return options


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("open_clip_c2lip").setLevel(logging.INFO)
    model, preprocess, tokenizer = load_model(args.model, args.pretrained, **model_kwargs(args))
    results, records = evaluate(
        model, preprocess, tokenizer, args.benchmark, args.data_root, device=args.device,
        precision=args.precision, batch_size=args.batch_size, workers=args.workers, options=_options(args),
        progress=not args.no_progress, return_scores=True)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    if args.save_scores is not None:
        atomic_write_text(args.save_scores, "".join(json.dumps(r, default=float) + "\n" for r in records))
    print(format_markdown(results))
    print(f"results written to {args.output}")
    return results


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        sys.exit(f"error: {e}")
