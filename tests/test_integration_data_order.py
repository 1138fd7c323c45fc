"""Reproducible train data order (``open_clip_c2lip.integration.data_order``): same seed -> same batches.

Runs open_clip_train's own (patched) ``get_data`` on tiny webdataset shards and a CSV, with and
without DataLoader workers, and compares whole epochs (texts give the order; images, under a random
crop, also check the workers' augmentation seeds). The upstream-ready diff is applied to a copy of
the installed ``open_clip_train/data.py`` and must give the very same order as the plugin, while the
unpatched copy reorders between two builds of one command (its sample shuffle is clock-seeded).
"""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

import open_clip_train.data as upstream_data
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform
from open_clip_train.params import parse_args
from PIL import Image

from open_clip_c2lip.integration import runtime
from open_clip_c2lip.integration.data_order import WorkerSampleShuffle, mix_seed, patch_data_order

REPO = Path(__file__).resolve().parents[1]
DIFF = REPO / "patches" / "open_clip_train-deterministic-data-order.diff"
NUM_SHARDS, PER_SHARD, BATCH = 4, 6, 3
CAPTIONS = [f"photo number {i} of a thing" for i in range(NUM_SHARDS * PER_SHARD)]

patch_data_order(upstream_data)  # normally done by the plugin's import hook; idempotent


@pytest.fixture(autouse=True)
def _plain_runtime():
    runtime.configure(None)
    yield
    runtime.configure(None)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    import pandas as pd
    from open_clip_c2lip.fileio.shards import write_shards

    root = tmp_path_factory.mktemp("order")
    images = []
    for index in range(len(CAPTIONS)):
        images.append(root / f"{index:03d}.jpg")
        Image.new("RGB", (20, 20), (index * 37 % 256, index * 91 % 256, 40)).save(images[-1])
    write_shards(({"jpg": path, "txt": caption} for path, caption in zip(images, CAPTIONS)), str(root),
                 prefix="s", samples_per_shard=PER_SHARD)
    csv = root / "train.csv"
    pd.DataFrame({"filepath": [str(p) for p in images], "title": CAPTIONS}).to_csv(csv, index=False)
    return {"webdataset": str(root / f"s-{{000000..{NUM_SHARDS - 1:06d}}}.tar"), "csv": str(csv)}


def _args(data_files, dataset_type, workers=0, seed=0, rank=0, resampled=False):
    argv = ["--train-data", data_files[dataset_type], "--dataset-type", dataset_type, "--batch-size", str(BATCH),
            "--workers", str(workers), "--seed", str(seed), "--model", "C2LIP-Tiny"]
    if dataset_type == "webdataset":
        argv += ["--train-num-samples", str(len(CAPTIONS))]
    else:
        argv += ["--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title"]
    if resampled:
        argv.append("--dataset-resampled")
    args = parse_args(argv)
    args.world_size, args.rank, args.distributed = 1, rank, False  # set by open_clip_train.main
    return args


def _epochs(module, args, epochs, start_epoch=0):
    """``[(texts [N, L], images [N, 3, 16, 16])]`` per epoch, as ``train_one_epoch`` iterates them."""
    torch.manual_seed(args.seed)  # main.py: random_seed(args.seed, rank) before get_data
    tokenizer = SimpleTokenizer(context_length=12)
    transforms = image_transform(16, is_train=True), image_transform(16, is_train=False)
    info = module.get_data(args, transforms, epoch=start_epoch, tokenizer=tokenizer)["train"]
    out = []
    for epoch in range(start_epoch, start_epoch + epochs):
        info.set_epoch(epoch)
        batches = list(info.dataloader)
        out.append((torch.cat([t for _, t in batches]), torch.cat([i for i, _ in batches])))
    return out


def _same(a, b) -> bool:
    return all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b)) and len(a) == len(b)


# ------------------------------------------------------------------------------------------------

def test_patch_is_installed_and_idempotent():
    wrapped = {name: getattr(upstream_data, name) for name in
               ("get_wds_dataset", "get_csv_dataset", "get_synthetic_dataset")}
    patch_data_order(upstream_data)
    for name, function in wrapped.items():
        assert getattr(upstream_data, name) is function and function.__wrapped__.__module__ == "open_clip_train.data"
    assert upstream_data.get_dataset_fn(None, "webdataset") is wrapped["get_wds_dataset"]


def test_sample_shuffle_seed_is_a_function_of_seed_epoch_rank_pass():
    epoch = upstream_data.SharedEpoch(0)

    def order(seed=0, rank=0, passes=1):
        stage = WorkerSampleShuffle(bufsize=50, initial=10, seed=seed, epoch=epoch, rank=rank)
        return [list(stage(iter(range(40)))) for _ in range(passes)]

    first = order()[0]
    assert sorted(first) == list(range(40)) and first != list(range(40))
    assert order() == order()
    two_passes = order(passes=2)
    assert two_passes[0] == first and two_passes[1] != first  # a repeated pass is shuffled anew
    assert order(seed=1)[0] != first and order(rank=1)[0] != first
    epoch.set_value(1)
    assert order()[0] != first
    assert len({mix_seed("samples", s, e, r, w) for s in (0, 1) for e in (0, 1) for r in (0, 1) for w in (0, 1)}) == 16


@pytest.mark.parametrize("dataset_type,workers,resampled", [
    ("webdataset", 0, False), ("webdataset", 2, False), ("webdataset", 2, True), ("webdataset", 0, True),
    ("csv", 0, False), ("csv", 2, False),
])
def test_same_seed_same_batches(data_files, dataset_type, workers, resampled):
    """Two builds of one command: identical batches (order and augmented images) in every epoch;
    the order changes with the epoch and with ``--seed``."""
    args = _args(data_files, dataset_type, workers, resampled=resampled)
    first = _epochs(upstream_data, args, epochs=2)
    second = _epochs(upstream_data, args, epochs=2)
    assert _same(first, second)
    assert first[0][0].shape[0] == len(CAPTIONS) - (len(CAPTIONS) % BATCH if dataset_type == "csv" else 0)
    assert not torch.equal(first[0][0], first[1][0])
    other_seed = _epochs(upstream_data, _args(data_files, dataset_type, workers, seed=1, resampled=resampled), 1)
    assert not torch.equal(first[0][0], other_seed[0][0])


@pytest.mark.parametrize("dataset_type", ["webdataset", "csv"])
def test_order_of_an_epoch_does_not_depend_on_the_epochs_before(data_files, dataset_type):
    """A run started at epoch 1 (e.g. ``--resume``) sees the batches of epoch 1 of a run from epoch 0."""
    args = _args(data_files, dataset_type, workers=2)
    from_start = _epochs(upstream_data, args, epochs=2)
    resumed = _epochs(upstream_data, args, epochs=1, start_epoch=1)
    assert torch.equal(from_start[1][0], resumed[0][0])


def test_rank_changes_the_sample_order(data_files):
    rank0 = _epochs(upstream_data, _args(data_files, "webdataset", rank=0), 1)
    rank1 = _epochs(upstream_data, _args(data_files, "webdataset", rank=1), 1)
    assert not torch.equal(rank0[0][0], rank1[0][0])
    assert sorted(map(tuple, rank0[0][0].tolist())) == sorted(map(tuple, rank1[0][0].tolist()))


def test_csv_ddp_sampler_takes_the_seed(data_files, tmp_path):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    args = _args(data_files, "csv", seed=7)
    args.distributed = True
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        info = upstream_data.get_csv_dataset(args, image_transform(16, is_train=True), is_train=True, epoch=3,
                                             tokenizer=SimpleTokenizer(context_length=12))
    finally:
        dist.destroy_process_group()
    assert isinstance(info.sampler, DistributedSampler) and info.dataloader.sampler is info.sampler
    assert (info.sampler.seed, info.sampler.epoch, info.sampler.num_replicas) == (7, 3, 1)


def test_moved_shuffle_stage_fails_loudly(data_files, monkeypatch):
    import webdataset

    monkeypatch.setattr(webdataset, "shuffle", lambda bufsize, initial: (lambda src: src))
    with pytest.raises(RuntimeError, match="expected one wds.shuffle stage"):
        _epochs(upstream_data, _args(data_files, "webdataset"), 1)


# ------------------------------------------------------------------------------------------------
# upstream drift: the shipped diff applied to the installed open_clip_train/data.py

def _load_copy(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def upstream_copies(tmp_path_factory):
    if shutil.which("patch") is None:
        pytest.skip(f"the `patch` program is needed to apply {DIFF.name}")
    root = tmp_path_factory.mktemp("upstream")
    target = root / "src" / "open_clip_train"
    target.mkdir(parents=True)
    shutil.copy(upstream_data.__file__, target / "data.py")
    pristine = _load_copy(target / "data.py", "pristine_open_clip_train_data")
    result = subprocess.run(["patch", "-p1", "-i", str(DIFF)], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return {"pristine": pristine, "patched": _load_copy(target / "data.py", "patched_open_clip_train_data")}


@pytest.mark.parametrize("dataset_type,workers,resampled", [
    ("webdataset", 2, False), ("webdataset", 0, True), ("csv", 0, False)])
def test_upstream_diff_gives_the_plugins_order(data_files, upstream_copies, dataset_type, workers, resampled):
    args = _args(data_files, dataset_type, workers, resampled=resampled)
    assert _same(_epochs(upstream_copies["patched"], args, 2), _epochs(upstream_data, args, 2))


def test_unpatched_upstream_webdataset_order_is_not_reproducible(data_files, upstream_copies):
    """What the patch fixes: two builds of one command, different batches (clock-seeded shuffle;
    24 samples in one stream, so equal orders by chance have probability < 1e-20)."""
    args = _args(data_files, "webdataset")
    first, second = (_epochs(upstream_copies["pristine"], args, 1) for _ in range(2))
    assert not torch.equal(first[0][0], second[0][0])
    assert sorted(map(tuple, first[0][0].tolist())) == sorted(map(tuple, second[0][0].tolist()))
