"""open_clip_c2lip.demo.variants: the loss flags of every variant, and the control siglip_concepts is
SigLIP with every concept as one more caption of its image (docs/demo_study.md, "The control")."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.nn.functional as F

from open_clip_c2lip.demo.variants import VARIANTS, LossSettings
from open_clip_c2lip.loss import C2LIPLoss

torch.set_num_threads(1)


def _batch(batch=6, slots=4, dim=8, tokens=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    unit = lambda *shape: F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)
    mask = torch.rand(batch, slots, generator=gen) < 0.7
    mask[0] = True  # at least one full row, and images with 0..P concepts
    mask[1] = False
    return {"image_features": unit(batch, dim), "text_features": unit(batch, dim), "image_tokens": unit(batch, tokens, dim),
            "concept_features": unit(batch, slots, dim), "concept_mask": mask}


def _siglip_over_columns(image, texts, concepts, owners, scale, bias):
    """SigLIP's loss with the concepts as extra text columns: column j of [texts; concepts] is positive
    for the image it belongs to; summed over all pairs and divided by the number of images B (as
    open_clip's SigLipLoss). A plain double loop, independent of C2LIPLoss."""
    columns = list(texts) + list(concepts)
    owner = list(range(len(texts))) + list(owners)
    total = 0.0
    for i, v in enumerate(image):
        for j, t in enumerate(columns):
            z = scale * float(v @ t) + bias
            y = 1.0 if owner[j] == i else -1.0
            total += -float(F.logsigmoid(torch.tensor(y * z, dtype=torch.float64)))
    return total / len(image)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_c2lip_without_xac_at_npc_weight_n_over_b_is_siglip_over_captions_and_concepts(seed):
    b = _batch(seed=seed)
    scale, bias = torch.tensor(9.0, dtype=torch.float64), torch.tensor(-7.0, dtype=torch.float64)
    batch = b["image_features"].shape[0]
    valid = b["concept_mask"].reshape(-1).nonzero().squeeze(1)
    concepts = b["concept_features"].reshape(-1, b["concept_features"].shape[-1])[valid]
    owners = (valid // b["concept_mask"].shape[1]).tolist()
    n = len(owners)
    reference = _siglip_over_columns(b["image_features"], b["text_features"], concepts, owners, float(scale), float(bias))
    control = C2LIPLoss(npc_weight=n / batch, xac_weight=0.0)(logit_scale=scale, logit_bias=bias, **b)
    assert float(control) == pytest.approx(reference, rel=1e-12)
    # npc_only (weight 1) is the same columns weighted B/N: not the control unless N = B
    npc_only = C2LIPLoss(npc_weight=1.0, xac_weight=0.0)(logit_scale=scale, logit_bias=bias, output_dict=True, **b)
    parts = C2LIPLoss(npc_weight=n / batch, xac_weight=0.0)(logit_scale=scale, logit_bias=bias, output_dict=True, **b)
    assert float(parts["npc_loss"]) == pytest.approx(n / batch * float(npc_only["npc_loss"]), rel=1e-12)
    assert n != batch


def test_without_concepts_the_control_is_open_clip_siglip():
    from open_clip.loss import SigLipLoss
    b = _batch(seed=3)
    b["concept_mask"][:] = False
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    ours = C2LIPLoss(npc_weight=3.0, xac_weight=0.0)(logit_scale=scale, logit_bias=bias, **b)
    upstream = SigLipLoss()(b["image_features"], b["text_features"], scale, bias)
    assert float(ours) == pytest.approx(float(upstream), rel=1e-12)
    assert float(ours) == pytest.approx(_siglip_over_columns(b["image_features"], b["text_features"], [], [], 10.0, -10.0),
                                        rel=1e-12)


def _flags(args):
    return {args[i]: args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else True
            for i in range(len(args)) if args[i].startswith("--")}


def test_control_is_c2lip_without_xac_at_the_mean_concepts_per_image():
    settings = LossSettings(concepts_per_image=3.0)
    c2lip, control = _flags(VARIANTS["c2lip"].loss_args(settings)), _flags(VARIANTS["siglip_concepts"].loss_args(settings))
    changed = {k for k in c2lip if c2lip[k] != control.get(k)}
    assert changed == {"--c2lip-npc-weight", "--c2lip-xac-weight"}
    assert float(control["--c2lip-npc-weight"]) == 3.0 and float(control["--c2lip-xac-weight"]) == 0.0
    assert control["--c2lip-concept-mode"] == "text"  # concepts encoded as texts, like captions
    assert "--c2lip-duplicate-concepts" not in control  # the authors' rule: another image's concept is a negative
    npc_only = _flags(VARIANTS["npc_only"].loss_args(settings))
    assert float(npc_only["--c2lip-npc-weight"]) == 1.0


def test_cli_sets_the_control_weight_from_the_world():
    from open_clip_c2lip.demo.cli import parse_args, settings_of
    assert settings_of(parse_args([])).loss.concepts_per_image == 3.0  # 2-4 objects, balanced
    assert settings_of(parse_args(["--min-objects", "3", "--max-objects", "4"])).loss.concepts_per_image == 3.5


def test_concepts_per_image_of_a_batch_vary_by_about_three_percent():
    """docs/demo_study.md: in batches of 64 drawn from the 4,096 balanced training images (2-4 objects,
    one concept each) N/B has mean 3 and sd ~0.10 (the finite-population formula), so the control's
    constant weight 3 equals the exact N/B within a few percent."""
    import random
    import statistics
    population = [2 + i % 3 for i in range(4096)]
    var = statistics.pvariance(population)
    analytic = (var / 64 * (4096 - 64) / (4096 - 1)) ** 0.5
    assert analytic == pytest.approx(0.101, abs=0.001)
    rng = random.Random(0)
    draws = [sum(rng.sample(population, 64)) / 64 for _ in range(4000)]
    assert statistics.mean(draws) == pytest.approx(3.0, abs=0.01)
    assert statistics.stdev(draws) == pytest.approx(analytic, rel=0.05)
