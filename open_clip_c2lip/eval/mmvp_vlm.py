"""MMVP-VLM (Tong et al., CVPR 2024; HF dataset ``MMVP/MMVP_VLM``, scored by
``tsb0601/MMVP scripts/evaluate_vlm.py``).

``<root>/mmvp_vlm/Questions.csv`` (header, then rows ``qid, type, statement``) + the images
``<root>/mmvp_vlm/<images>/<type>/<qid>.jpg``, where ``<images>`` is ``MLLM_VLM Images`` (the folder
name the official script opens) or ``MMVP_VLM_Images`` (the name in the repository's README).

Official protocol (``evaluate_vlm.py``): consecutive rows form a pair, both images are read from the
first row's ``type`` folder; each statement is prefixed with ``"a photo of "``; for each statement the
model picks image 1 iff its softmax probability over the two images is > 0.5, i.e. iff
cos(text, image 1) > cos(text, image 2) (a tie picks image 2); statement ``k`` should pick image 1
iff its qid is odd; a pair is right iff both statements pick right. Pair ``p`` belongs to category
``CATEGORIES[p // 15]`` (9 categories x 15 pairs).

Reported per category:

- ``text`` / ``image`` / ``group``: Winoground scores of the pair (:mod:`.groupscore`, strict ``>``),
  with caption ``k`` = statement ``k`` and image ``k`` = the image statement ``k`` should pick. This
  is how the vl_compo study scores MMVP-VLM (``mmvp_vlm::<category>::{text,image,group}``, n = 15),
  and its summary is the mean of the group scores (``_average.group``).
- ``pair``: the official pair accuracy above. It equals ``image`` except on ties (the official rule
  credits a tie to the statement whose answer is image 2).

The prompt defaults to the official ``"a photo of "`` for every metric (``prompt=""`` scores the bare
statements). vl_compo's code is unreleased; its ``image`` scores equal the MMVP authors' published
per-category numbers (README ``imgs/vlm_results.png``) for SigLIP ViT-SO400M-14 in 7 of 9 categories
and DFN ViT-H-14 in 8 of 9, differing by one pair elsewhere, which points to the same prompt.
``_average``: each metric's mean over the categories; ``n``: pairs.
"""
import csv
import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .core import (ImageRef, Scorer, Vocabulary, check_images, csv_lines, fraction, mean, register_benchmark,
                   require_file, require_items)
from .groupscore import GROUP_METRICS, GroupRows, score_groups

_logger = logging.getLogger(__name__)

ANNOTATION = "Questions.csv"
IMAGE_FOLDERS = ("MLLM_VLM Images", "MMVP_VLM_Images")  # official script's name first, then the README's
CATEGORIES = ("Orientation and Direction", "Presence of Specific Features", "State and Condition",
              "Quantity and Count", "Positional and Relational Context", "Color and Appearance",
              "Structural Characteristics", "Texts", "Viewpoint and Perspective")
PAIRS_PER_CATEGORY = 15
DEFAULT_PROMPT = "a photo of "
SOURCE = "https://huggingface.co/datasets/MMVP/MMVP_VLM (Questions.csv + 'MLLM_VLM Images/' into mmvp_vlm/)"
METRICS = GROUP_METRICS + ("pair",)


def official_pair_correct(s1_image1, s1_image2, s2_image1, s2_image2, qid1_odd) -> np.ndarray:
    """``evaluate_vlm.py``'s pair accuracy, ``[N]`` bool, from the cosines of statement 1 / 2 with
    image 1 / 2: statement k picks image 1 iff its cosine with image 1 is strictly larger (a tie picks
    image 2) and should pick image 1 iff its qid is odd (statement 1's iff ``qid1_odd``)."""
    qid1_odd = np.asarray(qid1_odd, dtype=bool)
    picks_1 = np.asarray(s1_image1) > np.asarray(s1_image2)
    picks_2 = np.asarray(s2_image1) > np.asarray(s2_image2)
    return (picks_1 == qid1_odd) & (picks_2 == ~qid1_odd)


def mmvp_image_folder(folder: Path) -> Path:
    for name in IMAGE_FOLDERS:
        if (folder / name).is_dir():
            return folder / name
    raise FileNotFoundError(f"mmvp_vlm: expected image folder not found: {folder / IMAGE_FOLDERS[0]} "
                            f"(or {folder / IMAGE_FOLDERS[1]})")


def read_questions(source: Path):
    """``[(line, qid, type, statement), ...]`` of ``Questions.csv`` (header skipped)."""
    rows = []
    with csv_lines(source, "mmvp_vlm") as f:
        reader = csv.reader(f)
        next(reader, None)  # header
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != 3:
                raise ValueError(f"{source}:{line}: expected 3 columns (qid, type, statement), got {len(row)}")
            try:
                qid = int(row[0])
            except ValueError as e:
                raise ValueError(f"{source}:{line}: qid {row[0]!r} is not an integer") from e
            if not row[2].strip():
                raise ValueError(f"{source}:{line}: qid {qid}: the statement is empty")
            rows.append((line, qid, row[1], row[2]))
    return rows


@register_benchmark("mmvp_vlm", files=lambda root: {"mmvp_vlm": Path(root) / "mmvp_vlm" / ANNOTATION},
                    source=SOURCE)
def load_mmvp_vlm(data_root: Path, images: Vocabulary, texts: Vocabulary, prompt: Optional[str] = None) -> Scorer:
    """MMVP-VLM: ``text``, ``image``, ``group`` (vl_compo) and ``pair`` (official) per category."""
    name = "mmvp_vlm"
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    folder = Path(data_root) / name
    source = require_file(folder / ANNOTATION, name)
    questions = require_items(read_questions(source), source)
    image_dir = mmvp_image_folder(folder)
    if len(questions) % 2:
        raise ValueError(f"{source}: {len(questions)} statements, an odd number: statements come in pairs")
    rows, paths, first_is_image_1 = GroupRows(), [], []
    for p in range(len(questions) // 2):
        (line, qid1, type1, statement1), (_, qid2, _, statement2) = questions[2 * p], questions[2 * p + 1]
        if p // PAIRS_PER_CATEGORY >= len(CATEGORIES):
            raise ValueError(f"{source}:{line}: pair {p + 1} is beyond the {len(CATEGORIES)} categories x "
                             f"{PAIRS_PER_CATEGORY} pairs of MMVP-VLM")
        if qid1 % 2 == qid2 % 2:
            raise ValueError(f"{source}:{line}: qids {qid1} and {qid2} of one pair must be one odd (answer: "
                             f"image 1) and one even (answer: image 2)")
        image_1, image_2 = image_dir / type1 / f"{qid1}.jpg", image_dir / type1 / f"{qid2}.jpg"
        paths += [image_1, image_2]
        refs = [images.add(ImageRef(image_1)), images.add(ImageRef(image_2))]
        captions = [texts.add(prompt + statement1), texts.add(prompt + statement2)]
        odd_first = qid1 % 2 == 1  # statement 1's answer is image 1
        first_is_image_1.append(odd_first)
        i0, i1 = (refs[0], refs[1]) if odd_first else (refs[1], refs[0])
        rows.add(f"{qid1}-{qid2}", CATEGORIES[p // PAIRS_PER_CATEGORY], i0, i1, captions[0], captions[1])
    check_images(paths, image_dir, source)
    short = {c: n for c, n in ((c, rows["subset"].count(c)) for c in CATEGORIES) if n < PAIRS_PER_CATEGORY}
    if short:  # the official script would divide every category by (pairs // 9) all the same
        _logger.warning("mmvp_vlm: %s holds %d pairs where MMVP-VLM has %d (%d categories x %d); categories with "
                        "fewer pairs: %s", source, len(rows), len(CATEGORIES) * PAIRS_PER_CATEGORY, len(CATEGORIES),
                        PAIRS_PER_CATEGORY, ", ".join(f"{c} ({n})" for c, n in short.items()))
    first_is_image_1 = np.asarray(first_is_image_1)

    def score(image_features, text_features):
        results, outcomes, records = score_groups(name, rows, CATEGORIES, image_features, text_features)
        # back from Winoground's order (image k = statement k's answer) to the files' (image 1, image 2)
        s = outcomes
        to_image_1 = {c: np.where(first_is_image_1, s[f"c{c}_i0"], s[f"c{c}_i1"]) for c in (0, 1)}
        to_image_2 = {c: np.where(first_is_image_1, s[f"c{c}_i1"], s[f"c{c}_i0"]) for c in (0, 1)}
        pair = official_pair_correct(to_image_1[0], to_image_2[0], to_image_1[1], to_image_2[1], first_is_image_1)
        labels = np.asarray(rows["subset"], dtype=object)
        for category, values in results.items():
            values["pair"] = fraction(pair[labels == category])
            results[category] = {m: values[m] for m in METRICS} | {"n": values["n"], "ties": values["ties"]}
        for record, correct in zip(records, pair):
            record["pair"] = bool(correct)
        average = {m: mean([r[m] for r in results.values()]) for m in METRICS}
        average.update(n=len(rows), ties=int(outcomes["ties"].sum()))
        results["_average"] = average
        return results, records

    return score
