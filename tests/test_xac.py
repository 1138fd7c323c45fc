"""The xac similarity (``open_clip_c2lip.xac``): closed form against a naive pooling, gradients by finite
differences, memory plan, fp32 inside autocast."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.nn.functional as F

from open_clip_c2lip.xac import concept_attention, xac_logits, xac_memory_plan, xac_similarity
from loss_fixtures import make_batch

torch.set_num_threads(1)


def test_xac_similarity_gradcheck():
    generator = torch.Generator().manual_seed(1)
    tokens = F.normalize(torch.randn(2, 4, 3, generator=generator, dtype=torch.float64), dim=-1)
    concepts = F.normalize(torch.randn(5, 3, generator=generator, dtype=torch.float64), dim=-1)
    tokens.requires_grad_()
    concepts.requires_grad_()
    for options in ({"chunk_size": 2}, {"chunk_size": 5}, {"memory_budget_mb": 1e-5},
                    {"chunk_size": 2, "memory_budget_mb": 1e-5}):
        assert torch.autograd.gradcheck(
            lambda v, c: xac_similarity(v, c, temperature=1.7, **options), (tokens, concepts))
    # Only one input requiring grad takes the partial backward paths.
    assert torch.autograd.gradcheck(lambda v: xac_similarity(v, concepts.detach(), chunk_size=2), (tokens,))
    assert torch.autograd.gradcheck(lambda c: xac_similarity(tokens.detach(), c, chunk_size=2), (concepts,))


def test_degenerate_pooled_vector_follows_normalize_clamp():
    """Tokens v and -v with a concept orthogonal to v pool to u = 0 exactly: the value and the
    gradients must follow F.normalize's max(|u|, 1e-8) clamp, without NaN."""
    tokens = torch.tensor([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]],
                           [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8]]], dtype=torch.float64)
    concepts = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    upstream = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)

    def reference(v, c):
        attention = torch.softmax(torch.einsum("rtd,nd->rnt", v, c), dim=-1)
        pooled = F.normalize(torch.einsum("rnt,rtd->rnd", attention, v), dim=-1, eps=1e-8)
        return (pooled * c).sum(-1)

    results = []
    for fn in (xac_similarity, reference):
        v, c = tokens.clone().requires_grad_(), concepts.clone().requires_grad_()
        out = fn(v, c)
        results.append((out, *torch.autograd.grad(out, (v, c), upstream)))
    assert results[0][0][0].abs().max() == 0
    for ours, expected in zip(*results):
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


def test_concept_attention_pools_to_xac_similarity():
    batch = make_batch()
    tokens, concepts = batch["image_tokens"], batch["concept_features"][batch["concept_mask"]]
    similarity = xac_similarity(tokens, concepts, temperature=3.0)
    for row in range(tokens.shape[0]):
        attention = concept_attention(tokens[row], concepts, temperature=3.0)
        assert attention.shape == (concepts.shape[0], tokens.shape[1])
        torch.testing.assert_close(attention.sum(-1), torch.ones(concepts.shape[0], dtype=torch.float64))
        pooled = F.normalize(attention @ tokens[row], dim=-1)
        torch.testing.assert_close((pooled * concepts).sum(-1), similarity[row], rtol=1e-12, atol=1e-12)
    logits = xac_logits(tokens, concepts, batch["logit_scale"], batch["logit_bias"], temperature=3.0)
    torch.testing.assert_close(logits, batch["logit_scale"] * similarity + batch["logit_bias"])


def test_xac_memory_plan():
    block = 96 * 196 * 4  # bytes of one concept column of [R, T] fp32
    assert xac_memory_plan(96, 196, 2304, memory_budget_mb=1024) == (2304, True)  # 4 * 2304 blocks fit
    assert xac_memory_plan(96, 196, 2304, memory_budget_mb=256) == (256 * 2 ** 20 // (4 * block), False)
    assert xac_memory_plan(96, 196, 2304, memory_budget_mb=1e-6) == (1, False)
    assert xac_memory_plan(96, 196, 2304, chunk_size=7) == (7, True)
    assert xac_memory_plan(96, 196, 2304, memory_budget_mb=256, chunk_size=7) == (7, False)
    assert xac_memory_plan(96, 196, 5, chunk_size=7) == (5, True)
    with pytest.raises(ValueError, match="budget"):
        xac_memory_plan(1, 1, 1, memory_budget_mb=0)


def test_xac_backward_twice_with_retained_graph():
    """The first backward consumes the kept intermediates; a second one recomputes them."""
    batch = make_batch()
    tokens = batch["image_tokens"].clone().requires_grad_()
    concepts = batch["concept_features"].flatten(0, 1).clone().requires_grad_()
    similarity = xac_similarity(tokens, concepts, temperature=2.0, chunk_size=4)
    upstream = torch.randn(similarity.shape, dtype=similarity.dtype)
    first = torch.autograd.grad(similarity, (tokens, concepts), upstream, retain_graph=True)
    second = torch.autograd.grad(similarity, (tokens, concepts), upstream)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backward_in_autocast", [False, True])
def test_public_xac_functions_are_fp32_inside_bf16_autocast(backward_in_autocast):
    """``xac_similarity`` / ``xac_logits`` called (and differentiated) inside an active autocast give
    exactly the fp32 results outside it; bf16 inputs are cast to fp32."""
    batch = make_batch(dtype=torch.float32)
    tokens, concepts = batch["image_tokens"], batch["concept_features"][0]
    scale, bias = torch.tensor(6.5), torch.tensor(-2.0)

    def run(autocast, dtype=torch.float32):
        leaves = [x.to(dtype).detach().requires_grad_() for x in (tokens, concepts, scale, bias)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            similarity = xac_similarity(leaves[0], leaves[1], temperature=3.0)
            logits = xac_logits(*leaves, temperature=3.0, chunk_size=1)
            total = similarity.sum() + (logits * torch.linspace(-1, 1, logits.shape[1])).sum()
            if backward_in_autocast:
                total.backward()
        if not backward_in_autocast:
            total.backward()
        return [similarity, logits] + [leaf.grad for leaf in leaves]

    plain, autocast = run(False), run(True)
    for expected, got in zip(plain, autocast):
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)
    from_bf16 = run(True, torch.bfloat16)
    rounded = [x.bfloat16().float() for x in (tokens, concepts)]
    assert from_bf16[0].dtype == torch.float32
    assert torch.equal(from_bf16[0], xac_similarity(*rounded, temperature=3.0))
