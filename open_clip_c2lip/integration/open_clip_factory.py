"""The ``open_clip`` surface: model names, ``create_model`` and ``create_loss``.

``patch_open_clip`` (the hook for ``open_clip``) registers the C2 configs and pretrained-tag aliases
(``open_clip_c2lip.registry.register``) and wraps ``create_model`` and ``create_loss`` in
``open_clip.factory`` and in the ``open_clip`` package (``open_clip_train.main`` from-imports them, so
the package bindings matter). Idempotent: wrappers carry ``WRAPPED``.

- ``create_model`` of a C2 name: SigLIP preprocessing by default and the registry's init hook when
  no pretrained weights load. With ``--c2lip-loss`` parsed (``runtime.active()``), the training
  model (``--model``) becomes a C2 model: ``open_clip_c2lip.model.enable_c2lip(model, concept_mode)``.
- ``create_loss(args)`` with ``args.c2lip_loss``: ``open_clip_c2lip.loss.C2LIPLoss`` with the
  ``--c2lip-*`` weights, temperature and duplicate rule, and the process's rank and world size.

Every other call passes through unchanged.
"""
import functools
import inspect
import logging
from typing import Any, Dict

from .. import registry
from . import WRAPPED, runtime

# ``open_clip_c2lip.model`` and ``.loss`` import open_clip, whose import runs ``patch_open_clip``:
# they are imported when a model or loss is created, not when this module is.

_logger = logging.getLogger(__name__)


def _flush_messages() -> None:
    for message in runtime.pop_messages():
        _logger.info(message)


def _loads_image_weights(arguments: Dict[str, Any]) -> bool:
    """Whether ``create_model`` (called with these bound arguments) loads any vision weights."""
    full = bool(arguments.get("pretrained")) and arguments.get("load_weights", True)
    return bool(full or arguments.get("pretrained_image") or arguments.get("pretrained_image_path"))


def wrap_create_model(create_model):
    """``create_model`` for C2 names: SigLIP preprocessing defaults, per-name init, C2 class swap.

    - ``force_preprocess_cfg`` defaults to the registry's preprocessing; values given win.
    - The registry's ``init_fn`` runs only when no pretrained vision weights are loaded.
    - With ``runtime.active()`` (``--c2lip-loss`` parsed), the training model (``--model``) becomes
      a C2 model via ``open_clip_c2lip.model.enable_c2lip``; eval-only processes never get here.
    """
    if getattr(create_model, WRAPPED, False):
        return create_model
    signature = inspect.signature(create_model)

    @functools.wraps(create_model)
    def c2lip_create_model(*args, **kwargs):
        _flush_messages()
        bound = signature.bind(*args, **kwargs)
        model_name = bound.arguments["model_name"]
        entry = registry.lookup(model_name) if isinstance(model_name, str) else None
        if entry is not None:
            forced = bound.arguments.get("force_preprocess_cfg") or {}
            bound.arguments["force_preprocess_cfg"] = {**entry.preprocess, **forced}
        created = create_model(*bound.args, **bound.kwargs)
        if entry is not None and entry.init_fn is not None and not _loads_image_weights(bound.arguments):
            entry.init_fn(created)
        if runtime.active() and runtime.training_model() in (None, model_name):
            from .. import model

            created = model.enable_c2lip(created, concept_mode=runtime.config().concept_mode)
        return created

    setattr(c2lip_create_model, WRAPPED, True)
    return c2lip_create_model


def wrap_create_loss(create_loss):
    """``create_loss(args)``: ``C2LIPLoss`` when ``args.c2lip_loss``, else the original."""
    if getattr(create_loss, WRAPPED, False):
        return create_loss

    @functools.wraps(create_loss)
    def c2lip_create_loss(args):
        _flush_messages()
        if not getattr(args, "c2lip_loss", False):
            return create_loss(args)
        from .. import loss

        return loss.C2LIPLoss(
            npc_weight=args.c2lip_npc_weight,
            xac_weight=args.c2lip_xac_weight,
            xac_temperature=args.c2lip_xac_temperature,
            rank=args.rank,
            world_size=args.world_size,
            duplicate_concepts=getattr(args, "c2lip_duplicate_concepts", "negative"),
        )

    setattr(c2lip_create_loss, WRAPPED, True)
    return c2lip_create_loss


def patch_open_clip(open_clip_module) -> None:
    """Hook for ``open_clip``: register names, wrap the factory and package bindings."""
    registry.register(open_clip_module)
    factory = open_clip_module.factory
    factory.create_model = wrap_create_model(factory.create_model)
    factory.create_loss = wrap_create_loss(factory.create_loss)
    # separate bindings made by ``from .factory import ...`` in open_clip/__init__.py
    open_clip_module.create_model = factory.create_model
    open_clip_module.create_loss = factory.create_loss
