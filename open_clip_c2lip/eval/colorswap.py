"""ColorSwap (Burapacheep et al., 2024; Top34051/colorswap, data on Google Drive / gated HF
``stanfordnlp/colorswap``).

``<root>/colorswap/test.json`` (the release's ``data/test.json``: a list of ``{id, caption_1,
caption_2, image_1, image_2, image_source, caption_source}``, 300 items) + the release's
``data/images.zip`` extracted next to it (``image_k`` is relative to that folder, e.g.
``images/img_0_1.png``). Caption ``k`` describes image ``k``.

Protocol: the release's image-text-matching evaluation (its README's Colab) scores Winoground's text,
image and group scores (:mod:`.groupscore`: strict ``>``, a tie is wrong) on the test split; the
vl_compo study reports them as ``colorswap::{text,image,group}`` (n = 300) and summarises ColorSwap
by the group score. One subset, ``test``; ``_average`` holds the same numbers.
"""
from collections import OrderedDict
from pathlib import Path

from .core import (ImageRef, Scorer, Vocabulary, check_images, load_json, register_benchmark, require_file,
                   require_items, text_field)
from .groupscore import GroupRows, score_groups

ANNOTATION = "test.json"
SOURCE = ("https://github.com/Top34051/colorswap (its Google Drive archive: data/test.json + data/images.zip "
          "extracted into colorswap/)")


@register_benchmark("colorswap", files=lambda root: {"colorswap": Path(root) / "colorswap" / ANNOTATION},
                    source=SOURCE)
def load_colorswap(data_root: Path, images: Vocabulary, texts: Vocabulary) -> Scorer:
    """ColorSwap test split: ``text``, ``image``, ``group`` (Winoground scores)."""
    name = "colorswap"
    folder = Path(data_root) / name
    source = require_file(folder / ANNOTATION, name)
    data = load_json(source, name)
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of examples, got {type(data).__name__}")
    require_items(data, source)
    rows, paths = GroupRows(), []
    for index, item in enumerate(data):
        item_id = item.get("id", index) if isinstance(item, dict) else index
        refs = []
        for k in (1, 2):
            path = folder / text_field(item, f"image_{k}", source, item_id)
            paths.append(path)
            refs.append(images.add(ImageRef(path)))
        captions = [texts.add(text_field(item, f"caption_{k}", source, item_id)) for k in (1, 2)]
        rows.add(item_id, "test", refs[0], refs[1], captions[0], captions[1])
    check_images(paths, folder, source)

    def score(image_features, text_features):
        results, _, records = score_groups(name, rows, ["test"], image_features, text_features)
        results = OrderedDict(results)
        results["_average"] = dict(results["test"])
        return results, records

    return score
