"""Tests for open_clip_c2lip.fileio.diskspace: free-space checks and full-disk errors."""
import errno
import shutil
from collections import namedtuple

import pytest

from open_clip_c2lip.fileio import diskspace
from open_clip_c2lip.fileio.diskspace import DiskFullError

Usage = namedtuple("Usage", "total used free")


def test_byte_formats():
    assert diskspace.human_bytes(0) == "0 bytes" and diskspace.human_bytes(1023) == "1023 bytes"
    assert diskspace.human_bytes(1536) == "1.5 KiB"
    assert diskspace.human_bytes(812_623_880) == "775.0 MiB"  # ViT-B-16-SigLIP's fp32 tensors
    assert diskspace.human_bytes(3 * 1024 ** 4) == "3.0 TiB"
    assert diskspace.format_bytes(812_623_880) == "812,623,880 bytes (775.0 MiB)"
    assert diskspace.format_bytes(12) == "12 bytes"


def test_free_space_is_read_where_the_file_will_be(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: asked.append(path) or Usage(10 ** 9, 0, 5000))
    target = tmp_path / "not" / "yet" / "there" / "results.json"
    assert diskspace.existing_folder(target) == tmp_path
    diskspace.check_free_space(target, 5000)  # exactly enough
    with pytest.raises(DiskFullError) as caught:
        diskspace.check_free_space(target, 5001)
    assert asked == [tmp_path, tmp_path]
    error = caught.value
    assert (error.needed, error.free, error.errno) == (5001, 5000, errno.ENOSPC)
    assert str(error) == (f"no space left on the device for {target}: it needs about 5,001 bytes (4.9 KiB), "
                          f"5,000 bytes (4.9 KiB) free in {tmp_path}")
    with pytest.raises(DiskFullError, match="it needs at least 1,048,576 bytes"):
        diskspace.check_free_space(target, diskspace.MIN_FREE_BYTES, at_least=True)


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "no space left on the device"),
                                        (errno.EDQUOT, "the disk quota is exceeded")])
def test_write_errors_become_one_line(tmp_path, monkeypatch, code, text):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 0, 123))
    target = tmp_path / "bundle"
    with pytest.raises(DiskFullError) as caught:
        with diskspace.disk_full_as_error(target, lambda: 4096):
            raise OSError(code, "No space left on device", str(target / "x"))
    assert str(caught.value) == (f"{text} for {target}: it needs about 4,096 bytes (4.0 KiB), 123 bytes free in "
                                 f"{tmp_path}")
    assert caught.value.errno == code and isinstance(caught.value.__cause__, OSError)
    # a library that keeps the errno only in its text (safetensors' Rust I/O error)
    from safetensors import SafetensorError
    with pytest.raises(DiskFullError, match=text):
        with diskspace.disk_full_as_error(target, 10):
            raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error {code})")
    # anything else passes through untouched
    with pytest.raises(OSError) as other:
        with diskspace.disk_full_as_error(target, 10):
            raise OSError(errno.EACCES, "Permission denied")
    assert not isinstance(other.value, DiskFullError)


def test_message_for_any_error():
    assert diskspace.message(ValueError("x")) is None
    assert diskspace.message(OSError(errno.ENOSPC, "No space left on device", "/cache/blob")) == \
        "no space left on the device for /cache/blob"
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("Failed to download weights")
    except RuntimeError as wrapped:
        assert diskspace.message(wrapped) == "the disk quota is exceeded (Failed to download weights)"
