"""Reading training checkpoints with errors that say what is wrong with the file.

One helper for ``export``, ``eval`` and ``viz``: an empty, truncated or foreign file, a dict
without a state dict, or the state dict of another architecture each get an error naming the
file and the kind of fault (``CheckpointError``, a ``ValueError``, so the CLIs print
``error: ...`` and exit 1), instead of a bare ``EOFError`` or an ``AttributeError`` from deep
inside ``open_clip.load_checkpoint``.

Accepted (as ``open_clip.load_checkpoint``): an open_clip_train checkpoint
``{"epoch", "name", "state_dict", "optimizer", ...}``, a plain state dict, ``module.`` keys (DDP),
torch zip or legacy files and ``.safetensors``. Files are read with ``torch.load(weights_only=True)``.
"""
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # legacy torch files start with a pickle (protocol >= 2)
_METADATA_KEYS = ("epoch", "name")
# entries open_clip.load_checkpoint adapts or fills in, so they are no architecture mismatch
_ADAPTED_KEYS = ("text.transformer.embeddings.position_ids",)
_RESIZED_KEYS = ("visual.positional_embedding", "positional_embedding", "logit_scale", "logit_bias")
_EXAMPLES = 3


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fault."""


def _examples(items: List[str]) -> str:
    return ", ".join(items[:_EXAMPLES]) + (", ..." if len(items) > _EXAMPLES else "")


def _truncated(path: Path, size: int) -> CheckpointError:
    return CheckpointError(f"{path} is truncated ({size} bytes; the data ends early): an interrupted save or copy?")


def _load_raw(path: Path, size: int):
    if path.suffix == ".safetensors":
        import safetensors.torch
        from safetensors import SafetensorError
        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({size} bytes; truncated or "
                                  f"corrupt: {e})") from e
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip = head == _ZIP_MAGIC
    if (is_zip and not zipfile.is_zipfile(path)) or (len(head) < len(_ZIP_MAGIC) and _ZIP_MAGIC.startswith(head)):
        raise CheckpointError(f"{path} is truncated ({size} bytes; its zip archive has no end record): "
                              f"an interrupted save or copy?")
    if not is_zip and not head.startswith(_PICKLE_PROTO):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({size} bytes starting {head!r}: "
                              f"neither torch's zip format nor a pickle)")
    try:
        with warnings.catch_warnings():  # random bytes after a pickle marker warn about odd protocols
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        unsupported = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        if unsupported:
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain containers, "
                                  f"which are not unpickled for safety (torch.load weights_only=True): "
                                  f"{unsupported[0]}") from e
        if "truncated" in str(e) or "EOF" in str(e):
            raise _truncated(path, size) from e
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({size} bytes, corrupt pickle)") from e
    except (EOFError, IndexError) as e:
        raise _truncated(path, size) from e
    except (RuntimeError, ValueError, OSError) as e:
        if "EOF" in str(e) or "truncated" in str(e):
            raise _truncated(path, size) from e
        kind = "corrupt zip archive" if is_zip else "unreadable pickle"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({size} bytes, {kind}: "
                              f"{str(e).strip().splitlines()[0]})") from e


def read_checkpoint(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, metadata)`` of a checkpoint file; ``module.`` prefixes stripped.

    ``metadata`` holds the scalar ``epoch`` / ``name`` of an open_clip_train checkpoint (else
    ``{}``). Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for an empty,
    truncated, foreign or unsafe file, a dict without a state dict, and an empty state dict or
    one with non-tensor entries. Zip checkpoints are memory-mapped, not read into memory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): an interrupted save or copy?")
    raw = _load_raw(path, size)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not a state dict or an open_clip "
                              f"checkpoint dict")
    metadata = {}
    if "state_dict" in raw:
        state_dict = raw["state_dict"]
        metadata = {k: raw[k] for k in _METADATA_KEYS if isinstance(raw.get(k), (int, str))}
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"{path}: its 'state_dict' is a {type(state_dict).__name__}, not a mapping "
                                  f"of parameter names to tensors")
    else:
        state_dict = raw
    if not state_dict:
        raise CheckpointError(f"{path}: the state dict is empty")
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        if state_dict is raw:
            raise CheckpointError(
                f"{path} holds a dict with keys [{_examples(sorted(map(str, raw)))}] but no 'state_dict' entry "
                f"and not only tensors ({len(not_tensors)} non-tensor entries, e.g. {_examples(not_tensors)}); "
                f"expected an open_clip_train checkpoint (epoch, name, state_dict, ...) or a plain state dict")
        raise CheckpointError(f"{path}: {len(not_tensors)} state_dict entries are not tensors "
                              f"(e.g. {_examples(not_tensors)})")
    if all(str(k).startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict), metadata


def architecture_mismatch(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """What keeps ``state_dict`` from loading strictly into ``model``: lines for missing keys,
    unexpected keys and shape mismatches (empty when it fits, up to what open_clip adapts:
    position ids, resized positional embeddings, scalar vs 1-d logit scale / bias)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and k not in _ADAPTED_KEYS
               and not (k == "logit_bias" and "logit_scale" in state_dict)]  # open_clip fills in a zero bias
    unexpected = [k for k in state_dict if k not in expected and k not in _ADAPTED_KEYS]
    shapes = [f"{k}: checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
              for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape
              and not (k in _RESIZED_KEYS and (v.numel() == expected[k].numel() or k.endswith("positional_embedding")))]
    lines = []
    if missing:
        lines.append(f"{len(missing)} of the model's {len(expected)} entries are missing from the checkpoint "
                     f"(e.g. {_examples(missing)})")
    if unexpected:
        lines.append(f"{len(unexpected)} checkpoint entries are unknown to the model (e.g. {_examples(unexpected)})")
    if shapes:
        lines.append(f"{len(shapes)} entries have another shape (e.g. {_examples(shapes)})")
    return lines


def mismatch_error(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], path, model_name: str,
                   cause: BaseException = None) -> CheckpointError:
    """The ``CheckpointError`` for a checkpoint that does not load into ``model_name``."""
    lines = architecture_mismatch(model, state_dict)
    if not lines:  # fits by keys and shapes: open_clip failed for another reason; say which
        lines = [f"{type(cause).__name__}: {cause}" if cause is not None else "unknown cause"]
    return CheckpointError(f"{path} is not a checkpoint of {model_name}: " + "; ".join(lines)
                           + ". Was it trained as another --model?")


def load_checkpoint_into(model: torch.nn.Module, path, model_name: str) -> Dict[str, Any]:
    """Strictly load the checkpoint at ``path`` into ``model`` (an instance of ``model_name``) with
    ``open_clip.load_checkpoint``; returns the checkpoint's metadata (see :func:`read_checkpoint`).
    File faults raise ``CheckpointError`` before the model is touched; a checkpoint open_clip cannot
    load raises ``CheckpointError`` with what does not fit (the model is then partly loaded)."""
    import open_clip
    state_dict, metadata = read_checkpoint(path)
    try:
        incompatible = open_clip.load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, AttributeError, AssertionError, KeyError, TypeError, ValueError) as e:  # open_clip asserts in resize_*_pos_embed
        raise mismatch_error(model, state_dict, path, model_name, e) from e
    if incompatible is not None and (incompatible.missing_keys or incompatible.unexpected_keys):
        raise CheckpointError(f"{path}: missing keys {incompatible.missing_keys}, "
                              f"unexpected keys {incompatible.unexpected_keys}")
    return metadata


def check_architecture(model: torch.nn.Module, path, model_name: str) -> Dict[str, Any]:
    """Raise ``CheckpointError`` when the checkpoint at ``path`` is unreadable or does not fit
    ``model`` (best on the ``meta`` device: shapes only, nothing copied); returns its metadata.

    The checkpoint is loaded as open_clip loads it (same conversions); it is refused only for what
    :func:`architecture_mismatch` names, so a failure of another kind is left to the real load.
    """
    import open_clip
    state_dict, metadata = read_checkpoint(path)
    try:
        with warnings.catch_warnings():  # loading into meta parameters copies nothing, as intended
            warnings.filterwarnings("ignore", message=".*non-meta parameter.*meta parameter", category=UserWarning)
            open_clip.load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, AttributeError, AssertionError, KeyError, TypeError, ValueError) as e:
        if architecture_mismatch(model, state_dict):
            raise mismatch_error(model, state_dict, path, model_name, e) from e
    return metadata
