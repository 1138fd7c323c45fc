"""Shared fixtures of the loss and xac tests: a random batch of loss inputs in float64 and its leaves.

Imported by ``tests/test_loss.py`` and ``tests/test_xac.py``.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F


torch.set_num_threads(1)

INPUT_NAMES = ("image_features", "text_features", "image_tokens", "concept_features")


def make_batch(valid=((1, 1, 1), (0, 0, 0), (1, 0, 1), (1, 1, 0), (0, 1, 0)), tokens=6, dim=8, seed=0,
               dtype=torch.float64):
    """A batch as the model returns it. ``valid`` is the concept mask (one row per image): image 1
    has no concept, image 2 has a hole, and padded slots hold random features on purpose."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.tensor(valid, dtype=torch.bool)
    batch, slots = mask.shape

    def unit(*shape):
        return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)

    return {
        "image_features": unit(batch, dim),
        "text_features": unit(batch, dim),
        "image_tokens": unit(batch, tokens, dim),
        "concept_features": unit(batch, slots, dim),
        "concept_mask": mask,
        "logit_scale": torch.tensor(6.5, dtype=dtype),
        "logit_bias": torch.tensor(-2.0, dtype=dtype),
    }


def leaves(batch, with_bias=True):
    """Copies of the float inputs as grad-requiring leaves (logit_bias dropped if not with_bias)."""
    out = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in batch.items()}
    if not with_bias:
        out["logit_bias"] = None
    return out


def call(loss_fn, inputs, **kwargs):
    return loss_fn(inputs["image_features"], inputs["text_features"], inputs["logit_scale"],
                   inputs["logit_bias"], image_tokens=inputs["image_tokens"],
                   concept_features=inputs["concept_features"], concept_mask=inputs["concept_mask"],
                   **kwargs)


def pair_loss(logit, positive):
    return -torch.log(torch.sigmoid(logit if positive else -logit))


def grad_names(inputs):
    return [k for k in (*INPUT_NAMES, "logit_scale", "logit_bias") if inputs[k] is not None]


def gradients(total, inputs):
    names = grad_names(inputs)
    return dict(zip(names, torch.autograd.grad(total, [inputs[k] for k in names], allow_unused=True)))
