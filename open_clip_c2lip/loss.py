"""C2LIP training loss: SigLIP image-caption loss plus the two concept losses (``docs/method.md``).

For a global batch of ``M`` images with ``N`` valid concepts (concept ``n`` is owned by the image whose
caption it came from), with ``l(z, y) = -log sigmoid(y z)``, scale ``alpha`` and bias ``beta``:

- contrastive: ``z_ij = alpha <v_i, t_j> + beta`` over all ``M x M`` pairs, ``y = +1`` iff ``i == j``,
  summed and divided by ``M``;
- npc: ``z_in = alpha <v_i, c_n> + beta`` over all ``M x N`` pairs, ``y = +1`` iff ``owner(n) == i``,
  divided by ``N``;
- xac: ``z_in = alpha <v^_i(c_n), c_n> + beta``, same labels, divided by ``N``, where ``v^_i(c)`` is
  image ``i``'s tokens attention-pooled with the concept as query (``open_clip_c2lip.xac``).

Duplicate concepts (``duplicate_concepts``): a concept text that also occurs among
another image's concepts is, by the authors' rule (``"negative"``), a negative for that image.
``"ignore"`` drops those false-negative pairs ``(i, n)`` (``owner(n) != i`` and image ``i`` has a
concept with the same text as ``n``) from the npc and xac sums; the normalization stays ``1/N``.

Distributed: every rank scores its local image rows against the all-gathered (with gradient) texts and
concepts of the whole batch; image tokens never leave their rank. Rank ``r`` returns ``W`` times its
rows' share of the union loss, so the mean over ranks is the union loss and DDP's gradient averaging
reproduces single-process training exactly.

Usage: after each forward, ``C2LIPLoss.last_concept_usage`` holds the loss's own view of the
concepts of its local rows (``CONCEPT_USAGE_KEYS``): how many captions had a concept npc and xac can
learn from, and why the others had none. Computed on the device, never read by the loss (no host sync).
"""
import warnings
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_duplicate_concepts, check_loss_weight, check_xac_temperature
from .xac import XAC_MEMORY_BUDGET_MB, upcast, xac_logits


def sigmoid_pair_loss(logits: torch.Tensor, positive: torch.Tensor,
                      keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sum over all pairs of ``-log sigmoid(y * z)``, ``y = +1`` where ``positive`` else ``-1``.

    ``logits`` and ``positive`` (bool) share a shape, e.g. ``[R, N]``; returns a scalar. With
    ``keep`` (bool, same shape), only the kept pairs are summed (the others get zero gradient).
    """
    signs = positive.to(logits.dtype) * 2 - 1
    terms = -F.logsigmoid(signs * logits)
    if keep is not None:
        terms = torch.where(keep, terms, terms.new_zeros(()))
    return terms.sum()


def duplicate_pairs(row_keys: torch.Tensor, column_keys: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """False-negative pairs ``[R, N]`` (bool): image ``r`` does not own concept ``n`` but one of its
    own concepts has the same identity.

    ``row_keys [R, P]``: an integer identity per concept slot of each image row, ``-1`` for an empty
    slot; ``column_keys [N]``: the identity of each concept column (``>= 0``); ``positive [R, N]``.
    """
    same = ((row_keys.unsqueeze(-1) == column_keys.view(1, 1, -1)) & (row_keys >= 0).unsqueeze(-1)).any(1)
    return same & ~positive


def concept_identities(concept_ids: torch.Tensor) -> torch.Tensor:
    """Integer identity ``[M, P]`` of each concept slot from its ids ``[M, P]`` or ``[M, P, K]``: equal
    rows (all ``K`` entries) get equal identities ``>= 0``, an all-zero row (no concept) gets ``-1``."""
    rows = concept_ids.reshape(concept_ids.shape[0] * concept_ids.shape[1], -1)
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    return torch.where(rows.ne(0).any(-1), inverse, -1).view(concept_ids.shape[:2])



# what ``C2LIPLoss.last_concept_usage`` counts, in this order, for the local rows of one forward. A
# concept is *usable* when it is a valid slot (``concept_mask``), is not the whole caption (a concept
# whose token row is its caption's row: in text mode its embedding is the caption's, so npc repeats
# the contrastive logits) and has at least one negative image in the global batch (there is none when
# the batch holds one image, or, with ``duplicate_concepts="ignore"``, when every image holds it).
CONCEPT_USAGE_KEYS = (
    "samples",                      # captions (local rows)
    "samples_with_usable_concept",  # captions with at least one usable concept
    "samples_without_concept",      # captions without a single valid slot: nothing of theirs reaches npc / xac
    "concept_slots",                # B * P
    "concepts",                     # valid slots (concept_mask)
    "whole_caption_concepts",       # valid slots whose concept is the whole caption
    "concepts_without_negative",    # other valid slots without a negative image in the global batch
    "usable_concepts",              # valid slots that are neither
)


def images_holding(identities: torch.Tensor) -> torch.Tensor:
    """How many images hold each identity: ``identities [M, P]`` (``concept_identities``, ``-1`` for an
    empty slot) -> ``[M * P + 1]`` counts indexed by identity (the last entry: empty slots). An image
    holding an identity in two slots counts once. Fixed shapes, so no host sync."""
    images, slots = identities.shape
    size = images * slots + 1
    ids = torch.where(identities >= 0, identities, size - 1)
    keys = (torch.arange(images, device=identities.device).unsqueeze(1) * size + ids).reshape(-1).sort().values
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    return torch.zeros(size, dtype=torch.long, device=identities.device).scatter_add_(0, keys % size, first.long())


def concept_usage(concept_mask: torch.Tensor, has_negative: torch.Tensor,
                  caption_ids: Optional[torch.Tensor] = None, concept_ids: Optional[torch.Tensor] = None,
                  ) -> torch.Tensor:
    """The counts of ``CONCEPT_USAGE_KEYS`` (int64 ``[8]``, on the mask's device) for ``concept_mask [B, P]``,
    ``has_negative [B, P]`` (bool: the slot has a negative image in the global batch) and, to tell
    whole-caption concepts, ``caption_ids [B, L]`` with ``concept_ids [B, P, L]`` (else none counts as one)."""
    mask = concept_mask.detach()
    whole = torch.zeros_like(mask)
    if caption_ids is not None and concept_ids is not None and concept_ids.ndim == 3 \
            and caption_ids.shape == (concept_ids.shape[0], concept_ids.shape[2]):
        whole = mask & concept_ids.eq(caption_ids.unsqueeze(1)).all(-1)
    without_negative = mask & ~whole & ~has_negative
    usable = mask & ~whole & has_negative
    counts = [
        torch.tensor(mask.shape[0], device=mask.device),
        usable.any(-1).sum(),
        (~mask.any(-1)).sum(),
        torch.tensor(mask.numel(), device=mask.device),
        mask.sum(),
        whole.sum(),
        without_negative.sum(),
        usable.sum(),
    ]
    return torch.stack([c.to(torch.long) for c in counts])


def _all_gather_rows(tensor: torch.Tensor, sizes: List[int]) -> torch.Tensor:
    """All-gather ``[B_r, ...]`` tensors of all ranks along dim 0, with gradient, -> ``[sum B_r, ...]``.

    Ranks may hold different ``B_r`` (``sizes``): rows are zero-padded to the largest for the
    collective and the padding is cut out again. The backward sums every rank's gradient for the
    local slice (torch.distributed.nn semantics).
    """
    from torch.distributed.nn.functional import all_gather

    max_rows = max(sizes)
    if tensor.shape[0] < max_rows:
        tensor = torch.cat([tensor, tensor.new_zeros(max_rows - tensor.shape[0], *tensor.shape[1:])])
    with warnings.catch_warnings():
        # torch >= 2.9 flags the autograd-aware all_gather as deprecated in favour of the
        # functional collectives; its semantics are the ones we want and it works on every backend.
        warnings.filterwarnings("ignore", message=r".*all_gather is deprecated.*", category=FutureWarning)
        parts = all_gather(tensor)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class C2LIPLoss(nn.Module):
    """SigLIP sigmoid loss + ``npc_weight`` * L_npc + ``xac_weight`` * L_xac (see the module docstring).

    Args:
        npc_weight: weight of the image <-> concept sigmoid loss, in ``[0, 1e4]``.
        xac_weight: weight of the concept-pooled image <-> concept sigmoid loss, in ``[0, 1e4]``.
        xac_temperature: multiplies the raw cosine scores inside the xac softmax (no ``1/sqrt(D)``),
            in ``(0, 1e4]``. The rules are ``open_clip_c2lip.config``'s, shared with the flags.
        rank, world_size: this process' place in the data-parallel group.
        xac_memory_budget_mb: bound on the xac working memory (see ``xac_memory_plan``).
        xac_chunk_size: concepts per xac chunk; overrides the budget when given.
        duplicate_concepts: ``"negative"`` (the authors' rule): a concept is a negative
            for every image that does not own it, even one whose own concepts contain the same text.
            ``"ignore"``: those pairs ``(image i, concept n)`` — ``i`` does not own ``n`` but one of
            ``i``'s concepts has the same identity — are left out of the npc and xac sums (no loss,
            no gradient); the positives and all other pairs are unchanged and both terms are still
            divided by ``N``, the number of valid concepts of the global batch. Needs ``concept_ids``
            in ``forward``; image ``i``'s concepts are its slots with a non-zero id row (in ``span``
            mode also a concept whose span was not found, i.e. a masked slot). Exact across ranks:
            identities are compared on the gathered ids.

    ``last_concept_usage``: after each forward, the int64 ``[8]`` counts of ``CONCEPT_USAGE_KEYS`` for
    the local rows (on their device; reading it is the caller's host sync), else None.

    No parameters or buffers: ``logit_scale``/``logit_bias`` are the model's. All terms run in (at least)
    fp32, also inside autocast. A term whose weight is 0 is skipped but kept connected to the graph (a zero
    gradient) so DDP without ``find_unused_parameters`` still sees every parameter used.
    """

    def __init__(self, npc_weight: float = 1.0, xac_weight: float = 0.01, xac_temperature: float = 1.0,
                 rank: int = 0, world_size: int = 1,
                 xac_memory_budget_mb: float = XAC_MEMORY_BUDGET_MB,
                 xac_chunk_size: Optional[int] = None, duplicate_concepts: str = "negative"):
        super().__init__()
        duplicate_concepts = check_duplicate_concepts(duplicate_concepts)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if xac_memory_budget_mb <= 0:
            raise ValueError(f"xac_memory_budget_mb must be positive, got {xac_memory_budget_mb}")
        if xac_chunk_size is not None and xac_chunk_size < 1:
            raise ValueError(f"xac_chunk_size must be >= 1, got {xac_chunk_size}")
        self.npc_weight = check_loss_weight(npc_weight, "npc_weight")
        self.xac_weight = check_loss_weight(xac_weight, "xac_weight")
        self.xac_temperature = check_xac_temperature(xac_temperature)
        self.rank = rank
        self.world_size = world_size
        self.xac_memory_budget_mb = float(xac_memory_budget_mb)
        self.xac_chunk_size = xac_chunk_size
        self.duplicate_concepts = duplicate_concepts
        self.last_concept_usage: Optional[torch.Tensor] = None

    def extra_repr(self) -> str:
        return (f"npc_weight={self.npc_weight}, xac_weight={self.xac_weight}, "
                f"xac_temperature={self.xac_temperature}, rank={self.rank}, world_size={self.world_size}, "
                f"duplicate_concepts={self.duplicate_concepts!r}")

    @staticmethod
    def _check_inputs(image_features, text_features, image_tokens, concept_features, concept_mask,
                      concept_ids=None, caption_ids=None):
        def fail(problem):
            raise ValueError(f"C2LIPLoss: {problem}")

        if image_features.ndim != 2:
            fail(f"image_features must be [B, D], got {tuple(image_features.shape)}")
        batch, dim = image_features.shape
        if text_features.shape != image_features.shape:
            fail(f"text_features must be [B, D] = {(batch, dim)}, got {tuple(text_features.shape)}")
        if image_tokens.ndim != 3 or image_tokens.shape[0] != batch or image_tokens.shape[2] != dim:
            fail(f"image_tokens must be [B, T, D] with B={batch}, D={dim}, got {tuple(image_tokens.shape)}")
        if concept_features.ndim != 3 or concept_features.shape[0] != batch or concept_features.shape[2] != dim:
            fail(f"concept_features must be [B, P, D] with B={batch}, D={dim}, "
                 f"got {tuple(concept_features.shape)}")
        if concept_mask.shape != concept_features.shape[:2]:
            fail(f"concept_mask must be [B, P] = {tuple(concept_features.shape[:2])}, "
                 f"got {tuple(concept_mask.shape)}")
        if concept_mask.dtype != torch.bool:
            fail(f"concept_mask must be bool, got {concept_mask.dtype}")
        if concept_ids is not None:
            if concept_ids.ndim not in (2, 3) or concept_ids.shape[:2] != concept_mask.shape:
                fail(f"concept_ids must be [B, P] or [B, P, L] with [B, P] = {tuple(concept_mask.shape)}, "
                     f"got {tuple(concept_ids.shape)}")
            if concept_ids.is_floating_point() or concept_ids.is_complex():
                fail(f"concept_ids must be integer ids, got {concept_ids.dtype}")
        if caption_ids is not None:
            if caption_ids.ndim != 2 or caption_ids.shape[0] != batch:
                fail(f"caption_ids must be [B, L] with B={batch}, got {tuple(caption_ids.shape)}")
            if caption_ids.is_floating_point() or caption_ids.is_complex():
                fail(f"caption_ids must be integer ids, got {caption_ids.dtype}")

    def _global_columns(self, text_features: torch.Tensor, concept_features: torch.Tensor,
                        concept_mask: torch.Tensor, concept_ids: Optional[torch.Tensor] = None,
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, Optional[torch.Tensor]]:
        """Texts ``[M, D]``, concept slots ``[M, P, D]`` and mask ``[M, P]`` of the global batch, the
        global index of this rank's first row, and the gathered ``concept_ids`` (when given)."""
        if self.world_size == 1:
            return text_features, concept_features, concept_mask, 0, concept_ids
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"C2LIPLoss(world_size={self.world_size}) needs torch.distributed initialized")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise RuntimeError(f"C2LIPLoss was built for rank {self.rank}/{self.world_size} but the process "
                               f"group says rank {dist.get_rank()}/{dist.get_world_size()}")
        batch, slots, dim = concept_features.shape
        ids = None if concept_ids is None else concept_ids.reshape(batch, slots, -1)
        id_length = -1 if ids is None else ids.shape[-1]
        shape = torch.tensor([batch, slots, dim, id_length], device=text_features.device)
        shapes = [torch.empty_like(shape) for _ in range(self.world_size)]
        dist.all_gather(shapes, shape)
        shapes = [tuple(s.tolist()) for s in shapes]
        if any(s[1:] != (slots, dim, id_length) for s in shapes):
            raise ValueError(f"C2LIPLoss: all ranks need the same concept slots P, dim D and concept_ids "
                             f"length L (-1: none), got [B, P, D, L] per rank = {shapes}")
        sizes = [s[0] for s in shapes]
        gathered_ids = None
        if ids is not None:  # integer ids, no gradient: a plain collective, exact for any id value
            padded = torch.cat([ids, ids.new_zeros(max(sizes) - batch, slots, id_length)])
            parts = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(parts, padded.contiguous())
            gathered_ids = torch.cat([part[:size] for part, size in zip(parts, sizes)])
        # One collective for texts, concepts and the mask (exact 0/1 in fp32, no gradient flows to it).
        packed = torch.cat([text_features, concept_features.reshape(batch, slots * dim),
                            concept_mask.to(text_features.dtype)], dim=1)
        gathered = _all_gather_rows(packed, sizes)
        texts = gathered[:, :dim]
        concepts = gathered[:, dim:dim + slots * dim].reshape(-1, slots, dim)
        mask = gathered[:, dim + slots * dim:].detach() > 0.5
        return texts, concepts, mask, sum(sizes[:self.rank]), gathered_ids

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: Optional[torch.Tensor] = None, *,
                image_tokens: torch.Tensor, concept_features: torch.Tensor, concept_mask: torch.Tensor,
                concept_ids: Optional[torch.Tensor] = None, caption_ids: Optional[torch.Tensor] = None,
                output_dict: bool = False) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Local rows: ``image_features``/``text_features [B, D]``, ``image_tokens [B, T, D]``,
        ``concept_features [B, P, D]`` (all L2-normalized), ``concept_mask [B, P]`` (bool); exp'd
        ``logit_scale`` and ``logit_bias`` scalars. ``concept_ids`` ``[B, P]`` or ``[B, P, L]`` (int):
        each slot's identity, equal rows = the same concept (the C2 model passes each concept's token
        row, i.e. its text after the tokenizer's cleaning); an all-zero row is an empty slot. Used
        (and required) only by ``duplicate_concepts="ignore"``. ``caption_ids [B, L]`` (int, optional):
        the captions' token rows, which only ``last_concept_usage`` reads (a concept row equal to its
        caption's is a whole-caption concept). Returns the weighted terms (dict) or their sum."""
        self._check_inputs(image_features, text_features, image_tokens, concept_features, concept_mask,
                           concept_ids, caption_ids)
        if self.duplicate_concepts == "ignore" and concept_ids is None:
            raise ValueError("C2LIPLoss(duplicate_concepts='ignore') needs concept_ids [B, P(, L)] in forward "
                             "(the C2 model's training forward returns them)")
        ids = concept_ids if self.duplicate_concepts == "ignore" else None
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            losses, has_negative = self._losses(
                upcast(image_features), upcast(text_features), upcast(logit_scale),
                None if logit_bias is None else upcast(logit_bias),
                upcast(image_tokens), upcast(concept_features), concept_mask, ids)
        with torch.no_grad():
            self.last_concept_usage = concept_usage(concept_mask, has_negative, caption_ids, concept_ids)
        return losses if output_dict else sum(losses.values())

    def _losses(self, image_features, text_features, logit_scale, logit_bias, image_tokens,
                concept_features, concept_mask, concept_ids=None) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """The weighted terms, and whether each local slot ``[B, P]`` has a negative image in the
        global batch (for ``last_concept_usage``)."""
        device = image_features.device
        scale = logit_scale.reshape(())
        bias = image_features.new_zeros(()) if logit_bias is None else logit_bias.reshape(())
        texts, concept_slots, slot_mask, row_offset, all_ids = self._global_columns(
            text_features, concept_features, concept_mask, concept_ids)
        num_texts, num_slots = texts.shape[0], concept_slots.shape[1]
        rows = torch.arange(image_features.shape[0], device=device) + row_offset

        text_logits = scale * image_features @ texts.T + bias
        text_positive = rows[:, None] == torch.arange(num_texts, device=device)[None]
        contrastive = sigmoid_pair_loss(text_logits, text_positive) / num_texts

        # Valid concept columns of the global batch and the global image row owning each.
        valid = slot_mask.reshape(-1).nonzero().squeeze(1)
        concepts = concept_slots.reshape(-1, concept_slots.shape[-1]).index_select(0, valid)
        positive = rows[:, None] == (valid // num_slots)[None]
        num_concepts = max(valid.numel(), 1)  # N == 0: empty sums, still wired to the graph
        keep = None
        has_negative = torch.full(concept_mask.shape, num_texts > 1, dtype=torch.bool, device=device)
        if all_ids is not None:  # duplicate_concepts == "ignore": drop the false-negative pairs
            identities = concept_identities(all_ids)  # [M, P], -1 for empty slots
            local_identities = identities.index_select(0, rows)
            keep = ~duplicate_pairs(local_identities, identities.reshape(-1).index_select(0, valid), positive)
            with torch.no_grad():  # a negative needs an image that does not hold the concept
                has_negative = images_holding(identities)[local_identities.clamp_min(0)] < num_texts

        npc_logits = scale * image_features @ concepts.T + bias
        npc = sigmoid_pair_loss(npc_logits, positive, keep) / num_concepts
        if self.xac_weight != 0:
            pooled_logits = xac_logits(image_tokens, concepts, scale, bias, self.xac_temperature,
                                       self.xac_chunk_size, self.xac_memory_budget_mb)
            xac = sigmoid_pair_loss(pooled_logits, positive, keep) / num_concepts
        else:  # skip the expensive term, keep the token path in the graph for DDP
            xac = image_tokens.sum() * 0.0

        # W x this rank's share: the mean over ranks is the union loss (see module docstring).
        world = float(self.world_size)
        return {
            "contrastive_loss": world * contrastive,
            "npc_loss": world * self.npc_weight * npc,
            "xac_loss": world * self.xac_weight * xac,
        }, has_negative
