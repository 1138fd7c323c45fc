"""Packed text layout that carries concepts through open_clip_train unchanged.

Each training sample's text is one int64 tensor ``[R, L]`` with ``R = 1 + 2 * P``:

- row ``0``: the caption ids, identical to the plain tokenizer's row;
- rows ``1 .. P``: concept token ids, each concept tokenized as its own text at the full context
  length ``L`` (``text`` concept mode);
- rows ``P + 1 .. 2P``: 0/1 span masks over the caption's token positions, one per concept, marking
  the concept's exact tokens in the tokenized caption (``span`` concept mode).

An all-zero row is padding (a real tokenizer row is never all zero: CLIP BPE starts with SOT, HF
tokenizers end with EOS). A concept whose span fell past the caption's truncation keeps its token
row and has an all-zero span row. Batches are ``[B, R, L]``; 2-D ``[B, L]`` texts are plain captions.
"""
from typing import Tuple

import torch


def num_concept_slots(num_rows: int) -> int:
    """Concept slots P of a packed sample with ``num_rows = 1 + 2P`` rows."""
    if num_rows < 1 or (num_rows - 1) % 2:
        raise ValueError(f"packed texts need 1 + 2*P rows, got {num_rows}")
    return (num_rows - 1) // 2


def pack_rows(caption_ids: torch.Tensor, concept_ids: torch.Tensor, span_masks: torch.Tensor,
              max_concepts: int) -> torch.Tensor:
    """Pack one sample: caption ``[L]``, concept ids ``[K, L]``, span masks ``[K, L]`` -> ``[1+2P, L]``.

    ``K <= max_concepts``; slots ``K .. P-1`` are zero padding.
    """
    context_length = caption_ids.shape[-1]
    num_concepts = concept_ids.shape[0]
    if num_concepts > max_concepts:
        raise ValueError(f"{num_concepts} concepts exceed max_concepts={max_concepts}")
    if span_masks.shape[0] != num_concepts:
        raise ValueError("concept_ids and span_masks must have one row per concept")
    out = torch.zeros(1 + 2 * max_concepts, context_length, dtype=torch.long)
    out[0] = caption_ids
    out[1:1 + num_concepts] = concept_ids
    out[1 + max_concepts:1 + max_concepts + num_concepts] = span_masks.to(torch.long)
    return out


def unpack_texts(texts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split packed texts ``[B, 1+2P, L]`` into caption ids ``[B, L]``, concept ids ``[B, P, L]``
    and boolean span masks ``[B, P, L]``."""
    if texts.ndim != 3:
        raise ValueError(f"packed texts must be [B, R, L], got shape {tuple(texts.shape)}")
    num_slots = num_concept_slots(texts.shape[1])
    caption_ids = texts[:, 0]
    concept_ids = texts[:, 1:1 + num_slots]
    span_masks = texts[:, 1 + num_slots:] != 0
    return caption_ids, concept_ids, span_masks
