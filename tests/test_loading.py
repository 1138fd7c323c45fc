"""Tests for open_clip_c2lip.loading: the preprocessing forced on checkpoint files."""
from pathlib import Path

import open_clip

from open_clip_c2lip import loading


def test_preprocess_resolution_for_checkpoint_files():
    siglip = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}
    # a base name with a checkpoint file takes what its pretrained tags agree on (SigLIP here) ...
    assert loading.resolve_preprocess_cfg("ViT-B-16-SigLIP", "/ckpt/epoch_1.pt") == siglip
    webli = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")
    assert {k: tuple(webli[k]) if isinstance(webli[k], tuple) else webli[k] for k in siglip} == siglip
    # ... a tag or a local-dir bundle carries its own, so nothing is forced ...
    assert loading.resolve_preprocess_cfg("ViT-B-16-SigLIP", "webli") == {}
    assert loading.resolve_preprocess_cfg("local-dir:/x", None) == {}
    # ... plugin names without tags are SigLIP-style, and explicit values always win
    assert loading.resolve_preprocess_cfg("C2LIP-Tiny", "/ckpt/epoch_1.pt") == siglip
    assert loading.resolve_preprocess_cfg("C2LIP-Tiny", None, {"resize_mode": "shortest"})["resize_mode"] == "shortest"
    # tags that disagree are not guessed: OpenAI-style and LAION tags of ViT-B-32 share mean/std though
    cfgs = [open_clip.get_pretrained_cfg("ViT-B-32", t) for t in open_clip.list_pretrained_tags_by_model("ViT-B-32")]
    forced = loading.resolve_preprocess_cfg("ViT-B-32", "/ckpt/epoch_1.pt")
    for key, value in forced.items():
        assert all(tuple(c[key]) == value if isinstance(c[key], tuple) else c[key] == value for c in cfgs)


def test_unreadable_checkpoints_give_clear_errors_in_eval_and_viz(tmp_path):
    """eval and viz load through load_model: the file's fault is named (same helper as export)."""
    import json

    import pytest
    import torch

    from open_clip_c2lip import eval as c2eval
    from open_clip_c2lip import export, viz
    from open_clip_c2lip.fileio.checkpoint import CheckpointError

    config = Path(loading.__file__).parent / "model_configs" / "C2LIP-Tiny.json"
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny")
    good = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 3])
    (tmp_path / "empty.pt").write_bytes(b"")
    wide_cfg = json.loads(config.read_text())
    wide_cfg["embed_dim"] = 96
    (tmp_path / "Tiny-Wide-Loading.json").write_text(json.dumps(wide_cfg))
    open_clip.add_model_config(tmp_path / "Tiny-Wide-Loading.json")
    torch.save(open_clip.create_model("Tiny-Wide-Loading").state_dict(), tmp_path / "wide.pt")
    cases = (("cut.pt", "is truncated"), ("empty.pt", r"is empty \(0 bytes\)"),
             ("wide.pt", r"is not a checkpoint of C2LIP-Tiny: .* entries have another shape"))
    for name, kind in cases:
        with pytest.raises(CheckpointError, match=f"{name} {kind}"):
            loading.load_model("C2LIP-Tiny", str(tmp_path / name))
    image = tmp_path / "x.png"
    from PIL import Image
    Image.new("RGB", (64, 64)).save(image)
    with pytest.raises(CheckpointError, match="cut.pt is truncated"):
        viz.main(["--model", "C2LIP-Tiny", "--pretrained", str(tmp_path / "cut.pt"), "--image", str(image),
                  "--caption", "a cat", "--concepts", "a cat", "--output", str(tmp_path / "v.png"), "--device", "cpu"])
    (tmp_path / "root" / "sugarcrepe").mkdir(parents=True)
    (tmp_path / "root" / "val2017").mkdir()
    (tmp_path / "root" / "sugarcrepe" / "swap_att.json").write_text("{}")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        c2eval.main(["--model", "C2LIP-Tiny", "--pretrained", str(tmp_path / "empty.pt"), "--data-root",
                     str(tmp_path / "root"), "--output", str(tmp_path / "r.json"), "--device", "cpu"])
    # a local-dir bundle whose weights were cut short
    bundle = export.export_bundle("C2LIP-Tiny", good, tmp_path / "bundle", verify=False)
    weights = bundle / export.WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{export.WEIGHTS_NAME} is not a readable safetensors file"):
        loading.load_model(f"local-dir:{bundle}")
