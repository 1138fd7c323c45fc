"""Real 2-process data-parallel C2LIP training: ``torchrun --nproc_per_node 2 -m open_clip_train.main``
on CPU (gloo), activation via the installed ``.pth``, vs one process on the union batch.

What must match, and why this check is exact: the data is a CSV of 8 samples. With 2 processes,
open_clip_train's ``DistributedSampler`` gives each rank 4 of them (``--batch-size 4``); the single
process takes all 8 as one batch (``--batch-size 8``). Both therefore run ONE optimizer step on the
same 8 samples: the union batch. Per-sample tensors are fixed (``--aug-cfg scale='(1.0, 1.0)'`` on
square images makes the random crop the whole image), the sigmoid losses are invariant to the order
of the batch, and C2LIPLoss is defined on the union batch (each rank scores its images against the
all-gathered texts and concepts and returns ``W`` times its share, so DDP's gradient average equals
the union gradient). The optimizer is plain SGD (``--opt timm/momentum --momentum 0 --wd 0``), so the
update is ``lr * gradient``: linear, unlike AdamW's sign-like first step, and it shows gradient
errors at their size. The init is the same in both runs (``--seed``; DDP also broadcasts rank 0's).

Sensitivity: the test recomputes, in this process from the same init and data, (a) the union-batch
SGD step, which must reproduce the single-process checkpoint (so the test's replica is right), and
(b) the step that a *wrong* distributed loss would give — each rank using only its local negatives
(``world_size=1`` loss on each rank's 4 samples, DDP-averaged) — and (c) a missing ``x W`` gradient
scale (half the update). Both wrong variants must differ from the 2-process checkpoint by far more
than the tolerance the correct one meets.
"""
import json
import os
import site
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_dir

REPO = Path(__file__).resolve().parents[1]
COCO_CAPTIONS = data_dir() / "coco_captions_val2017.json"
NUM_SAMPLES = 8
WORLD_SIZE = 2
IMAGE_SIZE = 64
LR = 0.1
SEED = 0
RUN_TIMEOUT = 600
LOSS_KEYS = ("contrastive_loss", "npc_loss", "xac_loss")

torch.set_num_threads(1)


pytestmark = pytest.mark.slow  # torchrun training runs


@pytest.fixture(scope="module", autouse=True)
def _coco_captions_present(real_data):
    """The runs train on real COCO captions (skipped, saying where to get them, when absent)."""
    real_data(COCO_CAPTIONS.name)


def build_csv(root: Path) -> Path:
    """8 synthetic square JPEGs with real COCO captions; concepts = two word pairs of each caption
    (sub-phrases, so their spans exist; no spaCy needed here, extraction is tested elsewhere)."""
    import pandas as pd
    from PIL import Image

    with open(COCO_CAPTIONS) as f:
        annotations = json.load(f)["annotations"]
    captions, seen = [], set()
    for annotation in annotations:
        if annotation["image_id"] not in seen and len(captions) < NUM_SAMPLES:
            seen.add(annotation["image_id"])
            captions.append(annotation["caption"].strip())
    rng = np.random.default_rng(1)
    rows = []
    for index, caption in enumerate(captions):
        path = root / f"{index:03d}.jpg"
        grid = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).save(path, quality=95)
        words = caption.lower().rstrip(".").split()
        rows.append({"filepath": str(path), "title": caption,
                     "concepts": json.dumps([" ".join(words[0:2]), " ".join(words[-2:])])})
    table = root / "train.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def write_init_checkpoint(path: Path) -> None:
    """Random C2LIP-Tiny weights with ``logit_bias = 0`` that both runs start from (``--pretrained``).

    With SigLIP's init bias of -10 every negative pair has sigmoid(z) ~ 5e-5, so at init the
    negatives, and hence which negatives a rank sees, barely move the gradient; at bias 0 they
    weigh as much as the positives and the cross-rank terms are tested at full strength."""
    import open_clip
    import open_clip_c2lip  # noqa: F401  registers C2LIP-Tiny

    torch.manual_seed(SEED)
    model = open_clip.create_model("C2LIP-Tiny", init_logit_scale=np.log(10), init_logit_bias=0.0)
    torch.save({"state_dict": model.state_dict()}, path)


def plugin_env(root: Path) -> dict:
    """1 thread per process; plugin active via its .pth (emulated with a sitecustomize adding
    ``patches/`` as a site dir if the package's .pth is not installed here)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OPEN_CLIP_C2LIP_DISABLE", None)
    if not any((Path(p) / "open_clip_c2lip.pth").is_file() for p in site.getsitepackages()):
        shim = root / "pth_shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(REPO / 'patches')!r})\n")
        env["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO), env.get("PYTHONPATH", "")])
    return env


def train_args(table: Path, init: Path, logs: Path, name: str, batch_size: int) -> list:
    return [
        "--logs", str(logs), "--name", name, "--model", "C2LIP-Tiny", "--pretrained", str(init), "--c2lip-loss",
        "--train-data", str(table), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--c2lip-concepts-key", "concepts",
        "--batch-size", str(batch_size), "--epochs", "1", "--workers", "0", "--device", "cpu",
        "--precision", "fp32", "--seed", str(SEED), "--aug-cfg", "scale=(1.0, 1.0)",
        "--opt", "timm/momentum", "--momentum", "0", "--wd", "0", "--lr", str(LR),
        "--warmup", "0", "--lr-scheduler", "const", "--log-every-n-steps", "1",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(argv, env, log_file: Path) -> subprocess.Popen:
    out = open(log_file, "w")
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO))
    proc.log_file, proc.out = log_file, out
    return proc


def finish(proc: subprocess.Popen) -> str:
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.out.close()
    output = proc.log_file.read_text()
    assert proc.returncode == 0, f"{' '.join(proc.args)}\nexit {proc.returncode}:\n{output[-6000:]}"
    return output


def state_dict(checkpoint: Path) -> dict:
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    table = build_csv(root)
    init = root / "init.pt"
    write_init_checkpoint(init)
    logs = root / "logs"
    env = plugin_env(root)
    if Path("/sys/class/net/lo").exists():  # gloo otherwise picks the interface of the hostname
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # torchrun's own parser takes `--logs DIR` for an ambiguous abbreviation of --logs-specs
    # (`--logs=DIR` too); a `--` right after the module ends torchrun's options and is dropped.
    launcher = Path(sys.executable).with_name("torchrun")  # the console script of this environment
    launcher = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    torchrun = launcher + ["--nnodes", "1", "--nproc_per_node", str(WORLD_SIZE), "--master_addr", "127.0.0.1",
                           "--master_port", str(free_port()), "-m", "open_clip_train.main", "--"]
    ddp = start(torchrun + train_args(table, init, logs, "ddp", NUM_SAMPLES // WORLD_SIZE) + ["--dist-backend", "gloo"],
                env, root / "ddp.stdout")
    single = start([sys.executable, "-m", "open_clip_train.main",
                    *train_args(table, init, logs, "single", NUM_SAMPLES)], env, root / "single.stdout")
    try:
        outputs = {"ddp": finish(ddp), "single": finish(single)}
    finally:
        for proc in (ddp, single):  # after a failure above, do not leave the other one running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"root": root, "table": table, "init": init, "logs": logs, "outputs": outputs}


def read_params(run_dir: Path) -> dict:
    return dict(line.split(": ", 1) for line in (run_dir / "params.txt").read_text().splitlines())


def test_torchrun_two_processes_train_c2lip(runs):
    run_dir = runs["logs"] / "ddp"
    params = read_params(run_dir)
    assert params["world_size"] == "2" and params["distributed"] == "True" and params["c2lip_loss"] == "True"
    log = (run_dir / "out.log").read_text()
    train_lines = [line for line in log.splitlines() if "Train Epoch: 0" in line]
    assert train_lines and all(f"{key.capitalize()}:" in train_lines[-1] for key in LOSS_KEYS)
    assert f"[{NUM_SAMPLES}/{NUM_SAMPLES} (100%)]" in train_lines[-1]  # one step covers both ranks' samples
    assert (run_dir / "checkpoints" / "epoch_1.pt").is_file()


@pytest.fixture(scope="module")
def replica(runs):
    """Init model, the 8 samples (dataset order) and the per-rank split, rebuilt in this process
    through the same upstream code (parse_args, create_model_and_transforms, get_data)."""
    import open_clip
    import open_clip_c2lip  # noqa: F401  hooks (no-op if the .pth already installed them)
    from open_clip_train.data import get_data
    from open_clip_train.params import parse_args

    args = parse_args(train_args(runs["table"], runs["init"], runs["root"] / "unused", "replica", NUM_SAMPLES))
    try:
        args.distributed, args.rank, args.world_size, args.local_rank = False, 0, 1, 0
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            args.model, args.pretrained, precision="fp32", device="cpu", output_dict=True,
            aug_cfg=args.aug_cfg, init_logit_scale=np.log(10), init_logit_bias=-10)
        tokenizer = open_clip.get_tokenizer(args.model)
        dataset = get_data(args, (preprocess_train, preprocess_val), epoch=0, tokenizer=tokenizer)[
            "train"].dataloader.dataset
        samples = [dataset[i] for i in range(len(dataset))]
        assert len(samples) == NUM_SAMPLES
    finally:
        parse_args([])  # parsing without --c2lip-loss clears the process-wide C2LIP state
    images = torch.stack([s[0] for s in samples])
    texts = torch.stack([s[1] for s in samples])
    assert texts.ndim == 3  # packed [B, 1+2P, L]
    # open_clip_train's DistributedSampler (shuffle, seed 0) split of epoch 0
    splits = []
    for rank in range(WORLD_SIZE):
        sampler = torch.utils.data.DistributedSampler(range(NUM_SAMPLES), num_replicas=WORLD_SIZE, rank=rank)
        sampler.set_epoch(0)
        splits.append(list(sampler))
    return {"model": model, "images": images, "texts": texts, "splits": splits}


def sgd_step(model, images, texts, batches) -> dict:
    """Weights after one SGD step (lr ``LR``) on the mean of the gradients of ``C2LIPLoss`` with
    ``world_size=1`` over each index list in ``batches``, and upstream's logit-scale clamp."""
    import copy
    import math
    from open_clip_c2lip.loss import C2LIPLoss

    model = copy.deepcopy(model).train()
    loss_fn = C2LIPLoss()
    model.zero_grad()
    for index in batches:
        out = model(images[index], texts[index])
        (loss_fn(**out) / len(batches)).backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= LR * param.grad
        model.logit_scale.clamp_(0, math.log(100))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def update_error(weights: dict, reference: dict, init: dict) -> float:
    """Largest per-tensor relative error of an update: ``max_k ||w_k - ref_k|| / ||ref_k - init_k||``.

    Per tensor, so a small tensor's error is not hidden by a large one's update; tensors the
    reference step left unchanged must be unchanged in ``weights`` too."""
    assert weights.keys() == reference.keys() == init.keys()
    worst = 0.0
    for key in reference:
        error = (weights[key] - reference[key]).norm().item()
        step = (reference[key] - init[key]).norm().item()
        if step == 0.0:
            assert error == 0.0, f"{key}: changed where the reference step did not"
            continue
        worst = max(worst, error / step)
    return worst


def test_two_processes_equal_one_process_on_union_batch(runs, replica):
    ddp = state_dict(runs["logs"] / "ddp" / "checkpoints" / "epoch_1.pt")
    single = state_dict(runs["logs"] / "single" / "checkpoints" / "epoch_1.pt")
    init = {k: v.detach().clone() for k, v in replica["model"].state_dict().items()}
    assert init["logit_bias"].item() == 0.0  # started from the --pretrained init, not the -10 init
    changed = [k for k in init if not torch.equal(single[k], init[k])]
    assert len(changed) > 0.9 * len(init)  # the step moved (almost) every tensor
    tolerance = 5e-5  # fp32 summation order (gloo all-reduce, gathers); measured ~8e-6

    # the replica is right: its union-batch SGD step reproduces the single-process run
    union = sgd_step(replica["model"], replica["images"], replica["texts"], [list(range(NUM_SAMPLES))])
    assert update_error(union, single, init) <= tolerance

    # the claim: 2 processes x 4 samples == 1 process x 8 samples, for every tensor
    assert update_error(ddp, single, init) <= tolerance

    # sensitivity: a loss with only local negatives on each rank, or without the x W gradient scale
    # (half the update after DDP's averaging), fails the same check by orders of magnitude
    local_only = sgd_step(replica["model"], replica["images"], replica["texts"], replica["splits"])
    assert update_error(local_only, single, init) > 100 * tolerance
    half_scale = {k: init[k] + 0.5 * (single[k] - init[k]) for k in init}
    assert update_error(half_scale, single, init) > 100 * tolerance
