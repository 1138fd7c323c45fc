"""Encoding interned images and captions into L2-normalized fp32 features (CPU), in order."""
import contextlib
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .core import IMAGE_READERS, ImageRef

PRECISIONS = ("fp32", "amp", "amp_bf16")


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, refs: Sequence[ImageRef], preprocess: Callable):
        self.refs = refs
        self.preprocess = preprocess

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, index):
        """The preprocessed image ``index``; ValueError naming the file when it cannot be read."""
        from PIL import Image, UnidentifiedImageError
        ref = self.refs[index]
        try:
            if ref.reader is not None:
                image = IMAGE_READERS[ref.reader](ref.path)
            else:
                with Image.open(ref.path) as image:
                    image = image.convert("RGB")
            if ref.box is not None:
                image = image.crop(ref.box)
            return self.preprocess(image)
        except Exception as e:
            if ref.path.is_file() and ref.path.stat().st_size == 0:
                reason = "a 0-byte file"
            elif isinstance(e, UnidentifiedImageError):
                reason = "not an image file PIL can decode"
            else:
                reason = str(e)
            raise ValueError(f"cannot read image {ref.path}: {reason}") from e


class _ReportingImages(_ImageDataset):
    """``(image, None)`` or, for a file that cannot be read, ``(None, message)``: a bad file is
    collected and reported with all others (raised inside a DataLoader worker it would stop the run
    at the first one, its message wrapped in the worker's traceback)."""

    def __getitem__(self, index):
        try:
            return super().__getitem__(index), None
        except ValueError as e:
            return None, str(e)


def _collate_reporting(items):
    good = [image for image, error in items if error is None]
    return (torch.stack(good) if good else None), [error for _, error in items if error is not None]


MAX_LISTED_ERRORS = 10


def autocast(device: str, precision: str):
    """Autocast context for ``precision`` in ``PRECISIONS`` (fp32: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "amp" else torch.bfloat16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def encode_images(model, preprocess: Callable, refs: Sequence[ImageRef], *, device: str = "cpu",
                  precision: str = "fp32", batch_size: int = 64, workers: int = 0,
                  progress: bool = True, desc: str = "images") -> torch.Tensor:
    """L2-normalized image features ``[N, D]`` (fp32, CPU) of ``refs``, in order.

    ValueError listing every file that cannot be read (after the first one, the rest are only
    decoded, not encoded)."""
    from tqdm import tqdm
    loader = torch.utils.data.DataLoader(_ReportingImages(refs, preprocess), batch_size=batch_size,
                                         num_workers=workers, shuffle=False, collate_fn=_collate_reporting,
                                         pin_memory=torch.device(device).type == "cuda")
    features, errors = [], []
    for images, bad in tqdm(loader, desc=desc, disable=not progress, leave=False):
        errors += bad
        if errors:
            continue
        with autocast(device, precision):
            out = model.encode_image(images.to(device, non_blocking=True))
        features.append(F.normalize(out.float(), dim=-1).cpu())
    if errors:
        listed = "\n  ".join(errors[:MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
        raise ValueError(f"{len(errors)} of {len(refs)} image(s) cannot be read:\n  {listed}{more}")
    return torch.cat(features) if features else torch.zeros(0, 0)


@torch.no_grad()
def encode_texts(model, tokenizer: Callable, texts: Sequence[str], *, device: str = "cpu",
                 precision: str = "fp32", batch_size: int = 256, progress: bool = True,
                 desc: str = "texts") -> torch.Tensor:
    """L2-normalized text features ``[N, D]`` (fp32, CPU) of ``texts``, in order."""
    from tqdm import tqdm
    features = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
        with autocast(device, precision):
            out = model.encode_text(tokens)
        features.append(F.normalize(out.float(), dim=-1).cpu())
    return torch.cat(features) if features else torch.zeros(0, 0)


def concat_features(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``parts`` (``[N_i, D]`` each) concatenated in order; ``[0, 0]`` when there are none."""
    return torch.cat(list(parts)) if parts else torch.zeros(0, 0)
