"""CPU / gloo DDP without ``device_ids`` (``open_clip_c2lip.integration.ddp``) and its upstream diff."""

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
from open_clip_c2lip.integration import ddp
from upstream_fixtures import apply_diff

torch.set_num_threads(1)


def test_cpu_ddp_device_ids_fix(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel.distributed import DistributedDataParallel as UpstreamDDP

    ddp.patch_ddp_cpu_device_ids()
    patched = torch.nn.parallel.DistributedDataParallel
    ddp.patch_ddp_cpu_device_ids()
    assert torch.nn.parallel.DistributedDataParallel is patched and issubclass(patched, UpstreamDDP)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        module = torch.nn.Linear(3, 2)
        with pytest.raises(ValueError, match="device_ids"):  # what open_clip_train/main.py:302 hits
            UpstreamDDP(module, device_ids=[torch.device("cpu")])
        wrapped = patched(module, device_ids=[torch.device("cpu")])
        assert isinstance(wrapped, UpstreamDDP) and wrapped.device_ids is None
        wrapped(torch.randn(4, 3)).sum().backward()
        assert module.weight.grad is not None
    finally:
        dist.destroy_process_group()


def test_ddp_diff_applies_to_upstream_main(tmp_path):
    patched = apply_diff(tmp_path, "open_clip_train-ddp-cpu-device-ids.diff", "main.py").read_text()
    assert "device_ids=[device]" not in patched and "ddp_device_ids = None if device.type == 'cpu'" in patched
