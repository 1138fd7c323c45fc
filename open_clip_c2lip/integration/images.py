"""Image decoding of ``open_clip_train.data``'s webdataset pipelines: the images a viewer shows.

open_clip_train decodes shard images with ``wds.decode("pilrgb")``: PIL's ``convert("RGB")``, which
ignores EXIF orientation (a phone photo trains sideways), clips 16-bit grey at 255 (pure white) and
drops transparency onto black. ``patch_image_decoding(module)`` (one of the plugin's hooks for
``open_clip_train.data``, idempotent, active with or without ``--c2lip-loss``) wraps
``get_wds_dataset`` so that, in the train and the val pipelines, that stage becomes
``wds.decode(RGBImageDecoder(), handler=<the same handler>)``: the same stage type, so skips still go
to upstream's handler (or to the C2LIP counters, ``integration.wds.ReportSkips``), with images decoded
by ``open_clip_c2lip.fileio.images.decode_rgb``, the function ``scripts/make_shards.py`` and the CSV
dataset (``integration.csv_data``) use. A pipeline without exactly one ``decode("pilrgb")`` stage
raises, naming it (open_clip_train changed). ``patches/open_clip_train-table-images.diff`` makes the
same change upstream.
"""
import functools
import re
from typing import Any, Callable, Optional

from ..fileio.images import decode_rgb
from .data_order import wds_train_stages

_PATCHED = "__open_clip_c2lip_image_decoding_patched__"
UPSTREAM_IMAGE_SPEC = "pilrgb"


class RGBImageDecoder:
    """webdataset decoder handler: image members (webdataset's ``IMAGE_EXTENSIONS``, as ``pilrgb``
    decodes) -> ``decode_rgb``; None for other members (text and json keep webdataset's decoders)."""

    def __init__(self, extensions: Optional[Any] = None):
        if extensions is None:
            from webdataset.autodecode import IMAGE_EXTENSIONS as extensions
        self.extensions = frozenset(e.lower() for e in extensions)

    def __call__(self, key: str, data: bytes):
        if re.sub(r".*[.]", "", key).lower() not in self.extensions:
            return None
        return decode_rgb(data, f"member {key.lstrip('.')!r}")


def _is_upstream_decode(stage) -> bool:
    from webdataset import filters

    return getattr(stage, "f", None) is filters._decode and tuple(getattr(stage, "args", ())) == (UPSTREAM_IMAGE_SPEC,)


def replace_decode_stage(info) -> None:
    """In the wds ``DataInfo``'s pipeline, ``decode("pilrgb", **kw)`` -> ``decode(RGBImageDecoder(), **kw)``."""
    from webdataset import filters

    stages = wds_train_stages(info)
    found = [i for i, stage in enumerate(stages) if _is_upstream_decode(stage)]
    if len(found) != 1:
        raise RuntimeError(
            f"C2LIP: expected one decode({UPSTREAM_IMAGE_SPEC!r}) stage in open_clip_train's webdataset pipeline, "
            f"found {len(found)}; open_clip_train or webdataset changed and open_clip_c2lip.integration.images "
            "must follow")
    stage = stages[found[0]]
    stages[found[0]] = filters.decode(RGBImageDecoder(), **stage.kw)


def _wrap_get_wds_dataset(original: Callable) -> Callable:
    @functools.wraps(original)
    def get_wds_dataset(*call_args, **call_kwargs):
        info = original(*call_args, **call_kwargs)
        replace_decode_stage(info)
        return info

    return get_wds_dataset


def patch_image_decoding(module) -> None:
    """Hook for ``open_clip_train.data`` (idempotent): webdataset images decoded by ``decode_rgb``."""
    if getattr(module, _PATCHED, False):
        return
    module.get_wds_dataset = _wrap_get_wds_dataset(module.get_wds_dataset)
    setattr(module, _PATCHED, True)
