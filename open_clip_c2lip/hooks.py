"""Patches applied by ``_bootstrap`` right after open_clip / open_clip_train modules are imported.

All are attribute replacements at import time (nothing is edited on disk), each idempotent
(wrappers carry ``__c2lip_wrapped__``; modules get a sentinel from ``_bootstrap``):

| hooked module | patch |
|---|---|
| ``open_clip`` | register the C2 configs + pretrained-tag aliases (``registry.register``); wrap ``create_model`` and ``create_loss`` in ``open_clip.factory`` and the ``open_clip`` package (``open_clip_train.main`` from-imports them, so the package bindings matter) |
| ``open_clip_train.params`` | ``argparse`` -> ``params.argparse_proxy()`` (C2LIP flags); CPU-DDP ``device_ids`` fix |
| ``open_clip_train.data`` | ``open_clip_c2lip.data.patch_train_data`` (webdataset EOF fix, packed train texts); ``open_clip_c2lip.data_order.patch_data_order`` (train data order a function of ``--seed``, epoch, rank, worker) |
| ``open_clip_train.train`` | ``train_one_epoch`` -> ``fixes.wrap_train_one_epoch`` (exact gradient accumulation, stop on NaN weights) |

The upstream bug fixes (CPU-DDP, accumulation) live in ``fixes``, which ``params`` imports too.

Without ``--c2lip-loss`` the wrappers only (a) default SigLIP preprocessing and (b) run the
registry's init hook for C2 names created without pretrained weights; every other call passes
through unchanged.
"""
import functools
import inspect
import logging
import sys
from typing import Any, Dict

from . import params, runtime
from .fixes import WRAPPED, patch_ddp_cpu_device_ids, wrap_train_one_epoch

_logger = logging.getLogger(__name__)


def _flush_messages() -> None:
    for message in params.pop_messages():
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

    from . import registry  # imports open_clip: not at the params hook

    @functools.wraps(create_model)
    def c2lip_create_model(*args, **kwargs):
        _flush_messages()
        bound = signature.bind(*args, **kwargs)
        model_name = bound.arguments["model_name"]
        entry = registry.lookup(model_name) if isinstance(model_name, str) else None
        if entry is not None:
            forced = bound.arguments.get("force_preprocess_cfg") or {}
            bound.arguments["force_preprocess_cfg"] = {**entry.preprocess, **forced}
        model = create_model(*bound.args, **bound.kwargs)
        if entry is not None and entry.init_fn is not None and not _loads_image_weights(bound.arguments):
            entry.init_fn(model)
        if runtime.active() and params.training_model() in (None, model_name):
            from .model import enable_c2lip

            model = enable_c2lip(model, concept_mode=runtime.config().concept_mode)
        return model

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
        from .loss import C2LIPLoss

        return C2LIPLoss(
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
    from . import registry

    registry.register(open_clip_module)
    factory = open_clip_module.factory
    factory.create_model = wrap_create_model(factory.create_model)
    factory.create_loss = wrap_create_loss(factory.create_loss)
    # separate bindings made by ``from .factory import ...`` in open_clip/__init__.py
    open_clip_module.create_model = factory.create_model
    open_clip_module.create_loss = factory.create_loss


def patch_params(params_module) -> None:
    """Hook for ``open_clip_train.params``: C2LIP flags via the argparse proxy; CPU-DDP fix.

    ``open_clip_train.main`` imports torch before params, so the DDP fix is installed here when
    torch is already loaded (and again at parse time); importing params alone stays torch-free.
    """
    if not getattr(params_module.argparse, "__open_clip_c2lip_proxy__", False):
        params_module.argparse = params.argparse_proxy()
    if "torch" in sys.modules:
        patch_ddp_cpu_device_ids()


def patch_data(data_module) -> None:
    """Hook for ``open_clip_train.data``: ``data.patch_train_data`` and ``data_order.patch_data_order``."""
    from .data import patch_train_data
    from .data_order import patch_data_order

    patch_train_data(data_module)
    patch_data_order(data_module)


def patch_train(train_module) -> None:
    """Hook for ``open_clip_train.train``: exact gradient accumulation (``fixes.wrap_train_one_epoch``).

    ``open_clip_train.main`` from-imports ``train_one_epoch``; its binding is updated too when main
    was imported before the hook ran.
    """
    train_module.train_one_epoch = wrap_train_one_epoch(train_module.train_one_epoch)
    main_module = sys.modules.get("open_clip_train.main")
    if main_module is not None and getattr(main_module, "train_one_epoch", None) is not None:
        main_module.train_one_epoch = wrap_train_one_epoch(main_module.train_one_epoch)
