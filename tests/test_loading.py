"""Tests for open_clip_c2lip.loading: the preprocessing forced on checkpoint files."""
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
