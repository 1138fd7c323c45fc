"""The C2 model: open_clip's CLIP / CustomTextCLIP with a concept-aware training forward.

``enable_c2lip(model)`` swaps the class of an existing open_clip model to a C2 subclass. Nothing is
added to its parameters or buffers, so checkpoints stay drop-in both ways. The C2 subclass only
changes ``forward`` for *packed* texts ``[B, 1+2P, L]`` (see ``layout.py``) in train mode, where it
returns the upstream keys plus

- ``image_tokens`` ``[B, T, D]``: every visual token that the MAP head pools, sent through the MAP
  head as if its attention were one-hot on that token (value half of ``kv``, ``proj``,
  ``proj_drop``, ``x + mlp(norm(x))``), then the rest of the tower head; L2-normalized;
- ``concept_features`` ``[B, P, D]``: L2-normalized concept embeddings, zeros at padding slots;
- ``concept_mask`` ``[B, P]`` (bool): which slots hold a concept;
- ``concept_ids`` ``[B, P, L]`` (int64): each slot's concept token row from the packed texts (a view).
  Equal rows = the same concept text after the tokenizer's cleaning (truncated to ``L`` tokens), in
  both concept modes; ``C2LIPLoss(duplicate_concepts="ignore")`` uses it as the concept identity;
- ``caption_ids`` ``[B, L]`` (int64): the caption rows (a view); a concept row equal to its caption's
  is a whole-caption concept, which ``C2LIPLoss.last_concept_usage`` does not count as usable.

Each tower runs once: the trunk's tokens give both the pooled feature and ``image_tokens``; in
``text`` concept mode the captions and the distinct concept rows share one ``encode_text`` pass
(identical rows, including a concept equal to its caption, are encoded once unless the text tower
has active dropout), in ``span`` mode the caption pass also yields the token states that the spans
average.

Everything else (eval mode, 2-D texts, ``encode_image`` / ``encode_text``) is the base class's.
"""
from typing import Dict, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.timm_model import TimmModel
from timm.layers import AttentionPoolLatent

from .layout import unpack_texts
from .config import CONCEPT_MODES, check_concept_mode

__all__ = [
    "C2LIPMixin", "C2CLIP", "C2CustomTextCLIP", "register_c2lip_class", "enable_c2lip", "disable_c2lip",
    "is_c2lip", "check_c2lip_compatible", "map_value_path", "image_token_features", "encode_packed_text",
    "text_tower_is_stochastic",
]


def _text_projection(model: nn.Module):
    """The text projection (``nn.Linear``, ``[W, D]`` Parameter or None) of either model layout."""
    text_tower = model.text if isinstance(model, CustomTextCLIP) else model
    return getattr(text_tower, "text_projection", None)


def _project_text(projection, x: torch.Tensor) -> torch.Tensor:
    # mirrors the tail of open_clip's encode_text: Linear (SigLIP, proj_bias) or a bare matrix (CLIP)
    if projection is None:
        return x
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection


def _check_vision_tower(model: nn.Module) -> None:
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    attn_pool = getattr(trunk, "attn_pool", None)
    if not isinstance(visual, TimmModel) or not isinstance(attn_pool, AttentionPoolLatent):
        found = type(visual).__name__ if not isinstance(visual, TimmModel) else \
            f"TimmModel({type(trunk).__name__}) with attn_pool={type(attn_pool).__name__}"
        raise ValueError(
            "C2LIP needs a timm vision tower with a MAP head (model.visual.trunk.attn_pool an "
            f"AttentionPoolLatent, i.e. 'timm_pool': 'map' in the model config); got {found}. "
            "Use a SigLIP / SigLIP2 config such as ViT-B-16-SigLIP or C2LIP-Tiny.")


def check_c2lip_compatible(model: nn.Module, concept_mode: str = "text") -> None:
    """Raise ``ValueError`` saying what to change when ``model`` cannot run the C2 forward."""
    check_concept_mode(concept_mode)
    _check_vision_tower(model)
    if getattr(model, "logit_bias", None) is None:
        raise ValueError(
            "C2LIP's sigmoid losses need model.logit_bias, but this model has none: create it with "
            "init_logit_bias (open_clip_train: --siglip; model config: \"init_logit_bias\": -10).")
    if concept_mode == "span":
        text_tower = model.text if isinstance(model, CustomTextCLIP) else model
        if not hasattr(text_tower, "forward_intermediates"):
            raise ValueError(
                f"concept_mode='span' needs the caption's token states, but the text tower "
                f"{type(text_tower).__name__} has no forward_intermediates; use concept_mode='text'.")


def map_value_path(attn_pool: AttentionPoolLatent, tokens: torch.Tensor) -> torch.Tensor:
    """What ``attn_pool`` outputs for each token were its attention one-hot on it.

    ``tokens [B, T, C]`` -> ``[B, T, out_features]``: value half of ``kv``, ``proj``, ``proj_drop``,
    then ``x + mlp(norm(x))``. For a single-token input it equals ``attn_pool(tokens)[:, None]``.
    """
    if attn_pool.pos_embed is not None:
        tokens = tokens + attn_pool.pos_embed.unsqueeze(0).to(tokens.dtype)
    # kv's output features are laid out [2, heads, head_dim]: the second half is the value
    embed_dim = attn_pool.kv.out_features // 2
    value_bias = attn_pool.kv.bias[embed_dim:] if attn_pool.kv.bias is not None else None
    x = F.linear(tokens, attn_pool.kv.weight[embed_dim:], value_bias)
    x = attn_pool.proj_drop(attn_pool.proj(x))
    if attn_pool.mlp is not None:
        x = x + attn_pool.mlp(attn_pool.norm(x))
    return x


def _pooled_tokens(trunk: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    # mirror timm VisionTransformer.pool(): the MAP head skips prefix tokens unless pool_include_prefix
    if not getattr(trunk, "pool_include_prefix", False):
        tokens = tokens[:, getattr(trunk, "num_prefix_tokens", 0):]
    return tokens


def image_token_features(model: nn.Module, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One trunk pass -> (pooled ``image_features [B, D]`` unnormalized, as ``encode_image``;
    ``image_tokens [B, T, D]`` per-token joint embeddings, L2-normalized).

    ``T`` counts the tokens the MAP head pools (patches, plus prefix tokens when the trunk's
    ``pool_include_prefix`` is set). Works on any open_clip model with a timm MAP tower.
    """
    _check_vision_tower(model)
    visual = model.visual
    trunk = visual.trunk
    tokens = trunk.forward_features(images)
    image_features = visual.head(trunk.forward_head(tokens))
    # the rest of the head after the MAP pool, applied per token (identity for SigLIP)
    token_features = map_value_path(trunk.attn_pool, _pooled_tokens(trunk, tokens))
    token_features = trunk.head(trunk.head_drop(trunk.fc_norm(token_features)))
    token_features = visual.head(token_features)
    return image_features, F.normalize(token_features, dim=-1)


def _concept_stats(caption_ids: torch.Tensor, concept_mask: torch.Tensor) -> Dict[str, int]:
    # host sync on a tiny tensor before any heavy kernel of this step is queued (text mode's
    # torch.unique syncs there anyway), so it does not stall the device pipeline
    return {"captions": caption_ids.shape[0], "concept_slots": concept_mask.numel(),
            "concepts": int(concept_mask.sum())}


def _text_mode_features(model: nn.Module, caption_ids: torch.Tensor, concept_ids: torch.Tensor,
                        span_masks: torch.Tensor, dedup: bool = True):
    """Captions and concept rows through one ``encode_text`` pass. A slot is valid iff its concept
    row is non-zero."""
    batch_size, num_slots, context_length = concept_ids.shape
    concept_mask = concept_ids.ne(0).any(-1)
    stats = _concept_stats(caption_ids, concept_mask)
    rows = torch.cat([caption_ids, concept_ids.reshape(batch_size * num_slots, context_length)])
    if dedup:
        # exact when the text tower is deterministic (the caller checks its dropout); all padding
        # rows collapse into one zero row whose (finite) features get masked out
        unique_rows, inverse = torch.unique(rows, dim=0, return_inverse=True)
        features = model.encode_text(unique_rows, normalize=True)[inverse]
        stats["encoded_text_rows"] = unique_rows.shape[0]
    else:
        features = model.encode_text(rows, normalize=True)
        stats["encoded_text_rows"] = rows.shape[0]
    concept_features = features[batch_size:].reshape(batch_size, num_slots, features.shape[-1])
    return features[:batch_size], concept_features, concept_mask, stats


def _span_mode_features(model: nn.Module, caption_ids: torch.Tensor, concept_ids: torch.Tensor,
                        span_masks: torch.Tensor, dedup: bool = True):
    """One caption pass; each concept is the masked mean of the final token states (after
    ``ln_final``) over its span, then the text projection. A slot is valid iff its span row is
    non-zero."""
    concept_mask = span_masks.any(-1)
    stats = _concept_stats(caption_ids, concept_mask)
    output = model.forward_intermediates(
        text=caption_ids, text_indices=1, normalize=False, normalize_intermediates=True)
    token_states = output["text_intermediates"][-1]  # [B, L, W]
    weights = span_masks.to(token_states.dtype)  # [B, P, L]
    span_states = torch.bmm(weights, token_states) / weights.sum(-1, keepdim=True).clamp_min(1)
    concept_features = F.normalize(_project_text(_text_projection(model), span_states), dim=-1)
    stats["encoded_text_rows"] = caption_ids.shape[0]
    return F.normalize(output["text_features"], dim=-1), concept_features, concept_mask, stats


# concept mode -> fn(model, caption_ids [B, L], concept_ids [B, P, L], span_masks [B, P, L], dedup)
#   -> (text_features [B, D] normalized, concept_features [B, P, D] normalized, concept_mask [B, P], stats)
_CONCEPT_ENCODERS = {
    "text": _text_mode_features,
    "span": _span_mode_features,
}
assert set(_CONCEPT_ENCODERS) == set(CONCEPT_MODES)


def encode_packed_text(model: nn.Module, texts: torch.Tensor, concept_mode: str = "text",
                       dedup: bool = True) -> Dict[str, object]:
    """Packed texts ``[B, 1+2P, L]`` -> ``text_features [B, D]``, ``concept_features [B, P, D]``
    (both L2-normalized, zeros at padding slots), ``concept_mask [B, P]`` (bool) and ``stats``.

    ``text`` mode: each concept row is encoded like ``encode_text(row, normalize=True)``; a slot is
    valid iff its concept row is non-zero. ``span`` mode: span-mean of the caption's token states;
    a slot is valid iff its span row is non-zero.
    """
    encoder = _CONCEPT_ENCODERS[check_concept_mode(concept_mode)]
    caption_ids, concept_ids, span_masks = unpack_texts(texts)
    text_features, concept_features, concept_mask, stats = encoder(
        model, caption_ids, concept_ids, span_masks, dedup=dedup)
    concept_features = torch.where(concept_mask.unsqueeze(-1), concept_features, 0.)
    return {"text_features": text_features, "concept_features": concept_features,
            "concept_mask": concept_mask, "stats": stats}


def _check_patch_dropout(model: nn.Module) -> None:
    patch_drop = getattr(model.visual.trunk, "patch_drop", None)
    if patch_drop is not None and patch_drop.training and getattr(patch_drop, "prob", 0.) > 0:
        raise ValueError(
            f"patch dropout (prob={patch_drop.prob}) drops image tokens without their indices, which "
            "corrupts C2LIP's image_tokens; train C2LIP without --force-patch-dropout / patch_dropout.")


# names of numeric attributes / HF config fields that hold a dropout-like probability
# (nn.MultiheadAttention.dropout, HF ``attention_dropout`` / ``activation_dropout`` / ``layerdrop``,
# timm DropPath ``drop_prob``); decoder / classifier fields never act in a text encoder
_DROP_MARKERS = ("drop",)
_DROP_IGNORED = ("decoder", "classifier")


def _drop_probabilities(attributes: Dict[str, object]):
    for name, value in attributes.items():
        lowered = name.lower()
        if (any(m in lowered for m in _DROP_MARKERS) and not any(m in lowered for m in _DROP_IGNORED)
                and isinstance(value, (int, float)) and not isinstance(value, bool)):
            yield float(value)


def text_tower_is_stochastic(model: nn.Module) -> bool:
    """Whether the text tower can encode the same row twice differently: any of its modules (every
    child of ``model`` but ``visual``) in training mode with a positive dropout probability —
    ``nn.Dropout*`` modules, float attributes such as ``nn.MultiheadAttention.dropout`` or HF's
    ``attention_dropout`` / ``layerdrop``, and the fields of an HF ``config``."""
    for name, child in model.named_children():
        if name == "visual":
            continue
        for module in child.modules():
            if not module.training:
                continue
            if isinstance(module, nn.modules.dropout._DropoutNd):
                if module.p > 0:
                    return True
                continue
            config = getattr(module, "config", None)
            fields = vars(config) if hasattr(config, "__dict__") else {}
            if any(p > 0 for p in _drop_probabilities(vars(module))) or \
                    any(p > 0 for p in _drop_probabilities(fields)):
                return True
    return False


class C2LIPMixin:
    """Concept-aware training forward for open_clip models; see the module docstring.

    Plain attributes (not state): ``c2lip_concept_mode`` ('text' | 'span'), ``c2lip_dedup_concepts``
    (encode identical text rows once; skipped while ``text_tower_is_stochastic``), ``c2lip_last_stats``: ints of the last packed forward,
    ``captions`` (B), ``concept_slots`` (B*P), ``concepts`` (valid slots) and ``encoded_text_rows``
    (rows the text tower actually encoded; without dedup a text-mode step would encode
    ``captions + concept_slots``, with the ideal skip of padding ``captions + concepts``).
    """
    c2lip_concept_mode: str = "text"
    c2lip_dedup_concepts: bool = True

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if text is not None and text.ndim == 3:
            if self.training and image is not None:
                return self.forward_concepts(image, text)
            text = text[:, 0]  # outside training, packed texts are just their captions
        return super().forward(image, text)

    def forward_concepts(self, image: torch.Tensor, text: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Images ``[B, 3, H, W]`` and packed texts ``[B, 1+2P, L]`` -> dict of the upstream keys plus
        ``image_tokens [B, T, D]``, ``concept_features [B, P, D]``, ``concept_mask [B, P]``,
        ``concept_ids [B, P, L]``, ``caption_ids [B, L]`` (the ids tell ``C2LIPLoss`` which concepts are
        the same text, and which are their whole caption).

        Always a dict, whatever ``output_dict`` says: the extras have no place in the tuple.
        """
        if image.shape[0] != text.shape[0]:
            raise ValueError(f"batch mismatch: {image.shape[0]} images but {text.shape[0]} packed texts")
        if self.training:
            _check_patch_dropout(self)
        # text first, so its host syncs (concept count, torch.unique) happen before the image
        # tower's kernels are queued and never wait for them
        # encoding a repeated row once is exact only without active dropout in the text tower
        dedup = self.c2lip_dedup_concepts and not text_tower_is_stochastic(self)
        text_out = encode_packed_text(self, text, self.c2lip_concept_mode, dedup=dedup)
        image_features, image_tokens = image_token_features(self, image)
        self.c2lip_last_stats = text_out["stats"]
        out = {
            "image_features": F.normalize(image_features, dim=-1),
            "text_features": text_out["text_features"],
            "logit_scale": self.logit_scale.exp(),
        }
        if self.logit_bias is not None:
            out["logit_bias"] = self.logit_bias
        out["image_tokens"] = image_tokens
        out["concept_features"] = text_out["concept_features"]
        out["concept_mask"] = text_out["concept_mask"]
        caption_ids, out["concept_ids"], _ = unpack_texts(text)
        out["caption_ids"] = caption_ids
        return out


class C2CLIP(C2LIPMixin, CLIP):
    pass


class C2CustomTextCLIP(C2LIPMixin, CustomTextCLIP):
    pass


# base open_clip class -> its C2 subclass; class swaps go through here, never through if-chains
_C2LIP_CLASSES: Dict[Type[nn.Module], Type[nn.Module]] = {
    CLIP: C2CLIP,
    CustomTextCLIP: C2CustomTextCLIP,
}


def register_c2lip_class(base_class: Type[nn.Module], c2lip_class: Type[nn.Module]) -> None:
    """Register the C2 subclass used for models of exactly ``base_class``.

    ``c2lip_class`` must subclass ``C2LIPMixin`` and ``base_class`` and add no state; define it at
    module level so that models stay picklable.
    """
    if not (issubclass(c2lip_class, C2LIPMixin) and issubclass(c2lip_class, base_class)):
        raise ValueError(f"{c2lip_class.__name__} must subclass both C2LIPMixin and {base_class.__name__}")
    _C2LIP_CLASSES[base_class] = c2lip_class


def _base_class(c2lip_class: Type[nn.Module]) -> Type[nn.Module]:
    for base, c2 in _C2LIP_CLASSES.items():
        if c2 is c2lip_class:
            return base
    raise ValueError(f"{c2lip_class.__name__} is not a registered C2 class")


def is_c2lip(model: nn.Module) -> bool:
    """Whether ``model`` currently has a C2 class."""
    return isinstance(model, C2LIPMixin)


def enable_c2lip(model: nn.Module, concept_mode: str = "text", *, dedup_concepts: bool = True) -> nn.Module:
    """Swap ``model`` (in place) to its C2 class and return it; idempotent.

    No parameter or buffer is added: ``state_dict()`` is unchanged. Call it before wrapping the
    model in DistributedDataParallel.
    """
    base = _base_class(type(model)) if is_c2lip(model) else type(model)
    c2lip_class = _C2LIP_CLASSES.get(base)
    if c2lip_class is None:
        supported = ", ".join(cls.__name__ for cls in _C2LIP_CLASSES)
        raise ValueError(
            f"enable_c2lip supports open_clip {supported} models, got {type(model).__name__}. Enable it on "
            "the bare model (before DistributedDataParallel / torch.compile), or register a C2 subclass "
            "with register_c2lip_class().")
    check_c2lip_compatible(model, concept_mode)
    model.__class__ = c2lip_class
    model.c2lip_concept_mode = concept_mode
    model.c2lip_dedup_concepts = dedup_concepts
    model.c2lip_last_stats = {}
    return model


def disable_c2lip(model: nn.Module) -> nn.Module:
    """Swap a C2 model (in place) back to its open_clip base class and return it; no-op otherwise."""
    if not is_c2lip(model):
        return model
    model.__class__ = _base_class(type(model))
    for name in ("c2lip_concept_mode", "c2lip_dedup_concepts", "c2lip_last_stats"):
        model.__dict__.pop(name, None)
    return model
