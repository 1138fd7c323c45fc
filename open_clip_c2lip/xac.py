"""The xac similarity: each concept's attention-pooled image embedding, scored against the concept.

For image tokens ``V [R, T, D]`` and concepts ``C [N, D]`` (L2-normalized), concept ``c`` pools image
``r``'s tokens with the attention ``a = softmax_t(lambda <c, v_rt>)`` (raw cosine scores, no
``1/sqrt(D)``) into ``u = sum_t a_t v_rt``, and the similarity is ``<u / max(|u|, eps), c>``.
``xac_similarity`` computes it with an exact closed form that never materializes ``u`` for every
(image, concept) pair (``<u, c> = sum_t a_t s_t`` and ``|u|^2 = a^T G a`` with the Gram matrix
``G = V V^T``), an analytic backward and chunking over concepts within a memory budget
(``xac_memory_plan``). See the method notes in ``docs/method.md`` (section "The xac closed form").
"""
import math
from typing import List, NamedTuple, Optional

import torch
from torch.autograd.function import once_differentiable

# Lower clamp of the pooled vector's norm, as F.normalize(eps=1e-8) in the reference pooling.
NORM_EPS = 1e-8

# Default memory budget of the chunked xac computation, see ``xac_memory_plan``.
XAC_MEMORY_BUDGET_MB = 1024.0

# ``[R, T, n]`` tensors per chunk of n concepts: scores S, attention A, H = G A and one scratch.
_XAC_BLOCKS = 4


class XACPlan(NamedTuple):
    chunk_size: int  # concepts per chunk
    keep: bool  # keep the forward's S, A, H for the backward instead of recomputing them


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

    Exact closed form (see the module docstring): ``<u, c> = sum_t a_t s_t`` and ``|u|^2 = a^T G a`` with
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
    # an active autocast would run the GEMMs in bf16/fp16 (and clash with the fp32 out= buffers)
    with torch.autocast(device_type=image_tokens.device.type, enabled=False):
        return _XACSimilarity.apply(image_tokens.to(dtype).contiguous(), concepts.to(dtype).contiguous(),
                                    float(temperature), plan)


def xac_logits(image_tokens: torch.Tensor, concepts: torch.Tensor, logit_scale: torch.Tensor,
               logit_bias: Optional[torch.Tensor] = None, temperature: float = 1.0,
               chunk_size: Optional[int] = None,
               memory_budget_mb: float = XAC_MEMORY_BUDGET_MB) -> torch.Tensor:
    """xac logits ``[R, N] = logit_scale * xac_similarity(image_tokens [R,T,D], concepts [N,D]) + bias``,
    in at least fp32 (also inside autocast)."""
    with torch.autocast(device_type=image_tokens.device.type, enabled=False):
        similarity = xac_similarity(image_tokens, concepts, temperature, chunk_size, memory_budget_mb)
        logits = upcast(logit_scale) * similarity
        return logits if logit_bias is None else logits + upcast(logit_bias)



def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 -> fp32; fp64 stays fp64 for exact checks)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))
