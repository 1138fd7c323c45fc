"""Shared helpers of the data tests: tiny JPEG images and webdataset shards written member by member
(for samples that ``shards.write_shards`` refuses to write: bad json, non-UTF-8 text, ...).

Imported by the ``tests/test_integration_*.py`` data tests and ``test_train_e2e.py`` (pytest puts
``tests/`` on ``sys.path``).
"""
import io
import tarfile
from pathlib import Path
from typing import Iterable, Tuple

from PIL import Image


def jpeg(seed: int) -> bytes:
    """An 8 x 8 JPEG whose colour depends on ``seed``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 37 % 256, seed * 91 % 256, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def write_tar(path: Path, members: Iterable[Tuple[str, bytes]]) -> str:
    """A shard from ``(name, bytes)`` members, in order; returns its path as a string."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def wds_samples(paths):
    """Read shards back with webdataset itself (what open_clip_train does)."""
    import webdataset as wds

    dataset = wds.DataPipeline(wds.SimpleShardList([str(p) for p in paths]), wds.tarfile_to_samples())
    return list(dataset)
