"""The open_clip / open_clip_train patches: wrapped bindings, create_loss / create_model wrappers,
and upstream behaviour without --c2lip-loss (the generic fixes: test_integration_train_loop.py, test_integration_ddp.py)."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
import open_clip
import open_clip_train.params
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip_c2lip.integration import WRAPPED, open_clip_factory, runtime, train_params
from open_clip_c2lip.config import C2LIPConfig

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.configure(None)
    runtime.pop_messages()


def test_factory_and_package_bindings_are_wrapped_once():
    for name in ("create_model", "create_loss"):
        wrapped = getattr(open_clip.factory, name)
        assert getattr(wrapped, WRAPPED) and getattr(open_clip, name) is wrapped
        assert not getattr(wrapped.__wrapped__, WRAPPED, False)
    open_clip_factory.patch_open_clip(open_clip)  # idempotent
    assert not getattr(open_clip.create_model.__wrapped__, WRAPPED, False)
    # what open_clip_train.main binds with ``from open_clip import ...`` at import time
    from open_clip import create_loss, create_model_and_transforms  # noqa: F401
    assert create_loss is open_clip.factory.create_loss
    assert open_clip_train.params.argparse.ArgumentParser is train_params.C2LIPArgumentParser


def _args(argv):
    args = open_clip_train.params.parse_args(argv)
    args.rank, args.world_size, args.distill = 0, 1, False
    return args


def test_create_loss_without_c2lip_is_upstream():
    for argv, loss_type in (([], ClipLoss), (["--siglip"], SigLipLoss)):
        args = _args(["--model", "C2LIP-Tiny"] + argv)
        loss = open_clip.create_loss(args)
        assert type(loss) is loss_type is type(open_clip.create_loss.__wrapped__(args))


def test_create_loss_with_c2lip_builds_c2lip_loss(monkeypatch):
    import open_clip_c2lip.loss

    calls = []

    class RecordingLoss:
        def __init__(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(open_clip_c2lip.loss, "C2LIPLoss", RecordingLoss)
    args = _args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-npc-weight", "0.25",
                  "--c2lip-xac-weight", "0.5", "--c2lip-xac-temperature", "3", "--c2lip-duplicate-concepts", "ignore"])
    args.rank, args.world_size = 1, 4
    assert isinstance(open_clip.create_loss(args), RecordingLoss)
    assert calls == [dict(npc_weight=0.25, xac_weight=0.5, xac_temperature=3.0, rank=1, world_size=4,
                          duplicate_concepts="ignore")]


def test_create_loss_emits_queued_messages(caplog):
    _args(["--model", "C2LIP-Tiny", "--c2lip-loss"])
    with caplog.at_level("INFO", logger=open_clip_factory.__name__):
        open_clip.create_loss(argparse.Namespace(c2lip_loss=False, distill=False, model="C2LIP-Tiny",
                                                 siglip=True, rank=0, world_size=1, loss_dist_impl=None,
                                                 horovod=False))
    assert any("implies --siglip" in r.getMessage() for r in caplog.records)


@pytest.fixture
def recorded_enable(monkeypatch):
    import open_clip_c2lip.model

    calls = []

    def enable_c2lip(model, concept_mode="text"):
        calls.append((type(model).__name__, concept_mode))
        return model

    monkeypatch.setattr(open_clip_c2lip.model, "enable_c2lip", enable_c2lip)
    return calls


def test_create_model_swaps_only_the_training_model(recorded_enable):
    open_clip.create_model("C2LIP-Tiny")
    assert recorded_enable == []  # runtime inactive: plain model
    _args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-concept-mode", "span"])
    open_clip.create_model_and_transforms("C2LIP-Tiny")
    assert recorded_enable == [("CustomTextCLIP", "span")]
    open_clip.create_model("C2LIP-Tiny", force_image_size=32)
    assert len(recorded_enable) == 2  # the training model, whatever the options
    _args(["--model", "ViT-B-16-SigLIP-C2", "--c2lip-loss"])
    open_clip.create_model("C2LIP-Tiny")  # another model created in the same process
    assert len(recorded_enable) == 2


def test_create_model_without_parse_swaps_when_runtime_configured(recorded_enable):
    runtime.configure(C2LIPConfig(concept_mode="text"))
    open_clip.create_model("C2LIP-Tiny")
    assert recorded_enable == [("CustomTextCLIP", "text")]


_UPSTREAM_PROBE = r"""
import json, sys, torch
torch.set_num_threads(1)
if sys.argv[1] == "plugin":
    import open_clip_c2lip
import open_clip
from open_clip_train.params import parse_args
from open_clip_train.data import get_data
if sys.argv[1] == "upstream":  # plain open_clip does not know C2LIP-Tiny: register its JSON as is
    open_clip.add_model_config(sys.argv[2])
args = parse_args(["--model", "C2LIP-Tiny", "--siglip", "--dataset-type", "synthetic",
                   "--train-num-samples", "8", "--batch-size", "4", "--workers", "0"])
args.rank, args.world_size, args.distill, args.distributed = 0, 1, False, False
torch.manual_seed(0)
model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
    args.model, init_logit_scale=2.3, init_logit_bias=-10, output_dict=True)
tokenizer = open_clip.get_tokenizer(args.model)
data = get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=tokenizer)
images, texts = next(iter(data["train"].dataloader))
print(json.dumps({
    "args": {k: v for k, v in vars(args).items() if not k.startswith("c2lip")},
    "loss": type(open_clip.create_loss(args)).__name__,
    "model": type(model).__name__,
    "state_dict": {k: list(v.shape) for k, v in model.state_dict().items()},
    "batch": [list(images.shape), str(images.dtype), list(texts.shape), str(texts.dtype)],
    "data": sorted(data),
}, default=repr))
"""


@pytest.mark.slow
def test_without_c2lip_loss_upstream_behaviour_is_unchanged():
    env = {k: v for k, v in os.environ.items() if k != "OPEN_CLIP_C2LIP_DISABLE"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    tiny_json = str(REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json")
    procs = {
        "upstream": subprocess.Popen([sys.executable, "-c", _UPSTREAM_PROBE, "upstream", tiny_json],
                                     env={**env, "OPEN_CLIP_C2LIP_DISABLE": "1"}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True),
        "plugin": subprocess.Popen([sys.executable, "-c", _UPSTREAM_PROBE, "plugin"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
        results[name] = json.loads(out.splitlines()[-1])
    upstream, plugin = results["upstream"], results["plugin"]
    assert plugin["args"] == upstream["args"]
    assert plugin["loss"] == upstream["loss"] == "SigLipLoss"
    assert plugin["model"] == upstream["model"] == "CustomTextCLIP"
    assert plugin["state_dict"] == upstream["state_dict"]
    assert plugin["batch"] == upstream["batch"]
    assert upstream["batch"][2] == [4, 32]
    assert plugin["data"] == upstream["data"]
