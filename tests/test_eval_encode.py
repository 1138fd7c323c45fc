"""Tests for open_clip_c2lip.eval.encode: order, normalization, batching, crops and bad inputs."""
import numpy as np
import pytest
import torch
from PIL import Image

from eval_fixtures import Reference, block_image, c2eval, stub  # noqa: F401


def test_features_are_normalized_in_order_and_batch_invariant(stub, tmp_path):
    model, preprocess, tokenizer = stub
    paths = [tmp_path / f"{k}.png" for k in range(5)]
    for k, path in enumerate(paths):
        block_image(path, seed=k)
    refs = [c2eval.ImageRef(p) for p in paths] + [c2eval.ImageRef(paths[0], (10, 10, 50, 40))]
    texts = ["a red ball", "a blue box on a table", "two dogs", "a cat"]
    ref = Reference(model, preprocess, tokenizer)
    for batch_size in (1, 2, 64):
        images = c2eval.encode_images(model, preprocess, refs, batch_size=batch_size, progress=False)
        captions = c2eval.encode_texts(model, tokenizer, texts, batch_size=batch_size, progress=False)
        assert images.dtype == captions.dtype == torch.float32
        want = torch.tensor(np.stack([ref.image(r.path, r.box) for r in refs]), dtype=torch.float32)
        torch.testing.assert_close(images, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(captions, torch.tensor(np.stack([ref.text(t) for t in texts]), dtype=torch.float32),
                                   atol=1e-6, rtol=0)
    assert c2eval.encode_texts(model, tokenizer, [], progress=False).shape == (0, 0)


def test_bad_precision_and_unreadable_image(stub, tmp_path):
    model, preprocess, tokenizer = stub
    with pytest.raises(ValueError, match="precision must be one of"):
        c2eval.autocast("cpu", "fp16")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.jpg: not an image file PIL can decode"):
        c2eval.encode_images(model, preprocess, [c2eval.ImageRef(bad)], progress=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert c2eval.encode_images(model, preprocess, [c2eval.ImageRef(tmp_path / "ok.png")], progress=False).shape[0] == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_every_unreadable_image_is_listed_without_a_worker_traceback(stub, tmp_path, workers):
    """All bad files of a run in one error (not the first one only), and in DataLoader workers not
    wrapped in "Caught ValueError in DataLoader worker process 0. Original Traceback ...". The model
    stops encoding at the first bad file; the others are still decoded to be listed."""
    model, preprocess, tokenizer = stub
    paths = [tmp_path / f"{k}.png" for k in range(7)]
    for k, path in enumerate(paths):
        block_image(path, seed=k)
    paths[2].write_bytes(b"")
    paths[4].write_bytes(b"\x89PNG garbage")
    data = paths[6].read_bytes()
    paths[6].write_bytes(data[:len(data) // 2])
    encoded = []
    original = model.encode_image
    model.encode_image = lambda images: encoded.append(len(images)) or original(images)
    try:
        with pytest.raises(ValueError) as error:
            c2eval.encode_images(model, preprocess, [c2eval.ImageRef(p) for p in paths], batch_size=2,
                                 workers=workers, progress=False)
    finally:
        del model.encode_image
    message = str(error.value)
    assert message.startswith("3 of 7 image(s) cannot be read:\n")
    assert f"cannot read image {paths[2]}: a 0-byte file" in message
    assert f"cannot read image {paths[4]}: not an image file PIL can decode" in message
    assert f"cannot read image {paths[6]}: image file is truncated" in message
    assert "Traceback" not in message and "worker" not in message
    assert encoded == [2]  # the first batch only: nothing after the first bad file
