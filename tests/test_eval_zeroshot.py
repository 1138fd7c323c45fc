"""Tests for open_clip_c2lip.eval.zeroshot: clip_benchmark's zero-shot classification and retrieval on
tiny local datasets (offline: nothing is downloaded), against an independent computation."""
import json

import numpy as np
import pytest
import torch

from eval_fixtures import Reference, block_image, stub  # noqa: F401
from open_clip_c2lip.eval import zeroshot

CLASSES = ["cat", "dog", "car", "tree", "boat", "cup"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}."]
CAPTIONS = [["a red block pattern", "colourful squares"], ["a blue mosaic", "tiles in a grid"],
            ["a green checkerboard", "a patchwork quilt"], ["a pixel art scene", "an abstract picture"],
            ["a bright rug", "coloured bricks"], ["a stained glass window", "a painted wall"]]


@pytest.fixture(scope="module")
def cb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_benchmark")
    for k, name in enumerate(CLASSES):  # ImageFolder: val/<class>/<image>
        for j in range(2):
            block_image(root / "imagenet1k-unverified" / "val" / f"n0{k}" / f"{j}.png", seed=1500 + 10 * k + j)
    (root / "classnames.json").write_text(json.dumps({"imagenet1k-unverified": CLASSES}))
    (root / "templates.json").write_text(json.dumps({"imagenet1k-unverified": TEMPLATES}))
    coco = root / "mscoco_captions"
    images, annotations = [], []
    for k, captions in enumerate(CAPTIONS):
        name = f"COCO_val2014_{k:012d}.jpg"
        block_image(coco / "val2014" / name, seed=1600 + k)
        images.append({"id": 100 + k, "file_name": name})
        annotations += [{"id": 10 * k + j, "image_id": 100 + k, "caption": c} for j, c in enumerate(captions)]
    (coco / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    flickr = root / "flickr30k"
    lines = ["image,caption"]
    for k, captions in enumerate(CAPTIONS):
        block_image(flickr / f"{1000 + k}.jpg", seed=1700 + k)
        lines += [f"{1000 + k}.jpg,{c}" for c in captions]
    (flickr / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return root


def reference_classification(ref: Reference, root):
    weights = []
    for c in CLASSES:
        e = np.stack([ref.text(t.format(c=c)) for t in TEMPLATES]).mean(0)
        weights.append(e / np.linalg.norm(e))
    weights = np.stack(weights, 1)
    logits, target = [], []
    for k in range(len(CLASSES)):
        for j in range(2):
            logits.append(ref.image(root / "imagenet1k-unverified" / "val" / f"n0{k}" / f"{j}.png") @ weights)
            target.append(k)
    logits, target = np.array(logits), np.array(target)
    order = np.argsort(-logits, axis=1)
    gaps = np.diff(np.sort(logits, axis=1), axis=1)
    assert gaps.min() > 1e-6  # no near-tie decides a rank
    pred = order[:, 0]
    recall = np.mean([np.mean(pred[target == k] == k) for k in range(len(CLASSES))])
    return {"acc1": float(np.mean(pred == target)), "acc5": float(np.mean([t in o[:5] for t, o in zip(target, order)])),
            "mean_per_class_recall": float(recall), "n": len(target)}


def reference_retrieval(ref: Reference, image_paths, captions):
    images = np.stack([ref.image(p) for p in image_paths])
    texts = np.stack([ref.text(c) for cs in captions for c in cs])
    owner = np.array([k for k, cs in enumerate(captions) for _ in cs])
    scores = texts @ images.T  # [texts, images]
    out = {}
    for k in (1, 5):
        top_images = np.argsort(-scores, axis=1)[:, :k]
        out[f"image_retrieval_recall@{k}"] = float(np.mean([o in t for o, t in zip(owner, top_images)]))
        top_texts = np.argsort(-scores.T, axis=1)[:, :k]
        out[f"text_retrieval_recall@{k}"] = float(np.mean([np.any(owner[t] == i) for i, t in enumerate(top_texts)]))
    out["n"] = len(image_paths)
    return out


def test_zero_shot_classification_and_retrieval_match_an_independent_computation(stub, cb_root):
    model, preprocess, tokenizer = stub
    results, skipped = zeroshot.run_clip_benchmark(
        model, preprocess, tokenizer, cb_root, ["imagenet1k-unverified", "mscoco_captions", "flickr30k", "imagenet1k"],
        batch_size=5, classnames_file=str(cb_root / "classnames.json"), templates_file=str(cb_root / "templates.json"))
    ref = Reference(model, preprocess, tokenizer)
    assert list(results) == ["imagenet1k-unverified", "mscoco_captions", "flickr30k"]
    assert list(skipped) == ["imagenet1k"] and "meta.bin or" in skipped["imagenet1k"][0]
    want = reference_classification(ref, cb_root)
    assert results["imagenet1k-unverified"] == pytest.approx(want, abs=1e-9)
    coco = cb_root / "mscoco_captions" / "val2014"
    want = reference_retrieval(ref, [coco / f"COCO_val2014_{k:012d}.jpg" for k in range(6)], CAPTIONS)
    got = results["mscoco_captions"]
    assert set(got) == set(want)  # recall@10 needs >= 10 images: left out here (6 images)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-6)  # clip_benchmark: float32 means
    want = reference_retrieval(ref, [cb_root / "flickr30k" / f"{1000 + k}.jpg" for k in range(6)], CAPTIONS)
    assert {k: results["flickr30k"][k] for k in want} == pytest.approx(want, abs=1e-6)


def test_topk_accuracy_equals_clip_benchmark_where_it_runs():
    """clip_benchmark's accuracy() calls float() on a 1-element array: NumPy >= 2.4 raises TypeError
    (LAION-AI/CLIP_benchmark#147). Where it runs, it agrees with topk_accuracy."""
    from clip_benchmark.metrics.zeroshot_classification import accuracy
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (300, 7), generator=generator).float()  # many ties
    target = torch.randint(0, 7, (300,), generator=generator)
    ours = zeroshot.topk_accuracy(logits, target, (1, 5))
    top = logits.topk(5, 1, True, True)[1]
    assert ours == [sum(int(target[i]) in top[i, :1].tolist() for i in range(300)) / 300,
                    sum(int(target[i]) in top[i].tolist() for i in range(300)) / 300]
    try:
        theirs = accuracy(logits, target, topk=(1, 5))
    except TypeError:
        assert tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4)
    else:
        assert theirs == pytest.approx(ours, abs=1e-12)


def test_absent_datasets_never_trigger_a_download(stub, tmp_path, monkeypatch):
    import subprocess
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: calls.append(a) or 1)
    model, preprocess, tokenizer = stub
    results, skipped = zeroshot.run_clip_benchmark(model, preprocess, tokenizer, str(tmp_path / "{dataset}"),
                                                   list(zeroshot.CLIP_BENCHMARK_DATASETS))
    assert not results and list(skipped) == list(zeroshot.CLIP_BENCHMARK_DATASETS) and not calls
    assert skipped["mscoco_captions"] == [str(tmp_path / "mscoco_captions" / "val2014"),
                                          str(tmp_path / "mscoco_captions" / "coco_test_karpathy.json")]
    with pytest.raises(ValueError, match="not supported here"):
        zeroshot.absent_files(tmp_path, "cifar10")


def test_clip_benchmark_arguments_are_checked_before_the_model_loads(cb_root, tmp_path):
    import argparse

    def args(**kw):
        base = dict(clip_benchmark_root=str(cb_root), clip_benchmark_datasets=None, clip_benchmark_classnames=None,
                    clip_benchmark_templates=None)
        return argparse.Namespace(**{**base, **kw})
    with pytest.raises(FileNotFoundError, match="--clip-benchmark-root folder not found: .*nope"):
        zeroshot.clip_benchmark_datasets(args(clip_benchmark_root=str(tmp_path / "nope")))
    with pytest.raises(FileNotFoundError, match=r"none of the clip_benchmark datasets imagenet1k, flickr8k is under"):
        zeroshot.clip_benchmark_datasets(args(clip_benchmark_datasets=["imagenet1k", "flickr8k"]))
    # the default list runs what is present (imagenet1k is not)
    assert zeroshot.clip_benchmark_datasets(args()) == list(zeroshot.DEFAULT_DATASETS)
    with pytest.raises(FileNotFoundError, match=r"--clip-benchmark-templates: file not found: .*none.json"):
        zeroshot.clip_benchmark_datasets(args(clip_benchmark_templates=str(tmp_path / "none.json")))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"--clip-benchmark-classnames: .*bad.json is not a readable UTF-8 JSON"):
        zeroshot.clip_benchmark_datasets(args(clip_benchmark_classnames=str(tmp_path / "bad.json")))
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match=r"list.json must hold a JSON object"):
        zeroshot.clip_benchmark_datasets(args(clip_benchmark_templates=str(tmp_path / "list.json")))


@pytest.mark.parametrize("damage, message", [
    ("flickr30k/flickr30k_test_karpathy.txt", r"IndexError"),  # clip_benchmark's own parse error
    ("flickr30k/1001.jpg", r"FileNotFoundError: .*1001.jpg"),
])
def test_a_damaged_dataset_is_an_error_naming_it(stub, cb_root, tmp_path, damage, message):
    import shutil
    model, preprocess, tokenizer = stub
    root = tmp_path / "cb"
    shutil.copytree(cb_root, root)
    if damage.endswith(".txt"):
        (root / damage).write_text("garbage\n")
    else:
        (root / damage).unlink()
    with pytest.raises(ValueError, match=rf"clip_benchmark flickr30k under {root / 'flickr30k'} failed: {message}"):
        zeroshot.run_clip_benchmark(model, preprocess, tokenizer, str(root), ["flickr30k"])
