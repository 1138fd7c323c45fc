"""EqBen (Wang et al., ICCV 2023; Wangt-CN/EqBen, data on Google Drive / SharePoint).

``<root>/eqben/ann_json_finegrained_random.json`` (the full-test annotation: a list of
``{"image", "caption", "private_info": {"dataset", "name", "sample_cnt"}}``, one entry per
image-caption pair, shuffled) + the image release extracted to ``<root>/eqben/images/`` (``image``
is relative to it). ``private_info.name`` is ``c<k>i<j>``: caption ``k`` with image ``j`` of the 2x2
sample ``sample_cnt`` of sub-dataset ``dataset``; so each sample has four entries. YouCook2 frames
are ``.npy`` arrays in BGR order (``np.load(path)[:, :, [2, 1, 0]]``, as the official toolkit's
``process_img_npy``). The light release converted the ``.png`` images to ``.jpg`` without changing
the annotation: an absent ``x.png`` is read from ``x.jpg``.

Protocol: ``evaluate_eqben_locally.py`` (what the CodaLab server ran) regroups the scores by
``private_info`` and computes Winoground's text / image / group scores per sub-dataset with
``src/eqben/eqben_acc.py cal_wino_score`` (strict ``>``, a tie is wrong; :mod:`.groupscore`).
Sub-datasets (``SUBSETS``): eqbenag, eqbenyoucook2, eqbengebc, eqbenkubric_{loc,attr,cnt}, eqbensd.

Summary (the vl_compo study's, an exact fit of its ``results.csv``): ``_average.<metric>`` is the
mean over youcook2, gebc, ag, kubric (the mean of loc / attr / cnt) and sd; it is null (with a
warning) unless all seven sub-datasets are present.
"""
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from .core import (IMAGE_READERS, ImageRef, Scorer, Vocabulary, check_images, field, load_json, mean,
                   register_benchmark, require_dir, require_file, require_items, text_field)
from .groupscore import GROUP_METRICS, GroupRows, score_groups

_logger = logging.getLogger(__name__)

ANNOTATION = "ann_json_finegrained_random.json"
SUBSETS = ("eqbenag", "eqbenyoucook2", "eqbengebc", "eqbenkubric_loc", "eqbenkubric_attr", "eqbenkubric_cnt",
           "eqbensd")
KUBRIC = ("eqbenkubric_loc", "eqbenkubric_attr", "eqbenkubric_cnt")
# samples per sub-dataset in the full test set (evaluate_eqben_locally.py SUBSET_LENGTH_INFO)
FULL_TEST_SAMPLES = {"eqbenag": 195872, "eqbenyoucook2": 45849, "eqbengebc": 1814, "eqbenkubric_loc": 2000,
                     "eqbenkubric_attr": 2000, "eqbenkubric_cnt": 2000, "eqbensd": 1513}
ENTRY_NAMES = ("c0i0", "c0i1", "c1i0", "c1i1")
NPY_READER = "eqben_bgr_npy"
SOURCE = ("https://github.com/Wangt-CN/EqBen (README: ann_json_finegrained_random.json into eqben/, the image "
          "release extracted into eqben/images/)")


def read_bgr_npy(path: Path):
    """An EqBen YouCook2 frame: an ``[H, W, 3]`` uint8 BGR array saved with ``np.save`` -> RGB PIL image."""
    from PIL import Image
    array = np.load(path)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an [H, W, 3] uint8 frame, got shape {array.shape}, dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array[:, :, [2, 1, 0]]), "RGB")


IMAGE_READERS[NPY_READER] = read_bgr_npy


def sample_number(value, source: Path, index: int) -> int:
    """``private_info.sample_cnt`` as an int (the official scorer indexes its score arrays with it; a
    text of digits is accepted); ValueError naming the entry otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: entry {index}: private_info.sample_cnt must be an integer, got {value!r:.80}")
    return value


def eqben_image(image_dir: Path, relative: str) -> ImageRef:
    path = image_dir / relative
    if path.suffix == ".npy":
        return ImageRef(path, reader=NPY_READER)
    if path.suffix == ".png" and not path.is_file() and path.with_suffix(".jpg").is_file():
        path = path.with_suffix(".jpg")  # the light (jpg) release
    return ImageRef(path)


def eqben_summary(results: Dict[str, Dict[str, Any]], metric: str):
    """The vl_compo summary of ``metric``: mean over youcook2, gebc, ag, kubric (mean of 3), sd."""
    kubric = mean([results[s][metric] for s in KUBRIC])
    return mean([results["eqbenyoucook2"][metric], results["eqbengebc"][metric], results["eqbenag"][metric],
                 kubric, results["eqbensd"][metric]])


@register_benchmark("eqben", files=lambda root: {"eqben": Path(root) / "eqben" / ANNOTATION}, source=SOURCE)
def load_eqben(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """EqBen: ``text``, ``image``, ``group`` per sub-dataset; ``_average`` is the vl_compo summary."""
    name = "eqben"
    folder = Path(data_root) / name
    source = require_file(folder / ANNOTATION, name)
    image_dir = require_dir(folder / "images", name)
    data = load_json(source, name)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of image-caption entries, got {type(data).__name__}")
    require_items(data, source)
    samples: "OrderedDict[Tuple[str, Any], Dict[str, Tuple[str, str]]]" = OrderedDict()
    for index, entry in enumerate(data):
        info = field(entry, "private_info", source, index)
        dataset = text_field(info, "dataset", source, index)
        entry_name = text_field(info, "name", source, index)
        sample = sample_number(field(info, "sample_cnt", source, index), source, index)
        if dataset not in SUBSETS:
            raise ValueError(f"{source}: entry {index} has unknown private_info.dataset {dataset!r}; "
                             f"known: {list(SUBSETS)}")
        if entry_name not in ENTRY_NAMES:
            raise ValueError(f"{source}: entry {index} has private_info.name {entry_name!r}, "
                             f"expected one of {list(ENTRY_NAMES)}")
        entries = samples.setdefault((dataset, sample), {})
        if entry_name in entries:
            raise ValueError(f"{source}: {dataset} sample {sample} has two {entry_name} entries (entry {index})")
        entries[entry_name] = (text_field(entry, "image", source, index), text_field(entry, "caption", source, index))
    rows, paths = GroupRows(), []
    for (dataset, sample), entries in sorted(samples.items(), key=lambda kv: (SUBSETS.index(kv[0][0]), kv[0][1])):
        missing = [n for n in ENTRY_NAMES if n not in entries]
        if missing:
            raise ValueError(f"{source}: {dataset} sample {sample} lacks the entries {missing} (a 2x2 sample has "
                             f"{list(ENTRY_NAMES)})")
        image_of = {j: {entries[f"c{c}i{j}"][0] for c in (0, 1)} for j in (0, 1)}
        caption_of = {c: {entries[f"c{c}i{j}"][1] for j in (0, 1)} for c in (0, 1)}
        if any(len(v) != 1 for v in (*image_of.values(), *caption_of.values())):
            raise ValueError(f"{source}: {dataset} sample {sample}: the entries disagree on an image or caption "
                             f"(images {image_of}, captions {caption_of})")
        refs = [eqben_image(image_dir, image_of[j].pop()) for j in (0, 1)]
        paths += [ref.path for ref in refs]
        rows.add(sample, dataset, images.add(refs[0]), images.add(refs[1]),
                 texts.add(caption_of[0].pop()), texts.add(caption_of[1].pop()))
    check_images(paths, image_dir, source)
    counts = {s: rows["subset"].count(s) for s in SUBSETS}
    differ = {s: n for s, n in counts.items() if n and n != FULL_TEST_SAMPLES[s]}
    if differ:
        _logger.warning("eqben: %s holds %s samples where the full test set has %s: not the full-test "
                        "annotation, or a subset of it", source, differ, {s: FULL_TEST_SAMPLES[s] for s in differ})

    def score(image_features, text_features):
        results, outcomes, records = score_groups(name, rows, SUBSETS, image_features, text_features)
        absent = [s for s in SUBSETS if s not in results]
        if absent:
            _logger.warning("eqben: sub-dataset(s) %s absent from %s: the summary (_average) needs all of %s",
                            ", ".join(absent), source, ", ".join(SUBSETS))
            average = {m: None for m in GROUP_METRICS}
        else:
            average = {m: eqben_summary(results, m) for m in GROUP_METRICS}
        average.update(n=len(rows), ties=int(outcomes["ties"].sum()))
        results["_average"] = average
        return results, records

    return score
