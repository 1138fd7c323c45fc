"""Export a training checkpoint as a plugin-free open_clip ``local-dir`` bundle.

``python -m open_clip_c2lip.export --model ViT-B-16-SigLIP-C2 --checkpoint epoch_5.pt --output DIR``
writes::

    DIR/open_clip_config.json        {"model_cfg": <BASE architecture config>, "preprocess_cfg": {...}}
    DIR/open_clip_model.safetensors  weights ("module." stripped; training checkpoints accepted)
    DIR/tokenizer files              for HF tokenizers (CLIP BPE ships inside open_clip)
    DIR/export_info.json             provenance (source model name, checkpoint, epoch)

so that plain open_clip (and clip_benchmark) load it with ``--model local-dir:DIR`` and the model's
real preprocessing (SigLIP: mean = std = 0.5, ``squash``, bicubic), no plugin needed. The bundle is
built in a temporary sibling folder, verified by re-loading it and comparing embeddings, and only
then moved into place, with the user's umask (folder ``0777 & ~umask``, files ``0666 & ~umask``).

``--overwrite`` replaces only a previous export: a folder whose ``export_info.json`` lists the files
it wrote, holding nothing else. Anything else (a foreign file, a subfolder, a symlink, a folder without export info) is
refused and nothing is deleted; an empty folder is replaced. A bad checkpoint (missing, empty,
truncated, foreign, no state dict, another architecture) fails before anything is written, with
an error that says which (:mod:`open_clip_c2lip.fileio.checkpoint`); the architecture is checked on the
``meta`` device before any download. An HF tokenizer comes from the local Hugging Face cache
first; without it and without the Hub the export stops at once, saying what to pass
(:mod:`open_clip_c2lip.hub`). The weights' size is checked against the free space up front, and a
full disk while writing ends in ``DiskFullError`` naming the folder and the size, with the
staging folder removed (:mod:`open_clip_c2lip.fileio.diskspace`).
"""
import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from . import cli_errors
from .fileio.checkpoint import check_architecture, load_checkpoint_into
from .fileio.diskspace import check_free_space, disk_full_as_error
from .hub import HubUnavailableError
from .loading import (bare_model, build_cache_first, is_plugin_model, load_tokenizer, no_random_init_warning,
                      plugin_entry, resolve_preprocess_cfg)

_logger = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
INFO_NAME = "export_info.json"
EXPORTED_BY = "open_clip_c2lip.export"
_VERIFY_TEXTS = ("a photo of a dog", "two red apples on a wooden table")
# room for the config and export info; the safetensors header takes about 100 bytes + the name per tensor
_SMALL_FILES_BYTES = 1 << 16
_HEADER_BYTES_PER_TENSOR = 128


def base_model_name(model_name: str) -> str:
    """The plain open_clip architecture a (C2) model name is trained as.

    A ``-C2`` twin's base comes from ``open_clip_c2lip.registry`` (its own architectures, e.g.
    ``C2LIP-Tiny``, are their own base); unknown ``*-C2`` names lose the suffix; other names are
    their own base.
    """
    entry = plugin_entry(model_name)
    if entry is not None:
        return entry.base or entry.name
    return model_name[:-len("-C2")] if model_name.endswith("-C2") else model_name


def _model_config(name: str) -> Dict[str, Any]:
    import open_clip
    cfg = open_clip.get_model_config(name)
    if cfg is None and is_plugin_model(name):
        # plugin configs are registered by the plugin's hook; register them here if it is off
        open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
        cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"no open_clip model config named {name!r} (is the plugin active for C2 names?)")
    return cfg


def _tokenizer(name: str, model_cfg: Mapping[str, Any], tokenizer_source: Optional[str]):
    """The model's tokenizer when it is an HF tokenizer (to save into the bundle), else ``None``."""
    from open_clip.tokenizer import HFTokenizer
    text_cfg = model_cfg.get("text_cfg", {})
    if not text_cfg.get("hf_tokenizer_name") and tokenizer_source is None:
        return None
    source = tokenizer_source or text_cfg["hf_tokenizer_name"]
    try:
        tokenizer = load_tokenizer(name, tokenizer_source)
    except (HubUnavailableError, FileNotFoundError):
        raise
    except (OSError, ValueError) as e:  # transformers: a folder without a readable tokenizer
        raise ValueError(f"cannot load the HF tokenizer {source!r} of {name} to save it into the bundle: "
                         f"{str(e).strip().splitlines()[0]}") from e
    if not isinstance(tokenizer, HFTokenizer):
        raise RuntimeError(f"{name}: expected an HF tokenizer for {source!r}, got {type(tokenizer).__name__}")
    return tokenizer


def weights_bytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the safetensors file of ``state_dict`` (meta tensors included), from above: the
    tensors' bytes plus a header entry per tensor."""
    return sum(t.numel() * t.element_size() + len(k) + _HEADER_BYTES_PER_TENSOR for k, t in state_dict.items())


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _listing(names: Sequence[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def previous_export_files(folder: Path) -> List[Path]:
    """The entries of ``folder`` if it may be replaced (a previous export holding only what the export
    wrote, or an empty folder); raises ``FileExistsError`` saying why not otherwise."""
    folder = Path(folder)
    if folder.is_symlink():
        raise FileExistsError(f"refusing to replace {folder}: it is a symbolic link; remove it yourself or "
                              f"choose another --output")
    if not folder.is_dir():
        raise FileExistsError(f"refusing to replace {folder}: it exists and is not a folder")
    entries = list(folder.iterdir())
    if not entries:
        return []
    try:
        info = json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict) or "base_model" not in info or not isinstance(info.get("files"), list):
        held = _listing(e.name + ("/" if e.is_dir() else "") for e in entries)
        raise FileExistsError(f"refusing to replace {folder}: it is not a previous export (no readable {INFO_NAME} "
                              f"listing the files it wrote) and holds {held}; choose another --output or remove it "
                              f"yourself")
    allowed = set(info["files"]) | {INFO_NAME}
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries
               if e.name not in allowed or e.is_symlink() or not e.is_file()]
    if foreign:
        raise FileExistsError(f"refusing to replace {folder}: besides a previous export it holds "
                              f"{_listing(foreign)}, which the export did not write; move them away or "
                              f"choose another --output")
    return entries


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Give the staged bundle the permissions a plain ``mkdir`` / ``open`` would (tempfile and
    safetensors create 0700 / 0600)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for path in folder.iterdir():
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _replace(staging: Path, output_dir: Path) -> None:
    """Move ``staging`` to ``output_dir``; a previous export there is removed file by file (only the
    entries :func:`previous_export_files` vouched for, checked again now)."""
    if not os.path.lexists(output_dir):
        staging.rename(output_dir)
        return
    entries = previous_export_files(output_dir)
    aside = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.replaced.", dir=output_dir.parent))
    aside.rmdir()
    output_dir.rename(aside)
    try:
        staging.rename(output_dir)
    except BaseException:
        aside.rename(output_dir)
        raise
    for entry in entries:
        (aside / entry.name).unlink()
    try:
        aside.rmdir()
    except OSError:  # something appeared in the old folder meanwhile: keep it
        _logger.warning("the previous export's folder was moved to %s and kept (it is not empty)", aside)


@torch.no_grad()
def _embeddings(model, tokenizer, image_size) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = torch.randn(2, 3, height, width, generator=generator)
    return {"image": model.encode_image(images, normalize=True),
            "text": model.encode_text(tokenizer(list(_VERIFY_TEXTS)), normalize=True)}


def _verify(bundle: Path, model, preprocess_cfg: Mapping[str, Any], atol: float = 1e-5) -> None:
    """Re-load ``bundle`` with plain open_clip and check config, tokenizer and embeddings."""
    import open_clip
    name = f"local-dir:{bundle}"
    loaded = build_cache_first(lambda: open_clip.create_model(name), name).eval()
    for key in ("mean", "std", "interpolation", "resize_mode"):
        got, want = loaded.visual.preprocess_cfg.get(key), preprocess_cfg[key]
        if (tuple(got) if isinstance(got, (list, tuple)) else got) != want:
            raise RuntimeError(f"bundle {bundle}: preprocess {key} re-loads as {got}, expected {want}")
    tokenizer = open_clip.get_tokenizer(name)
    want = _embeddings(model.eval(), tokenizer, loaded.visual.image_size)
    got = _embeddings(loaded, tokenizer, loaded.visual.image_size)
    for key in want:
        error = (want[key] - got[key]).abs().max().item()
        if error > atol:
            raise RuntimeError(f"bundle {bundle}: re-loaded {key} embeddings differ by {error:.2e}")


def check_output_parent(output_dir: Path) -> None:
    """ValueError before any work when the bundle could not be created: its nearest existing
    ancestor is a file or not writable (the staging folder is made next to the bundle)."""
    parent = next(p for p in [output_dir.parent, *output_dir.parent.parents] if os.path.lexists(p))
    if not parent.is_dir():
        raise ValueError(f"cannot write {output_dir}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {output_dir}: {parent} is not writable")


def export_bundle(model_name: str, checkpoint, output_dir, *, tokenizer_source: Optional[str] = None,
                  preprocess_overrides: Optional[Mapping[str, Any]] = None, overwrite: bool = False,
                  verify: bool = True) -> Path:
    """Write a plugin-free ``local-dir`` bundle of ``checkpoint`` (trained as ``model_name``) to ``output_dir``.

    Returns the bundle folder. ``preprocess_overrides`` (mean/std/interpolation/resize_mode) win
    over the resolved preprocessing; ``tokenizer_source`` is a local HF tokenizer folder for models
    whose tokenizer would otherwise be downloaded.
    """
    import open_clip
    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    checkpoint, output_dir = Path(checkpoint), Path(output_dir)
    if os.path.lexists(output_dir):
        if not overwrite:
            raise FileExistsError(f"{output_dir} exists; pass --overwrite to replace it")
        previous_export_files(output_dir)  # refuse before any work; checked again before replacing
    check_output_parent(output_dir)
    base = base_model_name(model_name)
    model_cfg = _model_config(base)
    # file faults and another architecture are reported before anything is downloaded or built
    bare = bare_model(base)
    check_architecture(bare, checkpoint, model_name)
    needed = weights_bytes(bare.state_dict()) + _SMALL_FILES_BYTES  # tokenizer files come on top
    del bare
    check_free_space(output_dir, needed)
    # the base's tags (SigLIP for every twin) or, for the plugin's own architectures, the plugin's
    preprocess_cfg = resolve_preprocess_cfg(base, None, preprocess_overrides)
    if not {"mean", "std"} <= set(preprocess_cfg):
        preprocess_cfg = resolve_preprocess_cfg(model_name, None, preprocess_overrides)
    tokenizer = _tokenizer(base, model_cfg, tokenizer_source)

    def create():
        with no_random_init_warning():  # the trained weights are loaded next
            return open_clip.create_model(base, pretrained=None, pretrained_text=False)

    model = build_cache_first(create, base).eval()
    meta = load_checkpoint_into(model, checkpoint, model_name)
    full_preprocess = merge_preprocess_dict(PreprocessCfg(), {**preprocess_cfg, "size": model.visual.image_size})
    open_clip.set_model_preprocess_cfg(model, full_preprocess)

    written = {"tokenizer": 0}  # the tokenizer's files, once saved
    with disk_full_as_error(output_dir, lambda: needed + written["tokenizer"]):
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
        try:
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
                written["tokenizer"] = _folder_bytes(staging)
            save_config_for_hf(model, staging / CONFIG_NAME, model_config=model_cfg)
            check_free_space(output_dir, needed - _SMALL_FILES_BYTES)  # the tokenizer may have taken the room
            # clone: safetensors refuses tensors that share storage
            tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
            safetensors.torch.save_file(tensors, str(staging / WEIGHTS_NAME))
            del tensors
            files = sorted(p.name for p in staging.iterdir()) + [INFO_NAME]
            info = {"model": model_name, "base_model": base, "checkpoint": checkpoint.name, **meta,
                    "open_clip_version": open_clip.__version__, "exported_by": EXPORTED_BY, "files": files}
            (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
            if verify:
                _verify(staging, model, {k: full_preprocess[k] for k in ("mean", "std", "interpolation", "resize_mode")})
            _apply_umask(staging)
            _replace(staging, output_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _logger.info("exported %s (%s) from %s to %s", model_name, base, checkpoint, output_dir)
    return output_dir


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.export", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model name the checkpoint was trained as (e.g. a -C2 name)")
    parser.add_argument("--checkpoint", required=True, type=Path, help="open_clip checkpoint (epoch_N.pt) or state dict")
    parser.add_argument("--output", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--tokenizer", default=None,
                        help="HF tokenizer folder (or local-dir:DIR, e.g. a previous export) to save into the bundle "
                             "instead of downloading the model's from the Hugging Face Hub")
    parser.add_argument("--image-mean", type=float, nargs=3, default=None, metavar="M")
    parser.add_argument("--image-std", type=float, nargs=3, default=None, metavar="S")
    parser.add_argument("--image-interpolation", default=None, choices=["bicubic", "bilinear", "random"])
    parser.add_argument("--image-resize-mode", default=None, choices=["shortest", "longest", "squash"])
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip re-loading the bundle to compare embeddings")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("open_clip_c2lip").setLevel(logging.INFO)
    overrides = {"mean": args.image_mean and tuple(args.image_mean), "std": args.image_std and tuple(args.image_std),
                 "interpolation": args.image_interpolation, "resize_mode": args.image_resize_mode}
    bundle = export_bundle(args.model, args.checkpoint, args.output, tokenizer_source=args.tokenizer,
                           preprocess_overrides=overrides, overwrite=args.overwrite, verify=not args.no_verify)
    print(f"bundle written to {bundle}; load it with open_clip.create_model_and_transforms('local-dir:{bundle}')")
    return bundle


if __name__ == "__main__":
    cli_errors.run(main, sys.argv[1:])
