"""What'sUp (Kamath et al., EMNLP 2023; amitakamath/whatsup_vlms ``dataset_zoo/aro_datasets.py``).

``<root>/whatsup/`` holds the release's files as downloaded from its Google Drive folder (the
repository's ``data/`` folder):

- ``controlled_images_dataset.json`` (``WhatsUp_A``) and ``controlled_clevr_dataset.json``
  (``WhatsUp_B``): lists of ``{"image_path": "data/controlled_images/<name>.jpeg",
  "caption_options": [4 texts]}``; the image is ``image_path`` without its leading ``data/``, under
  ``<root>/whatsup/`` (``controlled_images/``, ``controlled_clevr/``);
- ``coco_qa_{one,two}_obj.json`` (``COCO_QA_ONE`` / ``_TWO``) and ``vg_qa_{one,two}_obj.json``
  (``VG_QA_ONE`` / ``_TWO``): lists of ``[image id, correct text, wrong text]``; images
  ``val2017/<id as 12 digits>.jpg`` and ``vg_images/<id>.jpg``.

Protocol (``evaluate_scores`` of ``Controlled_Images``, ``COCO_QA`` and ``VG_QA``, the paper's
"individual accuracy"): the first caption option is always the right one, and an item is correct iff
``np.argmax`` over the options' similarities is 0. ``np.argmax`` returns the first maximum, so a tie
between the right option and the best wrong one counts as correct. ``_average.acc`` is the mean of
the six subsets' accuracies (vl_compo's WhatsUp column).
"""
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from .core import (ImageRef, Scorer, Vocabulary, check_images, choice_outcome, fraction, load_json, mean,
                   option_similarity, register_benchmark, require_dir, require_file, require_items, split_names)

NAME = "whatsup"
SOURCE = ("the Google Drive folder 164q6X9hrvP-QYpi3ioSnfMuyHpG5oRkZ linked from "
          "https://github.com/amitakamath/whatsup_vlms (the 6 JSONs; controlled_images.tar.gz, "
          "controlled_clevr.tar.gz, val2017.zip and vg_images.tar.gz unpacked into whatsup/)")
# subset -> (annotation file, image folder)
WHATSUP_SUBSETS = OrderedDict([
    ("WhatsUp_A", ("controlled_images_dataset.json", "controlled_images")),
    ("WhatsUp_B", ("controlled_clevr_dataset.json", "controlled_clevr")),
    ("COCO_QA_ONE", ("coco_qa_one_obj.json", "val2017")),
    ("COCO_QA_TWO", ("coco_qa_two_obj.json", "val2017")),
    ("VG_QA_ONE", ("vg_qa_one_obj.json", "vg_images")),
    ("VG_QA_TWO", ("vg_qa_two_obj.json", "vg_images")),
])
_RELEASE_DATA_DIR = "data"  # image_path is relative to the repository, inside its data/ folder


def whatsup_files(data_root: Path) -> "OrderedDict[str, Path]":
    return OrderedDict((subset, Path(data_root) / NAME / annotation)
                       for subset, (annotation, _) in WHATSUP_SUBSETS.items())


def _controlled_item(folder: Path, item, source: Path, index: int) -> Tuple[Path, Sequence[str]]:
    if not isinstance(item, dict) or "image_path" not in item or "caption_options" not in item:
        raise ValueError(f"{source}: item {index} must be {{image_path, caption_options}}, got {item!r:.80}")
    parts = Path(item["image_path"]).parts
    if parts and parts[0] == _RELEASE_DATA_DIR:
        parts = parts[1:]
    return folder.joinpath(*parts), item["caption_options"]


def _qa_item(image_name: Callable[[object], str]):
    def parse(folder: Path, item, source: Path, index: int) -> Tuple[Path, Sequence[str]]:
        if not isinstance(item, list) or len(item) != 3:
            raise ValueError(f"{source}: item {index} must be [image id, correct text, wrong text], got {item!r:.80}")
        return folder / image_name(item[0]), item[1:]
    return parse


_PARSERS = {
    "WhatsUp_A": _controlled_item, "WhatsUp_B": _controlled_item,
    "COCO_QA_ONE": _qa_item(lambda i: f"val2017/{str(i).zfill(12)}.jpg"),
    "COCO_QA_TWO": _qa_item(lambda i: f"val2017/{str(i).zfill(12)}.jpg"),
    "VG_QA_ONE": _qa_item(lambda i: f"vg_images/{i}.jpg"),
    "VG_QA_TWO": _qa_item(lambda i: f"vg_images/{i}.jpg"),
}


@register_benchmark(NAME, files=whatsup_files, splits=True, source=SOURCE)
def load_whatsup(data_root: Path, images: Vocabulary, texts: Vocabulary,
                 splits: Optional[Sequence[str]] = None) -> Scorer:
    """What'sUp: ``acc`` per subset (first option right, ties correct); ``_average.acc`` their mean."""
    folder = Path(data_root) / NAME
    per_subset = OrderedDict()
    for subset in split_names(splits, tuple(WHATSUP_SUBSETS), NAME):
        annotation, image_folder = WHATSUP_SUBSETS[subset]
        source = require_file(folder / annotation, NAME)
        require_dir(folder / image_folder, NAME)
        data = load_json(source, NAME)
        if not isinstance(data, list):
            raise ValueError(f"{source}: expected a JSON list, got {type(data).__name__}")
        require_items(data, source)
        rows = {"id": [], "image": [], "options": []}
        paths = []
        for index, item in enumerate(data):
            path, options = _PARSERS[subset](folder, item, source, index)
            if (not isinstance(options, (list, tuple)) or len(options) < 2
                    or not all(isinstance(o, str) for o in options)):
                raise ValueError(f"{source}: item {index}: expected at least 2 caption options (texts), "
                                 f"got {options!r:.80}")
            paths.append(path)
            rows["id"].append(index)
            rows["image"].append(images.add(ImageRef(path)))
            rows["options"].append([texts.add(o) for o in options])
        if len({len(o) for o in rows["options"]}) != 1:
            raise ValueError(f"{source}: items have different numbers of caption options")
        check_images(paths, folder / image_folder, source)
        per_subset[subset] = rows

    def score(image_features, text_features):
        results, records = OrderedDict(), []
        for subset, rows in per_subset.items():
            scores = option_similarity(image_features, text_features, rows["image"], rows["options"])  # [N, K]
            correct, tied = choice_outcome(scores, answer=0, ties="correct")
            results[subset] = {"acc": fraction(correct), "n": len(correct), "ties": int(tied.sum())}
            records += [{"benchmark": NAME, "split": subset, "id": i, "scores": s.tolist(), "correct": bool(c)}
                        for i, s, c in zip(rows["id"], scores, correct)]
        results["_average"] = {"acc": mean([r["acc"] for r in results.values()]),
                               "n": sum(r["n"] for r in results.values()),
                               "ties": sum(r["ties"] for r in results.values())}
        return results, records

    return score
