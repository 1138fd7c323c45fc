"""Tests for open_clip_c2lip.eval: loaders of the official formats, metrics, aggregation, CLI.

Real SugarCrepe / SugarCrepe++ annotations (subsets) with stand-in images; ARO and Winoground
fixtures in their official schemas. Results are checked against an independent numpy
re-implementation (per-item encoding, explicit crops, plain-Python metrics).
"""
import json
import logging
import math
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

from open_clip_c2lip import eval as c2eval

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_CONFIG = Path(__file__).resolve().parents[1] / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
IMAGE_SIZE = 32
ITEMS_PER_SPLIT = 3


# ------------------------------------------------------------------------------------------------
# fixtures

def _block_image(path: Path, seed: int, size=(80, 60)) -> None:
    """A stand-in photo: 8x6 random colour blocks (so crops and pooling see distinct content)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((10, 10, 1), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _subset_sugarcrepe(root: Path):
    expected_pp_ties = 0
    for split in c2eval.SUGARCREPE_SPLITS:
        data = json.loads((SHARED_DATA / "sugar_crepe" / f"{split}.json").read_text())
        keys = list(data)[:ITEMS_PER_SPLIT] + [list(data)[-1]]  # keys stay as in the file (non-contiguous)
        _write_json(root / "sugarcrepe" / f"{split}.json", {k: data[k] for k in keys})
    for split in c2eval.SUGARCREPE_PP_SPLITS:
        data = json.loads((SHARED_DATA / "sugarcrepe_pp" / f"{split}.json").read_text())
        subset = data[:ITEMS_PER_SPLIT]
        # the official data quirk: negative == positive caption; strict '>' makes these wrong
        ties = [d for d in data if d["caption"] == d["negative_caption"]]
        subset += ties[:1]
        expected_pp_ties += len(ties[:1])
        _write_json(root / "sugarcrepe_pp" / f"{split}.json", subset)
    assert expected_pp_ties >= 1, "the real SugarCrepe++ files should contain a caption == negative item"
    names = set()
    for folder in ("sugarcrepe", "sugarcrepe_pp"):
        for path in (root / folder).glob("*.json"):
            data = json.loads(path.read_text())
            names |= {d["filename"] for d in (data.values() if isinstance(data, dict) else data)}
    for i, name in enumerate(sorted(names)):
        _block_image(root / "val2017" / name, seed=i)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _aro_item(image, box, true, false, **extra):
    x, y, w, h = box
    return {"image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "true_caption": true, "false_caption": false, **extra}


def _write_aro(root: Path):
    for k in range(3):
        _block_image(root / "aro_vgr" / "images" / f"{2300 + k}.jpg", seed=100 + k, size=(120, 90))
        _block_image(root / "aro_vga" / "images" / f"{2400 + k}.jpg", seed=200 + k, size=(120, 90))
    relations = [
        ("on", "the cup is on the table", "the table is on the cup"),
        ("on", "the book is on the shelf", "the shelf is on the book"),
        ("on", "the cat is on the mat", "the mat is on the cat"),
        ("holding", "the man is holding the bat", "the bat is holding the man"),
        ("holding", "the girl is holding the kite", "the kite is holding the girl"),
        ("in front of", "the car is in front of the house", "the house is in front of the car"),
    ]
    _write_json(root / "aro_vgr" / "visual_genome_relation.json", [
        _aro_item(f"{2300 + i % 3}.jpg", (10 * i, 5 * i, 40 + 5 * i, 30 + 4 * i), true, false,
                  relation_name=rel, image_id=str(2300 + i % 3), subj="x", obj="y")
        for i, (rel, true, false) in enumerate(relations)])
    attributes = [
        (["white", "black"], "the white dog and the black cat", "the black dog and the white cat"),
        (["white", "black"], "the white plate and the black table", "the black plate and the white table"),
        (["white", "black"], "the white shirt and the black pants", "the black shirt and the white pants"),
        (["red", "blue"], "the red car and the blue bus", "the blue car and the red bus"),
    ]
    _write_json(root / "aro_vga" / "visual_genome_attribution.json", [
        _aro_item(f"{2400 + i % 3}.jpg", (5 + 7 * i, 3 * i, 50, 40), true, false, attributes=attrs,
                  image_id=str(2400 + i % 3), obj1_name="a", obj2_name="b")
        for i, (attrs, true, false) in enumerate(attributes)])


def _write_winoground(root: Path):
    examples = [
        (0, "an old person kisses a young person", "a young person kisses an old person", "Object"),
        (1, "the dog is on the left of the cat", "the cat is on the left of the dog", "Relation"),
        (2, "some plants surrounding a lightbulb", "a lightbulb surrounding some plants", "Relation"),
        (3, "a red ball on a blue box", "a blue ball on a red box", "Both"),
    ]
    lines = []
    for i, c0, c1, tag in examples:
        for k in (0, 1):
            _block_image(root / "winoground" / "images" / f"ex_{i}_img_{k}.png", seed=300 + 2 * i + k)
        lines.append(json.dumps({"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1",
                                 "caption_0": c0, "caption_1": c1, "tag": "Noun", "secondary_tag": "",
                                 "num_main_preds": 1, "collapsed_tag": tag}))
    (root / "winoground" / "examples.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    _subset_sugarcrepe(root)
    _write_aro(root)
    _write_winoground(root)
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


def _reference_results(ref: Reference, root: Path, vga_min_samples: int):
    margins = []  # |a - b| of every strict comparison between different captions

    def gt(a, b, same=False):
        if not same:
            margins.append(abs(a - b))
        return a > b

    out = {}
    # SugarCrepe
    sc, pooled = {}, {}
    for split in c2eval.SUGARCREPE_SPLITS:
        data = json.loads((root / "sugarcrepe" / f"{split}.json").read_text())
        correct = []
        for item in data.values():
            v = ref.image(root / "val2017" / item["filename"])
            same = item["caption"] == item["negative_caption"]
            correct.append(gt(v @ ref.text(item["caption"]), v @ ref.text(item["negative_caption"]), same))
        sc[split] = {"acc": sum(correct) / len(correct), "n": len(correct)}
        pooled[split] = correct
    everything = [c for cs in pooled.values() for c in cs]
    avg = {"micro": sum(everything) / len(everything),
           "macro": sum(r["acc"] for r in sc.values()) / len(sc), "n": len(everything)}
    for cat in ("add", "replace", "swap"):
        cs = [c for s, l in pooled.items() if s.startswith(cat + "_") for c in l]
        avg[cat] = sum(cs) / len(cs)
    sc["_average"] = avg
    out["sugarcrepe"] = sc
    # SugarCrepe++
    pp, itts, tots = {}, [], []
    for split in c2eval.SUGARCREPE_PP_SPLITS:
        itt, tot = [], []
        for item in json.loads((root / "sugarcrepe_pp" / f"{split}.json").read_text()):
            v = ref.image(root / "val2017" / item["filename"])
            p1, p2, n = (ref.text(item[k]) for k in ("caption", "caption2", "negative_caption"))
            s1, s2 = item["caption"] == item["negative_caption"], item["caption2"] == item["negative_caption"]
            itt.append(gt(v @ p1, v @ n, s1) and gt(v @ p2, v @ n, s2))
            tot.append(gt(p1 @ p2, p1 @ n, s1) and gt(p1 @ p2, p2 @ n, s2))
        pp[split] = {"itt": sum(itt) / len(itt), "tot": sum(tot) / len(tot), "n": len(itt)}
        itts += itt
        tots += tot
    pp["_average"] = {"itt": np.mean([r["itt"] for r in pp.values()]),
                      "tot": np.mean([r["tot"] for r in pp.values()]),
                      "itt_micro": sum(itts) / len(itts), "tot_micro": sum(tots) / len(tots), "n": len(itts)}
    out["sugarcrepe_pp"] = pp
    # ARO
    for name, annotation, key, min_samples in (
            ("aro_vgr", "visual_genome_relation.json", lambda d: d["relation_name"], 0),
            ("aro_vga", "visual_genome_attribution.json", lambda d: "_".join(d["attributes"]), vga_min_samples)):
        groups = {}
        for d in json.loads((root / name / annotation).read_text()):
            box = (d["bbox_x"], d["bbox_y"], d["bbox_x"] + d["bbox_w"], d["bbox_y"] + d["bbox_h"])
            v = ref.image(root / name / "images" / d["image_path"], box)
            groups.setdefault(key(d), []).append(gt(v @ ref.text(d["true_caption"]), v @ ref.text(d["false_caption"])))
        kept = {g: c for g, c in sorted(groups.items()) if len(c) >= min_samples}
        res = {g: {"acc": sum(c) / len(c), "n": len(c)} for g, c in kept.items()}
        flat = [x for c in kept.values() for x in c]
        res["_average"] = {"acc": np.mean([r["acc"] for r in res.values()]), "acc_micro": sum(flat) / len(flat),
                           "n": len(flat)}
        out[name] = res
    # Winoground
    by_tag, rows = {}, []
    for line in (root / "winoground" / "examples.jsonl").read_text().splitlines():
        d = json.loads(line)
        i0, i1 = (ref.image(root / "winoground" / "images" / f"{d[f'image_{k}']}.png") for k in (0, 1))
        c0, c1 = ref.text(d["caption_0"]), ref.text(d["caption_1"])
        text = gt(c0 @ i0, c1 @ i0) and gt(c1 @ i1, c0 @ i1)
        image = gt(c0 @ i0, c0 @ i1) and gt(c1 @ i1, c1 @ i0)
        by_tag.setdefault(d["collapsed_tag"], []).append((text, image, text and image))
        rows.append((text, image, text and image))
    wino = {}
    for tag, r in sorted(by_tag.items()):
        wino[tag] = {m: sum(x[j] for x in r) / len(r) for j, m in enumerate(("text", "image", "group"))}
        wino[tag]["n"] = len(r)
    wino["_average"] = {m: sum(x[j] for x in rows) / len(rows) for j, m in enumerate(("text", "image", "group"))}
    wino["_average"]["n"] = len(rows)
    out["winoground"] = wino
    return out, min(margins)


def _assert_results_equal(got, want):
    assert list(got) == list(want)
    for benchmark in want:
        assert list(got[benchmark]) == list(want[benchmark]), benchmark
        for split, metrics in want[benchmark].items():
            assert set(got[benchmark][split]) == set(metrics), (benchmark, split)
            for metric, value in metrics.items():
                assert got[benchmark][split][metric] == pytest.approx(value, abs=1e-12), (benchmark, split, metric)


# ------------------------------------------------------------------------------------------------
# tests

def test_all_benchmarks_match_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    options = {"aro_vga": {"min_samples": 2}}
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["all"], data_root, batch_size=5,
                                       options=options, progress=False, return_scores=True)
    want, min_margin = _reference_results(Reference(model, preprocess, tokenizer), data_root, vga_min_samples=2)
    # float32 features vs float64 reference: comparisons must not sit on a knife edge
    assert min_margin > 1e-5
    _assert_results_equal(results, want)
    # the attribute pair below min_samples is dropped from splits and averages, not silently kept
    assert "red_blue" not in results["aro_vga"] and results["aro_vga"]["_average"]["n"] == 3
    # one score row per item, every item of every file
    assert len(records) == sum(r["_average"]["n"] for r in results.values()) + 1  # + the dropped VG-A item
    # the SugarCrepe++ tie item is wrong under the strict comparison, in both metrics
    ties = [r for r in records if r["benchmark"] == "sugarcrepe_pp" and r["image_p1"] == r["image_neg"]]
    assert ties and not any(r["itt"] or r["tot"] for r in ties)
    # something is correct and something is wrong: the fixture exercises both outcomes
    assert 0 < results["sugarcrepe"]["_average"]["micro"] < 1


def test_distinct_images_and_captions_encoded_once(stub, data_root):
    model, preprocess, tokenizer = stub
    calls = {"images": 0, "texts": 0}

    class Counting(StubModel):
        def encode_image(self, images):
            calls["images"] += images.shape[0]
            return super().encode_image(images)

        def encode_text(self, tokens):
            calls["texts"] += tokens.shape[0]
            return super().encode_text(tokens)

    counting = Counting(model.table.shape[0])
    c2eval.evaluate(counting, preprocess, tokenizer, ["sugarcrepe", "sugarcrepe_pp"], data_root,
                    batch_size=4, progress=False)
    filenames, captions = set(), set()
    for folder in ("sugarcrepe", "sugarcrepe_pp"):
        for path in (data_root / folder).glob("*.json"):
            data = json.loads(path.read_text())
            for d in (data.values() if isinstance(data, dict) else data):
                filenames.add(d["filename"])
                captions |= {d[k] for k in ("caption", "caption2", "negative_caption") if k in d}
    assert calls == {"images": len(filenames), "texts": len(captions)}


def test_metric_functions_on_known_cases():
    pos = np.array([0.3, 0.2, 0.5])
    neg = np.array([0.1, 0.2, 0.6])
    assert c2eval.selection_correct(pos, neg).tolist() == [True, False, False]  # tie is wrong
    itt, tot = c2eval.sugarcrepe_pp_correct(
        image_p1=[0.5, 0.5, 0.5], image_p2=[0.4, 0.3, 0.4], image_neg=[0.3, 0.35, 0.3],
        p1_p2=[0.9, 0.9, 0.5], p1_neg=[0.8, 0.8, 0.6], p2_neg=[0.7, 0.9, 0.4])
    assert itt.tolist() == [True, False, True] and tot.tolist() == [True, False, False]
    # scores s(c, i): item 0 all right; item 1 text right only; item 2 image right only
    text, image, group = c2eval.winoground_correct(
        c0_i0=[0.9, 0.9, 0.5], c0_i1=[0.1, 0.95, 0.1], c1_i0=[0.2, 0.1, 0.6], c1_i1=[0.8, 0.96, 0.8])
    assert text.tolist() == [True, True, False]
    assert image.tolist() == [True, False, True]
    assert group.tolist() == [True, False, False]


def test_vga_default_filter_drops_small_pairs_and_reports(stub, data_root, caplog):
    model, preprocess, tokenizer = stub
    with caplog.at_level(logging.WARNING, logger="open_clip_c2lip.eval"):
        results = c2eval.evaluate(model, preprocess, tokenizer, ["aro_vga"], data_root, progress=False)
    # the ARO repository's rule: attribute pairs with < 25 items are dropped (here: all of them)
    assert results["aro_vga"] == {"_average": {"acc": None, "acc_micro": None, "n": 0}}
    assert "dropped 2 split(s) with fewer than 25 items (4 items)" in caplog.text


def test_missing_and_bad_files_give_clear_errors(stub, data_root, tmp_path):
    model, preprocess, tokenizer = stub
    run = lambda root, names, **kw: c2eval.evaluate(model, preprocess, tokenizer, names, root, progress=False, **kw)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val2017")):
        run(tmp_path, ["sugarcrepe"])
    (tmp_path / "val2017").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "sugarcrepe" / "add_att.json")):
        run(tmp_path, ["sugarcrepe"])
    # a 0-byte annotation (what clip_benchmark's failed wget leaves behind)
    (tmp_path / "sugarcrepe").mkdir()
    (tmp_path / "sugarcrepe" / "swap_att.json").write_text("")
    with pytest.raises(ValueError, match="0-byte"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    _write_json(tmp_path / "sugarcrepe" / "swap_att.json", {"7": {"filename": "x.jpg", "caption": "a"}})
    with pytest.raises(ValueError, match=r"swap_att.json: item '7' lacks field 'negative_caption'"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    _write_json(tmp_path / "sugarcrepe" / "swap_att.json",
                {"7": {"filename": "x.jpg", "caption": "a", "negative_caption": "b"}})
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .*swap_att.json are missing .*x.jpg"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    with pytest.raises(FileNotFoundError, match="visual_genome_relation.json"):
        run(tmp_path, ["aro_vgr"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        run(data_root, ["valse"])


def test_preprocess_resolution_for_checkpoint_files():
    siglip = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}
    # a base name with a checkpoint file takes what its pretrained tags agree on (SigLIP here) ...
    assert c2eval.resolve_preprocess_cfg("ViT-B-16-SigLIP", "/ckpt/epoch_1.pt") == siglip
    webli = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    assert {k: tuple(webli[k]) if isinstance(webli[k], tuple) else webli[k] for k in siglip} == siglip
    # ... a tag or a local-dir bundle carries its own, so nothing is forced ...
    assert c2eval.resolve_preprocess_cfg("ViT-B-16-SigLIP", "webli") == {}
    assert c2eval.resolve_preprocess_cfg("local-dir:/x", None) == {}
    # ... plugin names without tags are SigLIP-style, and explicit values always win
    assert c2eval.resolve_preprocess_cfg("C2LIP-Tiny", "/ckpt/epoch_1.pt") == siglip
    assert c2eval.resolve_preprocess_cfg("C2LIP-Tiny", None, {"resize_mode": "shortest"})["resize_mode"] == "shortest"
    # tags that disagree are not guessed: OpenAI-style and LAION tags of ViT-B-32 share mean/std though
    cfgs = [open_clip.get_pretrained_cfg("ViT-B-32", t) for t in open_clip.list_pretrained_tags_by_model("ViT-B-32")]
    forced = c2eval.resolve_preprocess_cfg("ViT-B-32", "/ckpt/epoch_1.pt")
    for key, value in forced.items():
        assert all(tuple(c[key]) == value if isinstance(c[key], tuple) else c[key] == value for c in cfgs)


def test_cli_with_tiny_model_checkpoint(data_root, tmp_path, capsys):
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny")
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               checkpoint)
    output, scores = tmp_path / "out" / "results.json", tmp_path / "scores.jsonl"
    results = c2eval.main(["--model", "C2LIP-Tiny", "--pretrained", str(checkpoint), "--benchmark", "all",
                           "--data-root", str(data_root), "--output", str(output), "--save-scores", str(scores),
                           "--aro-min-samples", "1", "--batch-size", "7", "--no-progress", "--device", "cpu"])
    assert json.loads(output.read_text()) == results
    assert not [p for p in output.parent.iterdir() if p.name != "results.json"]  # no temp files left
    # contract: benchmark -> split -> metric in [0, 1] plus n; _average present
    assert list(results) == ["sugarcrepe", "sugarcrepe_pp", "aro_vgr", "aro_vga", "winoground"]
    metric_keys = {"sugarcrepe": {"acc"}, "sugarcrepe_pp": {"itt", "tot"}, "aro_vgr": {"acc"}, "aro_vga": {"acc"},
                   "winoground": {"text", "image", "group"}}
    for benchmark, splits in results.items():
        assert "_average" in splits
        for split, metrics in splits.items():
            assert isinstance(metrics["n"], int) and metrics["n"] > 0
            if split != "_average":
                assert set(metrics) == metric_keys[benchmark] | {"n"}
            assert all(0 <= v <= 1 for k, v in metrics.items() if k != "n")
    assert set(results["sugarcrepe"]["_average"]) == {"micro", "macro", "add", "replace", "swap", "n"}
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == sum(r["_average"]["n"] for r in results.values())
    # the plain per-item check with the real model: SugarCrepe add_att through one encode per item
    loaded, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny", str(checkpoint))
    assert loaded.visual.preprocess_cfg["resize_mode"] == "squash"
    assert tuple(loaded.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)
    data = json.loads((data_root / "sugarcrepe" / "add_att.json").read_text())
    by_id = {r["id"]: r for r in rows if r["benchmark"] == "sugarcrepe" and r["split"] == "add_att"}
    with torch.no_grad():
        for key, item in data.items():
            image = preprocess(Image.open(data_root / "val2017" / item["filename"]).convert("RGB"))[None]
            v = F.normalize(loaded.encode_image(image), dim=-1)[0]
            t = F.normalize(loaded.encode_text(tokenizer([item["caption"], item["negative_caption"]])), dim=-1)
            assert by_id[key]["pos"] == pytest.approx(float(v @ t[0]), abs=1e-5)
            assert by_id[key]["neg"] == pytest.approx(float(v @ t[1]), abs=1e-5)
    printed = capsys.readouterr().out
    assert "### sugarcrepe" in printed and "| swap_att |" in printed and "### winoground" in printed
