"""open_clip_train's training loop (``open_clip_train.train.train_one_epoch``): two fixes for 3.3.0
bugs, applied whenever the plugin is active (with or without ``--c2lip-loss``). Generic: no C2LIP code.

- ``AccumulationExactLoss``: gradient accumulation gives the logit scale and bias ``accum_freq``
  times their one-big-batch gradient; ``patches/open_clip_train-accum-shared-grad.diff``.
- ``check_finite_parameters``: a run whose weights became NaN/inf stops with an error (upstream
  trains on, saves the NaN checkpoints and exits 0); ``patches/open_clip_train-stop-on-nonfinite.diff``.

``patch_train`` (the hook for ``open_clip_train.train``) installs both through ``wrap_train_one_epoch``.
"""
import functools
import inspect
import sys
from typing import Any, Callable

from . import WRAPPED

# the loss inputs that open_clip_train's accumulation branch passes as they come out of each
# micro-batch forward instead of concatenating them over the micro-batches (train.py,
# ``inputs_no_accum``); any other input that is not per-sample is treated the same way
ACCUM_SHARED_INPUTS = ("logit_scale", "logit_bias")


def scale_grad(x, factor: float):
    """``x`` unchanged in the forward pass (bit for bit); ``factor`` × its gradient in the backward.

    ``detach(x) + (x - detach(x)) * factor``: the second term is exactly 0 for finite ``x``.
    """
    detached = x.detach()
    return detached + (x - detached) * factor


class AccumulationExactLoss:
    """The loss of an ``--accum-freq k`` run, with each shared (non-per-sample) input's gradient ÷ k.

    open_clip_train 3.3.0 ``train_one_epoch`` (accumulation branch) re-runs each of the ``k``
    micro-batches with grad and calls ``loss(**inputs)`` on the features of all ``k·B`` samples,
    only the fresh chunk carrying grad, then backpropagates. Per-sample inputs thus get each
    chunk's gradient once — exactly the one-big-batch gradient — but the logit scale and bias enter
    every one of the ``k`` losses with grad, so they get ``k`` × theirs. Here every tensor input that
    requires grad and is not per-sample (named in ``ACCUM_SHARED_INPUTS``, 0-d, or whose first
    dimension differs from ``image_features``') has its gradient scaled by ``1/k``; values are
    unchanged, so the logged losses are upstream's.
    """

    def __init__(self, loss: Callable, accum_freq: int):
        self.loss = loss
        self.accum_freq = int(accum_freq)

    def _shared(self, name: str, value: Any, num_rows) -> bool:
        import torch

        if not (torch.is_tensor(value) and value.requires_grad and value.is_floating_point()):
            return False
        return (name in ACCUM_SHARED_INPUTS or value.ndim == 0
                or (num_rows is not None and value.shape[0] != num_rows))

    def __call__(self, *args, **kwargs):
        import torch

        if torch.is_grad_enabled() and self.accum_freq > 1:
            rows = kwargs.get("image_features")
            num_rows = rows.shape[0] if torch.is_tensor(rows) and rows.ndim > 0 else None
            kwargs = {name: scale_grad(value, 1.0 / self.accum_freq)
                      if self._shared(name, value, num_rows) else value
                      for name, value in kwargs.items()}
        return self.loss(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["loss"], name)


def check_finite_parameters(model, epoch: int) -> None:
    """Raise ``FloatingPointError`` if any parameter of ``model`` holds NaN or inf after ``epoch``.

    Called when an epoch ends, before open_clip_train saves its checkpoint: a diverged run (NaN loss
    from a too high ``--lr``, an fp16 overflow without a scaler, bad data ...) then stops with a
    non-zero exit status instead of training on NaN weights, saving them and exiting 0. One pass
    over the weights per epoch; no per-step synchronisation."""
    import torch

    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise FloatingPointError(
            f"training diverged: after epoch {epoch}, {len(bad)} parameter tensor(s) hold NaN or inf "
            f"(first: {bad[0]}); stopped before this epoch's checkpoint was saved. The logged losses "
            f"show where it started; lower --lr, set --grad-clip-norm or check the data, then resume "
            f"from the last good checkpoint")


def wrap_train_one_epoch(train_one_epoch: Callable) -> Callable:
    """``open_clip_train.train.train_one_epoch`` whose loss is ``AccumulationExactLoss`` when
    ``args.accum_freq > 1`` (otherwise the loss is passed through unchanged), followed by
    ``check_finite_parameters``. Idempotent.

    Upstream-ready fix: ``patches/open_clip_train-accum-shared-grad.diff`` (applying it upstream
    makes this wrapper obsolete: drop it then, or the scale and bias would get 1/k of their
    gradient — ``tests/test_integration_train_loop.py`` checks which one holds for the installed source).
    """
    if getattr(train_one_epoch, WRAPPED, False):
        return train_one_epoch
    signature = inspect.signature(train_one_epoch)

    @functools.wraps(train_one_epoch)
    def c2lip_train_one_epoch(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        accum_freq = getattr(bound.arguments["args"], "accum_freq", 1)
        if accum_freq > 1 and not isinstance(bound.arguments["loss"], AccumulationExactLoss):
            bound.arguments["loss"] = AccumulationExactLoss(bound.arguments["loss"], accum_freq)
        result = train_one_epoch(*bound.args, **bound.kwargs)
        check_finite_parameters(bound.arguments["model"], bound.arguments["epoch"])
        return result

    setattr(c2lip_train_one_epoch, WRAPPED, True)
    return c2lip_train_one_epoch


def patch_train(train_module) -> None:
    """Hook for ``open_clip_train.train``: ``train_one_epoch`` -> ``wrap_train_one_epoch`` (idempotent).

    ``open_clip_train.main`` from-imports ``train_one_epoch``; its binding is updated too when main
    was imported before the hook ran.
    """
    train_module.train_one_epoch = wrap_train_one_epoch(train_module.train_one_epoch)
    main_module = sys.modules.get("open_clip_train.main")
    if main_module is not None and getattr(main_module, "train_one_epoch", None) is not None:
        main_module.train_one_epoch = wrap_train_one_epoch(main_module.train_one_epoch)
