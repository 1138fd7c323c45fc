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


# ------------------------------------------------------------------------------------------------
# the Hugging Face Hub: cache first, a fast clear error without it (fake cache, refused connections)

import pytest  # noqa: E402
import torch  # noqa: E402

from hub_fixtures import (COMMIT, TINY_CONFIG, add_cached_repo, hub_cache, hub_tokenizer_config,  # noqa: E402,F401
                          refused_hub, tiny_hf_tokenizer)
from open_clip_c2lip import hub  # noqa: E402
from open_clip_c2lip.fileio.checkpoint import CheckpointError  # noqa: E402

TOKENIZER_REPO, WEIGHTS_REPO = "c2lip-test/tiny-tokenizer", "c2lip-test/tiny-weights"


def _forbid(monkeypatch, target: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{target} must not be called")
    monkeypatch.setattr(target, refuse)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny")
    path = tmp_path / "tiny_epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return path


def test_wrong_architecture_is_named_before_anything_is_fetched(tiny_checkpoint, hub_cache, refused_hub,
                                                                 monkeypatch):
    _forbid(monkeypatch, "open_clip_c2lip.loading._build_tokenizer")
    _forbid(monkeypatch, "open_clip.create_model_and_transforms")
    with pytest.raises(CheckpointError, match=rf"^{tiny_checkpoint} is not a checkpoint of ViT-B-16-SigLIP-C2: .*"
                                              r"entries have another shape .*Was it trained as another --model\?$"):
        loading.load_model("ViT-B-16-SigLIP-C2", str(tiny_checkpoint))
    assert refused_hub == []  # not even the probe


@pytest.mark.parametrize("offline", [False, True])
def test_offline_pretrained_tag_fails_fast_naming_all_it_misses(hub_cache, refused_hub, monkeypatch, offline):
    """``--pretrained webli`` without the Hub: one error with the tokenizer and the weights, what to
    pass instead, at most one request (none with HF_HUB_OFFLINE), no model built."""
    import time
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    _forbid(monkeypatch, "open_clip.create_model_and_transforms")
    start = time.monotonic()
    with pytest.raises(hub.HubUnavailableError) as caught:
        loading.load_model("ViT-B-16-SigLIP-C2", "webli")
    assert time.monotonic() - start < 30  # upstream: ~54 s of retries
    assert len(refused_hub) == (0 if offline else 1)
    message = str(caught.value)
    assert message.startswith(
        "the tokenizer of ViT-B-16-SigLIP-C2 (Hub repo timm/ViT-B-16-SigLIP) and the weights of --pretrained webli "
        "of ViT-B-16-SigLIP-C2 (open_clip_pytorch_model.bin of Hub repo timm/ViT-B-16-SigLIP) are not in the local "
        f"Hugging Face cache ({hub_cache}) and the Hub cannot be reached (")
    reason = "HF_HUB_OFFLINE is set" if offline else "Connection refused (test stand-in)"
    assert reason in message and "\n" not in message
    for instead in ("--tokenizer DIR", "--pretrained with a local checkpoint file",
                    "--model local-dir:DIR with a copy of the repo (hf download timm/ViT-B-16-SigLIP", "HF_HOME"):
        assert instead in message


@pytest.fixture
def tiny_hub(tmp_path, hub_cache, monkeypatch):
    """C2LIP-TinyHub (its tokenizer the Hub repo c2lip-test/tiny-tokenizer) with a pretrained tag
    'hubtag' on c2lip-test/tiny-weights; returns the trained model and its weights file."""
    import safetensors.torch
    name = hub_tokenizer_config(tmp_path, "C2LIP-TinyHub", TOKENIZER_REPO)
    siglip = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"hubtag": {"hf_hub": f"{WEIGHTS_REPO}/", **siglip}})
    torch.manual_seed(3)
    model = open_clip.create_model(name)
    weights = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return name, model, weights


def test_cached_hub_files_load_without_a_request(tiny_hub, tmp_path, hub_cache, refused_hub, monkeypatch):
    name, reference, weights = tiny_hub
    tokenizer_folder = tiny_hf_tokenizer(tmp_path / "tokenizer")
    add_cached_repo(hub_cache, TOKENIZER_REPO, folder=tokenizer_folder, absent=["config.json"])
    add_cached_repo(hub_cache, WEIGHTS_REPO, {weights.name: weights.read_bytes()})
    model, preprocess, tokenizer = loading.load_model(name, "hubtag")
    assert refused_hub == []  # the cache answered everything: no request at all
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    assert type(tokenizer).__name__ == "HFTokenizer" and tokenizer(["a red dog"])[0, :4].tolist() == [3, 8, 6, 2]
    assert model.visual.preprocess_cfg["resize_mode"] == "squash"  # the tag's preprocessing

    # the weights gone from the cache, the Hub refused: the weights (only) are named
    (hub_cache / f"models--{WEIGHTS_REPO.replace('/', '--')}" / "snapshots" / COMMIT / weights.name).unlink()
    with pytest.raises(hub.HubUnavailableError, match=r"^the weights of --pretrained hubtag of C2LIP-TinyHub "
                                                      r"\(open_clip_pytorch_model.bin of Hub repo c2lip-test/tiny-"
                                                      r"weights\) is not in the local Hugging Face cache"):
        loading.load_model(name, "hubtag")
    assert len(refused_hub) == 1

    # the Hub answers: open_clip's own download path runs (the download stood in by a copy)
    downloads = []

    def download(repo_id, filename, **kwargs):
        downloads.append((repo_id, filename))
        snapshot = add_cached_repo(hub_cache, repo_id, {filename: weights.read_bytes()})
        return str(snapshot / filename)

    monkeypatch.setattr(hub, "unreachable_reason", lambda timeout=None: None)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", download)
    model, _, _ = loading.load_model(name, "hubtag")
    assert downloads == [(WEIGHTS_REPO, "open_clip_model.safetensors")]
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_local_tokenizer_folder_replaces_the_hub(tiny_hub, tmp_path, hub_cache, refused_hub):
    name, reference, _ = tiny_hub
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": reference.state_dict()}, checkpoint)
    with pytest.raises(hub.HubUnavailableError, match=r"^the tokenizer of C2LIP-TinyHub \(Hub repo c2lip-test/tiny-"
                                                      r"tokenizer\) is not .*; pass --tokenizer DIR .*or --model "
                                                      r"local-dir:DIR with a bundle exported from the checkpoint"):
        loading.load_model(name, str(checkpoint))
    folder = tiny_hf_tokenizer(tmp_path / "saved tokenizer")
    for source in (str(folder), f"local-dir:{folder}"):
        model, _, tokenizer = loading.load_model(name, str(checkpoint), tokenizer=source)
        assert tokenizer(["two red apples"])[0, :4].tolist() == [7, 8, 9, 2]
        assert tokenizer(["x"]).shape == (1, 32)  # the model's context length
    assert len(refused_hub) == 1  # the first, failed load only
    for missing in (str(tmp_path / "nowhere"), f"local-dir:{tmp_path / 'nowhere'}"):
        with pytest.raises(FileNotFoundError, match="--tokenizer folder not found: .*nowhere"):
            loading.load_model(name, str(checkpoint), tokenizer=missing)


def test_hf_hub_models_from_the_cache(tmp_path, hub_cache, refused_hub, monkeypatch, tiny_checkpoint):
    from open_clip_c2lip import export
    bundle = export.export_bundle("C2LIP-Tiny", tiny_checkpoint, tmp_path / "bundle", verify=False)
    with pytest.raises(hub.HubUnavailableError, match=r"^hf-hub:c2lip-test/bundle \(open_clip_config.json of Hub "
                                                      r"repo c2lip-test/bundle\) and the weights of hf-hub:c2lip-"
                                                      r"test/bundle .* are not in the local Hugging Face cache .*"
                                                      r"pass --model local-dir:DIR with a copy of the repo \(hf "
                                                      r"download c2lip-test/bundle --local-dir DIR"):
        loading.load_model("hf-hub:c2lip-test/bundle")
    add_cached_repo(hub_cache, "c2lip-test/bundle", folder=bundle)
    refused_hub.clear()
    model, _, _ = loading.load_model("hf-hub:c2lip-test/bundle")
    local, _, _ = loading.load_model(f"local-dir:{bundle}")
    assert refused_hub == []
    assert all(torch.equal(v, local.state_dict()[k]) for k, v in model.state_dict().items())


def test_hf_text_tower_config_comes_from_the_cache(tmp_path, hub_cache, refused_hub, monkeypatch):
    """An HF text tower is built from its config.json: cached, no request; missing, one clear error."""
    import json
    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"] = {"hf_model_name": "c2lip-test/tiny-bert", "hf_tokenizer_name": TOKENIZER_REPO,
                          "hf_pooler_type": "mean_pooler", "context_length": 16}
    (tmp_path / "Tiny-HFText-Test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "Tiny-HFText-Test.json")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubUnavailableError, match=r"^the text tower config of Tiny-HFText-Test \(Hub repo "
                                                      r"c2lip-test/tiny-bert\) is not in the local Hugging Face cache"):
        loading.bare_model("Tiny-HFText-Test")
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": 20, "max_position_embeddings": 40}
    add_cached_repo(hub_cache, "c2lip-test/tiny-bert", {"config.json": json.dumps(bert).encode()})
    model = loading.bare_model("Tiny-HFText-Test")
    assert model.text.transformer.config.hidden_size == 32
    assert all(p.device.type == "meta" for p in model.parameters())
    assert refused_hub == []


def test_big_vision_npz_weights_go_to_open_clips_converter(tmp_path, monkeypatch):
    """open_clip loads SigLIP .npz (big_vision) weights with its own converter: not a torch
    checkpoint, so the architecture check leaves them to it."""
    npz = tmp_path / "webli_i18n.npz"
    npz.write_bytes(b"PK")
    calls = []
    _forbid(monkeypatch, "open_clip_c2lip.loading.check_checkpoint")
    monkeypatch.setattr(open_clip, "create_model_and_transforms",
                        lambda name, pretrained=None, **kwargs: calls.append(pretrained) or (torch.nn.Linear(1, 1),
                                                                                           None, None))
    loading.load_model("C2LIP-Tiny", str(npz))
    assert calls == [str(npz)]
