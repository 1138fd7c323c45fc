"""C2 names: shipped twin configs vs the installed open_clip, pretrained aliases, preprocessing
defaults, the C2LIP-Tiny init hook, collisions."""
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (registers the C2 names)
import open_clip
from open_clip_c2lip import registry

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SIGLIP = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def _upstream_configs():
    """open_clip's bundled configs, read independently of the registry helpers."""
    config_dir = Path(open_clip.factory.__file__).parent / "model_configs"
    configs = {p.stem: json.loads(p.read_text()) for p in config_dir.glob("*.json")}
    return {k: v for k, v in configs.items() if {"embed_dim", "vision_cfg", "text_cfg"} <= set(v)}


def _shipped_twins():
    return {p.stem: json.loads(p.read_text()) for p in registry.MODEL_CONFIG_DIR.glob("*-C2.json")}


def test_shipped_twins_equal_the_rule_applied_to_installed_open_clip():
    upstream = _upstream_configs()
    expected = {f"{name}-C2": cfg for name, cfg in upstream.items()
                if "siglip" in name.lower() and cfg["vision_cfg"].get("timm_pool") == "map"}
    shipped = _shipped_twins()
    assert "ViT-B-16-SigLIP-C2" in shipped
    assert sorted(shipped) == sorted(expected), "run scripts/generate_model_configs.py"
    for name, cfg in shipped.items():
        assert cfg == expected[name], f"{name} differs from its base config"


def test_generator_check_detects_drift(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import generate_model_configs as generator
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert generator.main(["--check"]) == 0
    copy = tmp_path / "configs"
    shutil.copytree(registry.MODEL_CONFIG_DIR, copy)
    (copy / "ViT-B-16-SigLIP-C2.json").unlink()
    changed = json.loads((copy / "ViT-L-16-SigLIP-384-C2.json").read_text())
    changed["embed_dim"] += 1
    (copy / "ViT-L-16-SigLIP-384-C2.json").write_text(json.dumps(changed))
    (copy / "ViT-Fake-C2.json").write_text("{}")
    problems = generator.diff(copy, generator.expected_twins(registry.upstream_config_dir()))
    assert problems == ["missing ViT-B-16-SigLIP-C2.json", "stale ViT-Fake-C2.json (no matching base)",
                        "ViT-L-16-SigLIP-384-C2.json differs from its base config"]
    generator.write(copy, generator.expected_twins(registry.upstream_config_dir()))
    assert generator.diff(copy, generator.expected_twins(registry.upstream_config_dir())) == []
    assert (copy / "C2LIP-Tiny.json").exists()  # own configs untouched


def test_c2_names_registered_without_collision():
    names = set(open_clip.list_models())
    ours = set(_shipped_twins()) | {"C2LIP-Tiny"}
    assert ours <= names
    assert not ours & set(_upstream_configs())
    assert set(registry.c2_models()) == ours
    assert all(registry.c2_models()[twin].base == twin[:-3] for twin in _shipped_twins())


def test_twin_pretrained_tags_alias_base_as_deep_copies():
    from open_clip.pretrained import _PRETRAINED

    assert open_clip.list_pretrained_tags_by_model("ViT-B-16-SigLIP-C2") == ["webli"]
    for twin in _shipped_twins():
        base = twin[:-3]
        tags = open_clip.list_pretrained_tags_by_model(base)
        assert tags and open_clip.list_pretrained_tags_by_model(twin) == tags
        for tag in tags:
            cfg = open_clip.get_pretrained_cfg(twin, tag)
            assert cfg == open_clip.get_pretrained_cfg(base, tag)
            assert cfg is not open_clip.get_pretrained_cfg(base, tag)
            # the create_model preprocessing defaults agree with every tag: forcing them changes nothing
            assert {k: tuple(v) if isinstance(v, (list, tuple)) else v
                    for k, v in cfg.items() if k in SIGLIP} == SIGLIP
        assert _PRETRAINED[twin] is not _PRETRAINED[base]


def test_register_is_idempotent_and_rejects_collisions():
    before = list(open_clip.factory._MODEL_CONFIG_PATHS)
    registry.register(open_clip)
    assert open_clip.factory._MODEL_CONFIG_PATHS == before
    fake = types.SimpleNamespace(
        factory=types.SimpleNamespace(_MODEL_CONFIG_PATHS=[], _MODEL_CONFIGS={"C2LIP-Tiny": {}}),
        add_model_config=lambda path: pytest.fail("must not register colliding configs"),
        pretrained=types.SimpleNamespace(_PRETRAINED={}))
    with pytest.raises(RuntimeError, match="C2LIP-Tiny"):
        registry.register(fake)


@pytest.fixture
def plain_tiny(tmp_path):
    """C2LIP-Tiny's config registered under a non-C2 name (what plain open_clip would do)."""
    path = tmp_path / "Plain-Tiny.json"
    shutil.copyfile(registry.MODEL_CONFIG_DIR / "C2LIP-Tiny.json", path)
    open_clip.add_model_config(path)
    yield "Plain-Tiny"
    open_clip.factory._MODEL_CONFIG_PATHS.remove(path)
    open_clip.factory._MODEL_CONFIGS.pop("Plain-Tiny")


def test_c2_names_default_to_siglip_preprocessing_user_values_win(plain_tiny):
    cfg = open_clip.create_model("C2LIP-Tiny").visual.preprocess_cfg
    assert {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items() if k in SIGLIP} == SIGLIP
    assert tuple(open_clip.create_model(plain_tiny).visual.preprocess_cfg["mean"]) == pytest.approx(OPENAI_MEAN)
    forced = open_clip.create_model("C2LIP-Tiny", force_preprocess_cfg={"mean": (0.1, 0.2, 0.3)})
    assert tuple(forced.visual.preprocess_cfg["mean"]) == (0.1, 0.2, 0.3)
    assert tuple(forced.visual.preprocess_cfg["std"]) == (0.5, 0.5, 0.5)
    _, _, preprocess = open_clip.create_model_and_transforms("C2LIP-Tiny", image_resize_mode="shortest",
                                                             image_std=(0.2, 0.2, 0.2))
    normalize = preprocess.transforms[-1]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.2, 0.2, 0.2)
    assert type(preprocess.transforms[0]).__name__ == "Resize"  # 'shortest' + center crop, not squash


def _map_head(model):
    pool = model.visual.trunk.attn_pool
    return {name: layer.weight.detach().clone() for name, layer in
            (("q", pool.q), ("kv", pool.kv), ("proj", pool.proj))}


def test_tiny_map_head_gets_xavier_init_only_without_pretrained(tmp_path):
    unwrapped = open_clip.factory.create_model.__wrapped__
    torch.manual_seed(0)
    reference = unwrapped("C2LIP-Tiny")
    default_head = _map_head(reference)
    pool = reference.visual.trunk.attn_pool
    for layer in (pool.q, pool.kv, pool.proj):  # naive Xavier-uniform, drawing the same RNG stream
        bound = (6.0 / (layer.in_features + layer.out_features)) ** 0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound)
    torch.manual_seed(0)
    model = open_clip.create_model("C2LIP-Tiny")
    head = _map_head(model)
    for name, weight in _map_head(reference).items():
        torch.testing.assert_close(head[name], weight)
        assert not torch.equal(head[name], default_head[name])
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in (model.visual.trunk.attn_pool.q,
                                                                  model.visual.trunk.attn_pool.kv,
                                                                  model.visual.trunk.attn_pool.proj))
    # with a checkpoint, its weights are kept as loaded
    checkpoint = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, checkpoint)
    torch.manual_seed(1)
    loaded = open_clip.create_model("C2LIP-Tiny", pretrained=str(checkpoint))
    for name, weight in _map_head(loaded).items():
        torch.testing.assert_close(weight, _map_head(reference)[name])
