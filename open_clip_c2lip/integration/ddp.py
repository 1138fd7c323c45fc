"""CPU / gloo DDP with open_clip_train 3.3.0: ``DistributedDataParallel(cpu_module, device_ids=[cpu])``.

Generic (no C2LIP code); ``train_params`` installs it (at the params hook when torch is loaded,
and again at parse time). Upstream-ready fix: ``patches/open_clip_train-ddp-cpu-device-ids.diff``.
"""
from . import WRAPPED


def patch_ddp_cpu_device_ids() -> None:
    """Let ``DistributedDataParallel(cpu_module, device_ids=[cpu])`` work (gloo CPU training).

    open_clip_train/main.py:302 always passes ``device_ids=[device]``; for a module on CPU torch
    raises ValueError ("device_ids ... only work with ... GPU modules"). This swaps
    ``torch.nn.parallel.DistributedDataParallel`` (looked up at call time by main.py) for a subclass
    that drops ``device_ids``/``output_device`` when every parameter is on CPU — a path that
    otherwise crashes, so behaviour elsewhere is unchanged. Upstream-ready fix:
    ``patches/open_clip_train-ddp-cpu-device-ids.diff``. Idempotent.
    """
    import torch.nn.parallel

    ddp_class = torch.nn.parallel.DistributedDataParallel
    if getattr(ddp_class, WRAPPED, False):
        return

    class DistributedDataParallel(ddp_class):
        __doc__ = ddp_class.__doc__

        def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
            if device_ids is not None and _on_cpu(module):
                device_ids, output_device = None, None
            super().__init__(module, device_ids, output_device, *args, **kwargs)

    DistributedDataParallel.__qualname__ = "DistributedDataParallel"
    setattr(DistributedDataParallel, WRAPPED, True)
    torch.nn.parallel.DistributedDataParallel = DistributedDataParallel


def _on_cpu(module) -> bool:
    devices = {p.device.type for p in module.parameters()}
    return devices == {"cpu"}
