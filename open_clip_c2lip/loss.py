"""C2LIP training loss: SigLIP image-caption loss plus the two concept losses (METHOD.md §5).

For a global batch of ``M`` images with ``N`` valid concepts (concept ``n`` is owned by the image whose
caption it came from), with ``l(z, y) = -log sigmoid(y z)``, scale ``alpha`` and bias ``beta``:

- contrastive: ``z_ij = alpha <v_i, t_j> + beta`` over all ``M x M`` pairs, ``y = +1`` iff ``i == j``,
  summed and divided by ``M``;
- npc: ``z_in = alpha <v_i, c_n> + beta`` over all ``M x N`` pairs, ``y = +1`` iff ``owner(n) == i``,
  divided by ``N``;
- xac: ``z_in = alpha <v^_i(c_n), c_n> + beta``, same labels, divided by ``N``, where ``v^_i(c)`` is
  image ``i``'s tokens attention-pooled with the concept as query (``xac_similarity``).

Duplicate concepts (METHOD.md §6.4, ``duplicate_concepts``): a concept text that also occurs among
another image's concepts is, by the authors' rule (``"negative"``), a negative for that image.
``"ignore"`` drops those false-negative pairs ``(i, n)`` (``owner(n) != i`` and image ``i`` has a
concept with the same text as ``n``) from the npc and xac sums; the normalization stays ``1/N``.

Distributed: every rank scores its local image rows against the all-gathered (with gradient) texts and
concepts of the whole batch; image tokens never leave their rank. Rank ``r`` returns ``W`` times its
rows' share of the union loss, so the mean over ranks is the union loss and DDP's gradient averaging
reproduces single-process training exactly.
"""
import math
import warnings
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .runtime import DUPLICATE_CONCEPT_RULES

# Lower clamp of the pooled vector's norm, as F.normalize(eps=1e-8) in the reference pooling.
NORM_EPS = 1e-8

# Default memory budget of the chunked xac computation, see ``xac_memory_plan``.
XAC_MEMORY_BUDGET_MB = 1024.0

# ``[R, T, n]`` tensors per chunk of n concepts: scores S, attention A, H = G A and one scratch.
_XAC_BLOCKS = 4


class XACPlan(NamedTuple):
    chunk_size: int  # concepts per chunk
    keep: bool  # keep the forward's S, A, H for the backward instead of recomputing them


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


def concept_attention(image_tokens: torch.Tensor, concepts: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """XAC attention of each concept over one image's tokens.

    ``image_tokens [T, D]`` and ``concepts [N, D]`` (both L2-normalized) -> weights ``[N, T]``,
    ``softmax_t(temperature * <c_n, v_t>)`` (raw cosine scores, no ``1/sqrt(D)``). Rows sum to 1.
    """
    if image_tokens.ndim != 2 or concepts.ndim != 2 or image_tokens.shape[-1] != concepts.shape[-1]:
        raise ValueError(f"concept_attention expects image_tokens [T, D] and concepts [N, D], got "
                         f"{tuple(image_tokens.shape)} and {tuple(concepts.shape)}")
    dtype = torch.promote_types(image_tokens.dtype, torch.float32)
    scores = concepts.to(dtype) @ image_tokens.to(dtype).T
    return torch.softmax(temperature * scores, dim=-1)


def xac_memory_plan(num_rows: int, num_tokens: int, num_concepts: int,
                    memory_budget_mb: float = XAC_MEMORY_BUDGET_MB, itemsize: int = 4,
                    chunk_size: Optional[int] = None) -> XACPlan:
    """How ``xac_similarity`` spends ``memory_budget_mb`` on R image rows x N concepts of T tokens.

    The working set is ``4`` tensors ``[R, T, n]`` (scores S, attention A, ``H = G A``, a scratch)
    for a chunk of ``n`` concepts; ``block = R * T * itemsize`` bytes per concept column.
    - ``4 * N * block <= budget``: one chunk, and the forward keeps S, A, H for the backward (no
      recomputation; 3 of the 4 blocks live from forward to backward).
    - otherwise: chunks of ``n = max(1, budget // (4 * block))`` concepts and nothing kept; the
      backward recomputes each chunk's S, A, H (one more ``[R*T, D] x [D, n]`` GEMM and one bmm).
    An explicit ``chunk_size`` fixes n; S, A, H are then kept iff ``(3 * N + n) * block <= budget``.
    Memory beyond the budget: the Gram matrix and its gradient (``2 * R*T*T*itemsize``), the input
    gradients (``(R*T + N) * D * itemsize``) and ``O(R * N)`` per-pair values.
    """
    if memory_budget_mb <= 0:
        raise ValueError(f"xac memory budget must be positive, got {memory_budget_mb} MB")
    budget = int(memory_budget_mb * 2 ** 20)
    block = max(num_rows, 1) * max(num_tokens, 1) * itemsize
    num_concepts = max(num_concepts, 1)
    if chunk_size is None:
        if _XAC_BLOCKS * num_concepts * block <= budget:
            return XACPlan(num_concepts, True)
        return XACPlan(max(1, budget // (_XAC_BLOCKS * block)), False)
    if chunk_size < 1:
        raise ValueError(f"xac chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, num_concepts)
    return XACPlan(chunk_size, ((_XAC_BLOCKS - 1) * num_concepts + chunk_size) * block <= budget)


class _ChunkWorkspace:
    """``count`` reusable ``[R, T, n]`` buffers for chunks of up to ``chunk_size`` concepts.

    Reused with ``out=`` because a fresh multi-MB CPU tensor is a new mmap that page-faults on first
    touch (the CPU allocator does not cache), which costs more than the elementwise work itself.
    """

    def __init__(self, like: torch.Tensor, num_rows: int, num_tokens: int, chunk_size: int, count: int):
        self.shape = (num_rows, num_tokens)
        self.buffers = [like.new_empty(num_rows * num_tokens * chunk_size) for _ in range(count)]

    def views(self, num_concepts: int) -> List[torch.Tensor]:
        size = self.shape[0] * self.shape[1] * num_concepts
        return [buffer[:size].view(*self.shape, num_concepts) for buffer in self.buffers]


def _chunk_forward(flat_tokens: torch.Tensor, gram: torch.Tensor, concepts: torch.Tensor,
                   temperature: float, scores: torch.Tensor, attention: torch.Tensor,
                   gram_attention: torch.Tensor, scratch: torch.Tensor) -> None:
    """Fill ``scores`` S, ``attention`` A = softmax_T(temperature S) and ``gram_attention`` H = G A
    (all ``[R, T, n]``) for one chunk of concepts ``[n, D]``: one GEMM on ``V`` as ``[R*T, D]``."""
    torch.mm(flat_tokens, concepts.T, out=scores.view(-1, concepts.shape[0]))
    logits = scores if temperature == 1.0 else torch.mul(scores, temperature, out=scratch)
    torch.softmax(logits, 1, out=attention)
    torch.bmm(gram, attention, out=gram_attention)


class _XACSimilarity(torch.autograd.Function):
    """``q[r, n] = <u, c_n> / max(|u|, eps)`` with ``u = sum_t softmax_t(lambda <c_n, v_rt>) v_rt``.

    Exact closed form (METHOD.md §11.2): ``<u, c> = sum_t a_t s_t`` and ``|u|^2 = a^T G a`` with
    the per-image Gram matrix ``G = V V^T [R, T, T]``, so ``u`` is never materialized. Scores are laid
    out ``[R, T, n]`` so the big products are plain GEMMs on ``V`` viewed as ``[R*T, D]``. Concepts
    are processed in chunks with an analytic backward; autograd saves nothing per chunk and the
    memory follows ``xac_memory_plan``.
    """

    @staticmethod
    def forward(ctx, image_tokens: torch.Tensor, concepts: torch.Tensor, temperature: float,
                plan: XACPlan) -> torch.Tensor:
        num_rows, num_tokens, dim = image_tokens.shape
        num_concepts, chunk_size = concepts.shape[0], plan.chunk_size
        flat_tokens = image_tokens.reshape(num_rows * num_tokens, dim)
        gram = torch.bmm(image_tokens, image_tokens.transpose(1, 2))
        num = image_tokens.new_empty(num_rows, num_concepts)
        sq = torch.empty_like(num)
        keep = plan.keep and any(ctx.needs_input_grad[:2])  # nothing to keep for without a backward
        workspace = _ChunkWorkspace(image_tokens, num_rows, num_tokens, chunk_size, 1 if keep else 4)
        kept = []
        for start in range(0, num_concepts, chunk_size):
            columns = slice(start, start + chunk_size)
            scratch, *blocks = workspace.views(concepts[columns].shape[0])
            if keep:
                blocks = [torch.empty_like(scratch) for _ in range(3)]
                kept.append(blocks)
            scores, attention, gram_attention = blocks
            _chunk_forward(flat_tokens, gram, concepts[columns], temperature, *blocks, scratch)
            num[:, columns] = torch.mul(attention, scores, out=scratch).sum(1)
            sq[:, columns] = torch.mul(attention, gram_attention, out=scratch).sum(1)
        del workspace
        sq.clamp_(min=0)  # a^T G a >= 0; rounding can leave it at -1e-17
        ctx.save_for_backward(image_tokens, concepts, gram, num, sq)
        ctx.kept = kept  # intermediates, not inputs/outputs: plain ctx attributes
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        return num / sq.sqrt().clamp(min=NORM_EPS)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        image_tokens, concepts, gram, num_all, sq_all = ctx.saved_tensors
        kept, ctx.kept = ctx.kept, None  # consumed in place below; a second backward recomputes
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_tokens, need_concepts = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        num_rows, num_tokens, dim = image_tokens.shape
        flat_tokens = image_tokens.reshape(num_rows * num_tokens, dim)
        grad_flat_tokens = torch.zeros_like(flat_tokens) if need_tokens else None
        grad_gram = torch.zeros_like(gram) if need_tokens else None
        grad_concepts = torch.empty_like(concepts) if need_concepts else None
        grad_out = grad_out.to(image_tokens.dtype)

        norm_all = sq_all.sqrt()
        denom_all = norm_all.clamp(min=NORM_EPS)
        grad_num_all = grad_out / denom_all
        # d q / d sq = -num / (2 |u|^3); zero where the eps clamp is active (as in F.normalize).
        grad_sq_all = torch.where(norm_all > NORM_EPS, -grad_out * num_all / (2 * denom_all ** 3), 0.0)
        # With dL/dA = g_num S + 2 g_sq H and <A, S> = num, <A, H> = sq, the softmax backward gives
        # dL/dS = A * (lambda g_num S + 2 lambda g_sq H + g_num - lambda (g_num num + 2 g_sq sq)).
        # (The last bracket, <A, dL/dA>, vanishes unless |u| is clamped: q is invariant to scaling A.)
        coef_scores = (temperature * grad_num_all).unsqueeze(1)
        coef_gram = (2 * temperature * grad_sq_all).unsqueeze(1)
        coef_const = (grad_num_all - temperature * (grad_num_all * num_all + 2 * grad_sq_all * sq_all)
                      ).unsqueeze(1)
        grad_sq_all = grad_sq_all.unsqueeze(1)

        workspace = None if kept else _ChunkWorkspace(image_tokens, num_rows, num_tokens, chunk_size, 4)
        for index, start in enumerate(range(0, concepts.shape[0], chunk_size)):
            columns = slice(start, start + chunk_size)
            chunk = concepts[columns]
            if kept:
                (scores, attention, work), kept[index] = kept[index], None
            else:
                scratch, scores, attention, work = workspace.views(chunk.shape[0])
                _chunk_forward(flat_tokens, gram, chunk, temperature, scores, attention, work, scratch)
            # `work` holds H and becomes dL/dS in place; S is dead afterwards and holds A * g_sq.
            work.mul_(coef_gram[..., columns]).addcmul_(scores, coef_scores[..., columns])
            work.add_(coef_const[..., columns]).mul_(attention)
            grad_scores = work.view(num_rows * num_tokens, -1)
            if need_tokens:
                # dL/dG = sum_n g_sq A_n A_n^T.
                weighted = torch.mul(attention, grad_sq_all[..., columns], out=scores)
                grad_gram.baddbmm_(weighted, attention.transpose(1, 2))
                grad_flat_tokens.addmm_(grad_scores, chunk)
            if need_concepts:
                torch.mm(grad_scores.T, flat_tokens, out=grad_concepts[columns])
            del scores, attention, work
        del workspace

        grad_tokens = None
        if need_tokens:
            # G = V V^T and dL/dG is symmetric, so dL/dV = 2 dL/dG V.
            grad_tokens = grad_flat_tokens.view(num_rows, num_tokens, dim)
            grad_tokens.baddbmm_(grad_gram, image_tokens, alpha=2.0)
        return grad_tokens, grad_concepts, None, None


def xac_similarity(image_tokens: torch.Tensor, concepts: torch.Tensor, temperature: float = 1.0,
                   chunk_size: Optional[int] = None,
                   memory_budget_mb: float = XAC_MEMORY_BUDGET_MB) -> torch.Tensor:
    """Cosine of every concept with every image's concept-pooled embedding.

    ``image_tokens [R, T, D]`` and ``concepts [N, D]`` (L2-normalized) -> ``[R, N]`` with
    ``out[r, n] = <v^_r(c_n), c_n>``, ``v^_r(c) = u / max(|u|, 1e-8)``,
    ``u = sum_t softmax_t(temperature * <c, v_rt>) v_rt``. Computed in at least fp32 with an exact
    closed form and an analytic backward, chunked over concepts within ``memory_budget_mb``
    (``xac_memory_plan``; ``chunk_size`` fixes the concepts per chunk).
    """
    if image_tokens.ndim != 3 or concepts.ndim != 2 or image_tokens.shape[-1] != concepts.shape[-1]:
        raise ValueError(f"xac_similarity expects image_tokens [R, T, D] and concepts [N, D], got "
                         f"{tuple(image_tokens.shape)} and {tuple(concepts.shape)}")
    if not math.isfinite(temperature):
        raise ValueError(f"xac temperature must be finite, got {temperature}")
    dtype = torch.promote_types(torch.promote_types(image_tokens.dtype, concepts.dtype), torch.float32)
    plan = xac_memory_plan(image_tokens.shape[0], image_tokens.shape[1], concepts.shape[0],
                           memory_budget_mb, torch.finfo(dtype).bits // 8, chunk_size)
    return _XACSimilarity.apply(image_tokens.to(dtype).contiguous(), concepts.to(dtype).contiguous(),
                                float(temperature), plan)


def xac_logits(image_tokens: torch.Tensor, concepts: torch.Tensor, logit_scale: torch.Tensor,
               logit_bias: Optional[torch.Tensor] = None, temperature: float = 1.0,
               chunk_size: Optional[int] = None,
               memory_budget_mb: float = XAC_MEMORY_BUDGET_MB) -> torch.Tensor:
    """xac logits ``[R, N] = logit_scale * xac_similarity(image_tokens [R,T,D], concepts [N,D]) + bias``."""
    logits = logit_scale * xac_similarity(image_tokens, concepts, temperature, chunk_size, memory_budget_mb)
    return logits if logit_bias is None else logits + logit_bias


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 -> fp32; fp64 stays fp64 for exact checks)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


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
    """SigLIP sigmoid loss + ``npc_weight`` * L_npc + ``xac_weight`` * L_xac (METHOD.md §5).

    Args:
        npc_weight: weight of the image <-> concept sigmoid loss.
        xac_weight: weight of the concept-pooled image <-> concept sigmoid loss.
        xac_temperature: multiplies the raw cosine scores inside the xac softmax (no ``1/sqrt(D)``).
        rank, world_size: this process' place in the data-parallel group.
        xac_memory_budget_mb: bound on the xac working memory (see ``xac_memory_plan``).
        xac_chunk_size: concepts per xac chunk; overrides the budget when given.
        duplicate_concepts: ``"negative"`` (the authors' rule, METHOD.md §6.4): a concept is a negative
            for every image that does not own it, even one whose own concepts contain the same text.
            ``"ignore"``: those pairs ``(image i, concept n)`` — ``i`` does not own ``n`` but one of
            ``i``'s concepts has the same identity — are left out of the npc and xac sums (no loss,
            no gradient); the positives and all other pairs are unchanged and both terms are still
            divided by ``N``, the number of valid concepts of the global batch. Needs ``concept_ids``
            in ``forward``; image ``i``'s concepts are its slots with a non-zero id row (in ``span``
            mode also a concept whose span was not found, i.e. a masked slot). Exact across ranks:
            identities are compared on the gathered ids.

    No parameters or buffers: ``logit_scale``/``logit_bias`` are the model's. All terms run in (at least)
    fp32, also inside autocast. A term whose weight is 0 is skipped but kept connected to the graph (a zero
    gradient) so DDP without ``find_unused_parameters`` still sees every parameter used.
    """

    def __init__(self, npc_weight: float = 1.0, xac_weight: float = 0.01, xac_temperature: float = 1.0,
                 rank: int = 0, world_size: int = 1,
                 xac_memory_budget_mb: float = XAC_MEMORY_BUDGET_MB,
                 xac_chunk_size: Optional[int] = None, duplicate_concepts: str = "negative"):
        super().__init__()
        if duplicate_concepts not in DUPLICATE_CONCEPT_RULES:
            raise ValueError(f"duplicate_concepts must be one of {DUPLICATE_CONCEPT_RULES}, got {duplicate_concepts!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if xac_memory_budget_mb <= 0:
            raise ValueError(f"xac_memory_budget_mb must be positive, got {xac_memory_budget_mb}")
        if xac_chunk_size is not None and xac_chunk_size < 1:
            raise ValueError(f"xac_chunk_size must be >= 1, got {xac_chunk_size}")
        if not math.isfinite(xac_temperature):
            raise ValueError(f"xac_temperature must be finite, got {xac_temperature}")
        self.npc_weight = float(npc_weight)
        self.xac_weight = float(xac_weight)
        self.xac_temperature = float(xac_temperature)
        self.rank = rank
        self.world_size = world_size
        self.xac_memory_budget_mb = float(xac_memory_budget_mb)
        self.xac_chunk_size = xac_chunk_size
        self.duplicate_concepts = duplicate_concepts

    def extra_repr(self) -> str:
        return (f"npc_weight={self.npc_weight}, xac_weight={self.xac_weight}, "
                f"xac_temperature={self.xac_temperature}, rank={self.rank}, world_size={self.world_size}, "
                f"duplicate_concepts={self.duplicate_concepts!r}")

    @staticmethod
    def _check_inputs(image_features, text_features, image_tokens, concept_features, concept_mask,
                      concept_ids=None):
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
                concept_ids: Optional[torch.Tensor] = None,
                output_dict: bool = False) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        """Local rows: ``image_features``/``text_features [B, D]``, ``image_tokens [B, T, D]``,
        ``concept_features [B, P, D]`` (all L2-normalized), ``concept_mask [B, P]`` (bool); exp'd
        ``logit_scale`` and ``logit_bias`` scalars. ``concept_ids`` ``[B, P]`` or ``[B, P, L]`` (int):
        each slot's identity, equal rows = the same concept (the C2 model passes each concept's token
        row, i.e. its text after the tokenizer's cleaning); an all-zero row is an empty slot. Used
        (and required) only by ``duplicate_concepts="ignore"``. Returns the weighted terms (dict) or
        their sum."""
        self._check_inputs(image_features, text_features, image_tokens, concept_features, concept_mask,
                           concept_ids)
        if self.duplicate_concepts == "ignore" and concept_ids is None:
            raise ValueError("C2LIPLoss(duplicate_concepts='ignore') needs concept_ids [B, P(, L)] in forward "
                             "(the C2 model's training forward returns them)")
        ids = concept_ids if self.duplicate_concepts == "ignore" else None
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            losses = self._losses(_upcast(image_features), _upcast(text_features), _upcast(logit_scale),
                                  None if logit_bias is None else _upcast(logit_bias),
                                  _upcast(image_tokens), _upcast(concept_features), concept_mask, ids)
        return losses if output_dict else sum(losses.values())

    def _losses(self, image_features, text_features, logit_scale, logit_bias, image_tokens,
                concept_features, concept_mask, concept_ids=None) -> Dict[str, torch.Tensor]:
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
        if all_ids is not None:  # duplicate_concepts == "ignore": drop the false-negative pairs
            identities = concept_identities(all_ids)  # [M, P], -1 for empty slots
            keep = ~duplicate_pairs(identities.index_select(0, rows), identities.reshape(-1).index_select(0, valid),
                                    positive)

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
        }
