"""Loading open_clip models with their real preprocessing, for the eval, viz and export CLIs.

A checkpoint *file* given to open_clip gets OpenAI mean/std and ``shortest`` resizing; SigLIP
models (every C2 architecture) need mean = std = 0.5, ``squash`` and bicubic. The helpers here
resolve what a name's pretrained tags (or the plugin registry) say and force it on
``open_clip.create_model_and_transforms``.
"""
import argparse
import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from .registry import SIGLIP_PREPROCESS, lookup

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def plugin_entry(model_name: str):
    """The plugin registry's entry (``open_clip_c2lip.registry.lookup``) for a C2 name, else ``None``."""
    return lookup(model_name)


def is_plugin_model(model_name: str) -> bool:
    """True for names the C2LIP plugin adds (``*-C2`` twins and the package's own configs)."""
    if plugin_entry(model_name) is not None:
        return True
    config_dir = Path(__file__).resolve().parent / "model_configs"
    return model_name.endswith("-C2") or (config_dir / f"{model_name}.json").is_file()


def plugin_preprocess_cfg(model_name: str) -> Dict[str, Any]:
    """The preprocessing the plugin gives a C2 name (SigLIP), or ``{}`` for other names."""
    entry = plugin_entry(model_name)
    if entry is not None:
        return dict(entry.preprocess)
    return dict(SIGLIP_PREPROCESS) if is_plugin_model(model_name) else {}


def tag_preprocess_cfg(model_name: str) -> Dict[str, Any]:
    """Preprocess values (mean, std, interpolation, resize_mode) on which all of ``model_name``'s
    pretrained tags agree; keys where tags disagree are left out with a warning."""
    import open_clip
    cfgs = [open_clip.get_pretrained_cfg(model_name, tag) for tag in open_clip.list_pretrained_tags_by_model(model_name)]
    agreed, disagreed = {}, []
    for key in _PREPROCESS_KEYS:
        values = {tuple(v) if isinstance(v, (list, tuple)) else v for v in (c.get(key) for c in cfgs) if v is not None}
        if len(values) == 1:
            agreed[key] = values.pop()
        elif len(values) > 1:
            disagreed.append(key)
    if disagreed:
        warnings.warn(f"pretrained tags of {model_name} disagree on {disagreed}; open_clip defaults are used "
                      f"for those unless set with --image-mean/--image-std/--image-interpolation/"
                      f"--image-resize-mode")
    return agreed


def resolve_preprocess_cfg(model_name: str, pretrained: Optional[str] = None,
                           overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Preprocess values to force on ``create_model``: the ones open_clip would lose, plus ``overrides``.

    A pretrained *tag* or a ``local-dir:``/``hf-hub:`` bundle already carries its preprocessing.
    A checkpoint file (or random init) would get open_clip's OpenAI defaults, so it takes the
    values all of the name's tags agree on; plugin names without tags get SigLIP preprocessing.
    """
    import open_clip
    forced: Dict[str, Any] = {}
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    is_tag = bool(pretrained) and bool(open_clip.get_pretrained_cfg(model_name, pretrained))
    if not has_schema and not is_tag:
        forced = tag_preprocess_cfg(model_name) or plugin_preprocess_cfg(model_name)
    forced.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return forced


def load_model(model_name: str, pretrained: Optional[str] = None, *, device: str = "cpu",
               image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
               image_interpolation: Optional[str] = None, image_resize_mode: Optional[str] = None):
    """``(model, preprocess, tokenizer)`` for any open_clip name, with the model's real preprocessing.

    ``model_name`` may be a built-in or plugin name (with ``pretrained`` a tag or checkpoint file)
    or a ``local-dir:``/``hf-hub:`` bundle. The model is in eval mode on ``device`` (fp32 weights;
    mixed precision is applied with autocast at encoding time).
    """
    import open_clip
    if pretrained and not model_name.startswith(("local-dir:", "hf-hub:")) \
            and not open_clip.get_pretrained_cfg(model_name, pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained {pretrained!r} is neither a pretrained tag of {model_name} "
                                f"({open_clip.list_pretrained_tags_by_model(model_name)}) nor an existing file")
    forced = resolve_preprocess_cfg(model_name, pretrained, {
        "mean": image_mean, "std": image_std, "interpolation": image_interpolation,
        "resize_mode": image_resize_mode})
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, image_mean=forced.get("mean"),
            image_std=forced.get("std"), image_interpolation=forced.get("interpolation"),
            image_resize_mode=forced.get("resize_mode"))
    except Exception as e:
        _diagnose_checkpoint(model_name, pretrained, e)  # raises CheckpointError when the file is at fault
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    return model, preprocess, tokenizer


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def no_random_init_warning():
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" (logged on the root
    logger by ``create_model(pretrained=None)``) where trained weights are loaded right after."""
    drop = _DropRecords("No pretrained weights loaded for model")
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _bundle_weights(model_name: str) -> Optional[Path]:
    folder = Path(model_name[len("local-dir:"):])
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


def _diagnose_checkpoint(model_name: str, pretrained: Optional[str], error: BaseException) -> None:
    """After open_clip failed to build ``model_name``: raise ``CheckpointError`` saying what is wrong
    with the checkpoint file (empty, truncated, foreign, another architecture), else return."""
    import open_clip
    from .fileio.checkpoint import mismatch_error, read_checkpoint
    if model_name.startswith("local-dir:"):
        weights = _bundle_weights(model_name)
        if weights is not None:
            read_checkpoint(weights)  # file faults; a bundle's architecture comes with it
        return
    if model_name.startswith("hf-hub:") or not pretrained or not os.path.isfile(pretrained):
        return
    state_dict, _ = read_checkpoint(pretrained)
    with no_random_init_warning():
        bare = open_clip.create_model(model_name, pretrained=None)
    raise mismatch_error(bare, state_dict, pretrained, model_name, error) from error


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model / preprocessing flags shared by the eval and viz CLIs."""
    parser.add_argument("--model", required=True,
                        help="open_clip model name (built-in, C2 plugin name) or local-dir:DIR / hf-hub:ID")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (ignored for local-dir:)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-mean", type=float, nargs=3, default=None, metavar="M")
    parser.add_argument("--image-std", type=float, nargs=3, default=None, metavar="S")
    parser.add_argument("--image-interpolation", default=None, choices=["bicubic", "bilinear", "random"])
    parser.add_argument("--image-resize-mode", default=None, choices=["shortest", "longest", "squash"])


def model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(device=args.device, image_mean=args.image_mean, image_std=args.image_std,
                image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode)
