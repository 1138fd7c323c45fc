"""The one image decoder (``open_clip_c2lip.fileio.images``): every PIL mode and EXIF orientation.

Each expectation is written here from the definition (the compositing formula, the 16-bit scale, the
TIFF/EXIF orientation table, the CMYK and YCbCr formulas), not from the code under test; images go
through real encoded files (PNG, TIFF, JPEG, GIF, WebP) wherever a format stores the mode.
"""
import colorsys
import io

import numpy as np
import pytest
from PIL import Image

from open_clip_c2lip.fileio import images as I


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def rgb(image: Image.Image) -> np.ndarray:
    out = I.to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    return np.asarray(out).astype(int)


def grey3(values) -> np.ndarray:
    values = np.asarray(values)
    return np.stack([values] * 3, -1).astype(int)


def over_white(colour, alpha) -> np.ndarray:
    """Straight colour over white, as a viewer shows it: c * a/255 + 255 * (1 - a/255), rounded."""
    c, a = np.asarray(colour, float), np.asarray(alpha, float)[..., None]
    return np.rint(c * a / 255 + 255 * (1 - a / 255)).astype(int)


# ------------------------------------------------------------------------------------------------
# Grey, bilevel, 16 and 32 bit

def test_every_pil_mode_has_a_converter():
    """A Pillow that adds a mode fails here (drift), not in a training worker."""
    assert set(Image.MODES) <= set(I.MODE_CONVERTERS)


def test_bilevel_and_grey():
    bits = np.array([[True, False, True], [False, False, True]])
    assert np.array_equal(rgb(Image.fromarray(bits)), grey3(np.where(bits, 255, 0)))
    values = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    decoded = I.decode_rgb(encode(Image.fromarray(values), "PNG"))
    assert np.array_equal(np.asarray(decoded).astype(int), grey3(values))


def test_16_bit_grey_png_is_scaled_not_white():
    """A 16-bit PNG with values 0..65535 becomes 0..255 grey (v / 257), not white above 255."""
    values = np.array([[0, 128, 257, 1000], [30000, 32896, 65278, 65535]], np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    got = np.asarray(I.decode_rgb(data)).astype(int)
    assert np.array_equal(got, grey3(np.rint(values / 257.0)))
    assert got[0, 1, 0] == 0 and got[1, 0, 0] == 117 and got.max() == 255  # not "everything > 255 is white"


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")])
def test_16_bit_modes(mode, dtype):
    values = np.array([[0, 1, 128, 129], [257, 40000, 65534, 65535]])
    image = Image.frombytes(mode, (4, 2), values.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(image).astype(int), values)  # the test image holds what we think
    assert np.array_equal(rgb(image), grey3(np.rint(values / 257.0)))


def test_16_bit_tiff_big_endian_file():
    values = np.array([[0, 65535, 1285]], np.uint16)
    image = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    data = encode(image, "TIFF")
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), grey3([[0, 255, 5]]))


def test_32_bit_integer():
    in_16_bit_range = np.array([[0, 257, 65535]], np.int32)
    assert np.array_equal(rgb(Image.fromarray(in_16_bit_range, "I")), grey3([[0, 1, 255]]))
    wide = np.array([[-1000, 0, 1000, 600]], np.int32)  # stretched from its own min..max
    assert np.array_equal(rgb(Image.fromarray(wide, "I")), grey3(np.rint((wide + 1000) * 255 / 2000)))


def test_32_bit_float():
    unit = np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)
    assert np.array_equal(rgb(Image.fromarray(unit, "F")), grey3(np.rint(unit.astype(float) * 255)))
    eight_bit = np.array([[0.0, 17.0, 254.6, 255.0]], np.float32)
    assert np.array_equal(rgb(Image.fromarray(eight_bit, "F")), grey3([[0, 17, 255, 255]]))
    wide = np.array([[-1.0, 1.0, 3.0, np.nan]], np.float32)
    assert np.array_equal(rgb(Image.fromarray(wide, "F")), grey3([[0, 128, 255, 0]]))
    tiff = encode(Image.fromarray(unit, "F"), "TIFF")
    assert np.array_equal(np.asarray(I.decode_rgb(tiff)).astype(int), grey3(np.rint(unit.astype(float) * 255)))


# ------------------------------------------------------------------------------------------------
# Transparency: composited on white

def test_rgba_png_on_white():
    colour = np.array([[[255, 0, 0], [0, 255, 0], [10, 20, 30], [200, 100, 50]]], np.uint8)
    alpha = np.array([[255, 0, 128, 77]], np.uint8)
    data = encode(Image.fromarray(np.dstack([colour, alpha]), "RGBA"), "PNG")
    got = np.asarray(I.decode_rgb(data)).astype(int)
    assert np.array_equal(got, over_white(colour, alpha))
    assert got[0, 1].tolist() == [255, 255, 255]  # fully transparent: the white page, not black or green


def test_compositing_is_exact_for_every_colour_and_alpha():
    c, a = np.meshgrid(np.arange(256), np.arange(256))
    image = Image.fromarray(np.dstack([c, 255 - c, c // 2, a]).astype(np.uint8), "RGBA")
    expected = over_white(np.dstack([c, 255 - c, c // 2]), a)
    assert np.array_equal(rgb(image), expected)
    la = Image.fromarray(np.dstack([c, a]).astype(np.uint8), "LA")
    assert np.array_equal(rgb(la), grey3(over_white(c[..., None], a)[..., 0]))


def test_la_png_on_white():
    grey = np.array([[0, 100, 200, 50]], np.uint8)
    alpha = np.array([[255, 0, 100, 1]], np.uint8)
    data = encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), over_white(grey3(grey), alpha))


def test_premultiplied_modes():
    # premultiplied: stored colour is c * a / 255, so the white composite is stored + 255 - a
    stored = np.array([[[100, 50, 0], [0, 0, 0], [30, 30, 30]]], np.uint8)
    alpha = np.array([[100, 0, 255]], np.uint8)
    image = Image.frombytes("RGBa", (3, 1), np.dstack([stored, alpha]).tobytes())
    assert np.array_equal(rgb(image), stored.astype(int) + (255 - alpha.astype(int))[..., None])
    la = Image.frombytes("La", (3, 1), np.dstack([stored[..., 0], alpha]).tobytes())
    assert np.array_equal(rgb(la), grey3(stored[..., 0].astype(int) + 255 - alpha.astype(int)))


def _palette_image(indices):
    image = Image.fromarray(np.array(indices, np.uint8), "P")
    palette = [0] * 768
    for index, colour in {0: (255, 0, 0), 1: (0, 0, 255), 2: (0, 128, 0), 3: (10, 20, 30)}.items():
        palette[3 * index: 3 * index + 3] = colour
    image.putpalette(palette)
    return image


PALETTE = {0: (255, 0, 0), 1: (0, 0, 255), 2: (0, 128, 0), 3: (10, 20, 30)}


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_a_transparent_index(fmt):
    indices = [[0, 1, 2, 3]]
    data = encode(_palette_image(indices), fmt, transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    expected = np.array([[PALETTE[0], (255, 255, 255), PALETTE[2], PALETTE[3]]])
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), expected)


def test_palette_without_transparency_and_with_palette_alpha():
    indices = [[0, 1, 2, 3]]
    plain = np.asarray(I.decode_rgb(encode(_palette_image(indices), "PNG"))).astype(int)
    assert np.array_equal(plain, np.array([[PALETTE[i] for i in range(4)]]))
    entry_alpha = bytes([255, 128, 0, 40])  # PNG tRNS: one alpha per palette entry
    data = encode(_palette_image(indices), "PNG", transparency=entry_alpha)
    expected = over_white(np.array([[PALETTE[i] for i in range(4)]]), np.array([list(entry_alpha)]))
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), expected)


def test_palette_alpha_mode():
    image = Image.frombytes("PA", (3, 1), bytes([0, 255, 1, 100, 3, 0]))
    image.putpalette([c for i in range(4) for c in PALETTE[i]])
    expected = over_white(np.array([[PALETTE[0], PALETTE[1], PALETTE[3]]]), np.array([[255, 100, 0]]))
    assert np.array_equal(rgb(image), expected)


def test_colour_key_transparency_of_rgb_grey_and_16_bit_png():
    colour = np.array([[[1, 2, 3], [9, 9, 9], [1, 2, 3]]], np.uint8)
    data = encode(Image.fromarray(colour), "PNG", transparency=(1, 2, 3))
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int),
                          np.array([[[255, 255, 255], [9, 9, 9], [255, 255, 255]]]))
    grey = np.array([[5, 6, 7]], np.uint8)
    data = encode(Image.fromarray(grey), "PNG", transparency=6)
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), grey3([[5, 255, 7]]))
    wide = np.array([[0, 4000, 65535]], np.uint16)
    data = encode(Image.fromarray(wide), "PNG", transparency=4000)
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), grey3([[0, 255, 255]]))


# ------------------------------------------------------------------------------------------------
# Colour spaces

def test_rgbx_drops_the_padding_band():
    image = Image.frombytes("RGBX", (2, 1), bytes([1, 2, 3, 99, 250, 251, 252, 0]))
    assert np.array_equal(rgb(image), np.array([[[1, 2, 3], [250, 251, 252]]]))


def test_cmyk_naive_conversion():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [100, 50, 20, 60], [0, 255, 255, 30]]])
    image = Image.frombytes("CMYK", (5, 1), cmyk.astype(np.uint8).tobytes())
    # no colour profile: R = (255 - C)(255 - K) / 255, and so on
    expected = np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)
    assert np.abs(rgb(image) - expected).max() <= 1
    assert rgb(image)[0, :3].tolist() == [[255, 255, 255], [0, 255, 255], [0, 0, 0]]
    jpeg = I.decode_rgb(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert np.abs(np.asarray(jpeg).astype(int) - [255, 0, 0]).max() <= 3  # a CMYK JPEG's red is red


def test_ycbcr_full_range_jfif():
    ycc = np.array([[[128, 128, 128], [76, 85, 255], [150, 44, 21], [29, 255, 107]]])
    image = Image.frombytes("YCbCr", (4, 1), ycc.astype(np.uint8).tobytes())
    y, cb, cr = (ycc[..., i].astype(float) for i in range(3))
    expected = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                         y + 1.772 * (cb - 128)], -1)
    assert np.abs(rgb(image) - np.clip(np.rint(expected), 0, 255)).max() <= 2


def test_hsv():
    hsv = np.array([[[0, 255, 255], [85, 255, 255], [170, 128, 200], [40, 0, 90]]])
    image = Image.frombytes("HSV", (4, 1), hsv.astype(np.uint8).tobytes())
    expected = [[255 * np.array(colorsys.hsv_to_rgb(*(px / 255.0))) for px in row] for row in hsv]
    assert np.abs(rgb(image) - np.rint(expected)).max() <= 2


def test_lab():
    # PIL's LAB: L* scaled to 0..255, a* and b* signed bytes; L* = 50 is sRGB grey 119 (Y = 0.184)
    lab = np.array([[[255, 0, 0], [0, 0, 0], [128, 0, 0], [128, 60, 0]]], np.uint8)
    got = rgb(Image.frombytes("LAB", (4, 1), lab.tobytes()))
    assert np.abs(got[0, 0] - 255).max() <= 2 and got[0, 1].max() <= 2
    assert np.abs(got[0, 2] - 119).max() <= 2
    assert got[0, 3, 0] > got[0, 2, 0] > got[0, 3, 1]  # a* > 0 is towards red


# ------------------------------------------------------------------------------------------------
# EXIF orientation

def stored_for_orientation(display: np.ndarray, orientation: int) -> np.ndarray:
    """How a camera stores ``display`` [H, W, C] under EXIF/TIFF orientation 1..8, from the tag's
    definition: where the stored 0th row and 0th column lie in the displayed picture."""
    H, W = display.shape[:2]
    where = {  # stored [i, j] = display [row, column]
        1: lambda i, j: (i, j),                  # 0th row top, 0th column left
        2: lambda i, j: (i, W - 1 - j),          # top, right
        3: lambda i, j: (H - 1 - i, W - 1 - j),  # bottom, right
        4: lambda i, j: (H - 1 - i, j),          # bottom, left
        5: lambda i, j: (j, i),                  # left, top
        6: lambda i, j: (j, W - 1 - i),          # right, top
        7: lambda i, j: (H - 1 - j, W - 1 - i),  # right, bottom
        8: lambda i, j: (H - 1 - j, i),          # left, bottom
    }[orientation]
    shape = (H, W) if orientation <= 4 else (W, H)
    stored = np.zeros(shape + display.shape[2:], display.dtype)
    for i in range(shape[0]):
        for j in range(shape[1]):
            stored[i, j] = display[where(i, j)]
    return stored


def with_orientation(image: Image.Image, orientation: int, fmt: str, **kw) -> bytes:
    exif = Image.Exif()
    exif[I.EXIF_ORIENTATION] = orientation
    return encode(image, fmt, exif=exif.tobytes(), **kw)


DISPLAY = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3) * 5  # every pixel distinct, 3 x 5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(orientation):
    stored = stored_for_orientation(DISPLAY, orientation)
    data = with_orientation(Image.fromarray(stored), orientation, "PNG")
    assert np.array_equal(np.asarray(I.decode_rgb(data)), DISPLAY)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_exif_orientation_jpeg_red_above_blue(orientation):
    """The reported case: a phone photo of red above blue arrives as red above blue."""
    display = np.zeros((64, 48, 3), np.uint8)
    display[:32] = (255, 0, 0)
    display[32:] = (0, 0, 255)
    data = with_orientation(Image.fromarray(stored_for_orientation(display, orientation)), orientation, "JPEG",
                            quality=95)
    got = np.asarray(I.decode_rgb(data)).astype(int)
    assert got.shape == display.shape
    assert np.abs(got[4:28] - (255, 0, 0)).max() < 40 and np.abs(got[36:60] - (0, 0, 255)).max() < 40


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_with_16_bit_and_alpha(orientation):
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    data = with_orientation(Image.fromarray(stored_for_orientation(values, orientation)), orientation, "PNG")
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), grey3(np.rint(values / 257.0)))
    rgba = np.dstack([DISPLAY, np.full(DISPLAY.shape[:2], 128, np.uint8)])
    data = with_orientation(Image.fromarray(stored_for_orientation(rgba, orientation), "RGBA"), orientation, "WEBP",
                            lossless=True)
    assert np.array_equal(np.asarray(I.decode_rgb(data)).astype(int), over_white(DISPLAY, rgba[..., 3]))


def test_to_rgb_leaves_its_input_alone():
    image = Image.fromarray(stored_for_orientation(DISPLAY, 6))
    exif = image.getexif()
    exif[I.EXIF_ORIENTATION] = 6
    before = np.asarray(image).copy()
    assert np.array_equal(np.asarray(I.to_rgb(image)), DISPLAY)
    assert np.array_equal(np.asarray(image), before) and image.getexif()[I.EXIF_ORIENTATION] == 6


# ------------------------------------------------------------------------------------------------
# Bad data

def test_truncated_and_junk_bytes_are_named_errors(tmp_path):
    png = encode(Image.fromarray(DISPLAY), "PNG")
    with pytest.raises(I.ImageDecodeError, match=r"cut\.png: corrupt or unsupported image"):
        I.decode_rgb(png[: len(png) // 2], "cut.png")
    with pytest.raises(I.ImageDecodeError, match="junk: corrupt or unsupported image"):
        I.decode_rgb(b"not an image", "junk")
    with pytest.raises(FileNotFoundError):
        I.open_rgb(tmp_path / "missing.png")
    (tmp_path / "ok.png").write_bytes(png)
    assert np.array_equal(np.asarray(I.open_rgb(tmp_path / "ok.png")), DISPLAY)


def test_training_extension():
    assert I.training_extension(Image.open(io.BytesIO(encode(Image.fromarray(DISPLAY), "PNG")))) == "png"
    assert I.training_extension(Image.open(io.BytesIO(encode(Image.fromarray(DISPLAY), "JPEG")))) == "jpg"
    assert I.training_extension(Image.open(io.BytesIO(encode(Image.fromarray(DISPLAY), "BMP")))) is None
