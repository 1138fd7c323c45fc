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
        from PIL import Image
        ref = self.refs[index]
        try:
            if ref.reader is not None:
                image = IMAGE_READERS[ref.reader](ref.path)
            else:
                with Image.open(ref.path) as image:
                    image = image.convert("RGB")
        except Exception as e:
            raise ValueError(f"cannot read image {ref.path}: {e}") from e
        if ref.box is not None:
            image = image.crop(ref.box)
        return self.preprocess(image)


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
    """L2-normalized image features ``[N, D]`` (fp32, CPU) of ``refs``, in order."""
    from tqdm import tqdm
    loader = torch.utils.data.DataLoader(_ImageDataset(refs, preprocess), batch_size=batch_size,
                                         num_workers=workers, shuffle=False,
                                         pin_memory=torch.device(device).type == "cuda")
    features = []
    for images in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with autocast(device, precision):
            out = model.encode_image(images.to(device, non_blocking=True))
        features.append(F.normalize(out.float(), dim=-1).cpu())
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
