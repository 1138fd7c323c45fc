"""Tests for open_clip_c2lip.export: plugin-free local-dir bundles, loaded by plain open_clip and
by the clip_benchmark CLI (subprocesses with the plugin disabled)."""
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

import open_clip

from open_clip_c2lip import eval as c2eval
from open_clip_c2lip import export
from open_clip_c2lip.fileio.checkpoint import CheckpointError

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
SIGLIP = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}
TEXTS = ["a red ball on a blue box", "two dogs playing in the snow"]
PLAIN_ENV = {**os.environ, "OPEN_CLIP_C2LIP_DISABLE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1"}

# runs in a plain-open_clip subprocess: loads each bundle and dumps what it computes
PLAIN_LOAD = r"""
import sys, torch
torch.set_num_threads(1)
import open_clip
from PIL import Image
image_path, out_path, texts, bundles = sys.argv[1], sys.argv[2], sys.argv[3].split("|"), sys.argv[4:]
out = {}
for bundle in bundles:
    name = "local-dir:" + bundle
    model, _, preprocess = open_clip.create_model_and_transforms(name)  # strict load
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    pixels = preprocess(Image.open(image_path))[None]
    tokens = tokenizer(texts)
    with torch.no_grad():
        out[bundle] = {"pixels": pixels, "tokens": tokens, "image": model.encode_image(pixels, normalize=True),
                       "text": model.encode_text(tokens, normalize=True),
                       "preprocess_cfg": dict(model.visual.preprocess_cfg), "tokenizer": type(tokenizer).__name__}
out["plugin_modules"] = sorted(m for m in sys.modules if m.startswith("open_clip_c2lip"))
torch.save(out, out_path)
"""


def _training_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save ``model`` the way open_clip_train's main.py does (DDP ``module.`` keys)."""
    state_dict = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "name": "c2lip-tiny-test", "state_dict": state_dict}, path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny").eval()
    path = _training_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "epoch_3.pt")
    return model, path


def _tiny_hf_tokenizer(folder: Path) -> Path:
    """A tiny HF fast tokenizer built offline with the ``tokenizers`` library."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = sorted({w for t in TEXTS + ["a photo of a dog", "two red apples on a wooden table"] for w in t.split()})
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(folder)
    return folder


def test_base_model_name():
    assert export.base_model_name("ViT-B-16-SigLIP-C2") == "ViT-B-16-SigLIP"
    assert export.base_model_name("ViT-SO400M-14-SigLIP-384-C2") == "ViT-SO400M-14-SigLIP-384"
    assert export.base_model_name("C2LIP-Tiny") == "C2LIP-Tiny"


@pytest.mark.slow
def test_bundle_loads_in_plain_open_clip(tiny, tmp_path):
    model, checkpoint = tiny
    bundle = export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "bundle")
    config = json.loads((bundle / export.CONFIG_NAME).read_text())
    assert config["model_cfg"] == json.loads(TINY_CONFIG.read_text())
    assert config["preprocess_cfg"] == SIGLIP
    assert json.loads((bundle / export.INFO_NAME).read_text())["epoch"] == 3
    assert sorted(p.name for p in bundle.iterdir()) == sorted([export.CONFIG_NAME, export.WEIGHTS_NAME, export.INFO_NAME])
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # staging folder gone

    # an HF-tokenizer architecture: the tokenizer files travel with the bundle
    hf_cfg = json.loads(TINY_CONFIG.read_text())
    hf_tokenizer = _tiny_hf_tokenizer(tmp_path / "hf_tokenizer")
    hf_cfg["text_cfg"].update(vocab_size=64, hf_tokenizer_name=str(hf_tokenizer))
    (tmp_path / "C2LIP-TinyHF.json").write_text(json.dumps(hf_cfg))
    open_clip.add_model_config(tmp_path / "C2LIP-TinyHF.json")
    torch.manual_seed(1)
    hf_model = open_clip.create_model("C2LIP-TinyHF").eval()
    hf_checkpoint = _training_checkpoint(hf_model, tmp_path / "hf_epoch_1.pt")
    hf_bundle = export.export_bundle("C2LIP-TinyHF", hf_checkpoint, tmp_path / "hf_bundle",
                                     preprocess_overrides={"mean": (0.5,) * 3, "std": (0.5,) * 3,
                                                           "resize_mode": "squash"})
    assert (hf_bundle / "tokenizer.json").is_file()
    tokenizers = {bundle: open_clip.get_tokenizer("C2LIP-Tiny"), hf_bundle: open_clip.get_tokenizer("C2LIP-TinyHF")}
    (tmp_path / "hf_tokenizer").rename(tmp_path / "moved")  # the bundle must not need the source folder

    image_path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)).save(image_path)  # non-square: squash
    out_path = tmp_path / "plain.pt"
    subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(image_path), str(out_path), "|".join(TEXTS),
                    str(bundle), str(hf_bundle)], check=True, env=PLAIN_ENV, cwd=tmp_path, timeout=300)
    plain = torch.load(out_path, weights_only=False)
    assert plain["plugin_modules"] == []

    # the plugin-side reference: the trained model, SigLIP preprocessing done here by hand
    image = Image.open(image_path).convert("RGB").resize((64, 64), Image.BICUBIC)
    pixels = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None] - 0.5) / 0.5
    for reference, path in ((model, bundle), (hf_model, hf_bundle)):
        got, tokenizer = plain[str(path)], tokenizers[path]
        assert got["preprocess_cfg"]["resize_mode"] == "squash" and tuple(got["preprocess_cfg"]["mean"]) == (0.5,) * 3
        torch.testing.assert_close(got["pixels"], pixels, atol=2e-2, rtol=0)  # PIL vs torchvision resampling
        assert torch.equal(got["tokens"], tokenizer(TEXTS))
        with torch.no_grad():
            torch.testing.assert_close(got["image"], reference.encode_image(got["pixels"], normalize=True))
            torch.testing.assert_close(got["text"], reference.encode_text(got["tokens"], normalize=True))
    assert plain[str(bundle)]["tokenizer"] == "SimpleTokenizer"
    assert plain[str(hf_bundle)]["tokenizer"] == "HFTokenizer"


def test_export_errors_leave_nothing_behind(tiny, tmp_path):
    model, checkpoint = tiny
    state_dict = {k: v for k, v in model.state_dict().items() if k != "logit_scale"}
    state_dict["extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pt"
    torch.save({"epoch": 1, "state_dict": state_dict}, bad)
    with pytest.raises(CheckpointError, match=r"(?s)bad.pt is not a checkpoint of C2LIP-Tiny: .*extra.weight"):
        export.export_bundle("C2LIP-Tiny", bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export.export_bundle("C2LIP-Tiny", tmp_path / "missing.pt", tmp_path / "out")
    # truncated, empty and foreign files: the kind is named, nothing is written
    data = checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(999))
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "nostate.pt")
    for name, kind in (("cut.pt", "is truncated"), ("empty.pt", r"is empty \(0 bytes\)"),
                       ("noise.pt", "is not a PyTorch checkpoint"),
                       ("nostate.pt", "holds a dict with keys .* but no 'state_dict' entry")):
        with pytest.raises(CheckpointError, match=f"{name} {kind}"):
            export.main(["--model", "C2LIP-Tiny", "--checkpoint", str(tmp_path / name),
                         "--output", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "cut.pt", "empty.pt", "noise.pt", "nostate.pt"]
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "taken")


def test_unwritable_output_folder_is_refused_before_any_work(tiny, tmp_path, monkeypatch):
    model, checkpoint = tiny
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match=r"cannot write .*file.txt/sub/bundle: .*file.txt is not a folder"):
        export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "file.txt" / "sub" / "bundle")
    (tmp_path / "ro").mkdir()
    # the test may run as root, for whom a chmod 555 folder is writable: the access check is faked
    real_access = export.os.access
    monkeypatch.setattr(export.os, "access", lambda p, mode: Path(p) != tmp_path / "ro" and real_access(p, mode))
    monkeypatch.setattr(export, "bare_model", lambda *a: pytest.fail("built a model for an unwritable output"))
    with pytest.raises(ValueError, match=r"cannot write .*ro/deep/bundle: .*ro is not writable"):
        export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "ro" / "deep" / "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "ro"] and not any((tmp_path / "ro").iterdir())


@pytest.mark.slow
def test_clip_benchmark_sugarcrepe_matches_ours(tiny, tmp_path, real_data):
    model, checkpoint = tiny
    bundle = export.main(["--model", "C2LIP-Tiny", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "b")])
    # our layout (val2017/ + sugarcrepe/<split>.json); clip_benchmark wants <root>/val2017 + <root>/<split>.json
    root = tmp_path / "data"
    data = json.loads((real_data("sugar_crepe") / "swap_att.json").read_text())
    items = dict(list(data.items())[:14])
    for i, name in enumerate(sorted({d["filename"] for d in items.values()})):
        rng = np.random.default_rng(i)
        blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        (root / "val2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.kron(blocks, np.ones((10, 10, 1), dtype=np.uint8))).save(root / "val2017" / name)
    (root / "sugarcrepe").mkdir()
    (root / "sugarcrepe" / "swap_att.json").write_text(json.dumps(items))
    loaded, preprocess, tokenizer = c2eval.load_model(f"local-dir:{bundle}")
    options = {"sugarcrepe": {"splits": ["swap_att"]}}
    _, rows = c2eval.evaluate(loaded, preprocess, tokenizer, ["sugarcrepe"], root, options=options,
                              progress=False, return_scores=True)
    # keep items whose decision is not within float noise of a tie (batch composition differs)
    kept = {r["id"]: items[r["id"]] for r in rows if abs(r["pos"] - r["neg"]) > 1e-4}
    assert len(kept) >= 10
    (root / "sugarcrepe" / "swap_att.json").write_text(json.dumps(kept))
    ours = c2eval.evaluate(loaded, preprocess, tokenizer, ["sugarcrepe"], root, options=options, progress=False)
    acc = ours["sugarcrepe"]["swap_att"]["acc"]
    assert 0 < acc < 1  # both outcomes occur, so agreement is informative

    (root / "sugarcrepe" / "val2017").symlink_to("../val2017")
    clip_benchmark = Path(sys.executable).with_name("clip_benchmark")
    subprocess.run([str(clip_benchmark), "eval", "--model", f"local-dir:{bundle}", "--dataset", "sugar_crepe/swap_att",
                    "--dataset_root", str(root / "sugarcrepe"), "--task", "image_caption_selection",
                    "--output", str(tmp_path / "cb_{dataset}.json"), "--batch_size", "4", "--num_workers", "0",
                    "--no_amp"], check=True, env=PLAIN_ENV, cwd=tmp_path, timeout=300,
                   stdout=subprocess.DEVNULL)
    result = json.loads((tmp_path / "cb_sugar_crepe_swap_att.json").read_text())
    assert result["metrics"]["acc"] == pytest.approx(acc, abs=1e-6)


def _tree(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_what_is_not_a_previous_export(tiny, tmp_path):
    _, checkpoint = tiny
    cases = {}
    thesis = cases["thesis"] = tmp_path / "thesis"  # the reported case
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.txt").write_text("chapter 1")
    (thesis / "sub" / "results.json").write_text("{}")
    bundle = export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "bundle", verify=False)
    for name, extra in (("added_file", "notes.txt"), ("added_folder", "runs/")):
        folder = cases[name] = tmp_path / name
        folder.mkdir()
        for p in bundle.iterdir():
            (folder / p.name).write_bytes(p.read_bytes())
        (folder / extra.rstrip("/")).mkdir() if extra.endswith("/") else (folder / extra).write_text("mine")
    fake = cases["fake_info"] = tmp_path / "fake_info"
    fake.mkdir()
    (fake / export.INFO_NAME).write_text("not json")
    (fake / "data.csv").write_text("1,2")
    linked = cases["symlink"] = tmp_path / "symlink"
    linked.symlink_to(thesis, target_is_directory=True)
    plain_file = cases["file"] = tmp_path / "file.txt"
    plain_file.write_text("keep me")
    before = {name: _tree(path) if path.is_dir() else path.read_bytes() for name, path in cases.items()}
    for name, path in cases.items():
        with pytest.raises(FileExistsError, match=f"refusing to replace {path}"):
            export.main(["--model", "C2LIP-Tiny", "--checkpoint", str(checkpoint), "--output", str(path),
                         "--overwrite", "--no-verify"])
    after = {name: _tree(path) if path.is_dir() else path.read_bytes() for name, path in cases.items()}
    assert after == before and linked.is_symlink()
    with pytest.raises(FileExistsError, match=r"holds runs/, which the export did not write"):
        export.export_bundle("C2LIP-Tiny", checkpoint, cases["added_folder"], overwrite=True, verify=False)
    with pytest.raises(FileExistsError, match=r"not a previous export .* holds sub/, thesis.txt"):
        export.export_bundle("C2LIP-Tiny", checkpoint, thesis, overwrite=True, verify=False)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_overwrite_replaces_a_previous_export(tiny, tmp_path, caplog):
    import logging
    model, checkpoint = tiny
    first = export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "b", verify=False)
    info = json.loads((first / export.INFO_NAME).read_text())
    assert info["exported_by"] == "open_clip_c2lip.export"
    assert sorted(info["files"]) == sorted(p.name for p in first.iterdir())
    # a second run from another checkpoint replaces it, in place
    state_dict = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other = tmp_path / "epoch_7.pt"
    torch.save({"epoch": 7, "state_dict": state_dict}, other)
    with caplog.at_level(logging.WARNING):
        export.export_bundle("C2LIP-Tiny", other, first, overwrite=True, verify=False)
    assert json.loads((first / export.INFO_NAME).read_text())["epoch"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "epoch_7.pt"]  # no staging / old folder left
    # exporting a trained checkpoint says nothing about random initialization
    assert "initialized randomly" not in caplog.text
    # export info without the list of written files: not provably ours, so not replaced
    info = json.loads((first / export.INFO_NAME).read_text())
    del info["files"]
    (first / export.INFO_NAME).write_text(json.dumps(info))
    before = sorted(p.name for p in first.iterdir())
    with pytest.raises(FileExistsError, match="not a previous export"):
        export.export_bundle("C2LIP-Tiny", checkpoint, first, overwrite=True, verify=False)
    assert sorted(p.name for p in first.iterdir()) == before
    # an empty folder is replaced
    (tmp_path / "empty").mkdir()
    export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "empty", overwrite=True, verify=False)
    assert (tmp_path / "empty" / export.WEIGHTS_NAME).is_file()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_bundle_gets_the_users_umask(tiny, tmp_path, umask):
    _, checkpoint = tiny
    previous = os.umask(umask)
    try:
        bundle = export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "b", verify=False)
    finally:
        os.umask(previous)
    assert (bundle.stat().st_mode & 0o777) == 0o777 & ~umask
    for path in bundle.iterdir():
        assert (path.stat().st_mode & 0o777) == 0o666 & ~umask, path.name


# ------------------------------------------------------------------------------------------------
# before anything is fetched, without the Hub, on a full disk

import errno  # noqa: E402
import shutil  # noqa: E402
from collections import namedtuple  # noqa: E402

from hub_fixtures import (add_cached_repo, hub_cache, hub_tokenizer_config, refused_hub,  # noqa: E402,F401
                          tiny_hf_tokenizer)
from open_clip_c2lip import cli_errors, hub  # noqa: E402
from open_clip_c2lip.fileio import diskspace  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def _forbid(monkeypatch, target: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{target} must not be called")
    monkeypatch.setattr(target, refuse)


def _cli(argv):
    """``python -m open_clip_c2lip.export`` in this process: the exit message, or None on success."""
    try:
        cli_errors.run(export.main, argv)
    except SystemExit as e:
        return e.code
    return None


def test_wrong_architecture_is_reported_before_anything_is_fetched(tiny, tmp_path, hub_cache, refused_hub,
                                                                    monkeypatch):
    _, checkpoint = tiny
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _forbid(patch, "open_clip_c2lip.loading._build_tokenizer")
        _forbid(patch, "open_clip_c2lip.export.load_checkpoint_into")  # no model with weights is built
        with pytest.raises(CheckpointError, match=rf"^{checkpoint} is not a checkpoint of ViT-B-16-SigLIP-C2: "):
            export.export_bundle("ViT-B-16-SigLIP-C2", checkpoint, out)
    assert refused_hub == [] and not out.exists()
    # the command line: one line, status 1, no traceback; the Hub's place is a closed local port
    env = {**PLAIN_ENV, "OPEN_CLIP_C2LIP_DISABLE": "", "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}
    del env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"]
    done = subprocess.run([sys.executable, "-m", "open_clip_c2lip.export", "--model", "ViT-B-16-SigLIP-C2",
                           "--checkpoint", str(checkpoint), "--output", str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {checkpoint} is not a checkpoint of ViT-B-16-SigLIP-C2: ")
    assert "another shape" in lines[0] and not out.exists() and not (tmp_path / "hf").exists()


@pytest.fixture
def tiny_hub_model(tmp_path):
    """C2LIP-TinyHub (its tokenizer the Hub repo c2lip-test/tiny-tokenizer) and a checkpoint of it."""
    name = hub_tokenizer_config(tmp_path, "C2LIP-TinyHub", "c2lip-test/tiny-tokenizer")
    torch.manual_seed(2)
    model = open_clip.create_model(name).eval()
    return name, model, _training_checkpoint(model, tmp_path / "epoch_2.pt")


def test_hub_tokenizer_offline_cached_or_local(tiny_hub_model, tmp_path, hub_cache, refused_hub):
    name, model, checkpoint = tiny_hub_model
    out = tmp_path / "bundle"
    message = _cli(["--model", name, "--checkpoint", str(checkpoint), "--output", str(out)])
    assert message.startswith(f"error: the tokenizer of {name} (Hub repo c2lip-test/tiny-tokenizer) is not in the "
                              f"local Hugging Face cache ({hub_cache}) and the Hub cannot be reached (")
    assert "pass --tokenizer DIR with a saved copy of it" in message and "C2LIP-Tiny" in message
    assert "\n" not in message and len(refused_hub) == 1  # one probe, no retries
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]
    # a saved copy given with --tokenizer (as a folder or local-dir:)
    folder = tiny_hf_tokenizer(tmp_path / "tokenizer copy")
    for source in (str(folder), f"local-dir:{folder}"):
        assert _cli(["--model", name, "--checkpoint", str(checkpoint), "--output", str(out), "--tokenizer", source,
                     "--overwrite"]) is None
    # the tokenizer in the local cache: used without a request, as open_clip's get_tokenizer reads it
    add_cached_repo(hub_cache, "c2lip-test/tiny-tokenizer", folder=folder, absent=["config.json"])
    refused_hub.clear()
    assert _cli(["--model", name, "--checkpoint", str(checkpoint), "--output", str(out), "--overwrite"]) is None
    bundled = open_clip.get_tokenizer(f"local-dir:{out}")
    with hub.cache_only():
        assert torch.equal(bundled(TEXTS), open_clip.get_tokenizer(name)(TEXTS))
    assert refused_hub == []


def test_full_disk_is_said_up_front_with_the_size(tiny, tmp_path, monkeypatch):
    model, checkpoint = tiny
    needed = sum(v.numel() * v.element_size() + len(k) + 128 for k, v in model.state_dict().items()) + 65536
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 10 ** 12 - (needed - 1), needed - 1))
    _forbid(monkeypatch, "open_clip_c2lip.export.load_checkpoint_into")  # said before the model is built
    out = tmp_path / "sub" / "bundle"
    message = _cli(["--model", "C2LIP-Tiny", "--checkpoint", str(checkpoint), "--output", str(out)])
    assert message == (f"error: no space left on the device for {out}: it needs about "
                       f"{diskspace.format_bytes(needed)}, {diskspace.format_bytes(needed - 1)} free in {tmp_path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # the estimate is an upper bound of the bundle (no tokenizer here), within 64 KiB + 128 bytes a tensor
    monkeypatch.undo()
    bundle = export.export_bundle("C2LIP-Tiny", checkpoint, out, verify=False)
    size = sum(p.stat().st_size for p in bundle.iterdir())
    assert size <= needed <= size + 65536 + 128 * len(model.state_dict())


@pytest.mark.parametrize("fault", ["oserror", "safetensors", "quota"])
def test_full_disk_while_writing_leaves_nothing_partial(tiny, tmp_path, monkeypatch, fault):
    import safetensors.torch
    from safetensors import SafetensorError
    _, checkpoint = tiny
    previous = export.export_bundle("C2LIP-Tiny", checkpoint, tmp_path / "bundle", verify=False)
    before = _tree(previous)
    real_save = safetensors.torch.save_file

    def save_half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        if fault == "safetensors":
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.EDQUOT if fault == "quota" else errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", save_half_then_fail)
    message = _cli(["--model", "C2LIP-Tiny", "--checkpoint", str(checkpoint), "--output", str(previous),
                    "--overwrite"])
    problem = "the disk quota is exceeded" if fault == "quota" else "no space left on the device"
    assert message.startswith(f"error: {problem} for {previous}: it needs about ") and " free in " in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the staging folder is gone
    assert _tree(previous) == before  # the previous export is untouched
