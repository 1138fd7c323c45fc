"""Shards of real COCO-caption samples with damaged tar headers, and what should survive them.

The expectation is computed two independent ways: from what the test damaged (every sample with a
damaged member is lost, every other one kept whole), and, where GNU tar is installed, from the
members GNU tar recovers (``tar -tf --ignore-zeros``: it skips a bad header to the next valid one)
grouped into samples: a sample is complete when GNU tar lists every member it was written with.

Imported by ``test_fileio_tar.py``, ``test_integration_wds_passes.py`` and ``test_concepts_annotate.py``.
"""
import io
import json
import random
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

BLOCK = 512

Samples = List[Tuple[str, List[Tuple[str, bytes]]]]

# where a shard of 60 ``coco_samples`` is damaged -> the members whose headers are damaged
DAMAGED = {
    "first-member": ["s000.jpg"],
    "second-member-mid-sample": ["s030.txt"],        # the sample has members on both sides of the damage
    "first-member-mid-shard": ["s031.jpg"],          # its successor is the sample's second member
    "last-member-of-a-json-sample": ["s042.cls"],
    "last-member": ["s059.cls"],
    "several": ["s003.cls", "s017.jpg", "s017.txt", "s039.json"],
}



def tar_bytes(members: Sequence[Tuple[str, Optional[bytes]]], format=tarfile.GNU_FORMAT) -> bytes:
    """A tar archive of ``(name, data)`` members in memory; ``data`` None makes a directory entry."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()

def coco_samples(captions: Sequence[str], count: int, seed: int = 0) -> Samples:
    """``count`` samples ``s000..``: a jpg of 300-1500 random bytes (1-3 data blocks), the caption as
    txt, a json on every third sample (shards mix samples with and without optional members), a cls."""
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        members = [("jpg", rng.randbytes(rng.randint(300, 1500))), ("txt", captions[i].encode())]
        if i % 3 == 0:
            members.append(("json", json.dumps({"id": i, "url": f"http://x/{i}.jpg"}).encode()))
        members.append(("cls", str(i).encode()))
        samples.append((f"s{i:03d}", members))
    return samples


def write_shard(path: Path, samples: Samples, format=tarfile.GNU_FORMAT) -> Dict[str, tarfile.TarInfo]:
    """The shard, and its members by name (``offset``: the header, ``offset_data``: the data)."""
    with tarfile.open(path, "w", format=format) as tar:
        for key, members in samples:
            for extension, data in members:
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime, info.mode = len(data), 1234567, 0o644
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def damaged_shard(path: Path, samples: Samples, damaged: Sequence[str], how: str) -> Dict[str, tarfile.TarInfo]:
    """``write_shard``, then the headers of the ``damaged`` members damaged ``how``."""
    members = write_shard(path, samples)
    blob = bytearray(path.read_bytes())
    for index, name in enumerate(damaged):
        damage_header(blob, members[name].offset, how, seed=index)
    path.write_bytes(blob)
    return members


def damage_header(blob: bytearray, offset: int, how: str, seed: int = 0) -> None:
    """Damage the header block at ``offset``: ``checksum`` (its checksum field overwritten: the
    name stays legible), ``garbled`` (512 random bytes), ``zeroed`` (a zero block)."""
    if how == "checksum":
        blob[offset + 148: offset + 156] = b"XXXXXXXX"
    elif how == "garbled":
        blob[offset: offset + BLOCK] = random.Random(seed).randbytes(BLOCK)
    elif how == "zeroed":
        blob[offset: offset + BLOCK] = bytes(BLOCK)
    else:
        raise ValueError(how)


def gnu_tar() -> Optional[str]:
    """The path of GNU tar, None when the installed tar is not GNU tar (or there is none)."""
    path = shutil.which("tar")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return path if "GNU tar" in version else None


def gnu_tar_listing(path: Path) -> Tuple[List[str], str]:
    """The member names GNU tar recovers (``tar -tf --ignore-zeros``) and what it says on stderr."""
    result = subprocess.run([gnu_tar(), "-tf", str(path), "--ignore-zeros"], capture_output=True, text=True)
    return result.stdout.splitlines(), result.stderr


def complete_keys(samples: Samples, names: Sequence[str]) -> List[str]:
    """Keys of the samples all of whose members are among ``names``, in shard order."""
    listed = set(names)
    return [key for key, members in samples if all(f"{key}.{e}" in listed for e, _ in members)]


def keys_without(samples: Samples, damaged_members: Sequence[str]) -> List[str]:
    """Keys of the samples none of whose members is in ``damaged_members``, in shard order."""
    owners = {name.rsplit(".", 1)[0] for name in damaged_members}
    return [key for key, _ in samples if key not in owners]
