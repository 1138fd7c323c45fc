"""VL-CheckList (Zhao et al., 2022; om-ai-lab/VL-CheckList ``corpus/v1/**.yaml`` + ``data/**.json``).

``<root>/vl_checklist/`` is the release's folder layout: ``corpus/v1/<Type>/<corpus>.yaml`` (each
naming its ``ANNO_PATH`` and ``IMG_ROOT``, both relative to this folder), ``data/...json`` (lists of
``[image path, {"POS": [texts], "NEG": [texts]}]``) and the image roots of ``DATASETS.md``:
``vg/`` (``VG_100K/``, ``VG_100K_2/``; also VAW's images), ``hake/`` and ``swig/``.

Protocol (``vl_checklist/data_loader.py`` ``load_itc_samples`` and ``vl_checklist/evaluate.py``,
task ``itc`` with ``configs/sample.yaml``'s ``MAX_NUM: 2000``):

- per corpus, the items whose image file exists are kept, in file order (the others are dropped:
  ``n_missing_images`` counts those met before the first ``max_items`` kept ones), and the first
  ``MAX_NUM / 2 = 1000`` of them are scored;
- an item is correct iff s(image, POS[0]) > s(image, NEG[0]), s the cosine similarity (the
  release's ``itc`` rule ``result_pos > result_neg`` on the first positive and negative text). The
  comparison is strict, so a tie counts as wrong. (The release's CLIP example engine cannot run
  this task; the cosine comparison is what its rule means for a contrastive model.)
- results are per corpus; a type (e.g. ``Attribute/color``, reported as ``Attribute_color``) is the
  macro mean over its corpora (``acc_<corpus>`` next to it); ``_average.acc`` is the mean of the
  Object, Attribute and Relation means of their types, as in the vl_compo study.

A corpus none of whose images is present is left out of its type's mean (logged; ``n_corpora``
says how many were averaged), and a type with no corpus left is left out of the results.
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, choice_outcome, fraction, load_json, mean, pair_similarity,
                   read_text, register_benchmark, require_file, require_items, split_names)

_logger = logging.getLogger(__name__)

NAME = "vl_checklist"
SOURCE = ("https://github.com/om-ai-lab/VL-CheckList (clone it as vl_checklist/: corpus/, data/); images per its "
          "DATASETS.md: Visual Genome into vl_checklist/vg/, HAKE into vl_checklist/hake/, SWiG images_512 into "
          "vl_checklist/swig/")
MAX_ITEMS = 1000  # configs/sample.yaml MAX_NUM (2000), halved by evaluate.py for the itc task
_OBJECT_CORPORA = ("hake", "swig_agent", "swig_destination", "swig_item", "swig_tool", "vg_obj", "vg_subj")
# the release's corpus configs: corpus/v1/<type>/<corpus>.yaml
VL_CHECKLIST_TYPES = OrderedDict(
    [(f"Object/{kind}", _OBJECT_CORPORA) for kind in ("Location/center", "Location/margin", "Location/mid",
                                                      "Size/large", "Size/medium", "Size/small")]
    + [(f"Attribute/{kind}", ("vaw", "vg")) for kind in ("action", "color", "material", "size", "state")]
    + [("Relation/action", ("hake", "swig", "vg")), ("Relation/spatial", ("vg",))])
VL_CHECKLIST_CORPORA = tuple(f"{kind}/{corpus}" for kind, corpora in VL_CHECKLIST_TYPES.items() for corpus in corpora)
CATEGORIES = ("Object", "Attribute", "Relation")


def vl_checklist_files(data_root: Path) -> "OrderedDict[str, Path]":
    """{``<Type>/<corpus>``: its config ``corpus/v1/<Type>/<corpus>.yaml``}."""
    folder = Path(data_root) / NAME / "corpus" / "v1"
    return OrderedDict((corpus, folder / f"{corpus}.yaml") for corpus in VL_CHECKLIST_CORPORA)


def type_key(kind: str) -> str:
    """``Attribute/color`` -> ``Attribute_color`` (the release's output file names, vl_compo's columns)."""
    return kind.replace("/", "_")


def read_corpus_config(path: Path) -> Dict[str, str]:
    import yaml
    try:
        config = yaml.safe_load(read_text(path, NAME))
    except yaml.YAMLError as e:
        raise ValueError(f"{NAME}: {path} is not valid YAML: {e}") from e
    if not isinstance(config, dict) or not all(isinstance(config.get(k), str) for k in ("ANNO_PATH", "IMG_ROOT")):
        raise ValueError(f"{NAME}: {path} must set ANNO_PATH and IMG_ROOT (strings), got {config!r:.120}")
    return config


def _texts(entry, key: str, source: Path, index: int) -> str:
    texts = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(texts, list) or not texts or not isinstance(texts[0], str):
        raise ValueError(f"{source}: item {index}: {key} must be a non-empty list of texts, got {texts!r:.80}")
    return texts[0]


@register_benchmark(NAME, files=vl_checklist_files, splits=True, source=SOURCE)
def load_vl_checklist(data_root: Path, images: Vocabulary, texts: Vocabulary,
                      splits: Optional[Sequence[str]] = None, max_items: Optional[int] = MAX_ITEMS) -> Scorer:
    """VL-CheckList (itc): ``acc`` per type (``Attribute_color``, ...), the macro over its corpora;
    ``_average`` has ``acc`` (the mean of the Object, Attribute and Relation means) and those means.

    ``splits`` selects corpora (``Attribute/color/vaw``, ...); ``max_items`` is the number of items
    scored per corpus (``None``: all)."""
    folder = Path(data_root) / NAME
    configs = vl_checklist_files(data_root)
    per_corpus = OrderedDict()
    present: Dict[Path, bool] = {}
    for corpus in split_names(splits, VL_CHECKLIST_CORPORA, NAME):
        config_path = require_file(configs[corpus], NAME)
        config = read_corpus_config(config_path)
        source = folder / config["ANNO_PATH"]
        if not source.is_file():
            raise FileNotFoundError(f"{NAME}: {source}, the ANNO_PATH of {config_path}, not found")
        data = load_json(source, NAME)
        if not isinstance(data, list):
            raise ValueError(f"{source}: expected a JSON list of [image, {{POS, NEG}}] items, "
                             f"got {type(data).__name__}")
        require_items(data, source)
        image_root = folder / config["IMG_ROOT"]
        rows = {"id": [], "image": [], "pos": [], "neg": []}
        missing = 0
        for index, item in enumerate(data):
            if max_items and len(rows["id"]) >= max_items:
                break
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"{source}: item {index} must be [image path, {{POS, NEG}}], got {item!r:.80}")
            pos, neg = _texts(item[1], "POS", source, index), _texts(item[1], "NEG", source, index)
            path = image_root / item[0]
            if path not in present:
                present[path] = path.is_file()
            if not present[path]:
                missing += 1
                continue
            rows["id"].append(index)
            rows["image"].append(images.add(ImageRef(path)))
            rows["pos"].append(texts.add(pos))
            rows["neg"].append(texts.add(neg))
        if missing:
            _logger.warning("%s: %s: %d item(s) dropped for a missing image under %s (the release's loader keeps "
                            "the items whose image exists)", NAME, corpus, missing, image_root)
        if not rows["id"]:
            _logger.warning("%s: %s: no image of %s is under %s; the corpus is left out of %s", NAME, corpus,
                            source, image_root, type_key(corpus.rsplit("/", 1)[0]))
        per_corpus[corpus] = (rows, missing)
    if not any(rows["id"] for rows, _ in per_corpus.values()):
        # the release's evaluate.py divides by zero here; nothing would be scored
        roots = sorted({str(folder / read_corpus_config(configs[c])["IMG_ROOT"]) for c in per_corpus})
        raise FileNotFoundError(f"{NAME}: none of the images of the {len(per_corpus)} corpora is present (looked in "
                                f"{', '.join(roots)}); see the release's DATASETS.md for the image folders")

    def score(image_features, text_features):
        by_type: "OrderedDict[str, Dict[str, tuple]]" = OrderedDict()
        records = []
        for corpus, (rows, missing) in per_corpus.items():
            kind, name = corpus.rsplit("/", 1)
            pos = pair_similarity(image_features, text_features, rows["image"], rows["pos"])
            neg = pair_similarity(image_features, text_features, rows["image"], rows["neg"])
            correct, tied = (choice_outcome(np.stack([pos, neg], axis=1), answer=0, ties="wrong")
                             if len(pos) else (np.zeros(0, bool), np.zeros(0, bool)))
            by_type.setdefault(kind, OrderedDict())[name] = (correct, tied, missing)
            records += [{"benchmark": NAME, "split": type_key(kind), "corpus": name, "id": i, "pos": p, "neg": q,
                         "correct": bool(c)} for i, p, q, c in zip(rows["id"], pos, neg, correct)]
        results = OrderedDict()
        for kind, corpora in by_type.items():
            scored = OrderedDict((name, c) for name, c in corpora.items() if len(c[0]))
            if not scored:
                _logger.warning("%s: %s has no corpus with images; left out of the results", NAME, type_key(kind))
                continue
            result = {"acc": mean([fraction(c[0]) for c in scored.values()])}
            result.update((f"acc_{name}", fraction(c[0])) for name, c in scored.items())
            result.update(n=sum(len(c[0]) for c in scored.values()), ties=sum(int(c[1].sum()) for c in scored.values()),
                          n_missing_images=sum(c[2] for c in corpora.values()), n_corpora=len(scored))
            results[type_key(kind)] = result
        categories = OrderedDict()
        for category in CATEGORIES:
            members = [r["acc"] for key, r in results.items() if key.split("_", 1)[0] == category]
            if members:
                categories[category] = mean(members)
        average = {"acc": mean(list(categories.values())), **categories}
        for key in ("n", "ties"):
            average[key] = sum(r[key] for r in results.values())
        average["n_missing_images"] = sum(missing for _, missing in per_corpus.values())
        results["_average"] = average
        return results, records

    return score
