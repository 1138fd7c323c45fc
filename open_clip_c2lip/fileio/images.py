"""Images as an image viewer shows them: the one decoder of training data and ``make_shards.py``.

``to_rgb(image)`` turns a ``PIL.Image`` of any mode into the 8-bit RGB picture a viewer displays:

1. **Orientation.** The EXIF (or XMP) orientation tag is applied (``PIL.ImageOps.exif_transpose``),
   so a phone photo stored sideways arrives upright. An unreadable EXIF block counts as no
   orientation, as viewers treat it.
2. **Mode.** One converter per PIL mode (``MODE_CONVERTERS``):

   - ``RGB``, ``L``, ``1``, ``YCbCr``, ``HSV``, ``CMYK`` (``(255-C)(255-K)/255``, no colour profile),
     ``RGBX``: PIL's own conversion;
   - ``LAB``: CIE L*a*b* to sRGB with littlecms (``PIL.ImageCms``);
   - transparency (``RGBA``, ``LA``, premultiplied ``RGBa`` / ``La``, ``P`` / ``PA`` with a
     transparent index or palette alpha, ``L`` / ``RGB`` / 16-bit with a PNG ``tRNS`` colour key):
     composited on white, ``round(c * a / 255 + 255 - a)`` per channel;
   - 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled, ``round(v / 257)`` (65535 is
     white), never clipped at 255;
   - 32-bit integer ``I``: values within 0..65535 are 16-bit data (PIL's and older Pillows' 16-bit
     mode) and scaled as above; other ranges are stretched from their own minimum to maximum;
   - 32-bit float ``F``: values within 0..1 are intensities (``x * 255``), within 0..255 PIL's own
     scale (``Image.convert("F")`` of an 8-bit image), other ranges stretched from minimum to
     maximum; non-finite pixels are black.

   A mode without a converter (a future PIL mode) raises ``ImageDecodeError``.

``decode_rgb(data)`` decodes image bytes fully (a truncated or corrupt file raises
``ImageDecodeError``, not a warning), ``open_rgb(path)`` a file. Training's webdataset decoder and CSV
dataset (``open_clip_c2lip.integration.images``) and ``fileio.shards`` call these, so one picture gives
the same pixels everywhere. Multi-frame files (GIF, TIFF pages) give their first frame. Embedded
ICC colour profiles are not applied (PIL does not, and models were trained without them).
"""
import io
import os
from typing import Callable, Dict, Union

import numpy as np
from PIL import Image, ImageOps

EXIF_ORIENTATION = 0x0112
# PIL format -> the webdataset member extension open_clip_train reads it from (rename "jpg;png;jpeg;webp")
TRAINING_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}


class ImageDecodeError(ValueError):
    """Image data that cannot be decoded to RGB; the message says why (and where, when known)."""


# ------------------------------------------------------------------------------------------------
# Pixel arithmetic (numpy; uint8 out)

def _on_white(colour: Image.Image, alpha: Image.Image) -> Image.Image:
    """``colour`` (``RGB`` or ``L``, straight) over white through ``alpha`` (``L``): per channel
    ``round(c * a / 255 + 255 - a)``; PIL's ``composite`` rounds exactly so (checked over every c, a)."""
    return Image.composite(colour, Image.new(colour.mode, colour.size, "white"), alpha)


def _premultiplied_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiplied colour over white: ``c_premultiplied + 255 - a`` (clipped for invalid data)."""
    out = colour.astype(np.int32) + (255 - alpha.astype(np.int32))[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """0..65535 -> 0..255, ``round(v / 257)`` in integers."""
    v = values.astype(np.uint32)  # 65535 * 255 + 32767 < 2 ** 32
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Own minimum..maximum -> 0..255 (a constant image is black)."""
    v = values.astype(np.float64)
    low, high = float(v.min()), float(v.max())
    if high <= low:
        return np.zeros(v.shape, np.uint8)
    return np.rint((v - low) * (255.0 / (high - low))).astype(np.uint8)


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8), "L").convert("RGB")


def _key_to_white(image: Image.Image, rgb: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Pixels equal to a PNG ``tRNS`` colour key (``image.info["transparency"]``) become white."""
    key = image.info.get("transparency")
    if key is None or isinstance(key, (bytes, tuple)):
        return rgb
    rgb = rgb.copy()
    rgb[raw == key] = 255
    return rgb


# ------------------------------------------------------------------------------------------------
# One converter per PIL mode

def _via_pil(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _with_colour_key(image: Image.Image) -> Image.Image:
    """``L`` / ``RGB``: a PNG ``tRNS`` colour key makes those pixels transparent (PIL applies it in
    ``convert("RGBA")``), else PIL's own conversion."""
    if "transparency" in image.info:
        return _rgba(image.convert("RGBA"))
    return image.convert("RGB")


def _bilevel(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def _rgba(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    return _on_white(rgba.convert("RGB"), rgba.getchannel("A"))


def _la(image: Image.Image) -> Image.Image:
    return _on_white(image.getchannel("L"), image.getchannel("A")).convert("RGB")


def _premultiplied(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image)  # RGBa: [H, W, 4], La: [H, W, 2]
    if image.mode == "La":
        return _grey(_premultiplied_on_white(pixels[..., :1], pixels[..., 1])[..., 0])
    return Image.fromarray(_premultiplied_on_white(pixels[..., :3], pixels[..., 3]), "RGB")


def _palette(image: Image.Image) -> Image.Image:
    # P / PA: convert("RGBA") applies a transparent index, palette alpha (PNG tRNS) and PA's band
    return _rgba(image.convert("RGBA"))


def _sixteen_bit(image: Image.Image) -> Image.Image:
    raw = np.asarray(image)
    return Image.fromarray(_key_to_white(image, np.stack([_scale_16bit(raw)] * 3, -1), raw), "RGB")


def _int32(image: Image.Image) -> Image.Image:
    raw = np.asarray(image)
    grey = _scale_16bit(raw) if raw.size and raw.min() >= 0 and raw.max() <= 65535 else _stretch(raw)
    return Image.fromarray(_key_to_white(image, np.stack([grey] * 3, -1), raw), "RGB")


def _float32(image: Image.Image) -> Image.Image:
    raw = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(raw)
    values = np.where(finite, raw, 0.0)
    low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
    if low >= 0 and high <= 1:
        grey = np.rint(values * 255)
    elif low >= 0 and high <= 255:
        grey = np.rint(values)
    else:
        grey = _stretch(np.where(finite, raw, low)).astype(np.float64)
    grey[~finite] = 0
    return _grey(np.clip(grey, 0, 255).astype(np.uint8))


def _lab(image: Image.Image) -> Image.Image:
    from PIL import ImageCms

    transform = ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
    return ImageCms.applyTransform(image, transform)


# PIL mode -> converter to the RGB a viewer shows (every mode of PIL's Image.MODES)
MODE_CONVERTERS: Dict[str, Callable[[Image.Image], Image.Image]] = {
    "RGB": _with_colour_key,
    "L": _with_colour_key,
    "1": _bilevel,
    "RGBX": _via_pil,
    "YCbCr": _via_pil,
    "HSV": _via_pil,
    "CMYK": _via_pil,
    "LAB": _lab,
    "RGBA": _rgba,
    "LA": _la,
    "RGBa": _premultiplied,
    "La": _premultiplied,
    "P": _palette,
    "PA": _palette,
    "I;16": _sixteen_bit,
    "I;16L": _sixteen_bit,
    "I;16B": _sixteen_bit,
    "I;16N": _sixteen_bit,
    "I": _int32,
    "F": _float32,
}


# ------------------------------------------------------------------------------------------------

def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block: viewers show the image as stored
        return 1


def to_rgb(image: Image.Image) -> Image.Image:
    """The 8-bit RGB picture a viewer shows for a decoded ``image`` (see the module docstring).

    Returns ``image`` itself when it is already RGB with no orientation or transparency to apply;
    never changes ``image``."""
    converter = MODE_CONVERTERS.get(image.mode)
    if converter is None:
        raise ImageDecodeError(f"image mode {image.mode!r} is not supported (known: {', '.join(MODE_CONVERTERS)})")
    if _orientation(image) in range(2, 9):
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    return converter(image)


def decode_rgb(data: Union[bytes, bytearray, memoryview], where: str = "image") -> Image.Image:
    """Image bytes -> the RGB a viewer shows; ``ImageDecodeError`` naming ``where`` if they do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # the full decode: a truncated file fails here, not later in a transform
            return to_rgb(image)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        raise ImageDecodeError(f"{where}: corrupt or unsupported image ({type(exc).__name__}: {exc})") from exc


def open_rgb(path: Union[str, os.PathLike]) -> Image.Image:
    """An image file -> the RGB a viewer shows. ``OSError`` if it cannot be read (``FileNotFoundError``
    when it does not exist), ``ImageDecodeError`` naming the file if it does not decode."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_rgb(data, str(path))


def training_extension(image: Image.Image) -> Union[str, None]:
    """The webdataset member extension under which open_clip_train reads ``image``'s encoded bytes
    (``jpg``, ``png``, ``webp``), or None for a format it does not read (BMP, GIF, TIFF, ...)."""
    return TRAINING_FORMATS.get(image.format or "")
