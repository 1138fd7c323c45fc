"""End-to-end C2LIP training through the unmodified ``python -m open_clip_train.main`` (activation via
the installed ``open_clip_c2lip.pth``), on CPU, with C2LIP-Tiny at 64 px.

Data: 16 synthetic 64x64 JPEGs with real COCO val2017 captions, written as webdataset shards by
``open_clip_c2lip.fileio.shards.write_shards`` and as a CSV, then annotated by the concepts CLI
(``open_clip_c2lip.concepts.main``, spaCy noun chunks). Runs (independent ones run concurrently):

- ``wds``: webdataset shards, ``--accum-freq 2 --grad-checkpointing --precision amp_bf16``, 1 worker;
- ``csv_a``: CSV (8 rows, ``--c2lip-concepts-key concepts``), fp32, 3 epochs;
- ``csv_b`` + ``csv_b_resume``: the same for 2 epochs, then ``--resume .../epoch_2.pt`` for epoch 3.

Then a plugin-free subprocess (``OPEN_CLIP_C2LIP_DISABLE=1``) loads ``csv_a``'s checkpoint with plain
``open_clip.create_model('C2LIP-Tiny', pretrained=epoch_3.pt)`` (strict), the config registered with
the plain ``open_clip.add_model_config(<path to C2LIP-Tiny.json>)`` since C2LIP-Tiny is no builtin.

Determinism used by the resume check: ``--aug-cfg scale='(1.0, 1.0)'`` on square images makes
open_clip's RandomResizedCrop always take the whole image (the only crop of full area whose aspect
ratio fits a square is the square itself; otherwise torchvision falls back to the same center crop),
so every sample's tensors are fixed. ``train_num_samples`` equals the batch size, so each epoch is one
step on the same 8 samples; only their order inside the batch depends on the RNG (which differs after
a resume), and the sigmoid losses are sums over all pairs, i.e. invariant to permuting the batch. So
the resumed run must reproduce the uninterrupted run's per-step losses and weights up to float
summation order. ``--lr-scheduler const --warmup 0`` because a cosine schedule's length depends on
``--epochs`` (2 vs 3) and would differ by design. The check runs on the CSV path. (With the plugin
the order itself is a function of seed and epoch, ``open_clip_c2lip.integration.data_order``, so a resume also sees
the same batches; ``tests/test_train_reproducible.py`` checks same seed -> same numbers.)
"""
import json
import math
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import data_dir
from tar_fixtures import write_tar

REPO = Path(__file__).resolve().parents[1]
COCO_CAPTIONS = data_dir() / "coco_captions_val2017.json"
TINY_CONFIG = REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
LOSS_KEYS = ("contrastive_loss", "npc_loss", "xac_loss")
NUM_SAMPLES = 16  # webdataset: 2 shards of 8
CSV_ROWS = 8      # csv: one batch of 8
IMAGE_SIZE = 64
RUN_TIMEOUT = 600

torch.set_num_threads(1)


pytestmark = pytest.mark.slow  # training runs


@pytest.fixture(scope="module", autouse=True)
def _coco_captions_present(real_data):
    """The runs train on real COCO captions (skipped, saying where to get them, when absent)."""
    real_data(COCO_CAPTIONS.name)


# ------------------------------------------------------------------------------------------------
# data

def coco_captions(count: int):
    with open(COCO_CAPTIONS) as f:
        annotations = json.load(f)["annotations"]
    captions, seen_images = [], set()
    for annotation in annotations:  # one caption per image, file order
        if annotation["image_id"] not in seen_images:
            seen_images.add(annotation["image_id"])
            captions.append(annotation["caption"].strip())
        if len(captions) == count:
            return captions
    raise ValueError(f"{COCO_CAPTIONS}: fewer than {count} images")


def synthetic_images(count: int):
    """Distinct square RGB images: a seeded 8x8 colour grid scaled to 64x64 (JPEG-friendly)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grids = rng.integers(0, 256, size=(count, 8, 8, 3), dtype=np.uint8)
    return [Image.fromarray(grid).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST) for grid in grids]


def build_data(root: Path) -> dict:
    """Raw shards + CSV, annotated by the concepts CLI into ``root/annotated``."""
    from open_clip_c2lip import concepts
    from open_clip_c2lip.fileio import shards

    captions = coco_captions(NUM_SAMPLES)
    images = synthetic_images(NUM_SAMPLES)
    image_dir = root / "images"
    image_dir.mkdir()
    paths = []
    for index, image in enumerate(images):
        paths.append(image_dir / f"{index:03d}.jpg")
        image.save(paths[-1], quality=95)
    shard_paths = shards.write_shards(
        ({"jpg": path, "txt": caption} for path, caption in zip(paths, captions)),
        output_dir=str(root / "raw"), prefix="train", samples_per_shard=NUM_SAMPLES // 2)
    assert len(shard_paths) == 2

    import pandas as pd
    raw_csv = root / "raw" / "train.csv"
    pd.DataFrame({"filepath": [str(p) for p in paths[:CSV_ROWS]], "title": captions[:CSV_ROWS]}).to_csv(
        raw_csv, index=False)

    annotated = root / "annotated"
    status = concepts.main([str(root / "raw" / "train-{000000..000001}.tar"), str(raw_csv),
                            "--output-dir", str(annotated), "--csv-separator", ",", "--quiet"])
    assert status == 0
    return {
        "shards": str(annotated / "train-{000000..000001}.tar"),
        "csv": str(annotated / "train.csv"),
        "captions": captions,
    }


# ------------------------------------------------------------------------------------------------
# processes

def subprocess_env(root: Path, plugin: bool = True) -> dict:
    """Environment for a child process: 1 thread; the plugin active through its ``.pth`` (emulated
    with a ``sitecustomize`` adding ``patches/`` as a site dir when the package's .pth is not
    installed in this environment), or disabled with ``OPEN_CLIP_C2LIP_DISABLE=1``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("OPEN_CLIP_C2LIP_DISABLE", None)
    if not plugin:
        env["OPEN_CLIP_C2LIP_DISABLE"] = "1"
        return env
    installed = any((Path(p) / "open_clip_c2lip.pth").is_file() for p in site.getsitepackages())
    if not installed:
        shim = root / "pth_shim"
        shim.mkdir(exist_ok=True)
        (shim / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(REPO / 'patches')!r})\n")
        env["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO), env.get("PYTHONPATH", "")])
    return env


def common_train_args(logs: Path, name: str) -> list:
    return [
        "--logs", str(logs), "--name", name, "--model", "C2LIP-Tiny", "--c2lip-loss",
        "--device", "cpu", "--seed", "0", "--report-to", "tensorboard", "--log-every-n-steps", "1",
        "--warmup", "0", "--lr-scheduler", "const", "--lr", "1e-3", "--aug-cfg", "scale=(1.0, 1.0)",
        "--save-frequency", "1",
    ]


def csv_train_args(data: dict, logs: Path, name: str, epochs: int) -> list:
    return common_train_args(logs, name) + [
        "--train-data", data["csv"], "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--c2lip-concepts-key", "concepts",
        "--batch-size", str(CSV_ROWS), "--workers", "0", "--precision", "fp32", "--epochs", str(epochs),
    ]


class Run:
    """A child process writing its output to a file; ``wait()`` returns self."""

    started = []  # every Run of this module, so a failing fixture can stop the rest

    def __init__(self, argv: list, env: dict, log_file: Path, run_dir: Path = None):
        self.argv, self.log_file, self.run_dir = argv, log_file, run_dir
        self._out = open(log_file, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=str(REPO))
        Run.started.append(self)

    @classmethod
    def kill_unfinished(cls) -> None:
        for run in cls.started:
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
        cls.started.clear()

    def wait(self) -> "Run":
        try:
            self.proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._out.close()
        self.returncode = self.proc.returncode
        self.output = self.log_file.read_text()
        return self

    def check(self) -> "Run":
        assert self.returncode == 0, f"{' '.join(self.argv)}\nexit {self.returncode}:\n{self.output[-6000:]}"
        return self


def launch_training(root: Path, logs: Path, name: str, args: list) -> Run:
    argv = [sys.executable, "-m", "open_clip_train.main", *args]
    return Run(argv, subprocess_env(root), root / f"{name}.stdout", logs / name)


PLAIN_LOAD_SCRIPT = r"""
import os
import sys
import time
import torch
import open_clip

assert "open_clip_c2lip" not in sys.modules, "the plugin must not be active here"
config, checkpoint, inputs, output, go = sys.argv[1:6]
deadline = time.time() + 600
while not os.path.exists(go):  # the test writes it once the training run has finished
    if time.time() > deadline:
        sys.exit("timed out waiting for " + go)
    time.sleep(0.2)
if open(go).read() != "go":
    sys.exit(0)
open_clip.add_model_config(config)  # plain open_clip API: C2LIP-Tiny is not a builtin name
model = open_clip.create_model("C2LIP-Tiny", pretrained=checkpoint)  # load_checkpoint(strict=True)
model.eval()
batch = torch.load(inputs)
with torch.no_grad():
    torch.save({
        "image": model.encode_image(batch["images"], normalize=True),
        "text": model.encode_text(batch["texts"], normalize=True),
        "class": type(model).__name__,
        "plugin_loaded": "open_clip_c2lip" in sys.modules,
    }, output)
"""


# ------------------------------------------------------------------------------------------------
# results

def tensorboard_scalars(run_dir: Path) -> dict:
    """``{tag: {step: value}}`` from a run's tensorboard event files."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                     size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: {event.step: event.value for event in accumulator.Scalars(tag)}
            for tag in accumulator.Tags()["scalars"]}


def logged_losses(run_dir: Path) -> list:
    """Per logged step of ``out.log``: ``{loss_name: current value}`` (open_clip prints ``Name: val (avg)``)."""
    steps = []
    for line in (run_dir / "out.log").read_text().splitlines():
        if "Train Epoch:" in line:
            steps.append({name.lower(): float(value)
                          for name, value in re.findall(r"(\w+_loss): ([-+0-9.eE]+) \(", line)})
    return steps


def state_dict(checkpoint: Path) -> dict:
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def frobenius_diff(a: dict, b: dict) -> float:
    """``||a - b||`` over all tensors of two state dicts."""
    assert a.keys() == b.keys()
    return math.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum().item() for k in a))


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = build_data(root)
    logs = root / "logs"
    wds_args = common_train_args(logs, "wds") + [
        "--train-data", data["shards"], "--dataset-type", "webdataset", "--train-num-samples", str(NUM_SAMPLES),
        "--batch-size", "4", "--accum-freq", "2", "--grad-checkpointing", "--precision", "amp_bf16",
        "--workers", "1", "--epochs", "1",
    ]
    try:
        runs = {
            "wds": launch_training(root, logs, "wds", wds_args),
            "csv_a": launch_training(root, logs, "csv_a", csv_train_args(data, logs, "csv_a", epochs=3)),
            "csv_b": launch_training(root, logs, "csv_b", csv_train_args(data, logs, "csv_b", epochs=2)),
        }
        # the plugin-free loader starts now (its imports overlap the training runs) and waits for the
        # go file, written once csv_a's last checkpoint is complete
        inputs, output, go = root / "embed_inputs.pt", root / "plain_embeddings.pt", root / "plain_load.go"
        make_embedding_inputs(inputs)
        argv = [sys.executable, "-c", PLAIN_LOAD_SCRIPT, str(TINY_CONFIG),
                str(logs / "csv_a" / "checkpoints" / "epoch_3.pt"), str(inputs), str(output), str(go)]
        plain_load = Run(argv, subprocess_env(root, plugin=False), root / "plain_load.stdout")
        plain_load.inputs, plain_load.result = inputs, output
        for run in runs.values():
            run.wait()

        phase2 = {}
        if runs["csv_b"].returncode == 0:
            resume = str(logs / "csv_b" / "checkpoints" / "epoch_2.pt")
            phase2["csv_b_resume"] = launch_training(
                root, logs, "csv_b_resume", csv_train_args(data, logs, "csv_b_resume", epochs=3) + ["--resume", resume])
        go.with_suffix(".tmp").write_text("go" if runs["csv_a"].returncode == 0 else "stop")
        os.replace(go.with_suffix(".tmp"), go)  # atomic: the loader never reads a half-written file
        phase2["plain_load"] = plain_load
        for run in phase2.values():
            run.wait()
        if runs["csv_a"].returncode != 0:
            del phase2["plain_load"]
        runs.update(phase2)
    finally:
        Run.kill_unfinished()  # e.g. the loader still waiting after an error above
    return {"root": root, "logs": logs, "data": data, "runs": runs}


def get_run(e2e, name: str) -> Run:
    if name not in e2e["runs"]:
        pytest.fail(f"run {name!r} was not started because a run it depends on failed")
    return e2e["runs"][name].check()


def make_embedding_inputs(path: Path) -> None:
    import open_clip

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1
    tokenizer = open_clip.tokenize  # C2LIP-Tiny uses open_clip's CLIP BPE tokenizer
    context_length = json.loads(TINY_CONFIG.read_text())["text_cfg"]["context_length"]
    texts = tokenizer(coco_captions(3), context_length=context_length)
    torch.save({"images": images, "texts": texts}, path)


# ------------------------------------------------------------------------------------------------
# tests

@pytest.mark.parametrize("name", ["wds", "csv_a"])
def test_training_logs_c2lip_losses(e2e, name):
    """The three loss terms reach out.log and tensorboard, finite, at every logged step; checkpoints
    are written for every epoch."""
    run = get_run(e2e, name)
    scalars = tensorboard_scalars(run.run_dir)
    expected_steps = {"wds": 2, "csv_a": 3}[name]  # wds: 16 samples / (4 x accum 2); csv: 3 epochs x 1
    for key in LOSS_KEYS:
        values = scalars[f"train/{key}"]
        assert sorted(values) == list(range(expected_steps)), (key, values)
        assert all(math.isfinite(v) for v in values.values())
    steps = logged_losses(run.run_dir)
    assert len(steps) == expected_steps
    for step, logged in enumerate(steps):
        assert set(logged) == set(LOSS_KEYS)
        for key in LOSS_KEYS:  # out.log prints 5 significant digits of the same value
            assert logged[key] == pytest.approx(scalars[f"train/{key}"][step], rel=1e-4, abs=1e-6)
    epochs = {"wds": 1, "csv_a": 3}[name]
    checkpoints = sorted(p.name for p in (run.run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints == [f"epoch_{e}.pt" for e in range(1, epochs + 1)]


def test_logged_losses_are_the_c2lip_losses_of_the_csv_batch(e2e):
    """The first logged step of ``csv_a`` equals C2LIPLoss computed here on the same init weights and
    the same 8 samples, packed directly from the annotated CSV's concepts column with TextPacker
    (not through open_clip_c2lip.integration): the training pipeline feeds the loss the concepts from the
    data, and logs each term."""
    import pandas as pd
    import open_clip
    from PIL import Image
    from open_clip_c2lip.loss import C2LIPLoss
    from open_clip_c2lip.model import enable_c2lip
    from open_clip_c2lip.packing import TextPacker

    run = get_run(e2e, "csv_a")
    logged = {key: tensorboard_scalars(run.run_dir)[f"train/{key}"][0] for key in LOSS_KEYS}
    table = pd.read_csv(e2e["data"]["csv"], dtype=str, keep_default_na=False)
    assert len(table) == CSV_ROWS
    torch.manual_seed(0)  # main.py: random_seed(args.seed=0, 0) right before model creation
    model, preprocess_train, _ = open_clip.create_model_and_transforms(
        "C2LIP-Tiny", output_dict=True, init_logit_scale=np.log(10), init_logit_bias=-10,
        aug_cfg={"scale": (1.0, 1.0)})
    enable_c2lip(model).train()
    packer = TextPacker(open_clip.get_tokenizer("C2LIP-Tiny"), max_concepts=8)
    concepts = [json.loads(cell) for cell in table["concepts"]]
    assert all(concepts) and all(isinstance(c, str) for cs in concepts for c in cs)
    texts = packer(list(zip(table["title"], concepts)))
    images = torch.stack([preprocess_train(Image.open(path)) for path in table["filepath"]])
    with torch.no_grad():
        losses = C2LIPLoss(npc_weight=1.0, xac_weight=0.01)(**model(images, texts), output_dict=True)
    for key in LOSS_KEYS:
        assert losses[key].item() == pytest.approx(logged[key], rel=1e-5), (key, losses, logged)


def test_wds_run_uses_accum_grad_checkpointing_amp_bf16(e2e):
    run = get_run(e2e, "wds")
    params = dict(line.split(": ", 1) for line in (run.run_dir / "params.txt").read_text().splitlines())
    assert (params["accum_freq"], params["grad_checkpointing"], params["precision"]) == ("2", "True", "amp_bf16")
    assert params["c2lip_loss"] == "True" and params["siglip"] == "True"
    # the packer's counters (logged by the DataLoader worker at the end of its pass): every sample's
    # concepts came from the shards' json written by the concepts CLI, none from on-the-fly spaCy
    from braceexpand import braceexpand
    from open_clip_c2lip.fileio.tar import read_shard

    summaries = re.findall(r"C2LIP text packer \[worker 0/1.*?\].*?: (samples=.*)", run.output)
    assert summaries, run.output[-3000:]
    counters = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", summaries[-1])}
    annotated = [json.loads(sample["json"])["concepts"]
                 for path in braceexpand(e2e["data"]["shards"]) for sample in read_shard(path)]
    assert counters["samples"] == NUM_SAMPLES == len(annotated)
    assert counters["concepts"] == sum(min(len(c), 8) for c in annotated)
    assert counters["extracted_on_the_fly"] == 0 and counters["spans_not_found"] == 0
    sd = state_dict(run.run_dir / "checkpoints" / "epoch_1.pt")
    assert all(torch.isfinite(v.float()).all() for v in sd.values())


def test_resume_reproduces_uninterrupted_run(e2e):
    """Run A (3 epochs) vs run B (2 epochs, then ``--resume epoch_2.pt`` to epoch 3): same step count,
    same per-step losses, same final weights (see the module docstring for why this is exact)."""
    run_a, run_b, run_b_resume = (get_run(e2e, n) for n in ("csv_a", "csv_b", "csv_b_resume"))
    assert "=> resuming checkpoint" in (run_b_resume.run_dir / "out.log").read_text()
    losses_a = tensorboard_scalars(run_a.run_dir)
    losses_b = tensorboard_scalars(run_b.run_dir)
    losses_b_resume = tensorboard_scalars(run_b_resume.run_dir)
    for key in LOSS_KEYS:
        tag = f"train/{key}"
        a = losses_a[tag]
        b = {**losses_b[tag], **losses_b_resume[tag]}
        assert sorted(losses_b_resume[tag]) == [2]  # the resumed run continues at global step 2
        assert sorted(b) == sorted(a) == [0, 1, 2]
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7), (key, step, a, b)
        # and training moved the loss, so equal values are not a constant
    total = {s: sum(losses_a[f"train/{k}"][s] for k in LOSS_KEYS) for s in range(3)}
    assert abs(total[2] - total[0]) > 1e-3, total

    # Weights: compared as a whole (relative Frobenius norm), not per element. Attention key biases
    # have a mathematically zero gradient (softmax is shift-invariant), so theirs is pure rounding
    # noise that AdamW normalizes into steps of ~lr: those elements differ at the 1e-4 level between
    # any two batch orders. A resume that lost the optimizer state (fresh AdamW moments) moves every
    # weight differently and gives a relative difference of order 1.
    final_a = state_dict(run_a.run_dir / "checkpoints" / "epoch_3.pt")
    final_b = state_dict(run_b_resume.run_dir / "checkpoints" / "epoch_3.pt")
    after_step_1 = state_dict(run_a.run_dir / "checkpoints" / "epoch_1.pt")
    moved = frobenius_diff(final_a, after_step_1)
    assert moved > 1e-3
    assert frobenius_diff(final_a, final_b) <= 1e-3 * moved
    # the optimizer state was restored too (a fresh AdamW at epoch 3 would take a different step)
    opt_a = torch.load(run_a.run_dir / "checkpoints" / "epoch_3.pt", map_location="cpu", weights_only=True)
    opt_b = torch.load(run_b_resume.run_dir / "checkpoints" / "epoch_3.pt", map_location="cpu", weights_only=True)
    steps_a = {s["step"].item() for s in opt_a["optimizer"]["state"].values()}
    steps_b = {s["step"].item() for s in opt_b["optimizer"]["state"].values()}
    assert steps_a == steps_b == {3.0}


def test_checkpoint_is_drop_in_for_plain_open_clip(e2e):
    """A C2 training checkpoint loads strictly in a plugin-free process and embeds exactly as with
    the plugin (the C2 class, in eval mode, included)."""
    import open_clip
    from open_clip_c2lip.model import enable_c2lip

    run = get_run(e2e, "plain_load")
    plain = torch.load(run.result, weights_only=True)
    assert plain["class"] == "CustomTextCLIP" and not plain["plugin_loaded"]
    checkpoint = e2e["logs"] / "csv_a" / "checkpoints" / "epoch_3.pt"
    model = open_clip.create_model("C2LIP-Tiny", pretrained=str(checkpoint), output_dict=True).eval()
    enable_c2lip(model)
    batch = torch.load(run.inputs, weights_only=True)
    with torch.no_grad():
        image = model.encode_image(batch["images"], normalize=True)
        text = model.encode_text(batch["texts"], normalize=True)
        out = model(batch["images"], batch["texts"])
    assert torch.equal(image, plain["image"]) and torch.equal(text, plain["text"])
    torch.testing.assert_close(out["image_features"], plain["image"], rtol=0, atol=1e-6)
    torch.testing.assert_close(out["text_features"], plain["text"], rtol=0, atol=1e-6)


def test_training_process_reports_data_counters_every_epoch(e2e):
    """The training process logs the counters summed over its DataLoader workers at the end of every
    epoch (CSV included, far below the packer's 10,000-sample log interval)."""
    def reports(run, kind):
        found = re.findall(rf"C2LIP data counters, {kind} (\d+): (.*)", run.output)
        return [(int(epoch), {k: int(v) for k, v in re.findall(r"(\w[\w ]*?)=(\d+)", text)}) for epoch, text in found]

    csv_a = get_run(e2e, "csv_a")
    per_epoch = reports(csv_a, "epoch")
    assert [epoch for epoch, _ in per_epoch] == [0, 1, 2], csv_a.output[-3000:]
    assert all(c["packed"] == CSV_ROWS and c["extracted_on_the_fly"] == 0 for _, c in per_epoch)
    assert reports(csv_a, "run total to epoch")[-1][1]["packed"] == 3 * CSV_ROWS
    wds = get_run(e2e, "wds")
    (epoch, counts), = reports(wds, "epoch")
    assert epoch == 0 and counts["shards read"] == 2 and counts["samples read"] == NUM_SAMPLES
    assert counts["packed"] == NUM_SAMPLES and counts["missing"] == counts["skipped"] == counts["rollovers"] == 0


# ------------------------------------------------------------------------------------------------
# bad data: training never hangs; missing shards are named and counted (a second set of runs)

BAD_RUN_TIMEOUT = 300  # a run that does not end by then hangs


def _mostly_rejected_shard(path: Path, captions: list, images: list) -> str:
    """8 samples of which 5 are rejected: invalid json, json list, concepts a string, empty caption,
    non-UTF-8 caption. The 3 good ones carry concepts."""
    import io

    def jpeg(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    members = []
    for index in range(3):
        members += [(f"good{index}.jpg", jpeg(images[index])), (f"good{index}.txt", captions[index].encode()),
                    (f"good{index}.json", json.dumps({"concepts": captions[index].split(" ")[:2]}).encode())]
    bad = {"brokenjson": (b"a cat", b"{oops"), "listjson": (b"a cat", b'["a cat"]'),
           "strconcepts": (b"a cat", b'{"concepts": "a cat"}'), "emptycaption": (b"  ", None),
           "latin1": ("un caf\xe9".encode("latin-1"), None)}
    for index, (key, (text, meta)) in enumerate(bad.items()):
        members += [(f"{key}.jpg", jpeg(images[3 + index])), (f"{key}.txt", text)]
        members += [(f"{key}.json", meta)] if meta is not None else []
    return write_tar(path, members)


@pytest.fixture(scope="module")
def bad_data_runs(tmp_path_factory):
    from open_clip_c2lip.fileio.shards import write_shards

    root = tmp_path_factory.mktemp("e2e_bad")
    logs = root / "logs"
    captions, images = coco_captions(NUM_SAMPLES), synthetic_images(NUM_SAMPLES)
    stuck_shard = _mostly_rejected_shard(root / "issue-000000.tar", captions, images)
    samples = [{"jpg": images[i], "txt": captions[i], "json": {"concepts": captions[i].split(" ")[:2]}}
               for i in range(NUM_SAMPLES)]
    paths = write_shards(samples, str(root / "gaps"), prefix="train", samples_per_shard=NUM_SAMPLES // 2)
    os.rename(paths[1], paths[1].replace("000001", "000002"))  # shard 1 is missing from the folder

    def run(name, extra):
        args = common_train_args(logs, name) + [
            "--dataset-type", "webdataset", "--batch-size", "4", "--workers", "1", "--epochs", "1",
            "--precision", "fp32"] + extra
        return launch_training(root, logs, name, args)

    try:
        runs = {
            "stuck": run("stuck", ["--train-data", stuck_shard, "--train-num-samples", "8"]),
            "gaps": run("gaps", ["--train-data", str(root / "gaps" / "train-{000000..000002}.tar"),
                                 "--train-num-samples", str(NUM_SAMPLES + NUM_SAMPLES // 2)]),
        }
        for proc in runs.values():
            try:
                proc.proc.wait(timeout=BAD_RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.proc.kill()  # it hangs: returncode -9, the test fails
            proc.wait()
    finally:
        Run.kill_unfinished()
    return {"root": root, "runs": runs, "stuck_shard": stuck_shard,
            "missing_shard": str(root / "gaps" / "train-000001.tar")}


def test_shard_that_cannot_fill_a_batch_stops_training_with_named_error(bad_data_runs):
    """An 8-sample shard with 5 rejected samples (3 usable < --batch-size 4): upstream's
    loader restarted the pass forever; now the run ends with an error naming the shard and counts."""
    run = bad_data_runs["runs"]["stuck"]
    assert run.returncode is not None and run.returncode > 0, (run.returncode, run.output[-3000:])
    assert "training cannot fill a batch" in run.output, run.output[-3000:]
    message = run.output[run.output.index("training cannot fill a batch"):][:1500]
    assert bad_data_runs["stuck_shard"] in message
    for count in ("read=8", "undecodable=2", "bad=3", "usable=3", "--batch-size 4"):
        assert count in message, (count, message)
    assert not (run.run_dir / "checkpoints" / "epoch_1.pt").exists()


def test_missing_shard_is_named_at_start_up_and_counted_each_epoch(bad_data_runs):
    """A shard missing from the brace list: training goes on (open_clip's nothrow policy), but the
    start-up names it and the epoch report counts it and the roll-over that refilled the epoch."""
    run = bad_data_runs["runs"]["gaps"].check()
    missing = bad_data_runs["missing_shard"]
    assert re.search(rf"1 of the 3 shard\(s\) of --train-data do not exist and will be skipped: {re.escape(missing)}",
                     run.output), run.output[-3000:]
    assert f"shard {missing} does not exist" in run.output
    report = re.search(r"WARNING.*C2LIP data counters, epoch 0: (.*)", run.output)
    assert report, run.output[-3000:]
    counts = {k: int(v) for k, v in re.findall(r"(\w[\w ]*?)=(\d+)", report.group(1))}
    assert counts["missing"] >= 1 and counts["rollovers"] >= 1 and counts["shards read"] >= 2
    assert "missing or unreadable this epoch" in run.output
    assert (run.run_dir / "checkpoints" / "epoch_1.pt").exists()


def test_vit_b16_siglip_c2_state_dict_matches_base():
    """ViT-B-16-SigLIP-C2 (C2 class swapped in) has exactly ViT-B-16-SigLIP's state_dict keys and
    shapes (random init, no Hub), so its checkpoints load into the plain model."""
    import open_clip
    from open_clip_c2lip.model import enable_c2lip, is_c2lip

    def shapes(model):
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    with torch.device("meta"):  # shapes only: skip allocating/initialising ~200M parameters
        base = open_clip.create_model("ViT-B-16-SigLIP", device="meta")
        twin = enable_c2lip(open_clip.create_model("ViT-B-16-SigLIP-C2", device="meta"))
    assert is_c2lip(twin) and type(base).__name__ == "CustomTextCLIP"
    assert shapes(twin) == shapes(base)
    assert len(shapes(base)) > 100
