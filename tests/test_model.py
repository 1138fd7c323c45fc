"""Tests for open_clip_c2lip.model: the C2 class swap and its concept-aware training forward.

Reference values are computed independently here (per-token loops, naive masked means, upstream
``encode_image`` / ``encode_text``) in float64 on tiny models.
"""
import copy
import pickle
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP

from open_clip_c2lip.layout import pack_rows
from open_clip_c2lip.model import (
    C2CLIP, C2CustomTextCLIP, check_c2lip_compatible, disable_c2lip, enable_c2lip, image_token_features,
    is_c2lip, map_value_path, register_c2lip_class, text_tower_is_stochastic,
)

torch.set_num_threads(1)

CONFIG_PATH = Path(__file__).resolve().parents[1] / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
CONTEXT_LENGTH = 32
MAX_CONCEPTS = 3
ATOL = 1e-10

# "a dog" repeats across samples (dedup); "a blue hat" is not in its caption (concept row, no span)
SAMPLES = [
    ("a dog on a red couch", ["a dog", "a red couch"]),
    ("two cats sleeping", ["two cats"]),
    ("a dog chasing a ball", ["a dog", "a ball", "a blue hat"]),
]
TEXT_MASK = [[True, True, False], [True, False, False], [True, True, True]]
SPAN_MASK = [[True, True, False], [True, False, False], [True, True, False]]

# tokens the MAP head pools at 64 px (4x4 patches), by variant: how many, and how many leading
# prefix tokens the trunk output has that the MAP head skips
VARIANTS = {
    "cls_excluded": dict(num_tokens=16, skip=1),   # test_vit: class token, not pooled
    "no_prefix": dict(num_tokens=16, skip=0),      # test_vit without class token
    "reg_included": dict(num_tokens=17, skip=0),   # test_vit3: 1 register token, pool_include_prefix
    "clip_layout": dict(num_tokens=16, skip=1),    # open_clip CLIP (flat text tower, matrix projection)
}


def _tiny_custom_text(seed: int) -> nn.Module:
    open_clip.add_model_config(CONFIG_PATH)
    torch.manual_seed(seed)
    return open_clip.create_model("C2LIP-Tiny", output_dict=True)


def build_model(variant: str) -> nn.Module:
    if variant == "clip_layout":
        torch.manual_seed(0)
        model = CLIP(
            embed_dim=64,
            vision_cfg=dict(image_size=64, timm_model_name="test_vit", timm_pool="map", timm_proj="none"),
            text_cfg=dict(context_length=CONTEXT_LENGTH, width=64, heads=2, layers=2),  # causal, argmax, matrix proj
            init_logit_bias=-10.,
            output_dict=True,
        )
    else:
        model = _tiny_custom_text(seed=0)
        if variant == "no_prefix":
            model.visual.trunk = timm.create_model("test_vit", num_classes=0, global_pool="map", class_token=False)
        elif variant == "reg_included":
            trunk = timm.create_model("test_vit3", num_classes=0, global_pool="map", img_size=64)
            model.visual.trunk = trunk
            # width 96 != embed_dim 64: an open_clip 'linear' TimmModel head, applied per token too
            model.visual.head = nn.Sequential(OrderedDict(drop=nn.Dropout(0.), proj=nn.Linear(96, 64)))
    with torch.no_grad():
        # zero-init biases would hide bugs that only rescale a vector before a bias (e.g. span sum
        # instead of mean) or drop a bias (e.g. kv's value bias)
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0., 0.1)
    return model.double()


@pytest.fixture(scope="module")
def tokenizer():
    open_clip.add_model_config(CONFIG_PATH)
    return open_clip.get_tokenizer("C2LIP-Tiny")


@pytest.fixture(scope="module")
def models():
    return {variant: build_model(variant) for variant in VARIANTS}


def span_row(tokenizer, caption_ids: torch.Tensor, concept: str) -> torch.Tensor:
    """0/1 row marking the concept's BPE ids inside the tokenized caption (zeros if absent)."""
    piece = torch.tensor(tokenizer.encode(concept))
    row = torch.zeros(caption_ids.shape[-1], dtype=torch.long)
    for start in range(caption_ids.shape[-1] - len(piece) + 1):
        if torch.equal(caption_ids[start:start + len(piece)], piece):
            row[start:start + len(piece)] = 1
            break
    return row


def pack(tokenizer, samples, max_concepts: int = MAX_CONCEPTS) -> torch.Tensor:
    packed = []
    for caption, concepts in samples:
        caption_ids = tokenizer([caption])[0]
        concept_ids = tokenizer(concepts) if concepts else torch.zeros(0, CONTEXT_LENGTH, dtype=torch.long)
        spans = [span_row(tokenizer, caption_ids, concept) for concept in concepts]
        spans = torch.stack(spans) if spans else torch.zeros(0, CONTEXT_LENGTH, dtype=torch.long)
        packed.append(pack_rows(caption_ids, concept_ids, spans, max_concepts))
    return torch.stack(packed)


@pytest.fixture(scope="module")
def packed(tokenizer):
    return pack(tokenizer, SAMPLES)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(len(SAMPLES), 3, 64, 64, generator=generator, dtype=torch.float64)


def c2_copy(model: nn.Module, concept_mode: str = "text", **kwargs) -> nn.Module:
    return enable_c2lip(copy.deepcopy(model), concept_mode, **kwargs).train()


def naive_image_tokens(model: nn.Module, images: torch.Tensor, variant: str) -> torch.Tensor:
    """Per-token loop: the MAP head with its attention one-hot on token j, then the tower head."""
    trunk, attn_pool = model.visual.trunk, model.visual.trunk.attn_pool
    tokens = trunk.forward_features(images)
    spec = VARIANTS[variant]
    assert tokens.shape[1] == spec["skip"] + spec["num_tokens"]
    batch_size, _, width = tokens.shape
    out = []
    for j in range(spec["skip"], tokens.shape[1]):
        # timm splits kv's output as reshape(B, N, 2, heads, head_dim): index 1 is the value
        value = attn_pool.kv(tokens[:, j]).reshape(batch_size, 2, width)[:, 1]
        x = attn_pool.proj_drop(attn_pool.proj(value))
        x = x + attn_pool.mlp(attn_pool.norm(x))
        x = trunk.head(trunk.head_drop(trunk.fc_norm(x)))
        out.append(F.normalize(model.visual.head(x), dim=-1))
    return torch.stack(out, dim=1)


def naive_caption_token_states(model: nn.Module, caption_ids: torch.Tensor) -> torch.Tensor:
    """Final text token states after ln_final, through a different upstream route than the model's."""
    if isinstance(model, CustomTextCLIP):
        model.text.output_tokens = True
        try:
            _, tokens = model.text(caption_ids)
        finally:
            model.text.output_tokens = False
        return tokens
    x = model.token_embedding(caption_ids) + model.positional_embedding
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("concept_mode", ["text", "span"])
def test_pooled_features_equal_upstream(models, packed, images, variant, concept_mode):
    model = c2_copy(models[variant], concept_mode)
    out = model(images, packed)
    with torch.no_grad():
        assert torch.allclose(out["image_features"], model.encode_image(images, normalize=True), atol=ATOL, rtol=0)
        assert torch.allclose(out["text_features"], model.encode_text(packed[:, 0], normalize=True), atol=ATOL,
                              rtol=0)
    assert torch.equal(out["logit_scale"], model.logit_scale.exp())
    assert out["logit_bias"] is model.logit_bias
    spec = VARIANTS[variant]
    assert out["image_tokens"].shape == (len(SAMPLES), spec["num_tokens"], 64)
    assert out["concept_features"].shape == (len(SAMPLES), MAX_CONCEPTS, 64)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_tokens_equal_per_token_map_head(models, images, variant):
    model = models[variant].train()
    image_features, image_tokens = image_token_features(model, images)
    with torch.no_grad():
        assert torch.allclose(image_tokens, naive_image_tokens(model, images, variant), atol=ATOL, rtol=0)
        assert torch.allclose(image_features, model.encode_image(images), atol=ATOL, rtol=0)
    assert torch.allclose(image_tokens.norm(dim=-1), torch.ones(()).double(), atol=1e-12)


@pytest.mark.parametrize("variant", ["cls_excluded", "reg_included"])
def test_map_head_on_single_token_is_its_value_path(models, variant):
    """The defining property: with one token the MAP softmax is one-hot, so pooling = value path."""
    attn_pool = models[variant].visual.trunk.attn_pool
    tokens = torch.randn(4, 1, attn_pool.kv.in_features, dtype=torch.float64)
    with torch.no_grad():
        pooled = attn_pool(tokens)
        assert torch.allclose(map_value_path(attn_pool, tokens)[:, 0], pooled, atol=ATOL, rtol=0)
        # and with two distinct tokens it is not (guards against a degenerate value path)
        two = torch.cat([tokens, torch.randn_like(tokens)], dim=1)
        assert not torch.allclose(map_value_path(attn_pool, two)[:, 0], attn_pool(two), atol=1e-4)


@pytest.mark.parametrize("variant", ["cls_excluded", "clip_layout"])
def test_text_mode_concepts_equal_encode_text(models, packed, images, variant):
    model = c2_copy(models[variant], "text")
    out = model(images, packed)
    assert torch.equal(out["concept_mask"], torch.tensor(TEXT_MASK))
    with torch.no_grad():
        for b in range(len(SAMPLES)):
            for k in range(MAX_CONCEPTS):
                expected = model.encode_text(packed[b, 1 + k][None], normalize=True)[0]
                if not TEXT_MASK[b][k]:
                    expected = torch.zeros_like(expected)
                assert torch.allclose(out["concept_features"][b, k], expected, atol=ATOL, rtol=0), (b, k)


@pytest.mark.parametrize("concept_mode", ["text", "span"])
def test_concept_ids_are_the_packed_concept_rows(models, packed, images, concept_mode):
    """``concept_ids [B, P, L]`` (the identity used by duplicate_concepts="ignore") are the concepts'
    token rows in both modes, also for a slot that span mode masks ("a blue hat"); ``caption_ids
    [B, L]`` the caption rows."""
    out = c2_copy(models["cls_excluded"], concept_mode)(images, packed)
    assert torch.equal(out["concept_ids"], packed[:, 1:1 + MAX_CONCEPTS])
    assert torch.equal(out["caption_ids"], packed[:, 0])  # whole-caption concepts: a row equal to this
    assert out["concept_ids"][2, 2].any() and bool(out["concept_mask"][2, 2]) == (concept_mode == "text")


@pytest.mark.parametrize("variant", ["cls_excluded", "clip_layout"])
def test_span_mode_concepts_equal_naive_masked_mean(models, tokenizer, packed, images, variant):
    model = c2_copy(models[variant], "span")
    out = model(images, packed)
    assert torch.equal(out["concept_mask"], torch.tensor(SPAN_MASK))
    projection = model.text.text_projection if isinstance(model, CustomTextCLIP) else model.text_projection
    with torch.no_grad():
        states = naive_caption_token_states(model, packed[:, 0])
        for b, (caption, concepts) in enumerate(SAMPLES):
            for k in range(MAX_CONCEPTS):
                expected = torch.zeros(64, dtype=torch.float64)
                if SPAN_MASK[b][k]:
                    positions = [i for i in range(CONTEXT_LENGTH) if packed[b, 1 + MAX_CONCEPTS + k, i]]
                    assert len(positions) == len(tokenizer.encode(concepts[k]))
                    mean = sum(states[b, i] for i in positions) / len(positions)
                    mean = projection(mean) if isinstance(projection, nn.Linear) else mean @ projection
                    expected = mean / mean.norm()
                assert torch.allclose(out["concept_features"][b, k], expected, atol=ATOL, rtol=0), (b, k)


@pytest.mark.parametrize("concept_mode", ["text", "span"])
@pytest.mark.parametrize("max_concepts", [2, 0])
def test_no_concepts_in_batch(models, tokenizer, images, concept_mode, max_concepts):
    model = c2_copy(models["cls_excluded"], concept_mode)
    texts = pack(tokenizer, [(caption, []) for caption, _ in SAMPLES], max_concepts)
    out = model(images, texts)
    assert out["concept_features"].shape == (len(SAMPLES), max_concepts, 64)
    assert not out["concept_mask"].any()
    assert torch.equal(out["concept_features"], torch.zeros_like(out["concept_features"]))
    assert model.c2lip_last_stats["concepts"] == 0
    (out["image_tokens"].sum() + out["text_features"].sum() + out["concept_features"].sum()).backward()
    assert model.visual.trunk.attn_pool.kv.weight.grad is not None


def probe_loss(out, *keys) -> torch.Tensor:
    """A fixed, non-symmetric linear functional of the outputs (unit-norm features make sums of
    squares constant, so their gradients would vanish)."""
    return sum((out[k].flatten() * torch.linspace(-1, 2, out[k].numel(), dtype=out[k].dtype)).sum() for k in keys)


def _grads(model: nn.Module):
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("concept_mode", ["text", "span"])
def test_gradients_reach_both_towers(models, packed, images, concept_mode):
    model = c2_copy(models["cls_excluded"], concept_mode)
    out = model(images, packed)
    width = model.visual.trunk.attn_pool.kv.in_features
    # image tokens: only the MAP head's value path (+ trunk), never its query side
    probe_loss(out, "image_tokens").backward()
    grads = _grads(model)
    attn_pool = "visual.trunk.attn_pool."
    assert grads["visual.trunk.blocks.0.attn.qkv.weight"].abs().sum() > 0
    assert grads[attn_pool + "kv.weight"][width:].abs().sum() > 0
    assert grads[attn_pool + "kv.weight"][:width].abs().sum() == 0
    assert grads[attn_pool + "latent"] is None and grads[attn_pool + "q.weight"] is None
    assert all(grads[n] is None for n in grads if n.startswith("text."))
    # concepts: the whole text tower, incl. the projection
    model.zero_grad(set_to_none=True)
    out = model(images, packed)
    probe_loss(out, "concept_features").backward()
    grads = _grads(model)
    for name in ("text.token_embedding.weight", "text.transformer.resblocks.0.attn.in_proj_weight",
                 "text.text_projection.weight"):
        assert grads[name].abs().sum() > 0, name
    assert all(grads[n] is None for n in grads if n.startswith("visual."))


def test_dedup_is_exact(models, packed, images):
    dedup = c2_copy(models["cls_excluded"], "text", dedup_concepts=True)
    naive = c2_copy(models["cls_excluded"], "text", dedup_concepts=False)
    outputs = []
    for model in (dedup, naive):
        out = model(images, packed)
        probe_loss(out, "concept_features", "text_features").backward()
        outputs.append(out)
    for key in ("text_features", "concept_features"):
        assert torch.allclose(outputs[0][key], outputs[1][key], atol=1e-12, rtol=0), key
    grads_dedup, grads_naive = _grads(dedup), _grads(naive)
    for name, grad in grads_naive.items():
        if name.startswith("text."):
            assert torch.allclose(grads_dedup[name], grad, atol=1e-12, rtol=0), name
    # 3 captions + 6 concepts + 3 padding slots; "a dog" twice and the padding rows collapse
    assert naive.c2lip_last_stats["encoded_text_rows"] == 3 + 3 * MAX_CONCEPTS
    assert dedup.c2lip_last_stats["encoded_text_rows"] == 3 + 5 + 1
    assert dedup.c2lip_last_stats["concepts"] == 6


def _set_text_attention_dropout(model: nn.Module, p: float) -> None:
    """Attention dropout of the first text block (nn.MultiheadAttention's float ``dropout``)."""
    transformer = model.text.transformer if hasattr(model, "text") else model.transformer
    transformer.resblocks[0].attn.dropout = p


@pytest.mark.parametrize("variant", ["cls_excluded", "clip_layout"])
def test_text_dropout_detection(models, variant):
    model = copy.deepcopy(models[variant]).train()
    assert not text_tower_is_stochastic(model)
    model.visual.trunk.blocks[0].attn.attn_drop.p = 0.5  # the image tower does not count
    assert not text_tower_is_stochastic(model)
    _set_text_attention_dropout(model, 0.1)
    assert text_tower_is_stochastic(model)
    assert not text_tower_is_stochastic(model.eval())
    _set_text_attention_dropout(model, 0.0)
    text = model.text if hasattr(model, "text") else model
    text.ln_final = nn.Sequential(text.ln_final, nn.Dropout(0.0))
    assert not text_tower_is_stochastic(model.train())
    text.ln_final[1].p = 0.1
    assert text_tower_is_stochastic(model)


@pytest.mark.parametrize("fields, stochastic", [
    (dict(), True),  # NLLB-200's values: dropout 0.1, attention_dropout 0.1, layerdrop 0.05
    (dict(dropout=0.0, encoder_layerdrop=0.0), True),  # attention dropout alone
    (dict(dropout=0.0, attention_dropout=0.0), True),  # layer drop alone
    (dict(dropout=0.0, attention_dropout=0.0, encoder_layerdrop=0.0), False),
])
def test_text_dropout_detection_hf_nllb_encoder(fields, stochastic):
    """The HF text tower of the ``nllb-clip-*-siglip-C2`` twins (M2M100 encoder, tiny here)."""
    transformers = pytest.importorskip("transformers")
    from open_clip.hf_model import HFTextEncoder

    nllb = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05,
                decoder_layerdrop=0.05)
    config = transformers.M2M100Config(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
        **{**nllb, **fields})
    model = nn.Module()
    model.text = HFTextEncoder("nllb-tiny", output_dim=8, config=config, pooler_type="mean_pooler",
                               proj_type="linear")
    model.text.transformer = model.text.transformer.get_encoder()  # what open_clip keeps of NLLB
    assert text_tower_is_stochastic(model.train()) is stochastic
    assert not text_tower_is_stochastic(model.eval())
    holder = nn.Module()  # an implementation that reads the probability from its config at call time
    holder.text = nn.Module()
    holder.text.config = transformers.M2M100Config(dropout=0.0, attention_dropout=0.1, encoder_layerdrop=0.0,
                                                   decoder_layerdrop=0.0)
    assert text_tower_is_stochastic(holder.train())


def test_dedup_is_skipped_while_the_text_tower_has_dropout(models, packed, images):
    model = c2_copy(models["cls_excluded"], "text", dedup_concepts=True)
    _set_text_attention_dropout(model, 0.5)
    torch.manual_seed(0)
    out = model(images, packed)
    # every row encoded on its own: 3 captions + 3 x 3 slots (padding included)
    assert model.c2lip_last_stats["encoded_text_rows"] == 3 + 3 * MAX_CONCEPTS
    # "a dog" (sample 0 slot 0, sample 2 slot 0) drew its own dropout noise each time
    assert not torch.allclose(out["concept_features"][0, 0], out["concept_features"][2, 0])
    _set_text_attention_dropout(model, 0.0)
    out = model(images, packed)
    assert model.c2lip_last_stats["encoded_text_rows"] == 3 + 5 + 1
    assert torch.equal(out["concept_features"][0, 0], out["concept_features"][2, 0])


@pytest.mark.parametrize("variant", ["cls_excluded", "clip_layout"])
def test_inference_bitwise_unchanged(models, packed, images, variant):
    plain = models[variant]
    model = c2_copy(plain, "text")
    captions = packed[:, 0]
    with torch.no_grad():
        for mode in ("eval", "train"):
            plain.train(mode == "train")
            model.train(mode == "train")
            for args in ((images, captions), (images, None), (None, captions)):
                expected, got = plain(*args), model(*args)
                assert expected.keys() == got.keys()
                for key in expected:
                    assert (expected[key] is None and got[key] is None) or torch.equal(expected[key], got[key])
            assert torch.equal(plain.encode_image(images), model.encode_image(images))
            assert torch.equal(plain.encode_text(captions), model.encode_text(captions))
        plain.eval()
        model.eval()
        # packed texts outside training are read as their captions
        assert torch.equal(model(images, packed)["text_features"], plain(images, captions)["text_features"])
    plain_state, c2_state = plain.state_dict(), model.state_dict()
    assert list(plain_state) == list(c2_state)
    assert all(torch.equal(plain_state[k], c2_state[k]) for k in plain_state)
    assert [n for n, _ in plain.named_buffers()] == [n for n, _ in model.named_buffers()]


def test_enable_disable_round_trip(models, packed, images):
    plain = models["cls_excluded"]
    model = enable_c2lip(copy.deepcopy(plain), "span")
    assert type(model) is C2CustomTextCLIP and is_c2lip(model) and isinstance(model, CustomTextCLIP)
    assert model.c2lip_concept_mode == "span"
    assert enable_c2lip(model, "text") is model and model.c2lip_concept_mode == "text"  # idempotent
    restored = pickle.loads(pickle.dumps(model))
    assert type(restored) is C2CustomTextCLIP and restored.c2lip_concept_mode == "text"
    restored.load_state_dict(plain.state_dict(), strict=True)
    assert disable_c2lip(model) is model and type(model) is CustomTextCLIP and not is_c2lip(model)
    assert not any(name.startswith("c2lip_") for name in vars(model))
    assert disable_c2lip(model) is model  # no-op on plain models
    clip = enable_c2lip(copy.deepcopy(models["clip_layout"]))
    assert type(clip) is C2CLIP
    assert type(disable_c2lip(clip)) is CLIP


def _native_vit_model() -> nn.Module:
    return CustomTextCLIP(64, dict(image_size=32, patch_size=16, layers=1, width=64, head_width=32),
                          dict(context_length=8, width=32, heads=2, layers=1), init_logit_bias=-10.)


def _timm_avg_model() -> nn.Module:
    return CustomTextCLIP(64, dict(image_size=64, timm_model_name="test_vit", timm_pool="avg", timm_proj="linear"),
                          dict(context_length=8, width=32, heads=2, layers=1), init_logit_bias=-10.)


def test_rejects_incompatible_models(models):
    with pytest.raises(ValueError, match="MAP head.*'timm_pool': 'map'.*got VisionTransformer"):
        enable_c2lip(_native_vit_model())
    with pytest.raises(ValueError, match="MAP head.*attn_pool=NoneType"):
        enable_c2lip(_timm_avg_model())
    no_bias = copy.deepcopy(models["cls_excluded"])
    no_bias.logit_bias = None
    with pytest.raises(ValueError, match="logit_bias.*--siglip"):
        enable_c2lip(no_bias)
    with pytest.raises(ValueError, match="concept_mode must be one of"):
        enable_c2lip(copy.deepcopy(models["cls_excluded"]), "phrase")
    with pytest.raises(ValueError, match="before DistributedDataParallel"):
        enable_c2lip(nn.Sequential(models["cls_excluded"]))
    check_c2lip_compatible(models["clip_layout"], "span")  # flat CLIP layout supports spans


class _OpaqueTextTower(nn.Module):
    """A text tower with only ``forward``, like open_clip's HFTextEncoder."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.inner(text)


def test_text_tower_without_token_states(models, packed, images):
    model = copy.deepcopy(models["cls_excluded"])
    model.text = _OpaqueTextTower(model.text)
    with pytest.raises(ValueError, match="concept_mode='span'.*_OpaqueTextTower has no forward_intermediates"):
        enable_c2lip(model, "span")
    out = enable_c2lip(model, "text").train()(images, packed)
    with torch.no_grad():
        expected = model.encode_text(packed[2, 1:1 + MAX_CONCEPTS], normalize=True)
    assert torch.allclose(out["concept_features"][2], expected, atol=ATOL, rtol=0)


def test_register_c2lip_class_validates():
    class NotC2(CustomTextCLIP):
        pass

    with pytest.raises(ValueError, match="NotC2 must subclass both C2LIPMixin and CustomTextCLIP"):
        register_c2lip_class(CustomTextCLIP, NotC2)


def test_rejects_bad_batches(models, packed, images):
    model = c2_copy(models["cls_excluded"])
    with pytest.raises(ValueError, match="2 images but 3 packed texts"):
        model(images[:2], packed)
    with pytest.raises(ValueError, match="1 \\+ 2\\*P rows"):
        model(images, packed[:, :2])
    model.visual.trunk.patch_drop = timm.layers.PatchDropout(0.5, num_prefix_tokens=1)
    with pytest.raises(ValueError, match="patch dropout"):
        model(images, packed)


@pytest.mark.parametrize("concept_mode", ["text", "span"])
def test_grad_checkpointing_is_honoured(models, packed, images, monkeypatch, concept_mode):
    import open_clip.transformer
    import timm.models.vision_transformer as vit
    calls = {"image": 0, "text": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(vit, "checkpoint_seq", counting("image", vit.checkpoint_seq))
    monkeypatch.setattr(open_clip.transformer, "checkpoint", counting("text", open_clip.transformer.checkpoint))
    grads = []
    for enable in (False, True):
        model = c2_copy(models["cls_excluded"], concept_mode)
        model.set_grad_checkpointing(enable)
        out = model(images, packed)
        probe_loss(out, "image_tokens", "concept_features", "image_features", "text_features").backward()
        grads.append(_grads(model))
        assert (calls["image"] > 0) == enable and (calls["text"] > 0) == enable
    for name, grad in grads[0].items():
        assert (grad is None) == (grads[1][name] is None), name
        if grad is not None:
            assert torch.allclose(grad, grads[1][name], atol=1e-10, rtol=0), name
