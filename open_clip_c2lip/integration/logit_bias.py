"""A checkpoint without ``logit_bias`` leaves a SigLIP model's bias at its initial value, and says so.

Generic (no C2LIP code). open_clip 3.3.0's ``load_checkpoint`` (factory.py) fills a missing
``logit_bias`` with 0 when the model has one (open_clip issue #712: loading a CLIP checkpoint for
SigLIP training), silently, whatever bias the model was created with: ``open_clip_train --siglip``
creates the model with ``init_logit_bias=-10`` and a SigLIP config carries -10 too, yet a run from a
CLIP (or stripped) checkpoint starts at 0. With the checkpoint's logit scale (CLIP: 100) and bias 0
every negative pair's sigmoid term is large, which is what SigLIP's -10 init exists to avoid; the
first losses of both choices are measured in ``benchmarks/missing_logit_bias.md``
(``scripts/bench_missing_logit_bias.py``).

``wrap_load_checkpoint`` keeps the bias the model had before loading when the checkpoint has none
(the ``init_logit_bias`` the caller or the model config asked for) and logs a WARNING naming the
file, the bias kept and the logit scale loaded. Checkpoints that carry a bias load exactly as before;
models without a bias are untouched. Rankings (zero-shot classification, retrieval) do not depend on
a bias shared by all pairs; only sigmoid probabilities and the SigLIP loss do.
``patches/open_clip-keep-init-logit-bias.diff`` is the same change upstream.
"""
import functools
import inspect
import logging
import zipfile
from pathlib import Path
from typing import Optional

import torch

_logger = logging.getLogger(__name__)

WRAPPED = "__c2lip_wrapped__"


def checkpoint_has_logit_bias(path) -> Optional[bool]:
    """Whether the checkpoint at ``path`` has a ``logit_bias`` entry, read without loading its tensors
    (safetensors header; torch zip memory-mapped); None when that cannot be told (then nothing is changed)."""
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                keys = list(f.keys())
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
                checkpoint = checkpoint["state_dict"]
            if not isinstance(checkpoint, dict):
                return None
            keys = list(checkpoint)
    except Exception:  # noqa: BLE001 - unreadable here; open_clip's own load reports it
        return None
    return any(str(k) in ("logit_bias", "module.logit_bias") for k in keys)


def wrap_load_checkpoint(load_checkpoint):
    """``open_clip.load_checkpoint`` that keeps the model's ``logit_bias`` when the checkpoint has none
    (see the module docstring). Idempotent."""
    if getattr(load_checkpoint, WRAPPED, False):
        return load_checkpoint
    signature = inspect.signature(load_checkpoint)

    @functools.wraps(load_checkpoint)
    def c2lip_load_checkpoint(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        model, path = bound.arguments["model"], bound.arguments["checkpoint_path"]
        bias = getattr(model, "logit_bias", None)
        if not isinstance(bias, torch.Tensor) or Path(str(path)).suffix in (".npz", ".npy"):
            return load_checkpoint(*args, **kwargs)
        has_bias = checkpoint_has_logit_bias(path)
        initial = bias.detach().clone()
        result = load_checkpoint(*args, **kwargs)
        if has_bias is False:
            with torch.no_grad():
                model.logit_bias.copy_(initial)
            scale = getattr(model, "logit_scale", None)
            scale_text = f"; its logit_scale is {scale.exp().item():g} (log {scale.item():g})" \
                if isinstance(scale, torch.Tensor) and scale.numel() == 1 else ""
            _logger.warning(
                "%s has no logit_bias (a CLIP checkpoint, or one saved without it): the model keeps its initial "
                "logit_bias %s (open_clip_train --siglip and SigLIP configs: -10) instead of open_clip's 0%s",
                path, ", ".join(f"{v:g}" for v in initial.flatten().tolist()), scale_text)
        return result

    setattr(c2lip_load_checkpoint, WRAPPED, True)
    return c2lip_load_checkpoint


def patch_open_clip_module(open_clip_module) -> None:
    """Called by the ``open_clip`` hook: wrap ``open_clip.factory.load_checkpoint`` (what
    ``create_model(pretrained=...)`` calls) and the package's binding of it. Idempotent."""
    factory = open_clip_module.factory
    factory.load_checkpoint = wrap_load_checkpoint(factory.load_checkpoint)
    open_clip_module.load_checkpoint = factory.load_checkpoint
