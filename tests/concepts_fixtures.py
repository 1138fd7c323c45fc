"""Shared fixtures of the concepts tests: real COCO captions (skipped when absent), the full spaCy
pipeline as a reference, shard writers and the CLI runner.

Imported by the ``tests/test_concepts_*.py`` modules (pytest puts ``tests/`` on ``sys.path``).
"""
import html
import io
import json
import os
import re
import string
import tarfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ftfy
import pytest

from open_clip_c2lip import concepts as C

NUM_CAPTIONS = 400


@pytest.fixture(scope="module")
def coco_all(real_data):
    with open(real_data("coco_captions_val2017.json")) as f:
        annotations = sorted(json.load(f)["annotations"], key=lambda a: a["id"])
    return [a["caption"] for a in annotations]


@pytest.fixture(scope="module")
def coco(coco_all):
    return coco_all[:NUM_CAPTIONS]


@pytest.fixture(scope="module")
def full_nlp():
    return C.load_spacy(C.DEFAULT_SPACY_MODEL, full_pipeline=True)


@pytest.fixture(scope="module")
def full_docs(full_nlp, coco):
    return list(full_nlp.pipe(coco))


def naive_clean(text, clean="lower"):
    """Independent reference of open_clip's cleanings (open_clip.tokenizer: basic_clean, then
    whitespace collapse, lower case / canonicalize_text)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if clean == "canonicalize":
        text = text.replace("_", " ")
        text = "".join(ch for ch in text if ch not in string.punctuation).lower()
    text = " ".join(text.split())
    return text.lower() if clean == "lower" else text


@pytest.fixture(scope="module")
def clean_docs(full_nlp, coco):
    """Full-pipeline parses of the captions as CLIP's tokenizer sees them (the extraction rule)."""
    return list(full_nlp.pipe([naive_clean(c) for c in coco]))


def naive_concepts(doc, caption, fallback=True):
    """Independent reference: the rules written out plainly on a full-pipeline parse."""
    out = []
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == "PRON":
            continue
        text = re.sub(r"\s+", " ", chunk.text.lower()).strip()
        if re.search(r"[^\W_]", text) and text not in out:
            out.append(text)
    if not out and fallback:
        out = [re.sub(r"\s+", " ", caption.lower()).strip()]
    return out


# ------------------------------------------------------------------------------------------------
# CLI: shards

def _add(tar, name, data, mtime=1234567, mode=0o640):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, mode
    tar.addfile(info, io.BytesIO(data))


def make_shard(path, samples, format=tarfile.GNU_FORMAT):
    """samples: list of (key, [(extension, bytes)]) written in that order."""
    with tarfile.open(path, "w", format=format) as tar:
        for key, members in samples:
            for extension, data in members:
                _add(tar, f"{key}.{extension}", data)


def shard_samples(coco, start, count):
    samples = []
    for i in range(start, start + count):
        members = [("jpg", os.urandom(50 + i)), ("txt", coco[i].encode()), ("cls", str(i).encode())]
        if i % 3 == 0:  # some samples already have a json, others get one created
            members.insert(2, ("json", json.dumps({"id": i, "url": f"http://x/{i}"}).encode()))
        samples.append((f"s{i:05d}", members))
    return samples


def read_members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def raw_members(path):
    """name -> the member's exact bytes in the tar (header blocks incl. extended ones, padded data)."""
    blob = Path(path).read_bytes()
    with tarfile.open(path) as tar:
        return {m.name: blob[m.offset: m.offset_data + -(-m.size // 512) * 512] for m in tar.getmembers()}


def run_cli(args, capsys=None):
    code = C.main([str(a) for a in args] + ["--quiet"])
    return code, (capsys.readouterr().out if capsys else "")


# ------------------------------------------------------------------------------------------------
# Damaged shards: salvaged, detected, counted

def eight_sample_shard(path):
    make_shard(path, [(f"s{i}", [("jpg", os.urandom(700)), ("txt", f"a red car number {i}".encode())])
                      for i in range(8)])
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}
