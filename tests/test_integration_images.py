"""Training sees the images a viewer shows (``open_clip_c2lip.integration.images`` and the CSV dataset of
``integration.csv_data``), and exactly the pixels of the shards ``scripts/make_shards.py`` writes.

Images as users have them (a phone JPEG stored sideways, a 16-bit PNG, a GIF with a transparent
index, a CMYK TIFF, an RGBA WebP, a 1-bit BMP, a grey + alpha PNG, a float TIFF) go through
open_clip_train's own ``get_data`` (patched by the plugin's hooks), as a CSV table and as the shards
make_shards writes from it, with and without ``--c2lip-loss``.
"""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

import open_clip_train.data as upstream_data

from open_clip_c2lip.integration import images as patch
from open_clip_c2lip.integration.data_order import wds_train_stages
from train_data_fixtures import CAPTIONS, _args, _caption_of, _tokenizer, c2lip_off  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SIZE = 8


def _display(seed: int) -> np.ndarray:
    """An 8 x 8 RGB picture, different in every row and column (so a turn or a flip shows)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 30 + seed, y * 30, (x * 7 + y * 13 + seed * 40) % 256], -1).astype(np.uint8)


def _save(image: Image.Image, path: Path, fmt: str, **kw) -> None:
    image.save(path, format=fmt, **kw)


def write_user_images(folder: Path) -> dict:
    """Eight image files as users have them; returns name -> what a viewer shows (None: checked only for
    equality between the paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    upright = _display(1)  # orientation 6: stored with the picture's right edge as row 0
    exif = Image.Exif()
    exif[0x0112] = 6
    red_blue = np.zeros((SIZE, SIZE, 3), np.uint8)
    red_blue[: SIZE // 2] = (255, 0, 0)
    red_blue[SIZE // 2:] = (0, 0, 255)
    _save(Image.fromarray(np.rot90(red_blue).copy()), folder / "phone.jpg", "JPEG", quality=100, exif=exif.tobytes())
    expected["phone.jpg"] = ("approx", red_blue)  # red above blue, up to JPEG loss
    depth = (np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE) * 1040).astype(np.uint16)
    _save(Image.fromarray(depth), folder / "depth16.png", "PNG")
    expected["depth16.png"] = ("exact", np.stack([np.rint(depth / 257.0)] * 3, -1).astype(np.uint8))
    indices = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 3).astype(np.uint8)
    gif = Image.fromarray(indices, "P")
    gif.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    _save(gif, folder / "sticker.gif", "GIF", transparency=2)
    colours = np.array([(255, 0, 0), (0, 255, 0), (255, 255, 255)], np.uint8)  # index 2: transparent
    expected["sticker.gif"] = ("exact", colours[indices])
    _save(Image.fromarray(upright).convert("CMYK"), folder / "print.tif", "TIFF")
    expected["print.tif"] = (None, None)
    rgba = np.dstack([upright, np.full((SIZE, SIZE), 100, np.uint8)])
    _save(Image.fromarray(rgba, "RGBA"), folder / "logo.webp", "WEBP", lossless=True)
    expected["logo.webp"] = ("exact", np.rint(upright * (100 / 255) + 255 * (1 - 100 / 255)).astype(np.uint8))
    bits = (np.add.outer(np.arange(SIZE), np.arange(SIZE)) % 3 == 0)
    _save(Image.fromarray(bits), folder / "scan.bmp", "BMP")
    expected["scan.bmp"] = ("exact", np.stack([np.where(bits, 255, 0)] * 3, -1).astype(np.uint8))
    la = np.dstack([upright[..., 0], np.full((SIZE, SIZE), 0, np.uint8)])
    _save(Image.fromarray(la, "LA"), folder / "mask.png", "PNG")
    expected["mask.png"] = ("exact", np.full((SIZE, SIZE, 3), 255, np.uint8))  # alpha 0: the white page
    ramp = (np.arange(SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE) / (SIZE * SIZE - 1))
    _save(Image.fromarray(ramp, "F"), folder / "float.tif", "TIFF")
    expected["float.tif"] = ("exact", np.stack([np.rint(ramp.astype(float) * 255)] * 3, -1).astype(np.uint8))
    return expected


def as_tensor(image: Image.Image) -> torch.Tensor:
    """The identity preprocess: the decoded RGB as a uint8 tensor [3, H, W]."""
    assert image.mode == "RGB"
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def user_table(tmp_path_factory):
    """``data/train.csv`` (relative paths ``imgs/NAME``) with concepts, and what each image should show."""
    root = tmp_path_factory.mktemp("user")
    expected = write_user_images(root / "data" / "imgs")
    names = sorted(expected)
    rows = ["filepath\ttitle\tconcepts"] + [f"imgs/{name}\t{CAPTIONS[i]}\t{json.dumps(['a red dog'])}"
                                           for i, name in enumerate(names)]
    (root / "data" / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "data" / "train.csv", {CAPTIONS[i]: (name, *expected[name]) for i, name in enumerate(names)}


@pytest.fixture(scope="module")
def made_shards(user_table, tmp_path_factory):
    spec = importlib.util.spec_from_file_location("make_shards", REPO / "scripts" / "make_shards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("shards")
    assert module.main([str(user_table[0]), "--output-dir", str(out), "--samples-per-shard", "4"]) == 0
    return str(out / "shard-{000000..000001}.tar")


def pixels_by_caption(data_info, c2lip: bool) -> dict:
    tokenizer = _tokenizer()
    seen = {}
    for images, texts in data_info.dataloader:
        assert images.dtype == torch.uint8 and images.shape == (4, 3, SIZE, SIZE)  # full batches
        for image, text in zip(images, texts):
            caption = _caption_of(tokenizer, text[0] if c2lip else text)
            seen[caption] = image.permute(1, 2, 0).numpy()
    return seen


def train_pixels(train_data: str, dataset_type: str, c2lip: bool) -> dict:
    extra = ["--train-num-samples", "8"] if dataset_type == "webdataset" else []
    args = _args("--train-data", train_data, "--dataset-type", dataset_type, *extra, c2lip=c2lip)
    data = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())
    return pixels_by_caption(data["train"], c2lip)


@pytest.mark.parametrize("c2lip", [False, True], ids=["plain", "c2lip"])
def test_make_shards_and_training_give_identical_pixels_a_viewer_shows(user_table, made_shards, c2lip_off,
                                                                       monkeypatch, tmp_path, c2lip):
    table, expected = user_table
    monkeypatch.chdir(tmp_path)  # the table's folder is not the working directory
    from_table = train_pixels(str(table), "csv", c2lip)
    from_shards = train_pixels(made_shards, "webdataset", c2lip)
    assert sorted(from_table) == sorted(from_shards) == sorted(expected)
    for caption, (name, how, picture) in expected.items():
        assert np.array_equal(from_table[caption], from_shards[caption]), name
        if how == "exact":
            assert np.array_equal(from_table[caption], picture), name
        elif how == "approx":
            away_from_the_edge = np.r_[0:3, 5:8]  # JPEG blurs the red / blue boundary
            assert np.abs(from_table[caption].astype(int) - picture)[away_from_the_edge].max() < 48, name
    cmyk = from_table[next(c for c, (name, *_) in expected.items() if name == "print.tif")].astype(int)
    assert np.abs(cmyk - _display(1)).max() <= 2  # CMYK of an RGB picture comes back as that picture


def test_upstream_decoding_is_what_failed(user_table):
    """Without the plugin's decoder: 16-bit grey is white, the phone photo lies on its side."""
    _, expected = user_table
    folder = user_table[0].parent / "imgs"
    depth = np.asarray(Image.open(folder / "depth16.png").convert("RGB"))
    assert (depth == 255).mean() > 0.9
    phone = np.asarray(Image.open(folder / "phone.jpg").convert("RGB")).astype(int)
    assert np.abs(phone - expected[CAPTIONS[sorted(n for n, *_ in expected.values()).index("phone.jpg")]][2]).max() > 100


def test_val_pipeline_is_decoded_the_same_way(made_shards, user_table, c2lip_off):
    _, expected = user_table
    args = _args("--val-data", made_shards, "--dataset-type", "webdataset", c2lip=False)
    data = upstream_data.get_data(args, (as_tensor, as_tensor), epoch=0, tokenizer=_tokenizer())
    tokenizer = _tokenizer()
    seen = {_caption_of(tokenizer, t): i.permute(1, 2, 0).numpy()
            for images, texts in data["val"].dataloader for i, t in zip(images, texts)}
    depth_caption = next(c for c, (name, *_) in expected.items() if name == "depth16.png")
    assert np.array_equal(seen[depth_caption], expected[depth_caption][2])


# ------------------------------------------------------------------------------------------------
# The patch: installed, idempotent, following upstream

def test_patch_is_installed_idempotent_and_finds_its_stage(made_shards, c2lip_off):
    get_wds_dataset = upstream_data.get_wds_dataset
    patch.patch_image_decoding(upstream_data)
    assert upstream_data.get_wds_dataset is get_wds_dataset
    args = _args("--train-data", made_shards, "--dataset-type", "webdataset", "--train-num-samples", "8", c2lip=False)
    info = upstream_data.get_wds_dataset(args, as_tensor, is_train=True, epoch=0, tokenizer=_tokenizer())
    stages = wds_train_stages(info)
    decoders = [s for s in stages if getattr(s, "f", None) is __import__("webdataset").filters._decode]
    assert len(decoders) == 1 and isinstance(decoders[0].args[0], patch.RGBImageDecoder)
    assert decoders[0].kw["handler"] is upstream_data.log_and_continue  # upstream's handler kept
    with pytest.raises(RuntimeError, match=r"expected one decode\(.pilrgb.\) stage .*found 0.*integration.images must follow"):
        patch.replace_decode_stage(info)  # already replaced: an upstream without the stage is named


def test_decoder_handles_image_members_only():
    decoder = patch.RGBImageDecoder()
    png = io.BytesIO()
    Image.fromarray(np.full((2, 2), 40000, np.uint16)).save(png, "PNG")
    assert np.asarray(decoder(".png", png.getvalue())).tolist() == [[[156] * 3] * 2] * 2
    assert decoder(".txt", b"a caption") is None and decoder(".json", b"{}") is None
    with pytest.raises(ValueError, match="member 'jpg': corrupt or unsupported image"):
        decoder(".jpg", b"junk")


def test_with_webdataset_1_0_2(tmp_path):
    """These tests pass with webdataset 1.0.2 too (its decode stage and image extensions)."""
    from test_integration_wds import run_tests_with_new_webdataset

    run_tests_with_new_webdataset(Path(__file__), "not webdataset_1_0_2", tmp_path)
