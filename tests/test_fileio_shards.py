"""Writing shards (``open_clip_c2lip.fileio.shards``) and ``scripts/make_shards.py``."""
import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from open_clip_c2lip.fileio import shards as S
from tar_fixtures import wds_samples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_shards_main():
    spec = importlib.util.spec_from_file_location("make_shards", REPO / "scripts" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def captions():
    """50 distinct captions, some with the untidy edges of web captions (spaces, a newline, non-ASCII)."""
    colours, things = ("red", "blue", "green", "yellow", "black"), ("dog", "bicycle", "café table", "kite", "train")
    made = [f"A {colours[i % 5]} {things[(i // 5) % 5]} next to {2 + i // 25} birds number {i}." for i in range(50)]
    made[3] += " "
    made[8] = "  " + made[8] + "\n"
    return made


def image(i, size=(32, 24), mode="RGB"):
    """A smooth gradient (JPEG keeps it close), different for each i."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 4 + 10 * i, y * 5 + 5 * i, np.full_like(x, 100 + 15 * i)], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).convert(mode)


def encoded(img, fmt, **kw):
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("count, per_shard", [(23, 5), (10, 5), (3, 100), (1, 1)])
def test_count_in_equals_out_including_last_partial_shard(tmp_path, captions, count, per_shard):
    samples = [{"jpg": image(i), "txt": captions[i], "json": {"i": i}} for i in range(count)]
    stats = S.ShardWriteStats()
    paths = S.write_shards(samples, tmp_path, "train", per_shard, stats=stats)
    expected_shards = -(-count // per_shard)
    assert [os.path.basename(p) for p in paths] == [f"train-{i:06d}.tar" for i in range(expected_shards)]
    sizes = [len(wds_samples([p])) for p in paths]
    assert sizes == [per_shard] * (count // per_shard) + ([count % per_shard] if count % per_shard else [])
    got = wds_samples(paths)
    assert (stats.samples_in, stats.written, stats.skipped) == (count, count, 0)
    assert [s["__key__"] for s in got] == [f"{i:09d}" for i in range(count)]
    assert [s["txt"].decode() for s in got] == captions[:count]
    assert [json.loads(s["json"]) for s in got] == [{"i": i} for i in range(count)]
    assert not list(tmp_path.glob("*.partial"))


def test_images_training_reads_are_kept_others_converted_losslessly(tmp_path):
    """JPEG / PNG / WebP bytes and files are stored as they are (training decodes the same bytes with
    the same function); BMP / TIFF become the RGB a viewer shows, as lossless PNG; a PIL image JPEG."""
    from open_clip_c2lip.fileio.images import decode_rgb

    jpeg = encoded(image(0), "JPEG", quality=80)
    png16 = encoded(Image.fromarray((np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80)), "PNG")
    webp = tmp_path / "img.webp"
    image(2).save(webp, format="WEBP", lossless=True)
    bmp = tmp_path / "img.bmp"
    image(3).save(bmp, format="BMP")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it upright
    # orientation 6: the stored 0th row is the picture's right edge, read top to bottom
    tiff = encoded(Image.fromarray(np.rot90(np.asarray(image(4))).copy()), "TIFF", exif=exif.tobytes())
    stats = S.ShardWriteStats()
    samples = [{"jpg": jpeg, "txt": "a"}, {"jpg": png16, "txt": "b"}, {"jpg": str(webp), "txt": "c"},
               {"jpg": bmp, "txt": "d"}, {"jpg": tiff, "txt": "e"}, {"jpg": image(5, mode="RGBA"), "txt": "f"}]
    paths = S.write_shards(samples, tmp_path / "out", stats=stats)
    got = wds_samples(paths)
    assert [sorted(k for k in s if not k.startswith("__")) for s in got] == [
        ["jpg", "txt"], ["png", "txt"], ["txt", "webp"], ["png", "txt"], ["png", "txt"], ["jpg", "txt"]]
    assert got[0]["jpg"] == jpeg and got[1]["png"] == png16 and got[2]["webp"] == webp.read_bytes()
    assert stats.reencoded == 3
    assert np.array_equal(np.asarray(decode_rgb(got[3]["png"])), np.asarray(image(3)))
    assert np.array_equal(np.asarray(decode_rgb(got[4]["png"])), np.asarray(image(4)))  # upright, exact
    decoded = np.asarray(Image.open(io.BytesIO(got[5]["jpg"])), dtype=float)
    error = np.abs(decoded - np.asarray(image(5), dtype=float)).mean()  # alpha 255: the picture itself
    assert error < 12 < np.abs(decoded - np.asarray(image(7), dtype=float)).mean()


def test_deterministic_bytes(tmp_path, captions):
    samples = [{"jpg": encoded(image(i), "JPEG"), "txt": captions[i]} for i in range(7)]
    a = S.write_shards(samples, tmp_path / "a", samples_per_shard=3)
    b = S.write_shards(samples, tmp_path / "b", samples_per_shard=3)
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]


def test_corrupt_image_raises_naming_it_or_is_counted(tmp_path):
    good = encoded(image(0), "JPEG")
    truncated = good[: len(good) // 2]
    samples = [{"jpg": good, "txt": "a", "source": "ok.jpg"},
               {"jpg": truncated, "txt": "b", "source": "broken.jpg"},
               {"jpg": b"not an image", "txt": "c", "source": "junk.jpg"},
               {"jpg": good, "txt": "d"}]
    with pytest.raises(S.BadSampleError, match="broken.jpg"):
        S.write_shards(samples, tmp_path / "raise", samples_per_shard=10)
    assert not list((tmp_path / "raise").iterdir())  # no partial shard left behind

    stats = S.ShardWriteStats()
    paths = S.write_shards(samples, tmp_path / "skip", samples_per_shard=10, skip_bad=True, stats=stats)
    assert (stats.samples_in, stats.written, stats.skipped) == (4, 2, 2)
    assert "broken.jpg" in stats.summary() and "junk.jpg" in stats.summary()
    assert [s["__key__"] for s in wds_samples(paths)] == ["000000000", "000000003"]  # keys keep positions


@pytest.mark.parametrize("sample, message", [
    ({"jpg": b"", "txt": "   "}, "blank caption"),
    ({"jpg": b"", "txt": None}, "missing or blank caption"),
    ({"txt": "a"}, "no image"),
    ({"jpg": b"", "txt": "a", "key": "a.b"}, "without '.'"),
    ({"jpg": b"", "txt": "a", "json": [1]}, "json must be a dict"),
])
def test_bad_samples(tmp_path, sample, message):
    with pytest.raises(S.BadSampleError, match=message):
        S.write_shards([sample], tmp_path)


# ------------------------------------------------------------------------------------------------
# scripts/make_shards.py

def test_make_shards_folder(tmp_path, captions, make_shards_main, capsys):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = [f"img{i:02d}" for i in range(11)]
    for i, name in enumerate(names):
        where = folder / "sub" if i % 4 == 0 else folder
        image(i).save(where / f"{name}.{'png' if i % 3 == 0 else 'jpg'}")
        (where / f"{name}.txt").write_text(captions[i] + "\n")
    assert make_shards_main([str(folder), "--output-dir", str(tmp_path / "out"), "--samples-per-shard", "4"]) == 0
    assert "samples in: 11   written: 11   skipped: 0" in capsys.readouterr().out
    got = wds_samples(sorted((tmp_path / "out").glob("shard-*.tar")))
    assert len(got) == 11
    sources = [json.loads(s["json"])["source"] for s in got]
    assert sources == sorted(sources)  # sorted relative paths -> stable keys
    by_source = {json.loads(s["json"])["source"]: s for s in got}
    for i, name in enumerate(names):
        relative = ("sub/" if i % 4 == 0 else "") + f"{name}.{'png' if i % 3 == 0 else 'jpg'}"
        sample = by_source[relative]
        assert sample["txt"].decode() == captions[i].strip()
        assert json.loads(sample["json"])["caption"] == captions[i].strip()
        extension = "png" if relative.endswith(".png") else "jpg"
        assert sample[extension] == (folder / relative).read_bytes()  # stored as they are


def test_make_shards_folder_missing_caption(tmp_path, make_shards_main, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        image(i).save(folder / f"im{i}.jpg")
        if i != 1:
            (folder / f"im{i}.txt").write_text("a photo")
    with pytest.raises(SystemExit, match="im1.jpg.*no caption file"):
        make_shards_main([str(folder), "--output-dir", str(tmp_path / "out")])
    (folder / "lost.txt").write_text("a caption whose image is gone")
    assert make_shards_main([str(folder), "--output-dir", str(tmp_path / "out2"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "samples in: 4   written: 2   skipped: 2" in out and "im1.jpg" in out
    assert "lost.txt" in out and "without an image" in out


def test_make_shards_csv(tmp_path, captions, make_shards_main, capsys):
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(7):
        image(i).save(tmp_path / "img" / f"{i}.jpg")
        rows.append(f"img/{i}.jpg\t{captions[i].strip()}")
    (tmp_path / "img" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows.append("img/bad.jpg\tbroken")
    (tmp_path / "list.tsv").write_text("filepath\ttitle\n" + "\n".join(rows) + "\n")
    with pytest.raises(SystemExit, match="bad.jpg"):
        make_shards_main([str(tmp_path / "list.tsv"), "--output-dir", str(tmp_path / "out")])
    make_shards_main([str(tmp_path / "list.tsv"), "--output-dir", str(tmp_path / "out"), "--skip-bad",
                      "--samples-per-shard", "3", "--prefix", "cc"])
    assert "samples in: 8   written: 7   skipped: 1" in capsys.readouterr().out
    paths = sorted((tmp_path / "out").glob("cc-*.tar"))
    assert [p.name for p in paths] == ["cc-000000.tar", "cc-000001.tar", "cc-000002.tar"]
    got = wds_samples(paths)
    assert [s["txt"].decode() for s in got] == [c.strip() for c in captions[:7]]
    assert [json.loads(s["json"])["source"] for s in got] == [f"img/{i}.jpg" for i in range(7)]


# ------------------------------------------------------------------------------------------------
# Reruns into the same folder: refuse, or replace only what an earlier run created

def _folder_of_images(tmp_path, captions, count=11):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(count):
        image(i).save(folder / f"img{i:02d}.jpg")
        (folder / f"img{i:02d}.txt").write_text(captions[i])
    return folder


def test_make_shards_rerun_refuses_or_replaces_only_its_own_shards(tmp_path, captions, make_shards_main, capsys):
    folder = _folder_of_images(tmp_path, captions)
    out = tmp_path / "out"
    assert make_shards_main([str(folder), "--output-dir", str(out), "--samples-per-shard", "4"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]
    (out / "notes.txt").write_text("mine")
    (out / "other-000000.tar").write_bytes(b"another prefix: not ours to touch")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit, match=r"already holds 3 shard file\(s\) named shard-NNNNNN\.tar.*--overwrite"):
        make_shards_main([str(folder), "--output-dir", str(out), "--samples-per-shard", "6"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # refused: nothing changed

    assert make_shards_main([str(folder), "--output-dir", str(out), "--samples-per-shard", "6", "--overwrite"]) == 0
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]  # no stale third shard
    keys = [s["__key__"] for s in wds_samples(shards)]
    assert len(keys) == len(set(keys)) == 11  # every sample once
    assert (out / "notes.txt").read_text() == "mine" and (out / "other-000000.tar").exists()
    assert json.loads((out / "shard.shards.json").read_text())["shards"] == [p.name for p in shards]


def test_overwrite_never_deletes_shards_it_did_not_write(tmp_path, captions, make_shards_main):
    folder = _folder_of_images(tmp_path, captions, count=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "shard-000000.tar").write_bytes(b"a shard from somewhere else")
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="shard-000000.tar"):
            make_shards_main([str(folder), "--output-dir", str(out)] + extra)
        assert (out / "shard-000000.tar").read_bytes() == b"a shard from somewhere else"
    # ours (listed in the manifest) plus a foreign one: still refused, nothing deleted
    out2 = tmp_path / "out2"
    assert make_shards_main([str(folder), "--output-dir", str(out2), "--samples-per-shard", "2"]) == 0
    (out2 / "shard-000009.tar").write_bytes(b"foreign")
    with pytest.raises(SystemExit, match="not written by write_shards here.*shard-000009.tar"):
        make_shards_main([str(folder), "--output-dir", str(out2), "--overwrite"])
    assert sorted(p.name for p in out2.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000009.tar"]


def test_interrupted_write_is_still_ours_to_overwrite(tmp_path, captions):
    def samples():
        for i in range(5):
            yield {"jpg": image(i), "txt": captions[i]}
        raise KeyboardInterrupt  # the user stops the run in the middle of the third shard

    with pytest.raises(KeyboardInterrupt):
        S.write_shards(samples(), tmp_path, "w", samples_per_shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-000000.tar", "w-000001.tar", "w.shards.json"]
    manifest = json.loads((tmp_path / "w.shards.json").read_text())
    assert manifest["complete"] is False and manifest["shards"] == ["w-000000.tar", "w-000001.tar"]
    # a SIGKILLed writer leaves its .partial, already listed in the manifest before it was created
    (tmp_path / "w-000002.tar.partial").write_bytes(b"half")
    manifest["shards"].append("w-000002.tar")
    (tmp_path / "w.shards.json").write_text(json.dumps(manifest))
    with pytest.raises(S.ShardDirError, match="already holds 3 shard file"):
        S.write_shards([{"jpg": image(0), "txt": "a"}], tmp_path, "w")
    paths = S.write_shards([{"jpg": image(0), "txt": "a"}], tmp_path, "w", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-000000.tar", "w.shards.json"]
    assert len(wds_samples(paths)) == 1


@pytest.mark.parametrize("flags, message", [
    (["--samples-per-shard", "0"], "--samples-per-shard must be >= 1"),
    (["--samples-per-shard", "-3"], "--samples-per-shard must be >= 1"),
    (["--csv-separator", "ab"], "--csv-separator must be one character"),
])
def test_make_shards_rejects_bad_arguments(tmp_path, make_shards_main, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        make_shards_main([str(tmp_path), "--output-dir", str(tmp_path / "out")] + flags)
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_shards_output_dir_that_is_a_file(tmp_path, captions, make_shards_main):
    folder = _folder_of_images(tmp_path, captions, count=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match="--output-dir .*file exists and is not a folder"):
        make_shards_main([str(folder), "--output-dir", str(tmp_path / "file")])
    with pytest.raises(S.ShardDirError, match="is not a folder"):
        S.write_shards([{"jpg": image(0), "txt": "a"}], str(tmp_path / "file"))
    with pytest.raises(ValueError, match="samples_per_shard must be >= 1"):
        S.write_shards([], str(tmp_path / "o"), samples_per_shard=0)


def test_make_shards_csv_list_separator_like_open_clip(tmp_path, captions, make_shards_main):
    (tmp_path / "img").mkdir()
    for i in range(2):
        image(i).save(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "list.csv").write_text("filepath,title\nimg/0.jpg,N/A\nimg/1.jpg,a dog\n")
    with pytest.raises(SystemExit, match=r"no column\(s\).*--csv-separator ','"):
        make_shards_main([str(tmp_path / "list.csv"), "--output-dir", str(tmp_path / "out")])
    assert make_shards_main([str(tmp_path / "list.csv"), "--output-dir", str(tmp_path / "out"),
                             "--csv-separator", ","]) == 0
    got = wds_samples(sorted((tmp_path / "out").glob("*.tar")))
    assert [s["txt"].decode() for s in got] == ["N/A", "a dog"]  # "N/A" is a caption, as in training


@pytest.mark.parametrize("prefix", ["../mine", "sub/shard", "/tmp/abs", ".", "..", ""])
def test_prefix_must_be_a_plain_file_name_prefix(tmp_path, captions, make_shards_main, capsys, prefix):
    folder = _folder_of_images(tmp_path, captions, count=2)
    victim = tmp_path / "mine-000000.tar"  # what '../mine' would overwrite, without --overwrite
    victim.write_bytes(b"precious")
    (tmp_path / "out").mkdir()
    with pytest.raises(SystemExit) as info:
        make_shards_main([str(folder), "--output-dir", str(tmp_path / "out"), "--prefix", prefix])
    assert info.value.code == 2 and "--prefix: prefix must be a plain file-name prefix" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious" and not list((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match="plain file-name prefix"):
        S.write_shards([{"jpg": image(0), "txt": "a"}], str(tmp_path / "out"), prefix)
    assert not list((tmp_path / "out").iterdir())


def test_make_shards_table_paths_follow_the_one_rule(tmp_path, make_shards_main, monkeypatch):
    """Relative paths are read from the table's folder, as training reads them; one that names another
    file relative to the working directory stops the run naming both (it used to pick silently)."""
    (tmp_path / "data" / "img").mkdir(parents=True)
    (tmp_path / "run" / "img").mkdir(parents=True)
    for i in range(2):
        image(i).save(tmp_path / "data" / "img" / f"{i}.png")
        image(i + 5).save(tmp_path / "run" / "img" / f"{i}.png")
    (tmp_path / "data" / "list.tsv").write_text("filepath\ttitle\nimg/0.png\ta dog\nimg/1.png\ta cat\n")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        make_shards_main([str(tmp_path / "data" / "list.tsv"), "--output-dir", str(tmp_path / "out")])
    assert str(tmp_path / "data" / "img" / "0.png") in str(info.value)
    assert str(tmp_path / "run" / "img" / "0.png") in str(info.value)
    monkeypatch.chdir(tmp_path)  # no img/ here: the table's images, unambiguously
    assert make_shards_main([str(tmp_path / "data" / "list.tsv"), "--output-dir", str(tmp_path / "out")]) == 0
    got = wds_samples(sorted((tmp_path / "out").glob("*.tar")))
    assert [s["png"] for s in got] == [(tmp_path / "data" / "img" / f"{i}.png").read_bytes() for i in range(2)]
