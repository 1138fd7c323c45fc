"""Shared fixtures of the eval tests: benchmark folders in the official schemas (real SugarCrepe /
SugarCrepe++ annotation subsets, ARO and Winoground items written here) with stand-in images, a
deterministic stub model, and an independent per-item numpy re-implementation of its features.

Imported by the ``tests/test_eval_*.py`` modules (pytest puts ``tests/`` on ``sys.path``).
"""
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import open_clip
from open_clip.transform import PreprocessCfg, image_transform_v2

from conftest import data_dir
from open_clip_c2lip import eval as c2eval

torch.set_num_threads(1)

# where real annotation data lives ($C2LIP_TEST_DATA); read files through conftest's real_data, which
# skips a test when one is absent
SHARED_DATA = data_dir()
TINY_CONFIG = Path(__file__).resolve().parents[1] / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
IMAGE_SIZE = 32
ITEMS_PER_SPLIT = 3


# ------------------------------------------------------------------------------------------------
# fixtures

def block_image(path: Path, seed: int, size=(80, 60)) -> None:
    """A stand-in photo: 8x6 random colour blocks (so crops and pooling see distinct content)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((10, 10, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def subset_sugarcrepe(root: Path, real_data):
    """Subsets of the real SugarCrepe / SugarCrepe++ files (``real_data``: conftest's helper, which
    skips when they are absent) with stand-in images."""
    expected_pp_ties = 0
    for split in c2eval.SUGARCREPE_SPLITS:
        data = json.loads((real_data("sugar_crepe") / f"{split}.json").read_text())
        keys = list(data)[:ITEMS_PER_SPLIT] + [list(data)[-1]]  # keys stay as in the file (non-contiguous)
        write_json(root / "sugarcrepe" / f"{split}.json", {k: data[k] for k in keys})
    for split in c2eval.SUGARCREPE_PP_SPLITS:
        data = json.loads((real_data("sugarcrepe_pp") / f"{split}.json").read_text())
        subset = data[:ITEMS_PER_SPLIT]
        # the official data quirk: negative == positive caption; strict '>' makes these wrong
        ties = [d for d in data if d["caption"] == d["negative_caption"]]
        subset += ties[:1]
        expected_pp_ties += len(ties[:1])
        write_json(root / "sugarcrepe_pp" / f"{split}.json", subset)
    assert expected_pp_ties >= 1, "the real SugarCrepe++ files should contain a caption == negative item"
    names = set()
    for folder in ("sugarcrepe", "sugarcrepe_pp"):
        for path in (root / folder).glob("*.json"):
            data = json.loads(path.read_text())
            names |= {d["filename"] for d in (data.values() if isinstance(data, dict) else data)}
    for i, name in enumerate(sorted(names)):
        block_image(root / "val2017" / name, seed=i)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def aro_item(image, box, true, false, **extra):
    x, y, w, h = box
    return {"image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "true_caption": true, "false_caption": false, **extra}


def write_aro(root: Path):
    for k in range(3):
        block_image(root / "aro_vgr" / "images" / f"{2300 + k}.jpg", seed=100 + k, size=(120, 90))
        block_image(root / "aro_vga" / "images" / f"{2400 + k}.jpg", seed=200 + k, size=(120, 90))
    relations = [
        ("on", "the cup is on the table", "the table is on the cup"),
        ("on", "the book is on the shelf", "the shelf is on the book"),
        ("on", "the cat is on the mat", "the mat is on the cat"),
        ("holding", "the man is holding the bat", "the bat is holding the man"),
        ("holding", "the girl is holding the kite", "the kite is holding the girl"),
        ("in front of", "the car is in front of the house", "the house is in front of the car"),
        # relations on the ARO authors' excluded list: in acc_all_relations, not in the published acc
        ("next to", "the dog is next to the car", "the car is next to the dog"),
        ("next to", "the lamp is next to the bed", "the bed is next to the lamp"),
        ("near", "the boat is near the bridge", "the bridge is near the boat"),
    ]
    write_json(root / "aro_vgr" / "visual_genome_relation.json", [
        aro_item(f"{2300 + i % 3}.jpg", (9 * i % 70, 5 * i % 45, 40 + 2 * i, 30 + 2 * i), true, false,
                  relation_name=rel, image_id=str(2300 + i % 3), subj="x", obj="y")
        for i, (rel, true, false) in enumerate(relations)])
    attributes = [
        (["white", "black"], "the white dog and the black cat", "the black dog and the white cat"),
        (["white", "black"], "the white plate and the black table", "the black plate and the white table"),
        (["white", "black"], "the white shirt and the black pants", "the black shirt and the white pants"),
        (["red", "blue"], "the red car and the blue bus", "the blue car and the red bus"),
    ]
    write_json(root / "aro_vga" / "visual_genome_attribution.json", [
        aro_item(f"{2400 + i % 3}.jpg", (5 + 7 * i, 3 * i, 50, 40), true, false, attributes=attrs,
                  image_id=str(2400 + i % 3), obj1_name="a", obj2_name="b")
        for i, (attrs, true, false) in enumerate(attributes)])


def write_winoground(root: Path):
    examples = [
        (0, "an old person kisses a young person", "a young person kisses an old person", "Object"),
        (1, "the dog is on the left of the cat", "the cat is on the left of the dog", "Relation"),
        (2, "some plants surrounding a lightbulb", "a lightbulb surrounding some plants", "Relation"),
        (3, "a red ball on a blue box", "a blue ball on a red box", "Both"),
    ]
    lines = []
    for i, c0, c1, tag in examples:
        for k in (0, 1):
            block_image(root / "winoground" / "images" / f"ex_{i}_img_{k}.png", seed=300 + 2 * i + k)
        lines.append(json.dumps({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
                                 "caption_0": c0, "caption_1": c1, "tag": "Noun", "secondary_tag": "",
                                 "num_main_preds": 1, "collapsed_tag": tag}))
    (root / "winoground" / "examples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, real_data):
    root = tmp_path_factory.mktemp("bench")
    subset_sugarcrepe(root, real_data)
    write_aro(root)
    write_winoground(root)
    return root


class StubModel(torch.nn.Module):
    """Deterministic, batch-invariant encoders: image = 4x4 average-pooled pixels (48-d),
    text = position-weighted sum of fixed random token vectors (48-d; order-sensitive, so swapped
    captions differ)."""

    def __init__(self, vocab_size: int):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        table = torch.randn(vocab_size, 48, generator=generator, dtype=torch.float64)
        table[0] = 0  # padding contributes nothing
        self.register_buffer("table", table)
        self.register_buffer("position", torch.rand(64, generator=generator, dtype=torch.float64) + 0.5)

    def encode_image(self, images):
        return F.adaptive_avg_pool2d(images.double(), 4).flatten(1)

    def encode_text(self, tokens):
        return (self.table[tokens] * self.position[:tokens.shape[1], None]).sum(1)


@pytest.fixture(scope="module")
def stub():
    tokenizer = open_clip.SimpleTokenizer(context_length=24)
    preprocess = image_transform_v2(PreprocessCfg(size=IMAGE_SIZE, **c2eval.SIGLIP_PREPROCESS), is_train=False)
    return StubModel(len(tokenizer.encoder)), preprocess, tokenizer


# ------------------------------------------------------------------------------------------------
# independent reference: one item at a time, numpy, plain-Python metrics

class Reference:
    def __init__(self, model: StubModel, preprocess, tokenizer):
        self.table = model.table.numpy()
        self.position = model.position.numpy()
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    def image(self, path, box=None):
        image = Image.open(path).convert("RGB")
        if box is not None:
            image = image.crop(box)
        x = self.preprocess(image).double().numpy()
        s = IMAGE_SIZE // 4
        feature = x.reshape(3, 4, s, 4, s).mean(axis=(2, 4)).reshape(-1)
        return feature / np.linalg.norm(feature)

    def text(self, caption):
        tokens = self.tokenizer([caption])[0].numpy()
        feature = (self.table[tokens] * self.position[:len(tokens), None]).sum(0)
        return feature / np.linalg.norm(feature)


class Comparisons:
    """Strict ``>`` that records its margin, so a test can check no decision sits on a float tie
    (float32 features vs the float64 reference)."""

    def __init__(self):
        self.margins = []

    def gt(self, a, b, same=False):
        if not same:  # comparing a caption with itself is an intended tie
            self.margins.append(abs(a - b))
        return a > b

    def assert_clear(self, tolerance=1e-5):
        assert self.margins and min(self.margins) > tolerance


def assert_results_equal(got, want):
    assert list(got) == list(want)
    for benchmark in want:
        assert list(got[benchmark]) == list(want[benchmark]), benchmark
        for split, metrics in want[benchmark].items():
            assert set(got[benchmark][split]) == set(metrics), (benchmark, split)
            for metric, value in metrics.items():
                assert got[benchmark][split][metric] == pytest.approx(value, abs=1e-12), (benchmark, split, metric)
