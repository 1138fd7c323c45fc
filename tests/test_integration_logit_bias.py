"""open_clip_c2lip.integration.logit_bias: a checkpoint without ``logit_bias`` keeps the model's initial bias
(``--siglip``: -10) and says so; every other checkpoint loads as with upstream. Plus the upstream-ready diff
and the upstream code the wrapper relies on."""
import inspect
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (hooks)
import open_clip
from open_clip.loss import SigLipLoss
from open_clip_c2lip.integration import logit_bias

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"


def clip_checkpoint(path: Path, fmt: str = "train", seed: int = 0) -> Path:
    """A C2LIP-Tiny checkpoint of a CLIP model (no logit_bias; logit scale ln 100, as CLIP's are)."""
    torch.manual_seed(seed)
    model = open_clip.create_model("C2LIP-Tiny", init_logit_scale=math.log(100), init_logit_bias=None)
    state = model.state_dict()
    assert "logit_bias" not in state
    if fmt == "safetensors":
        import safetensors.torch
        safetensors.torch.save_file(state, str(path))
    elif fmt == "ddp":
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save({"epoch": 1, "name": "clip", "state_dict": state}, path)
    return path


def siglip_model(pretrained: Path):
    """What open_clip_train --siglip creates (main.py: init_logit_scale log 10, init_logit_bias -10)."""
    return open_clip.create_model("C2LIP-Tiny", pretrained=str(pretrained), init_logit_scale=math.log(10),
                                  init_logit_bias=-10)


@pytest.mark.parametrize("fmt", ["train", "safetensors", "ddp"])
def test_missing_bias_keeps_the_init_and_says_so(tmp_path, caplog, fmt):
    path = clip_checkpoint(tmp_path / f"clip.{'safetensors' if fmt == 'safetensors' else 'pt'}", fmt)
    with caplog.at_level("WARNING", logger=logit_bias.__name__):
        model = siglip_model(path)
    assert model.logit_bias.item() == -10.0
    assert model.logit_scale.item() == pytest.approx(math.log(100))  # the scale does come from the checkpoint
    message = caplog.text
    assert f"{path} has no logit_bias" in message and "keeps its initial logit_bias -10" in message
    assert "its logit_scale is 100 (log 4.60517)" in message


def test_checkpoints_with_a_bias_and_models_without_one_load_as_upstream(tmp_path, caplog):
    torch.manual_seed(0)
    source = open_clip.create_model("C2LIP-Tiny", init_logit_scale=2.0, init_logit_bias=3.5)
    torch.save({"epoch": 1, "state_dict": source.state_dict()}, tmp_path / "siglip.pt")
    with caplog.at_level("WARNING", logger=logit_bias.__name__):
        model = siglip_model(tmp_path / "siglip.pt")
        clip = open_clip.create_model("C2LIP-Tiny", pretrained=str(clip_checkpoint(tmp_path / "clip.pt")),
                                      init_logit_bias=None)
    assert model.logit_bias.item() == 3.5 and clip.logit_bias is None
    assert [r.getMessage() for r in caplog.records if r.name == logit_bias.__name__] == []


def test_upstream_fills_zero_and_the_first_siglip_loss_is_far_higher(tmp_path):
    """Without the hook (its ``__wrapped__``) open_clip sets the bias to 0. On the same batch the first
    SigLIP loss at bias 0 is higher than at the kept -10 (the issue: 281 vs ~12 on its data;
    ``scripts/bench_missing_logit_bias.py`` measures it on trained C2LIP-Tiny checkpoints)."""
    path = clip_checkpoint(tmp_path / "clip.pt")
    kept = siglip_model(path)
    upstream = open_clip.create_model("C2LIP-Tiny", init_logit_scale=math.log(10), init_logit_bias=-10)
    open_clip.load_checkpoint.__wrapped__(upstream, str(path))
    assert upstream.logit_bias.item() == 0.0
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(16, 3, 64, 64, generator=generator)
    texts = torch.randint(1, 49000, (16, 32), generator=generator)
    losses = {}
    for name, model in (("kept", kept), ("zero", upstream)):
        with torch.no_grad():
            out = model(images, texts)
            losses[name] = SigLipLoss()(out[0], out[1], out[2], model.logit_bias).item()
    assert losses["zero"] > losses["kept"], losses


def test_hook_is_idempotent_and_covers_the_package_binding():
    wrapped = open_clip.factory.load_checkpoint
    assert getattr(wrapped, logit_bias.WRAPPED) and open_clip.load_checkpoint is wrapped
    logit_bias.patch_open_clip_module(open_clip)
    assert open_clip.factory.load_checkpoint is wrapped
    assert not getattr(wrapped.__wrapped__, logit_bias.WRAPPED, False)


def test_upstream_load_checkpoint_shape():
    """Fails when open_clip changes what the wrapper relies on: the signature it binds and the zero fill."""
    upstream = open_clip.factory.load_checkpoint.__wrapped__
    assert str(inspect.signature(upstream)) == ("(model: Union[open_clip.model.CLIP, open_clip.model.CustomTextCLIP], "
                                                "checkpoint_path: str, strict: bool = True, weights_only: bool = True, "
                                                "device='cpu')")
    source = inspect.getsource(upstream)
    assert ("if 'logit_bias' not in state_dict and model.logit_bias is not None:\n"
            "        state_dict[\"logit_bias\"] = torch.zeros_like(state_dict[\"logit_scale\"])") in source
    assert "load_checkpoint(" in inspect.getsource(inspect.unwrap(open_clip.factory.create_model))


_PROBE = r"""
import math, sys, torch, open_clip
assert "open_clip_c2lip" not in sys.modules
open_clip.add_model_config(sys.argv[1])
model = open_clip.create_model("C2LIP-Tiny", pretrained=sys.argv[2], init_logit_scale=math.log(10), init_logit_bias=-10)
print("BIAS", model.logit_bias.item(), open_clip.__file__)
"""


@pytest.mark.parametrize("patched", [False, True])
def test_keep_init_logit_bias_diff_fixes_upstream_alone(tmp_path, patched):
    """Plugin off: the installed open_clip gives 0; a copy with ``patches/open_clip-keep-init-logit-bias.diff``
    applied gives -10."""
    if shutil.which("patch") is None:
        pytest.skip("the `patch` tool is not installed")
    path = clip_checkpoint(tmp_path / "clip.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPEN_CLIP_C2LIP_DISABLE="1")
    if patched:
        shutil.copytree(Path(open_clip.__file__).parent, tmp_path / "src" / "open_clip",
                        ignore=shutil.ignore_patterns("__pycache__"))
        result = subprocess.run(["patch", "-p1", "-i", str(REPO / "patches" / "open_clip-keep-init-logit-bias.diff")],
                                cwd=tmp_path / "src", capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        env["PYTHONPATH"] = str(tmp_path / "src")
    out = subprocess.run([sys.executable, "-c", _PROBE, str(TINY_CONFIG), str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    _, bias, source = next(line for line in out.stdout.splitlines() if line.startswith("BIAS")).split()
    assert source.startswith(str(tmp_path / "src")) == patched
    assert float(bias) == (-10.0 if patched else 0.0)
    if patched:
        assert f"{path} has no logit_bias: keeping the model's initial logit_bias [-10.0]" in out.stderr
