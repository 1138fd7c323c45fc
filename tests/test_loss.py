"""C2LIPLoss (``open_clip_c2lip.loss``) against an independent per-pair loop written from the
equations in ``docs/method.md``, in float64."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from open_clip_c2lip.loss import C2LIPLoss
from loss_fixtures import call, gradients, leaves, make_batch, pair_loss

torch.set_num_threads(1)

INPUT_NAMES = ("image_features", "text_features", "image_tokens", "concept_features")


def naive_terms(inputs, temperature, ignore_texts=None):
    """(contrastive, npc, xac) by explicit loops over pairs: explicit softmax, pooled u and norm.

    ``ignore_texts`` (``[B][P]`` strings, ``""`` for no concept): duplicate_concepts="ignore", i.e.
    skip the pair (i, n) when i does not own n but one of i's own concept texts equals n's."""
    v, t = inputs["image_features"], inputs["text_features"]
    tokens, concept_slots, mask = inputs["image_tokens"], inputs["concept_features"], inputs["concept_mask"]
    scale = inputs["logit_scale"]
    bias = inputs["logit_bias"] if inputs["logit_bias"] is not None else 0.0
    num_images, num_tokens = tokens.shape[0], tokens.shape[1]

    contrastive = 0.0
    for i in range(num_images):
        for j in range(num_images):
            contrastive = contrastive + pair_loss(scale * torch.dot(v[i], t[j]) + bias, i == j)
    contrastive = contrastive / num_images

    owned = [(b, p) for b in range(num_images) for p in range(mask.shape[1]) if mask[b, p]]
    npc = xac = torch.zeros((), dtype=v.dtype)
    for i in range(num_images):
        for owner, slot in owned:
            if (ignore_texts is not None and owner != i
                    and ignore_texts[owner][slot] in [text for text in ignore_texts[i] if text]):
                continue
            c = concept_slots[owner, slot]
            npc = npc + pair_loss(scale * torch.dot(v[i], c) + bias, owner == i)
            scores = [temperature * torch.dot(c, tokens[i, k]) for k in range(num_tokens)]
            top = max(s.item() for s in scores)
            weights = [torch.exp(s - top) for s in scores]
            total = sum(weights)
            pooled = sum((w / total) * tokens[i, k] for k, w in enumerate(weights))
            norm = torch.sqrt(torch.dot(pooled, pooled))
            pooled_unit = pooled / torch.clamp(norm, min=1e-8)
            xac = xac + pair_loss(scale * torch.dot(pooled_unit, c) + bias, owner == i)
    if owned:
        npc, xac = npc / len(owned), xac / len(owned)
    return contrastive, npc, xac


@pytest.mark.parametrize("temperature,with_bias,options", [
    (1.0, True, {}),
    (2.5, False, {"xac_chunk_size": 3}),  # 3 does not divide N = 8
    (0.4, True, {"xac_chunk_size": 1}),
    (0.05, True, {"xac_memory_budget_mb": 1e-4}),  # tiny budget: chunk 1, backward recomputes
    (1.0, False, {"xac_memory_budget_mb": 1e-4, "xac_chunk_size": 3}),
])
def test_matches_naive_loop(temperature, with_bias, options):
    batch = make_batch()
    npc_weight, xac_weight = 1.3, 0.7
    loss_fn = C2LIPLoss(npc_weight=npc_weight, xac_weight=xac_weight, xac_temperature=temperature, **options)

    ours_in = leaves(batch, with_bias)
    losses = call(loss_fn, ours_in, output_dict=True)
    ours_total = sum(losses.values())
    ours_grads = gradients(ours_total, ours_in)

    naive_in = leaves(batch, with_bias)
    contrastive, npc, xac = naive_terms(naive_in, temperature)
    naive_total = contrastive + npc_weight * npc + xac_weight * xac
    naive_grads = gradients(naive_total, naive_in)

    assert set(losses) == {"contrastive_loss", "npc_loss", "xac_loss"}
    torch.testing.assert_close(losses["contrastive_loss"], contrastive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["npc_loss"], npc_weight * npc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["xac_loss"], xac_weight * xac, rtol=1e-12, atol=1e-12)
    assert set(ours_grads) == set(naive_grads)
    for name in naive_grads:
        torch.testing.assert_close(ours_grads[name], naive_grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_padded_slots_are_ignored():
    batch = make_batch()
    inputs = leaves(batch)
    total = call(C2LIPLoss(), inputs)
    grad = torch.autograd.grad(total, inputs["concept_features"])[0]
    padded = ~batch["concept_mask"]
    assert grad[padded].abs().max() == 0
    assert grad[~padded].abs().min() > 0

    garbage = dict(batch, concept_features=batch["concept_features"].clone())
    garbage["concept_features"][padded] = 123.0
    assert torch.equal(call(C2LIPLoss(), garbage), total.detach())


def test_no_valid_concepts_gives_zero_but_stays_connected():
    batch = make_batch(valid=((0, 0), (0, 0), (0, 0)))
    inputs = leaves(batch)
    losses = call(C2LIPLoss(), inputs, output_dict=True)
    assert losses["npc_loss"].item() == 0 and losses["xac_loss"].item() == 0
    contrastive, _, _ = naive_terms(leaves(batch), 1.0)
    torch.testing.assert_close(losses["contrastive_loss"], contrastive, rtol=1e-12, atol=0)
    grads = gradients(sum(losses.values()), inputs)
    # Every input is in the graph (DDP needs it); the concept paths contribute exactly zero.
    assert all(g is not None for g in grads.values())
    assert grads["image_tokens"].abs().max() == 0 and grads["concept_features"].abs().max() == 0


def test_zero_xac_weight_skips_xac_but_keeps_tokens_in_graph():
    batch = make_batch()
    inputs = leaves(batch)
    losses = call(C2LIPLoss(xac_weight=0.0), inputs, output_dict=True)
    reference = call(C2LIPLoss(), make_batch(), output_dict=True)
    assert losses["xac_loss"].item() == 0
    assert torch.equal(losses["npc_loss"], reference["npc_loss"])
    grad = torch.autograd.grad(sum(losses.values()), inputs["image_tokens"])[0]
    assert grad.abs().max() == 0


def test_output_dict_false_returns_the_sum():
    batch = make_batch()
    loss_fn = C2LIPLoss(npc_weight=0.5, xac_weight=2.0)
    losses = call(loss_fn, batch, output_dict=True)
    assert torch.equal(call(loss_fn, batch), sum(losses.values()))


def test_weights_scale_their_terms():
    batch = make_batch()
    unit = call(C2LIPLoss(npc_weight=1.0, xac_weight=1.0), batch, output_dict=True)
    weighted = call(C2LIPLoss(npc_weight=3.0, xac_weight=0.25), batch, output_dict=True)
    torch.testing.assert_close(weighted["npc_loss"], 3.0 * unit["npc_loss"], rtol=1e-15, atol=0)
    torch.testing.assert_close(weighted["xac_loss"], 0.25 * unit["xac_loss"], rtol=1e-15, atol=0)
    assert torch.equal(weighted["contrastive_loss"], unit["contrastive_loss"])


def test_fp32_inside_bf16_autocast():
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in make_batch().items()}
    plain = call(C2LIPLoss(), batch, output_dict=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = call(C2LIPLoss(), batch, output_dict=True)
        from_bf16 = call(C2LIPLoss(), {k: (v.bfloat16() if v.is_floating_point() else v)
                                       for k, v in batch.items()}, output_dict=True)
    rounded = {k: (v.bfloat16().float() if v.is_floating_point() else v) for k, v in batch.items()}
    expected_bf16 = call(C2LIPLoss(), rounded, output_dict=True)
    for key in plain:
        assert autocast[key].dtype == torch.float32 and from_bf16[key].dtype == torch.float32
        assert torch.equal(autocast[key], plain[key]), key
        assert torch.equal(from_bf16[key], expected_bf16[key]), key


def test_accumulated_chunks_equal_one_big_batch():
    """open_clip's accum path: cached micro-batches (no grad) concatenated with a fresh one."""
    union = leaves(make_batch(valid=((1, 1), (1, 0), (0, 0), (1, 1), (0, 1), (1, 0)), seed=3))
    loss_fn = C2LIPLoss(xac_temperature=2.0)
    union_losses = call(loss_fn, union, output_dict=True)
    union_grads = gradients(sum(union_losses.values()), union)

    fresh = 3  # rows 3: are the micro-batch with grad, rows :3 come from the no-grad cache
    accum = dict(union)
    for name in INPUT_NAMES:
        accum[name] = torch.cat([union[name][:fresh].detach(), union[name][fresh:]])
    accum_losses = call(loss_fn, accum, output_dict=True)
    accum_grads = gradients(sum(accum_losses.values()), union)
    for key in union_losses:
        torch.testing.assert_close(accum_losses[key], union_losses[key], rtol=0, atol=0)
    for name in INPUT_NAMES:
        torch.testing.assert_close(accum_grads[name][fresh:], union_grads[name][fresh:], rtol=1e-12, atol=1e-15)
        assert accum_grads[name][:fresh].abs().max() == 0


def test_has_no_parameters_or_buffers():
    loss_fn = C2LIPLoss()
    assert list(loss_fn.parameters()) == [] and list(loss_fn.buffers()) == []
    assert loss_fn.state_dict() == {}


@pytest.mark.parametrize("change,message", [
    ({"text_features": torch.zeros(4, 8)}, "text_features"),
    ({"image_tokens": torch.zeros(5, 6, 7)}, "image_tokens"),
    ({"concept_features": torch.zeros(5, 3)}, "concept_features"),
    ({"concept_mask": torch.ones(5, 2, dtype=torch.bool)}, "concept_mask"),
    ({"concept_mask": torch.ones(5, 3, dtype=torch.long)}, "bool"),
])
def test_bad_input_names_the_problem(change, message):
    batch = dict(make_batch(dtype=torch.float32), **change)
    with pytest.raises(ValueError, match=message):
        call(C2LIPLoss(), batch)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        C2LIPLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="xac_chunk_size"):
        C2LIPLoss(xac_chunk_size=0)
    for name in ("npc_weight", "xac_weight"):
        for bad in (float("inf"), float("nan"), -0.5, 1e38, 1e4 + 1):
            with pytest.raises(ValueError, match=f"{name} must be finite, >= 0 and <= 10000"):
                C2LIPLoss(**{name: bad})
    for bad in (float("inf"), float("nan"), -1e38, -1.5, 0.0, 1e38, 1e4 + 1):
        # the flag's rule (open_clip_c2lip.config): a negative temperature is refused here too
        with pytest.raises(ValueError, match=r"xac_temperature must be finite, > 0 and <= 10000"):
            C2LIPLoss(xac_temperature=bad)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        call(C2LIPLoss(rank=0, world_size=2), make_batch())


# ------------------------------------------------------------------------------------------------
# duplicate concepts (docs/method.md)

# concept text per slot of make_batch()'s 5 images ("" = no concept). Image 1 has no valid slot but
# a concept text in slot 1 (as in span mode, where a concept whose span was not found has a masked
# slot and still a token row); image 0 holds "a dog" twice (both positives of image 0).
DUP_TEXTS = [["a dog", "a cat", "a dog"], ["", "a car", ""], ["a cat", "", "a car"],
             ["a dog", "a tree", ""], ["", "a cat", ""]]
DUP_VALID = ((1, 1, 1), (0, 0, 0), (1, 0, 1), (1, 1, 0), (0, 1, 0))


def text_ids(texts, length=12):
    """``[B, P, length]`` int64 rows: each text's characters (a stand-in for its token row), zero padded."""
    out = torch.zeros(len(texts), len(texts[0]), length, dtype=torch.long)
    for b, row in enumerate(texts):
        for p, text in enumerate(row):
            out[b, p, :len(text)] = torch.tensor([ord(ch) for ch in text])
    return out


@pytest.mark.parametrize("ids_form", ["rows", "keys"])
@pytest.mark.parametrize("temperature,with_bias,options", [
    (1.0, True, {}),
    (2.5, False, {"xac_chunk_size": 3}),
    (0.4, True, {"xac_memory_budget_mb": 1e-4}),  # chunk 1, backward recomputes
])
def test_ignore_duplicates_matches_naive_loop(ids_form, temperature, with_bias, options):
    batch = make_batch(valid=DUP_VALID)
    ids = text_ids(DUP_TEXTS)
    if ids_form == "keys":  # [B, P] integer keys: any injective labelling of the texts, 0 = none
        names = sorted({t for row in DUP_TEXTS for t in row} - {""})
        ids = torch.tensor([[names.index(t) + 1 if t else 0 for t in row] for row in DUP_TEXTS])
    npc_weight, xac_weight = 1.3, 0.7
    loss_fn = C2LIPLoss(npc_weight=npc_weight, xac_weight=xac_weight, xac_temperature=temperature,
                        duplicate_concepts="ignore", **options)
    ours_in = leaves(batch, with_bias)
    losses = call(loss_fn, ours_in, concept_ids=ids, output_dict=True)
    ours_grads = gradients(sum(losses.values()), ours_in)

    naive_in = leaves(batch, with_bias)
    contrastive, npc, xac = naive_terms(naive_in, temperature, ignore_texts=DUP_TEXTS)
    naive_grads = gradients(contrastive + npc_weight * npc + xac_weight * xac, naive_in)

    torch.testing.assert_close(losses["contrastive_loss"], contrastive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["npc_loss"], npc_weight * npc, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses["xac_loss"], xac_weight * xac, rtol=1e-12, atol=1e-12)
    for name in naive_grads:
        torch.testing.assert_close(ours_grads[name], naive_grads[name], rtol=1e-10, atol=1e-12, msg=name)
    # the rule changed something: the authors' rule gives other npc / xac values
    negative = call(C2LIPLoss(npc_weight=npc_weight, xac_weight=xac_weight, xac_temperature=temperature,
                              **options), leaves(batch, with_bias), concept_ids=ids, output_dict=True)
    assert abs(negative["npc_loss"].item() - losses["npc_loss"].item()) > 1e-6
    assert abs(negative["xac_loss"].item() - losses["xac_loss"].item()) > 1e-8


def test_duplicate_pairs_of_the_example():
    """The excluded pairs, spelled out for DUP_TEXTS (columns: the 8 valid concepts in slot order)."""
    from open_clip_c2lip.loss import concept_identities, duplicate_pairs

    mask = torch.tensor(DUP_VALID, dtype=torch.bool)
    identities = concept_identities(text_ids(DUP_TEXTS))
    assert identities[1, 0] == -1 and identities[1, 1] >= 0
    valid = mask.reshape(-1).nonzero().squeeze(1)
    owners = valid // mask.shape[1]
    positive = torch.arange(5)[:, None] == owners[None]
    excluded = duplicate_pairs(identities, identities.reshape(-1)[valid], positive)
    columns = [DUP_TEXTS[o][s] for o, s in zip(owners.tolist(), (valid % mask.shape[1]).tolist())]
    got = {(i, n) for i, n in excluded.nonzero().tolist()}
    expected = {(i, n) for i in range(5) for n, text in enumerate(columns)
                if owners[n] != i and text in DUP_TEXTS[i]}
    assert got == expected and len(got) == 10  # image 0: 3, 1: 1 (its masked "a car"), 2: 2, 3: 2, 4: 2


def test_negative_rule_is_the_default_and_ignores_concept_ids():
    batch = make_batch(valid=DUP_VALID)
    default = call(C2LIPLoss(), batch, output_dict=True)
    with_ids = call(C2LIPLoss(duplicate_concepts="negative"), batch, concept_ids=text_ids(DUP_TEXTS), output_dict=True)
    assert all(torch.equal(default[k], with_ids[k]) for k in default)
    # without duplicates "ignore" is the authors' loss
    distinct = [[f"c{b}{p}" if DUP_VALID[b][p] else "" for p in range(3)] for b in range(5)]
    ignore = call(C2LIPLoss(duplicate_concepts="ignore"), batch, concept_ids=text_ids(distinct), output_dict=True)
    assert all(torch.equal(default[k], ignore[k]) for k in default)


def test_duplicate_concepts_errors():
    batch = make_batch(valid=DUP_VALID)
    with pytest.raises(ValueError, match="duplicate_concepts must be one of"):
        C2LIPLoss(duplicate_concepts="merge")
    with pytest.raises(ValueError, match="needs concept_ids"):
        call(C2LIPLoss(duplicate_concepts="ignore"), batch)
    with pytest.raises(ValueError, match="concept_ids must be"):
        call(C2LIPLoss(duplicate_concepts="ignore"), batch, concept_ids=torch.zeros(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids"):
        call(C2LIPLoss(duplicate_concepts="ignore"), batch, concept_ids=torch.zeros(5, 3))


def test_largest_accepted_weights_and_temperature_stay_finite():
    """At the bounds (weights and temperature 1e4) and open_clip's largest logit scale (100) the fp32
    loss and every gradient are finite; the flags refuse anything larger (1e38 overflowed to inf)."""
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in make_batch().items()}
    batch["logit_scale"] = torch.tensor(100.0)
    batch["logit_bias"] = torch.tensor(-10.0)
    inputs = leaves(batch)
    loss = C2LIPLoss(npc_weight=1e4, xac_weight=1e4, xac_temperature=1e4)(**inputs)
    loss.backward()
    assert torch.isfinite(loss)
    for name, value in inputs.items():
        if value.is_floating_point():
            assert torch.isfinite(value.grad).all(), name


# ------------------------------------------------------------------------------------------------
# last_concept_usage: the loss's own view of its concepts

def naive_usage(mask, concept_ids, caption_ids, rule):
    """``CONCEPT_USAGE_KEYS`` by loops over images and slots, from their definition: a concept is usable
    if valid, not its caption's row, and some image of the batch is a negative for it (with "ignore":
    an image none of whose non-empty id rows equals the concept's)."""
    from open_clip_c2lip.loss import CONCEPT_USAGE_KEYS

    counts = dict.fromkeys(CONCEPT_USAGE_KEYS, 0)
    images, slots = mask.shape

    def holds(image, row):
        return any(concept_ids[image, k].any() and torch.equal(concept_ids[image, k], row) for k in range(slots))

    for b in range(images):
        counts["samples"] += 1
        counts["samples_without_concept"] += int(not mask[b].any())
        usable_here = False
        for k in range(slots):
            counts["concept_slots"] += 1
            if not mask[b, k]:
                continue
            counts["concepts"] += 1
            if caption_ids is not None and torch.equal(concept_ids[b, k], caption_ids[b]):
                counts["whole_caption_concepts"] += 1
                continue
            negatives = [i for i in range(images) if i != b and (rule == "negative" or not holds(i, concept_ids[b, k]))]
            if negatives:
                counts["usable_concepts"] += 1
                usable_here = True
            else:
                counts["concepts_without_negative"] += 1
        counts["samples_with_usable_concept"] += int(usable_here)
    return counts


def usage_batch(seed=0):
    """6 images x 3 slots, ids of length 2 from 3 texts (so duplicates), one concept every image holds,
    whole-caption concepts, a masked slot that keeps its text (as span mode does), an image without any."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    ids = torch.randint(1, 4, (6, 3, 2), generator=generator)
    ids[:, 0] = torch.tensor([9, 9])  # slot 0: one text on every image (image 3 keeps it, masked)
    ids[~mask] = 0
    ids[3, 0] = torch.tensor([9, 9])
    captions = torch.randint(20, 30, (6, 2), generator=generator)
    captions[4] = ids[4, 1]  # image 4's second concept is its whole caption
    captions[5] = ids[5, 0]  # image 5's only concept is its whole caption
    batch = make_batch(valid=mask.int().tolist(), seed=seed)
    batch.update(concept_ids=ids, caption_ids=captions)
    return batch


@pytest.mark.parametrize("rule", ["negative", "ignore"])
@pytest.mark.parametrize("with_captions", [True, False])
def test_last_concept_usage_matches_naive_count(rule, with_captions):
    from open_clip_c2lip.loss import CONCEPT_USAGE_KEYS

    batch = usage_batch()
    captions = batch["caption_ids"] if with_captions else None
    loss_fn = C2LIPLoss(duplicate_concepts=rule)
    assert loss_fn.last_concept_usage is None
    call(loss_fn, leaves(batch), concept_ids=batch["concept_ids"], caption_ids=captions)
    got = dict(zip(CONCEPT_USAGE_KEYS, loss_fn.last_concept_usage.tolist()))
    expected = naive_usage(batch["concept_mask"], batch["concept_ids"], captions, rule)
    assert got == expected
    # the example exercises every branch of the definition
    assert expected["samples_without_concept"] == 1 and expected["usable_concepts"] > 0
    assert (expected["whole_caption_concepts"] > 0) == with_captions
    assert (expected["concepts_without_negative"] > 0) == (rule == "ignore")


def test_usage_of_one_image_has_no_negative_and_counts_without_ids():
    from open_clip_c2lip.loss import CONCEPT_USAGE_KEYS

    batch = make_batch(valid=((1, 0, 1),))
    loss_fn = C2LIPLoss()
    call(loss_fn, leaves(batch))  # no concept_ids / caption_ids: no concept is a whole caption
    got = dict(zip(CONCEPT_USAGE_KEYS, loss_fn.last_concept_usage.tolist()))
    assert got == {"samples": 1, "samples_with_usable_concept": 0, "samples_without_concept": 0, "concept_slots": 3,
                   "concepts": 2, "whole_caption_concepts": 0, "concepts_without_negative": 2, "usable_concepts": 0}


def test_images_holding_counts_each_image_once():
    from open_clip_c2lip.loss import images_holding

    generator = torch.Generator().manual_seed(1)
    identities = torch.randint(-1, 4, (7, 5), generator=generator)
    counts = images_holding(identities)
    assert counts.shape == (7 * 5 + 1,)
    for value in range(7 * 5):
        assert counts[value] == sum(int(value in row.tolist()) for row in identities), value


def test_usage_is_not_part_of_the_graph_and_changes_no_loss():
    batch = usage_batch()
    plain = call(C2LIPLoss(duplicate_concepts="ignore"), leaves(batch), concept_ids=batch["concept_ids"], output_dict=True)
    loss_fn = C2LIPLoss(duplicate_concepts="ignore")
    counted = call(loss_fn, leaves(batch), concept_ids=batch["concept_ids"], caption_ids=batch["caption_ids"],
                   output_dict=True)
    assert all(torch.equal(plain[k], counted[k]) for k in plain)
    assert not loss_fn.last_concept_usage.requires_grad and loss_fn.last_concept_usage.dtype == torch.long


def test_bad_caption_ids_name_the_problem():
    batch = usage_batch()
    with pytest.raises(ValueError, match=r"caption_ids must be \[B, L\] with B=6"):
        call(C2LIPLoss(), leaves(batch), caption_ids=batch["caption_ids"][:5])
    with pytest.raises(ValueError, match="caption_ids must be integer ids"):
        call(C2LIPLoss(), leaves(batch), caption_ids=batch["caption_ids"].double())
