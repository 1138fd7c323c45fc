"""Tests for open_clip_c2lip.viz: concept attention maps and the rendered comparison figure."""
import os
from types import SimpleNamespace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import open_clip

from open_clip_c2lip import viz

torch.set_num_threads(1)

TINY_CONFIG = Path(__file__).resolve().parents[1] / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    open_clip.add_model_config(TINY_CONFIG)
    folder = tmp_path_factory.mktemp("viz")
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model("C2LIP-Tiny")
        path = folder / f"epoch_{seed}.pt"
        torch.save({"epoch": seed, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                   path)
        checkpoints.append(path)
    image = Image.new("RGB", (160, 120), (235, 235, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((15, 20, 75, 80), fill=(220, 30, 30))
    draw.rectangle((95, 50, 150, 110), fill=(30, 60, 200))
    image.save(folder / "shapes.png")
    return folder / "shapes.png", checkpoints


def test_maps_equal_naive_softmax_over_patch_grid(tiny):
    from open_clip_c2lip.model import image_token_features
    image_path, (checkpoint, _) = tiny
    model = open_clip.create_model("C2LIP-Tiny", pretrained=str(checkpoint)).eval()
    tokenizer = open_clip.get_tokenizer("C2LIP-Tiny")
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    concepts = ["a red ball", "a blue box", "the grass"]
    for temperature in (1.0, 5.0):
        maps = viz.concept_attention_maps(model, image, concepts, tokenizer, temperature)
        with torch.no_grad():
            _, tokens = image_token_features(model, image[None])
            text = model.encode_text(tokenizer(concepts), normalize=True)
        v, c = tokens[0].double().numpy(), text.double().numpy()
        rows, cols = 64 // 16, 64 // 16  # test_vit: 16-pixel patches
        assert maps.shape == (3, rows, cols)
        for n in range(len(concepts)):
            scores = np.exp(temperature * np.array([c[n] @ v[t] for t in range(len(v))]))
            weights = scores / scores.sum()
            for r in range(rows):
                for q in range(cols):  # timm flattens patches row-major
                    assert maps[n, r, q].item() == pytest.approx(weights[r * cols + q], rel=1e-4)
    uniform = viz.concept_attention_maps(model, image, concepts, tokenizer, temperature=0.0)
    torch.testing.assert_close(uniform, torch.full_like(uniform, 1 / 16))


def test_map_layout_follows_token_order(monkeypatch):
    """A concept aligned with exactly one token lights up that token's grid cell (row-major)."""
    import open_clip_c2lip.model as c2model

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            # 1-pixel patches: a [3, 3, 4] image is a 3 x 4 patch grid
            self.visual = SimpleNamespace(trunk=SimpleNamespace(patch_embed=SimpleNamespace(patch_size=(1, 1))))

        def encode_text(self, tokens, normalize=False):
            return torch.nn.functional.one_hot(torch.tensor([7, 2]), 12).float()

    tokens = torch.eye(12)[None]  # 12 tokens: a 3 x 4 grid, token t = basis vector t
    monkeypatch.setattr(c2model, "image_token_features", lambda model, images: (None, tokens))
    maps = viz.concept_attention_maps(Stub(), torch.zeros(3, 3, 4), ["x", "y"], lambda t: torch.zeros(len(t), 4),
                                      temperature=50.0)
    assert maps.shape == (2, 3, 4)
    assert divmod(int(maps[0].argmax()), 4) == (1, 3) and divmod(int(maps[1].argmax()), 4) == (0, 2)


def test_cli_renders_comparison_png(tiny, tmp_path, monkeypatch):
    pytest.importorskip("spacy")
    image_path, (first, second) = tiny
    seen = {}
    original = viz.render

    def recording_render(picture, concepts, maps, labels, output, temperature=1.0):
        seen.update(picture=picture, concepts=concepts, maps=maps, labels=labels)
        return original(picture, concepts, maps, labels, output, temperature)

    monkeypatch.setattr(viz, "render", recording_render)
    output = viz.main(["--model", "C2LIP-Tiny", "--pretrained", str(first), "--image", str(image_path),
                       "--caption", "A red ball next to a blue box.", "--compare", "C2LIP-Tiny",
                       "--compare-pretrained", str(second), "--output", str(tmp_path / "maps.png")])
    assert output == tmp_path / "maps.png" and [p.name for p in tmp_path.iterdir()] == ["maps.png"]
    with Image.open(output) as png:
        assert png.format == "PNG" and png.width > 400 and png.height > 400
    assert seen["concepts"] == ["a red ball", "a blue box"]  # spaCy noun chunks of the caption
    assert seen["labels"] == ["C2LIP-Tiny epoch_0.pt", "C2LIP-Tiny epoch_1.pt"]
    # the image as the model sees it: SigLIP squash to 64 x 64, pixels back in [0, 1]
    assert seen["picture"].shape == (64, 64, 3) and 0 <= seen["picture"].min() and seen["picture"].max() <= 1
    for maps in seen["maps"]:
        # T * a over the image: averages to 1 (uniform attention), the two models differ
        assert maps.shape == (2, 64, 64)
        assert maps.mean(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0], abs=0.02)
    assert not torch.allclose(seen["maps"][0], seen["maps"][1])


def test_labels_tell_two_runs_of_one_architecture_apart():
    from open_clip_c2lip.viz import _label
    first = _label("C2LIP-Tiny", "/logs/c2lip/checkpoints/epoch_1.pt")
    second = _label("C2LIP-Tiny", "/logs/siglip/checkpoints/epoch_1.pt")
    assert first != second and "c2lip/epoch_1.pt" in first and "siglip/epoch_1.pt" in second
    assert _label("C2LIP-Tiny", "/x/model.pt") == "C2LIP-Tiny model.pt"
    assert _label("C2LIP-Tiny", None) == "C2LIP-Tiny"


def test_many_concepts_get_one_row_each_at_a_fixed_width(tmp_path):
    """Seven or more concepts stay readable: rows are added, the panels do not shrink."""
    picture = np.random.default_rng(0).random((64, 64, 3))
    sizes = {}
    for count in (2, 8):
        maps = [torch.rand(count, 64, 64) * 2, torch.rand(count, 64, 64) * 2]
        out = viz.render(picture, [f"a red square number {i}" for i in range(count)], maps, ["first", "second"],
                         tmp_path / f"{count}.png")
        with Image.open(out) as image:
            sizes[count] = image.size
    (width2, height2), (width8, height8) = sizes[2], sizes[8]
    assert abs(width8 - width2) <= 0.05 * width2  # the same four columns
    assert height8 > 3 * height2 * 0.8  # six more rows of the same height


def test_difference_column_is_green_where_the_first_model_attends_more(tmp_path, monkeypatch):
    """The last column is first − second on the PiYG scale: green where the first model (C2LIP in the
    demo) attends more, pink where it attends less, white where both agree; its colour bar says so."""
    import matplotlib.pyplot as plt
    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    first, second = torch.ones(1, 8, 8), torch.ones(1, 8, 8)
    first[0, :, :4], second[0, :, 4:] = 3.0, 3.0  # first attends more on the left half, second on the right
    viz.render(np.zeros((8, 8, 3)), ["a red bar"], [first, second], ["c2lip", "siglip"], tmp_path / "d.png")
    fig = kept[0]
    panel = fig.axes[3]  # image, c2lip, siglip, difference
    shown = panel.get_images()[-1]
    rgba = shown.to_rgba(shown.get_array())
    left, right = rgba[:, :4].reshape(-1, 4).mean(0), rgba[:, 4:].reshape(-1, 4).mean(0)
    assert left[1] > left[0] + 0.2 and left[1] > left[2] + 0.2  # green
    assert right[0] > right[1] + 0.2 and right[2] > right[1] + 0.2  # pink (magenta)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any("green: more in c2lip" in label.replace("\n", " ") for label in labels)
    close(fig)


# ------------------------------------------------------------------------------------------------
# a full disk and a missing Hub: one error line, nothing partial

import errno  # noqa: E402
import shutil  # noqa: E402
from collections import namedtuple  # noqa: E402

from hub_fixtures import hub_cache, refused_hub  # noqa: E402,F401
from open_clip_c2lip import cli_errors  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def _cli(argv):
    try:
        cli_errors.run(viz.main, argv)
    except SystemExit as e:
        return e.code
    return None


def _forbid(monkeypatch, target: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{target} must not be called")
    monkeypatch.setattr(target, refuse)


def test_full_disk_before_and_while_writing(tiny, tmp_path, monkeypatch):
    image_path, (checkpoint, _) = tiny
    output = tmp_path / "figures" / "maps.png"
    argv = ["--model", "C2LIP-Tiny", "--pretrained", str(checkpoint), "--image", str(image_path), "--caption", "x",
            "--concepts", "a red ball", "--output", str(output), "--device", "cpu"]
    with monkeypatch.context() as patch:  # a full disk is said before the model loads
        patch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 10 ** 9 - 4096, 4096))
        _forbid(patch, "open_clip_c2lip.viz.load_model")
        assert _cli(argv) == (f"error: no space left on the device for {output}: it needs at least 1,048,576 bytes "
                              f"(1.0 MiB), 4,096 bytes (4.0 KiB) free in {tmp_path}")
    # the disk fills while the PNG is written: the partial file is removed, the size is the PNG's
    written = []

    class FillingFile:
        def __init__(self, path):
            self.file = open(path, "wb")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            written.append(len(data))
            self.file.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(viz, "open", lambda path, mode="r": FillingFile(path), raising=False)
    message = _cli(argv)
    assert message.startswith(f"error: no space left on the device for {output}: it needs about {written[0]:,} bytes")
    assert sorted(p.name for p in output.parent.iterdir()) == []  # no partial PNG left


def test_offline_pretrained_tag_is_one_line(tiny, tmp_path, hub_cache, refused_hub, monkeypatch):
    image_path, _ = tiny
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    _forbid(monkeypatch, "open_clip.create_model_and_transforms")
    message = _cli(["--model", "ViT-B-16-SigLIP-C2", "--pretrained", "webli", "--image", str(image_path),
                    "--caption", "x", "--concepts", "a red ball", "--output", str(tmp_path / "v.png")])
    assert message.startswith("error: the tokenizer of ViT-B-16-SigLIP-C2 (Hub repo timm/ViT-B-16-SigLIP) and the "
                              "weights of --pretrained webli") and "(HF_HUB_OFFLINE is set)" in message
    assert "\n" not in message and refused_hub == [] and not (tmp_path / "v.png").exists()
