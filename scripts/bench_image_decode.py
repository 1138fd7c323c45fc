#!/usr/bin/env python
"""Cost of decoding training images as a viewer shows them, as a ratio within one run.

Decodes the same encoded images with webdataset's ``ImageHandler("pilrgb")`` (open_clip_train's
decoder: ``Image.open``, ``load``, ``convert("RGB")``) and with the plugin's
``open_clip_c2lip.integration.images.RGBImageDecoder`` (``fileio.images.decode_rgb``: the same plus
the EXIF orientation and mode conversion). Kinds: a ``--size`` RGB JPEG (quality 90) without EXIF,
the same with an EXIF block (orientation 1) and stored sideways (orientation 6), an RGBA PNG and a
16-bit grey PNG. Interleaved over ``--rounds``; min and median milliseconds per image.

    OMP_NUM_THREADS=1 python scripts/bench_image_decode.py --output benchmarks/image_decode.md
"""
import argparse
import io
import os
import statistics
import time

import numpy as np
from PIL import Image


def encoded_images(width: int, height: int) -> dict:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    photo = np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)

    def save(image, fmt, **kw):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **kw)
        return buffer.getvalue()

    def exif(orientation):
        tags = Image.Exif()
        tags[0x0112] = orientation
        return tags.tobytes()

    rgba = np.dstack([photo, rng.integers(0, 256, photo.shape[:2], dtype=np.uint8)])
    return {
        "jpg (no EXIF)": ("jpg", save(Image.fromarray(photo), "JPEG", quality=90)),
        "jpg, EXIF orientation 1": ("jpg", save(Image.fromarray(photo), "JPEG", quality=90, exif=exif(1))),
        "jpg, EXIF orientation 6": ("jpg", save(Image.fromarray(np.rot90(photo).copy()), "JPEG", quality=90,
                                                exif=exif(6))),
        "png RGBA": ("png", save(Image.fromarray(rgba, "RGBA"), "PNG")),
        "png 16-bit grey": ("png", save(Image.fromarray((photo[..., 0].astype(np.uint16) * 257)), "PNG")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the images")
    parser.add_argument("--repeat", type=int, default=20, help="decodes per kind and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    from webdataset.autodecode import ImageHandler

    from open_clip_c2lip.environment import describe
    from open_clip_c2lip.integration.images import RGBImageDecoder

    width, height = (int(v) for v in args.size.split("x"))
    images = encoded_images(width, height)
    decoders = {"webdataset pilrgb": ImageHandler("pilrgb"), "c2lip RGBImageDecoder": RGBImageDecoder()}
    times = {(kind, name): [] for kind in images for name in decoders}
    load_before = os.getloadavg()[0]
    for _ in range(1 + args.rounds):  # the first round warms up and is dropped
        for kind, (extension, data) in images.items():
            for name, decoder in decoders.items():
                start = time.perf_counter()
                for _ in range(args.repeat):
                    decoder(f".{extension}", data)
                times[kind, name].append((time.perf_counter() - start) / args.repeat * 1000)
    load_after = os.getloadavg()[0]
    env = describe()
    lines = [
        "# Decoding training images as a viewer shows them: cost",
        "",
        f"`OMP_NUM_THREADS=1 python scripts/bench_image_decode.py --size {args.size} --repeat {args.repeat} "
        f"--rounds {args.rounds}` — {width} x {height} images, decoders interleaved, first round dropped.",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores), Pillow {env['packages'].get('pillow', '?')}; "
        f"load average {load_before:.1f} before / {load_after:.1f} after (shared: read the ratio).",
        "",
        "| image | webdataset pilrgb min / median ms | c2lip min / median ms | ratio of medians |",
        "|---|---|---|---|",
    ]
    for kind in images:
        ours, theirs = times[kind, "c2lip RGBImageDecoder"], times[kind, "webdataset pilrgb"]
        lines.append(f"| {kind} | {min(theirs):.2f} / {statistics.median(theirs):.2f} | {min(ours):.2f} / "
                     f"{statistics.median(ours):.2f} | {statistics.median(ours) / statistics.median(theirs):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
