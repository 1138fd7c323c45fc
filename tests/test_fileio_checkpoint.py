"""Tests for open_clip_c2lip.fileio.checkpoint: every kind of unusable checkpoint file gets an error that
names the file and the kind of fault, for several inputs of each kind; good files load exactly."""
import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch

import open_clip

from open_clip_c2lip.fileio.checkpoint import CheckpointError, check_architecture, load_checkpoint_into, read_checkpoint

torch.set_num_threads(1)

TINY_CONFIG = Path(__file__).resolve().parents[1] / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
STATE = {"visual.proj.weight": torch.arange(4096.0).reshape(64, 64), "logit_scale": torch.tensor(2.3)}


def _saved(path: Path, obj, legacy=False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_good_files_load_with_metadata_and_prefix_stripped(tmp_path):
    import safetensors.torch
    checkpoint = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in STATE.items()},
                  "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    for path in (_saved(tmp_path / "zip.pt", checkpoint), _saved(tmp_path / "legacy.pt", checkpoint, legacy=True)):
        state_dict, meta = read_checkpoint(path)
        assert meta == {"epoch": 3, "name": "run"} and set(state_dict) == set(STATE)
        assert all(torch.equal(state_dict[k], v) for k, v in STATE.items())
    safetensors.torch.save_file({k: v.contiguous() for k, v in STATE.items()}, str(tmp_path / "w.safetensors"))
    state_dict, meta = read_checkpoint(tmp_path / "w.safetensors")
    assert meta == {} and all(torch.equal(state_dict[k], v) for k, v in STATE.items())


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files_at_many_points(tmp_path, legacy):
    data = _saved(tmp_path / "full.pt", {"epoch": 1, "state_dict": STATE}, legacy=legacy).read_bytes()
    cuts = sorted({1, 2, 3, 5, 40, 200, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1})
    for cut in cuts:
        path = tmp_path / f"cut_{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"{path.name} is truncated \({cut} bytes"):
            read_checkpoint(path)


def test_empty_missing_and_not_a_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt is empty \(0 bytes\)"):
        read_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)


def test_random_bytes_are_not_checkpoints(tmp_path):
    for seed in range(4):
        for prefix, expected in ((b"", "is not a PyTorch checkpoint"), (b"\x80\x02", "is not a readable PyTorch"),
                                 (b"PK\x03\x04", "is truncated")):  # a zip start without its end record
            path = tmp_path / f"random_{seed}_{len(prefix)}.pt"
            path.write_bytes(prefix + np.random.default_rng(seed).bytes(2048))
            with pytest.raises(CheckpointError, match=rf"{path.name} {expected}"):
                read_checkpoint(path)
        path = tmp_path / f"random_{seed}.safetensors"
        path.write_bytes(np.random.default_rng(seed).bytes(2048))
        with pytest.raises(CheckpointError, match=rf"{path.name} is not a readable safetensors file"):
            read_checkpoint(path)


def test_truncated_safetensors(tmp_path):
    import safetensors.torch
    full = tmp_path / "full.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in STATE.items()}, str(full))
    data = full.read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut_{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"{path.name} is not a readable safetensors file \({cut} bytes"):
            read_checkpoint(path)


def test_dicts_without_a_usable_state_dict(tmp_path):
    cases = [
        ({"epoch": 2, "name": "run", "optimizer": {"lr": 1.0}}, r"holds a dict with keys \[epoch, name, optimizer\] "
                                                                r"but no 'state_dict' entry"),
        ({"epoch": 2, "state_dict": None}, r"its 'state_dict' is a NoneType"),
        ({"state_dict": [torch.zeros(1)]}, r"its 'state_dict' is a list"),
        ({}, r"the state dict is empty"),
        ({"state_dict": {}}, r"the state dict is empty"),
        ({"state_dict": {"a": torch.zeros(1), "b": 3}}, r"1 state_dict entries are not tensors \(e.g. b\)"),
        ([torch.zeros(2)], r"holds a list, not a state dict"),
        (torch.zeros(2), r"holds a Tensor, not a state dict"),
    ]
    for i, (obj, message) in enumerate(cases):
        for legacy in (False, True):
            path = _saved(tmp_path / f"case_{i}_{legacy}.pt", obj, legacy=legacy)
            with pytest.raises(CheckpointError, match=rf"{path.name}:? {message}" if message[0] != "h"
                               else rf"{path.name} {message}"):
                read_checkpoint(path)


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = _saved(tmp_path / "objects.pt", {"state_dict": STATE, "args": argparse.Namespace(lr=0.1)})
    with pytest.raises(CheckpointError, match=r"objects.pt holds Python objects .* weights_only=True.*argparse"):
        read_checkpoint(path)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """C2LIP-Tiny, a wider variant and a CLIP-style variant (no logit bias) of it."""
    folder = tmp_path_factory.mktemp("configs")
    config = json.loads(TINY_CONFIG.read_text())
    wide = json.loads(json.dumps(config))
    wide["embed_dim"] = 96
    clip = {k: v for k, v in config.items() if k != "init_logit_bias"}
    for name, cfg in (("C2LIP-Tiny", config), ("Tiny-Wide-Test", wide), ("Tiny-CLIP-Test", clip)):
        (folder / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    return {name: open_clip.create_model(name).eval() for name in ("C2LIP-Tiny", "Tiny-Wide-Test", "Tiny-CLIP-Test")}


def test_checkpoint_of_another_architecture(tiny_models, tmp_path):
    tiny = tiny_models["C2LIP-Tiny"]
    cases = [
        # another width: same keys, other shapes
        ("Tiny-Wide-Test", r"entries have another shape \(e.g. .*checkpoint \[64.*vs model \[96"),
        # a SigLIP-style checkpoint (with logit_bias) into a CLIP-style model: upstream's AttributeError 'ndim'
        ("Tiny-CLIP-Test", r"1 checkpoint entries are unknown to the model \(e.g. logit_bias\)"),
    ]
    path = _saved(tmp_path / "tiny.pt", {"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                                                      tiny.state_dict().items()}})
    for name, message in cases:
        target = open_clip.create_model(name)
        pattern = rf"(?s)tiny.pt is not a checkpoint of {name}: .*{message}.*another --model"
        with pytest.raises(CheckpointError, match=pattern):
            load_checkpoint_into(target, path, name)
    # keys removed and added: both named
    state_dict = {k: v for k, v in tiny.state_dict().items() if k != "text.token_embedding.weight"}
    state_dict["extra.weight"] = torch.zeros(2)
    path = _saved(tmp_path / "edited.pt", state_dict)
    with pytest.raises(CheckpointError, match=r"1 of the model's \d+ entries are missing from the checkpoint "
                                              r"\(e.g. text.token_embedding.weight\); 1 checkpoint entries are "
                                              r"unknown to the model \(e.g. extra.weight\)"):
        load_checkpoint_into(open_clip.create_model("C2LIP-Tiny"), path, "C2LIP-Tiny")


def test_checkpoint_whose_pos_embed_width_differs(tiny_models, tmp_path):
    """open_clip's resize_*_pos_embed asserts on another embedding width (e.g. a ViT-S state dict
    into C2LIP-Tiny): the same clear error, not a bare AssertionError."""
    tiny = tiny_models["C2LIP-Tiny"]
    state_dict = dict(tiny.state_dict())
    key = next(k for k in state_dict if k.endswith("positional_embedding") and k.startswith("text"))
    rows, width = state_dict[key].shape
    state_dict[key] = torch.zeros(rows, width + 8)
    path = _saved(tmp_path / "wider.pt", {"state_dict": state_dict})
    with pytest.raises(CheckpointError, match=rf"(?s)wider.pt is not a checkpoint of C2LIP-Tiny: .*{key}"):
        load_checkpoint_into(open_clip.create_model("C2LIP-Tiny"), path, "C2LIP-Tiny")


def test_load_checkpoint_into_loads_exactly(tiny_models, tmp_path):
    tiny = tiny_models["C2LIP-Tiny"]
    path = _saved(tmp_path / "epoch_4.pt", {"epoch": 4, "name": "r", "state_dict": {f"module.{k}": v for k, v in
                                                                                    tiny.state_dict().items()}})
    torch.manual_seed(1)
    fresh = open_clip.create_model("C2LIP-Tiny")
    assert load_checkpoint_into(fresh, path, "C2LIP-Tiny") == {"epoch": 4, "name": "r"}
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in fresh.state_dict().items())


def _outcome(action):
    try:
        return "fits", action()
    except CheckpointError as e:
        return "refused", str(e)


def test_check_on_the_meta_device_agrees_with_the_real_load(tiny_models, tmp_path):
    """check_architecture on a weightless (meta) model refuses exactly what the real load refuses,
    with the same message, and accepts what open_clip adapts (module. keys, a missing logit bias,
    a shorter text positional embedding)."""
    from open_clip_c2lip.loading import bare_model
    tiny = tiny_models["C2LIP-Tiny"].state_dict()
    key = next(k for k in tiny if k.endswith("positional_embedding") and k.startswith("text"))
    rows, width = tiny[key].shape
    checkpoints = {
        "tiny.pt": {"epoch": 2, "state_dict": {f"module.{k}": v for k, v in tiny.items()}},
        "clip_style.pt": tiny_models["Tiny-CLIP-Test"].state_dict(),
        "wide.pt": tiny_models["Tiny-Wide-Test"].state_dict(),
        "no_bias.pt": {k: v for k, v in tiny.items() if k != "logit_bias"},
        "edited.pt": {**{k: v for k, v in tiny.items() if k != "text.token_embedding.weight"},
                      "extra.weight": torch.zeros(2)},
        "wider_pos.pt": {**tiny, key: torch.zeros(rows, width + 8)},
        "shorter_pos.pt": {**tiny, key: tiny[key][: rows - 4].clone()},
    }
    outcomes = {}
    for name, content in checkpoints.items():
        path = _saved(tmp_path / name, content)
        for target in ("C2LIP-Tiny", "Tiny-Wide-Test", "Tiny-CLIP-Test"):
            meta_model = bare_model(target)
            checked = _outcome(lambda: check_architecture(meta_model, path, target))
            assert all(p.device.type == "meta" for p in meta_model.parameters())  # nothing materialized
            real = _outcome(lambda: load_checkpoint_into(open_clip.create_model(target), path, target))
            assert checked == real, (name, target)
            outcomes[name, target] = checked[0]
    assert outcomes["tiny.pt", "C2LIP-Tiny"] == "fits" and outcomes["no_bias.pt", "C2LIP-Tiny"] == "fits"
    assert outcomes["shorter_pos.pt", "C2LIP-Tiny"] == "fits"
    assert outcomes["wide.pt", "C2LIP-Tiny"] == outcomes["edited.pt", "C2LIP-Tiny"] == "refused"
    assert outcomes["wider_pos.pt", "C2LIP-Tiny"] == outcomes["tiny.pt", "Tiny-Wide-Test"] == "refused"
    assert check_architecture(bare_model("C2LIP-Tiny"), tmp_path / "tiny.pt", "C2LIP-Tiny") == {"epoch": 2}
