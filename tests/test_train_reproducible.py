"""Same seed -> same numbers: two runs of one ``python -m open_clip_train.main ... --c2lip-loss --seed S``
command log identical losses and write identical checkpoints (``open_clip_c2lip.integration.data_order``).

Four commands (webdataset shards / CSV, ``--workers 1`` / ``--workers 2``), each run twice, on CPU
with one thread (``OMP_NUM_THREADS=1``), C2LIP-Tiny at 64 px, open_clip's random-crop augmentation on
(so the DataLoader workers' RNGs matter too). Equality is exact: same data order, same augmentation
draws and single-threaded CPU kernels give bitwise the same floats (nothing here needs a tolerance;
multi-threaded reductions or a GPU may not). The CSV 2-worker command also runs
``--c2lip-duplicate-concepts ignore --accum-freq 2``: the model's ``concept_ids`` reach the loss
through open_clip_train's ``loss(**model_out)`` and its accumulation (batch-first concatenation). Captions, images and process helpers are
``test_train_e2e``'s; concepts are two word pairs of each caption and "a thing", written into the data directly
(no spaCy: the concepts' content does not matter here).
"""
import math

import pytest
import torch

from test_train_e2e import (CSV_ROWS, LOSS_KEYS, NUM_SAMPLES, Run, _coco_captions_present,  # noqa: F401 (autouse)
                            coco_captions, launch_training, state_dict, synthetic_images, tensorboard_scalars)

torch.set_num_threads(1)

pytestmark = pytest.mark.slow  # eight training runs

SEED = 3
COMMANDS = [("wds", 1), ("wds", 2), ("csv", 1), ("csv", 2)]
EXTRA = {("csv", 2): ["--c2lip-duplicate-concepts", "ignore", "--accum-freq", "2"]}
STEPS = {("wds", 1): 4, ("wds", 2): 4, ("csv", 1): 4, ("csv", 2): 2}  # logged optimizer steps


def build_data(root) -> dict:
    """2 webdataset shards of 8 samples and a CSV of 8 rows, with a ``concepts`` field / column."""
    import json
    import pandas as pd
    from open_clip_c2lip.fileio.shards import write_shards

    captions = coco_captions(NUM_SAMPLES)
    # "a thing" in every sample: duplicates across images for --c2lip-duplicate-concepts ignore
    concepts = [[" ".join(c.split()[:2]), " ".join(c.split()[-2:]), "a thing"] for c in captions]
    paths = []
    for index, image in enumerate(synthetic_images(NUM_SAMPLES)):
        paths.append(root / f"{index:03d}.jpg")
        image.save(paths[-1], quality=95)
    write_shards(({"jpg": p, "txt": t, "json": {"concepts": c}} for p, t, c in zip(paths, captions, concepts)),
                 output_dir=str(root), prefix="train", samples_per_shard=NUM_SAMPLES // 2)
    pd.DataFrame({"filepath": [str(p) for p in paths[:CSV_ROWS]], "title": captions[:CSV_ROWS],
                  "concepts": [json.dumps(c) for c in concepts[:CSV_ROWS]]}).to_csv(root / "train.csv", index=False)
    return {"shards": str(root / "train-{000000..000001}.tar"), "csv": str(root / "train.csv")}


def _train_args(data: dict, logs, name: str, dataset: str, workers: int) -> list:
    args = [
        "--logs", str(logs), "--name", name, "--model", "C2LIP-Tiny", "--c2lip-loss", "--device", "cpu",
        "--seed", str(SEED), "--report-to", "tensorboard", "--log-every-n-steps", "1", "--lr", "1e-3",
        "--warmup", "1", "--precision", "fp32", "--batch-size", "4", "--workers", str(workers),
        "--save-frequency", "1", *EXTRA.get((dataset, workers), []),
    ]
    if dataset == "wds":  # 2 shards of 8: 4 steps in one epoch
        return args + ["--train-data", data["shards"], "--dataset-type", "webdataset",
                       "--train-num-samples", str(NUM_SAMPLES), "--epochs", "1"]
    return args + ["--train-data", data["csv"], "--dataset-type", "csv", "--csv-separator", ",",  # 8 rows: 2 x 2 steps
                   "--csv-img-key", "filepath", "--csv-caption-key", "title", "--epochs", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproducible")
    data = build_data(root)
    logs = root / "logs"
    done = {}
    try:
        for dataset, workers in COMMANDS:  # the two runs of one command run concurrently (2 cores)
            pair = [launch_training(root, logs, f"{dataset}_w{workers}_{copy}",
                                    _train_args(data, logs, f"{dataset}_w{workers}_{copy}", dataset, workers))
                    for copy in ("a", "b")]
            done[(dataset, workers)] = [run.wait() for run in pair]
    finally:
        Run.kill_unfinished()
    return done


@pytest.mark.parametrize("dataset,workers", COMMANDS)
def test_same_command_same_losses_and_checkpoints(runs, dataset, workers):
    first, second = (run.check() for run in runs[(dataset, workers)])
    losses = [tensorboard_scalars(run.run_dir) for run in (first, second)]
    steps = STEPS[(dataset, workers)]
    for key in LOSS_KEYS:
        tag = f"train/{key}"
        assert sorted(losses[0][tag]) == list(range(steps))
        assert losses[0][tag] == losses[1][tag], (key, losses[0][tag], losses[1][tag])  # exact
        assert all(math.isfinite(v) for v in losses[0][tag].values())
    # out.log's loss fields (text, 5 significant digits) too
    logged = [[_loss_fields(line) for line in (run.run_dir / "out.log").read_text().splitlines()
               if "Train Epoch:" in line] for run in (first, second)]
    assert len(logged[0]) == steps and all(len(fields) == 12 for fields in logged[0])
    assert logged[0] == logged[1]
    # training moved the loss, so equal numbers are not a constant
    total = [sum(losses[0][f"train/{k}"][s] for k in LOSS_KEYS) for s in (0, steps - 1)]
    assert abs(total[1] - total[0]) > 1e-3
    params = dict(line.split(": ", 1) for line in (first.run_dir / "params.txt").read_text().splitlines())
    assert params["c2lip_duplicate_concepts"] == ("ignore" if (dataset, workers) in EXTRA else "negative")
    epochs = {"wds": 1, "csv": 2}[dataset]
    for epoch in range(1, epochs + 1):
        a, b = (state_dict(run.run_dir / "checkpoints" / f"epoch_{epoch}.pt") for run in (first, second))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def _loss_fields(line: str) -> list:
    """``['Contrastive_loss:', '5.1234', '(5.1234)', ...]``: the loss part of an open_clip log line."""
    words = line.split()
    out = []
    for i, word in enumerate(words):
        if word.endswith("_loss:") or word == "Loss:":
            out += words[i:i + 3]
    return out


def test_other_batches_give_other_losses(runs):
    """The 1- and 2-worker wds commands split the shards differently, so their batches and losses
    differ: the exact comparison above is sensitive to the data order."""
    one, two = (tensorboard_scalars(runs[("wds", w)][0].check().run_dir) for w in (1, 2))
    assert one["train/contrastive_loss"] != two["train/contrastive_loss"]
