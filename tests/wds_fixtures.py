"""Shared fixtures of the webdataset pass and counter tests: shards with good and rejected samples,
args, a bounded epoch.

Imported by ``tests/test_integration_wds_passes.py`` and ``tests/test_integration_counters.py``.
"""
import contextlib
import json
import signal
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

import open_clip_train.data as upstream_data
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform
from open_clip_train.params import parse_args

from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration import runtime
from open_clip_c2lip.integration.train_data import patch_get_data
from open_clip_c2lip.integration.wds import patch_shard_reader

patch_shard_reader(upstream_data)
patch_get_data(upstream_data)  # the plugin's hooks, for every test module importing this one

GOOD_CAPTIONS = ["a red dog next to a blue car", "two cats sleeping on a sofa", "a man riding a horse",
                 "a bowl of soup on a table", "a girl with a kite on the beach", "a train at a station",
                 "a clock tower in a city", "a boat on a lake"]


@pytest.fixture(autouse=True)
def c2lip_off():
    runtime.configure(None)
    yield
    runtime.configure(None)


@contextlib.contextmanager
def bounded(seconds: int = 60):
    """Fail (TimeoutError) instead of hanging."""
    def timeout(signum, frame):
        raise TimeoutError(f"no result within {seconds} s: the data pipeline hangs")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _good(key: str, index: int):
    caption = GOOD_CAPTIONS[index % len(GOOD_CAPTIONS)]
    return [(f"{key}.jpg", jpeg(index)), (f"{key}.txt", caption.encode()),
            (f"{key}.json", json.dumps({"concepts": caption.split(" ")[:2]}).encode())]


def _rejected(prefix: str):
    """Five rejected kinds: invalid json, json list, concepts a string, empty caption, non-UTF-8."""
    return [
        (f"{prefix}brokenjson.jpg", jpeg(20)), (f"{prefix}brokenjson.txt", b"a cat"),
        (f"{prefix}brokenjson.json", b"{oops"),
        (f"{prefix}listjson.jpg", jpeg(21)), (f"{prefix}listjson.txt", b"a cat"),
        (f"{prefix}listjson.json", b'["a cat"]'),
        (f"{prefix}strconcepts.jpg", jpeg(22)), (f"{prefix}strconcepts.txt", b"a cat"),
        (f"{prefix}strconcepts.json", b'{"concepts": "a cat"}'),
        (f"{prefix}emptycaption.jpg", jpeg(23)), (f"{prefix}emptycaption.txt", b"  "),
        (f"{prefix}latin1.jpg", jpeg(24)), (f"{prefix}latin1.txt", "un caf\xe9".encode("latin-1")),
    ]


def _mostly_rejected_shard(path: Path) -> str:
    """8 samples, 5 of them rejected: 3 usable."""
    members = []
    for index in range(3):
        members += _good(f"g{index}", index)
    return write_tar(path, members + _rejected(""))


def _args(*argv, batch_size=4, workers=0):
    args = parse_args(list(argv) + ["--batch-size", str(batch_size), "--workers", str(workers),
                                    "--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-max-concepts", "3"])
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def _transforms():
    return image_transform(16, is_train=True), image_transform(16, is_train=False)


def _train(args):
    return upstream_data.get_data(args, _transforms(), epoch=0, tokenizer=SimpleTokenizer(context_length=24))["train"]


def _epoch(info, seconds=60):
    with bounded(seconds):
        return [texts for _, texts in info.dataloader]


