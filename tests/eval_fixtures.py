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

from conftest import DATA_ENV, data_dir, real_data
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

def shared_data(name: str, *parts: str) -> Path:
    """``$C2LIP_TEST_DATA/<name>/<parts>`` through conftest's ``real_data`` (which skips the calling
    test, saying what to get and from where, when ``name`` is absent)."""
    path = real_data(name).joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found under ${DATA_ENV}: the {name} folder lacks it")
    return path


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
        data = json.loads(shared_data("sugar_crepe", f"{split}.json").read_text())
        keys = list(data)[:ITEMS_PER_SPLIT] + [list(data)[-1]]  # keys stay as in the file (non-contiguous)
        write_json(root / "sugarcrepe" / f"{split}.json", {k: data[k] for k in keys})
    for split in c2eval.SUGARCREPE_PP_SPLITS:
        data = json.loads(shared_data("sugarcrepe_pp", f"{split}.json").read_text())
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


# VALSE: real items of every piece (validated and not), one deliberate tie (foil == caption)
VALSE_VALIDATED_PER_PIECE = 2


def write_valse(root: Path):
    names = set()
    for piece in c2eval.VALSE_PIECES:
        data = json.loads(shared_data("valse", f"{piece}.json").read_text())
        valid = [k for k, d in data.items() if d["mturk"]["caption"] >= 2][:VALSE_VALIDATED_PER_PIECE]
        invalid = [k for k, d in data.items() if d["mturk"]["caption"] < 2][:1]
        subset = {k: data[k] for k in sorted(valid + invalid, key=list(data).index)}
        if piece == "counting-hard":
            tie = dict(data[valid[0]], foil=data[valid[0]]["caption"])
            subset["deliberate_tie"] = tie
        write_json(root / "valse" / f"{piece}.json", subset)
        names |= {d["image_file"] for d in subset.values()}
    for i, name in enumerate(sorted(names)):
        block_image(root / "valse" / "images" / name, seed=1000 + i)


# ImageCoDe: real descriptions of two static and two video sets; frame numbers whose file-name order
# differs from their numeric order; in one set two identical images (a possible tie)
IMAGECODE_FRAMES = (0, 3, 7, 12, 18, 25, 31, 40, 52, 100)


def imagecode_sets():
    data = json.loads(shared_data("imagecode", "valid_data.json").read_text())
    static = [k for k in data if "open-images" in k][:2]
    videos = [k for k in data if "open-images" not in k][:2]
    return {k: data[k] for k in static + videos}


def write_imagecode(root: Path):
    sets = imagecode_sets()
    write_json(root / "imagecode" / "valid_data.json", sets)
    for s, name in enumerate(sets):
        frames = range(10) if "open-images" in name else IMAGECODE_FRAMES
        for k, frame in enumerate(frames):
            seed = 2000 + 10 * s + (k if (s, k) != (2, 9) else 8)  # set 2: its last two images are identical
            block_image(root / "imagecode" / "image-sets" / name / f"img{frame}.jpg", seed=seed)


# VL-CheckList: every corpus of the release, with the release's annotation paths and image roots;
# items written here in its schema (a POS[0] == NEG[0] item and an item whose image is absent)
def vl_checklist_anno_path(corpus: str) -> str:
    """The release's ANNO_PATH of a corpus (corpus/v1/<corpus>.yaml)."""
    parts = corpus.split("/")
    if parts[0] == "Attribute":
        return f"data/Attribute/{parts[2]}/{parts[1]}.json"
    if parts[0] == "Relation":
        return {"action/hake": "data/Relation/hake_action.json", "action/swig": "data/Relation/swig_action.json",
                "action/vg": "data/Relation/vg/action.json",
                "spatial/vg": "data/Relation/vg/spatial.json"}["/".join(parts[1:])]
    group, kind, source = parts[1], parts[2], parts[3]
    folder = f"data/Object/{group}/{source.split('_')[0]}_{group.lower()}"
    if source == "hake":
        return f"{folder}/hake_obj_{kind}.json"
    if source.startswith("swig"):
        return f"{folder}/{source}/{source}_{kind}.json"
    return f"{folder}/{source}_{kind}.json"


def vl_checklist_image(corpus: str, k: int) -> tuple:
    """(IMG_ROOT, relative image path) of the k-th stand-in image of a corpus's source."""
    source = corpus.split("/")[-1]
    if source.startswith("hake"):
        return "hake/", f"hico_20160224_det/images/test2015/HICO_test2015_{k:08d}.jpg"
    if source.startswith("swig"):
        return "swig/", f"riding_{k}.jpg"
    return ("vg" if corpus.startswith("Attribute/color") else "vg/"), f"VG_100K{'_2' if k % 2 else ''}/{k}.jpg"


VL_CHECKLIST_WORDS = ("red", "blue", "wooden", "metal", "small", "large", "on", "under", "holding", "riding")


def write_vl_checklist(root: Path):
    folder = root / "vl_checklist"
    made = set()
    for c, corpus in enumerate(c2eval.VL_CHECKLIST_CORPORA):
        anno_path = vl_checklist_anno_path(corpus)
        items = []
        for k in range(3):
            image_root, image = vl_checklist_image(corpus, (c + k) % 4)
            a, b = VL_CHECKLIST_WORDS[(c + k) % 10], VL_CHECKLIST_WORDS[(3 * c + k + 1) % 10]
            items.append([image, {"POS": [f"the {a} cup on the table", "extra"],
                                  "NEG": [f"the {b} cup on the table", "extra 2"]}])
            if (image_root, image) not in made:
                made.add((image_root, image))
                block_image(folder / image_root / image, seed=3000 + len(made))
        if c == 7:  # a tie: the negative text is the positive one
            items[1][1]["NEG"][0] = items[1][1]["POS"][0]
        if c == 11:  # the release's loader drops an item whose image is absent
            items.insert(1, [vl_checklist_image(corpus, 99)[1], {"POS": ["a dog"], "NEG": ["a cat"]}])
        write_json(folder / anno_path, items)
        image_root = vl_checklist_image(corpus, 0)[0]
        yaml_path = folder / "corpus" / "v1" / f"{corpus}.yaml"
        yaml_path.parent.mkdir(parents=True, exist_ok=True)
        yaml_path.write_text(f'ANNO_PATH: "{anno_path}"\nIMG_ROOT: "{image_root}"\nTYPE: "TUPLE_JSON"')


# What'sUp: the six files in the release's schemas, written here; a tie (a wrong option equal to the
# right one) in two subsets
def write_whatsup(root: Path):
    folder = root / "whatsup"
    controlled = {
        "controlled_images_dataset.json": ("controlled_images", ["on", "under", "left_of", "right_of"],
                                           ["on", "under", "to the left of", "to the right of"]),
        "controlled_clevr_dataset.json": ("controlled_clevr", ["left_of", "right_of", "in-front_of", "behind"],
                                          ["to the left of", "to the right of", "in front of", "behind"]),
    }
    seed = 4000
    for annotation, (image_dir, preps, phrases) in controlled.items():
        items = []
        for k, (obj, ref) in enumerate([("mug", "table"), ("beer-bottle", "armchair"), ("cap", "chair")]):
            name = f"{obj}_{preps[k]}_{ref}.jpeg"
            block_image(folder / image_dir / name, seed=seed)
            seed += 1
            options = [f"A {obj.replace('-', ' ')} {phrase} a {ref}" for phrase in phrases]
            options = [options[k]] + options[:k] + options[k + 1:]  # the right one first
            if k == 2 and image_dir == "controlled_images":
                options[3] = options[0]
            items.append({"image_path": f"data/{image_dir}/{name}", "caption_options": options})
        write_json(folder / annotation, items)
    qa = {"coco_qa_one_obj.json": ("coco", [139, 285, 632]), "coco_qa_two_obj.json": ("coco", [139, 724, 776]),
          "vg_qa_one_obj.json": ("vg", [2375429, 2369714, 10]), "vg_qa_two_obj.json": ("vg", [1592, 2400001, 107899])}
    made = set()
    for annotation, (kind, ids) in qa.items():
        items = []
        for k, image_id in enumerate(ids):
            path = (folder / "val2017" / f"{image_id:012d}.jpg" if kind == "coco"
                    else folder / "vg_images" / f"{image_id}.jpg")
            if path not in made:
                made.add(path)
                block_image(path, seed=seed)
                seed += 1
            right, wrong = [("A dog to the left of a cat", "A dog to the right of a cat"),
                            ("A photo of a bowl on the top", "A photo of a bowl on the bottom"),
                            ("A plate above a fork", "A plate below a fork")][k]
            if k == 1 and annotation == "vg_qa_two_obj.json":
                wrong = right
            items.append([image_id if kind == "coco" or k else str(image_id), right, wrong])
        write_json(folder / annotation, items)


# ARO COCO-Order / Flickr30k-Order: Karpathy-test entries written here (captions with the raw
# punctuation and spacing the ARO code normalizes; short ones whose shuffles leave them unchanged)
ARO_ORDER_ENTRIES = {
    "aro_coco_order": ("coco_karpathy_test.json", "val2014/COCO_val2014_{:012d}.jpg", [
        (391895, ["A man with a red helmet on a small moped on a dirt road. ",
                  "Man riding a motor bike on a dirt road on the countryside.", "A dog."]),
        (522418, ["A woman wearing a net on her head cutting a cake. ", "A white plate with a brown cake.",
                  "Two people standing near a big old red truck in the snow."]),
    ]),
    "aro_flickr_order": ("flickr30k_test.json", "flickr30k-images/{}.jpg", [
        (1007129816, ["The man with pierced ears is wearing glasses and an orange hat.", "A man in a hat."]),
        (1009434119, ["A black and white dog is running in a grassy garden surrounded by a white fence.",
                      "Dogs.", "A dog runs (fast) on the grass: happily!"]),
    ]),
}


def write_aro_order(root: Path):
    for i, (name, (annotation, pattern, entries)) in enumerate(ARO_ORDER_ENTRIES.items()):
        items = []
        for k, (image_id, captions) in enumerate(entries):
            image = pattern.format(image_id)
            block_image(root / name / image, seed=5000 + 10 * i + k)
            items.append({"image": image, "caption": captions})
        write_json(root / name / annotation, items)


@pytest.fixture(scope="module")
def written_root(tmp_path_factory):
    """The benchmarks whose items are written here (no shared data needed)."""
    root = tmp_path_factory.mktemp("written")
    write_aro_order(root)
    write_vl_checklist(root)
    write_whatsup(root)
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, real_data):
    root = tmp_path_factory.mktemp("bench")
    subset_sugarcrepe(root, real_data)
    write_aro(root)
    write_winoground(root)
    write_aro_order(root)
    write_valse(root)
    write_imagecode(root)
    write_vl_checklist(root)
    write_whatsup(root)
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
# scripted scores: features chosen by the test, to pin down tie rules and summaries exactly

def id_image(path: Path, k: int) -> None:
    """A stand-in image carrying the id ``k`` in its first pixel (PNG content: lossless, whatever
    the file's suffix; PIL reads it by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (k % 256, k // 256, 0)).save(path, format="PNG")


def scored(s: float):
    """A unit vector whose cosine with ``[1, 0]`` is ``s``."""
    return [s, float(np.sqrt(1 - s * s))]


class _ScriptedModule(torch.nn.Module):
    def __init__(self, image_table, text_table):
        super().__init__()
        self.register_buffer("image_table", torch.as_tensor(image_table, dtype=torch.float32))
        self.register_buffer("text_table", torch.as_tensor(text_table, dtype=torch.float32))

    def encode_image(self, ids):
        return self.image_table[ids[:, 0]]

    def encode_text(self, ids):
        return self.text_table[ids[:, 0]]


class Scripted:
    """A model (with its preprocess and tokenizer) whose features are given: the image painted by
    :func:`id_image` with id k has ``image_vectors[k]``, the text t has ``text_vectors[t]``."""

    def __init__(self, image_vectors, text_vectors):
        self.index = {t: i for i, t in enumerate(text_vectors)}
        self.model = _ScriptedModule(image_vectors, list(text_vectors.values()))

    def preprocess(self, image):
        r, g, _ = image.convert("RGB").getpixel((0, 0))
        return torch.tensor([r + 256 * g])

    def tokenizer(self, texts):
        return torch.tensor([[self.index[t]] for t in texts])

    def evaluate(self, names, root, **kwargs):
        return c2eval.evaluate(self.model, self.preprocess, self.tokenizer, names, root, progress=False, **kwargs)


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

    def first_best(self, scores):
        """Index of the first highest score (``np.argmax``), recording the gap to the next lower score:
        exactly equal scores come from identical inputs and are intended ties."""
        best = max(scores)
        lower = [s for s in scores if s != best]
        if lower:
            self.margins.append(best - max(lower))
        return list(scores).index(best)

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
