"""Loading open_clip models with their real preprocessing, for the eval, viz and export CLIs.

A checkpoint *file* given to open_clip gets OpenAI mean/std and ``shortest`` resizing; SigLIP
models (every C2 architecture) need mean = std = 0.5, ``squash`` and bicubic. The helpers here
resolve what a name's pretrained tags (or the plugin registry) say and force it on
``open_clip.create_model_and_transforms``.

Files from the Hugging Face Hub (HF tokenizers, pretrained-tag weights, ``hf-hub:`` models, HF
text towers' configs) are taken from the local cache first and fail fast without the Hub
(:mod:`open_clip_c2lip.hub`); a checkpoint file is checked against the architecture (built on the
``meta`` device, no weights, no memory) before anything is downloaded.
"""
import argparse
import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from . import hub
from .registry import SIGLIP_PREPROCESS, lookup
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")

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


def _local_folder(source: str) -> Optional[str]:
    """The folder a ``--tokenizer`` value names (``DIR`` or ``local-dir:DIR``), ``None`` for a Hub
    repo id; raises ``FileNotFoundError`` for a path that is not a folder."""
    if source.startswith("local-dir:"):
        folder = source[len("local-dir:"):]
    elif os.path.isdir(source) or os.path.exists(source) or source.startswith(("/", ".", "~")):
        folder = source
    else:
        return None
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--tokenizer folder not found: {folder}")
    return folder


def _text_cfg(model_name: str) -> Dict[str, Any]:
    """``model_name``'s text config as far as it is known without the Hub (``{}`` for ``hf-hub:``)."""
    import json

    import open_clip
    if model_name.startswith("hf-hub:"):
        return {}
    if model_name.startswith("local-dir:"):
        path = Path(model_name[len("local-dir:"):]) / "open_clip_config.json"
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # open_clip reports a missing or broken bundle config itself
        return config.get("model_cfg", config).get("text_cfg", {})
    return (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})


def tokenizer_hub_repo(model_name: str, source: Optional[str] = None) -> Optional[str]:
    """The Hub repo the tokenizer of ``model_name`` (or ``--tokenizer source``) is downloaded from,
    ``None`` when it needs no download (a local folder, a bundle, open_clip's own BPE)."""
    if source is not None:
        return None if _local_folder(source) else source
    if model_name.startswith("hf-hub:"):
        return model_name[len("hf-hub:"):]
    if model_name.startswith("local-dir:"):
        return None
    name = _text_cfg(model_name).get("hf_tokenizer_name")
    return name if name and not os.path.isdir(name) else None


def _build_tokenizer(model_name: str, source: Optional[str] = None):
    import open_clip
    from open_clip.tokenizer import HFTokenizer
    if source is None:
        return open_clip.get_tokenizer(model_name)
    text_cfg = _text_cfg(model_name)
    return HFTokenizer(_local_folder(source) or source, context_length=text_cfg.get("context_length", 77),
                       tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))


def load_tokenizer(model_name: str, source: Optional[str] = None):
    """open_clip's tokenizer of ``model_name``; with ``source`` (a local folder, ``local-dir:DIR``
    or a Hub repo id) the HF tokenizer read from there, with the context length, mode and options
    of ``model_name``'s text config. Hub files come from the cache first (:mod:`.hub`)."""
    repo = tokenizer_hub_repo(model_name, source)
    if repo is None:
        return _build_tokenizer(model_name, source)
    return hub.load(lambda: _build_tokenizer(model_name, source), f"the tokenizer of {model_name} (Hub repo {repo})",
                    tokenizer_instead(repo))


def tokenizer_instead(repo: str) -> str:
    """What to pass instead of a tokenizer the Hub would have to send."""
    return (f"pass --tokenizer DIR with a saved copy of it (AutoTokenizer.from_pretrained('{repo}')"
            f".save_pretrained(DIR) where the Hub is reachable), point HF_HOME at a Hugging Face cache that "
            f"holds it, or use a model whose tokenizer needs no download (C2LIP-Tiny, a local-dir: bundle)")


def weight_files(model_name: str, pretrained: Optional[str]) -> List[Tuple[str, Tuple[str, ...], str]]:
    """The Hub files a load of ``model_name`` with ``pretrained`` downloads, as ``(repo, alternative
    file names, description)``: a pretrained tag's weights, an ``hf-hub:`` model's config and weights."""
    import open_clip
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:"):]
        return [(repo, (HF_CONFIG_NAME,), f"{model_name} ({HF_CONFIG_NAME} of Hub repo {repo})"),
                (repo, (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME), f"the weights of {model_name} ({HF_WEIGHTS_NAME} or "
                                                                 f"{HF_SAFE_WEIGHTS_NAME} of Hub repo {repo})")]
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else None
    if not cfg or cfg.get("file") or not cfg.get("hf_hub") or not open_clip.pretrained.has_hf_hub():
        return []  # a checkpoint file, no weights, or a URL download (open_clip's own cache)
    repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" means open_clip's default file name
    filename = filename or HF_WEIGHTS_NAME
    names = (*open_clip.pretrained._get_safe_alternatives(filename), filename)
    return [(repo, names, f"the weights of --pretrained {pretrained} of {model_name} ({filename} of Hub repo {repo})")]


def _text_tower_need(model_name: str) -> Optional[str]:
    repo = _text_cfg(model_name).get("hf_model_name")
    return f"the text tower config of {model_name} (Hub repo {repo})" if repo and not os.path.isdir(repo) else None


def build_cache_first(build, model_name: str):
    """``build()`` (a model construction: open_clip fetches weights of a tag or ``hf-hub:`` repo,
    an HF text tower's config) with the Hub cache first (:func:`hub.load`)."""
    need = _text_tower_need(model_name) or f"a Hub file of {model_name}"
    return hub.load(build, need, "point HF_HOME at a Hugging Face cache that holds it")


def bare_model(model_name: str) -> torch.nn.Module:
    """``model_name``'s architecture without weights: parameters on the ``meta`` device (shapes and
    dtypes only, no memory, no initialization cost), for checking a checkpoint before a load."""
    import open_clip

    def build():
        with no_random_init_warning(), torch.device("meta"):
            return open_clip.create_model(model_name, pretrained=None, pretrained_text=False, device="meta")

    return build_cache_first(build, model_name)


def check_checkpoint(model_name: str, path, display_name: Optional[str] = None) -> Dict[str, Any]:
    """Raise ``CheckpointError`` when the file at ``path`` is unreadable or not a checkpoint of
    ``model_name`` (keys / shapes against :func:`bare_model`, converted as open_clip loads it);
    returns its metadata. Fetches nothing but an HF text tower's config."""
    from .fileio.checkpoint import check_architecture
    return check_architecture(bare_model(model_name), path, display_name or model_name)


def load_model(model_name: str, pretrained: Optional[str] = None, *, device: str = "cpu",
               image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
               image_interpolation: Optional[str] = None, image_resize_mode: Optional[str] = None,
               tokenizer: Optional[str] = None):
    """``(model, preprocess, tokenizer)`` for any open_clip name, with the model's real preprocessing.

    ``model_name`` may be a built-in or plugin name (with ``pretrained`` a tag or checkpoint file)
    or a ``local-dir:``/``hf-hub:`` bundle; ``tokenizer`` a local HF tokenizer folder to use
    instead of the model's (see :func:`load_tokenizer`). The model is in eval mode on ``device``
    (fp32 weights; mixed precision is applied with autocast at encoding time). A checkpoint file
    is checked against the architecture first; Hub files come from the cache first, and all that
    is missing is named in one ``HubUnavailableError`` when the Hub is out of reach.
    """
    import open_clip
    has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
    if pretrained and not has_schema and not open_clip.get_pretrained_cfg(model_name, pretrained) \
            and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"--pretrained {pretrained!r} is neither a pretrained tag of {model_name} "
                                f"({open_clip.list_pretrained_tags_by_model(model_name)}) nor an existing file")
    if pretrained and not has_schema and os.path.isfile(pretrained) and not pretrained.endswith((".npz", ".npy")):
        check_checkpoint(model_name, pretrained)  # big_vision .npz weights: open_clip's own converter checks
    forced = resolve_preprocess_cfg(model_name, pretrained, {
        "mean": image_mean, "std": image_std, "interpolation": image_interpolation,
        "resize_mode": image_resize_mode})

    files = [] if has_schema and not model_name.startswith("hf-hub:") else weight_files(model_name, pretrained)
    missing = [description for repo, names, description in files if not hub.is_cached(repo, names)]
    loaded_tokenizer, tokenizer_miss = None, None
    if not (model_name.startswith("hf-hub:") and files[0][2] in missing):  # else it comes with the repo's config
        loaded_tokenizer, tokenizer_miss = hub.cache_first(lambda: _build_tokenizer(model_name, tokenizer))
    tokenizer_repo = None
    if tokenizer_miss is not None:
        tokenizer_repo = tokenizer_hub_repo(model_name, tokenizer) or model_name
        missing.insert(0, f"the tokenizer of {model_name} (Hub repo {tokenizer_repo})")
    if missing:
        hub.require(missing, _model_instead(model_name, [f for f in files if f[2] in missing], tokenizer_repo),
                    tokenizer_miss)
    if loaded_tokenizer is None:
        loaded_tokenizer = _build_tokenizer(model_name, tokenizer)  # the Hub answers: download

    def create():
        return open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, device=device, image_mean=forced.get("mean"),
            image_std=forced.get("std"), image_interpolation=forced.get("interpolation"),
            image_resize_mode=forced.get("resize_mode"))

    try:
        if files and missing:  # the Hub answers: as open_clip does it
            model, _, preprocess = create()
        else:
            model, _, preprocess = build_cache_first(create, model_name)
    except hub.HubUnavailableError:
        raise
    except Exception as e:
        _diagnose_checkpoint(model_name, pretrained, e)  # raises CheckpointError when the file is at fault
        raise
    model.eval()
    return model, preprocess, loaded_tokenizer


def _model_instead(model_name: str, files, tokenizer_repo: Optional[str]) -> str:
    """What to pass instead of the Hub files a load of ``model_name`` misses."""
    options = []
    if tokenizer_repo is not None:
        options.append(f"--tokenizer DIR with a saved copy of the tokenizer (AutoTokenizer.from_pretrained("
                       f"'{tokenizer_repo}').save_pretrained(DIR) where the Hub is reachable)")
    if files:
        repo = files[-1][0]
        if not model_name.startswith("hf-hub:"):
            options.append("--pretrained with a local checkpoint file")
        options.append(f"--model local-dir:DIR with a copy of the repo (hf download {repo} --local-dir DIR where "
                       f"the Hub is reachable)")
    else:
        options.append("--model local-dir:DIR with a bundle exported from the checkpoint")
    return "pass " + ", or ".join(options) + ", or point HF_HOME at a Hugging Face cache that holds them"


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
    raise mismatch_error(bare_model(model_name), state_dict, pretrained, model_name, error) from error


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Model / preprocessing flags shared by the eval and viz CLIs."""
    parser.add_argument("--model", required=True,
                        help="open_clip model name (built-in, C2 plugin name) or local-dir:DIR / hf-hub:ID")
    parser.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint file (ignored for local-dir:)")
    parser.add_argument("--tokenizer", default=None,
                        help="HF tokenizer folder (or local-dir:DIR) to use instead of the model's, e.g. when its "
                             "tokenizer would come from the Hugging Face Hub and there is none")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-mean", type=float, nargs=3, default=None, metavar="M")
    parser.add_argument("--image-std", type=float, nargs=3, default=None, metavar="S")
    parser.add_argument("--image-interpolation", default=None, choices=["bicubic", "bilinear", "random"])
    parser.add_argument("--image-resize-mode", default=None, choices=["shortest", "longest", "squash"])


def model_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    return dict(device=args.device, image_mean=args.image_mean, image_std=args.image_std,
                image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
                tokenizer=args.tokenizer)
