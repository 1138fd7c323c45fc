"""open_clip_train's training loop (``open_clip_c2lip.integration.train_loop``): exact gradient accumulation
and the stop on non-finite weights, each against upstream and its upstream-ready diff."""
import argparse
import importlib.util
import math

import pytest
import torch

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
import open_clip
import open_clip_train.train
from open_clip.loss import ClipLoss, SigLipLoss
from open_clip_train.data import DataInfo
from open_clip_c2lip.integration import WRAPPED, train_loop
from open_clip_c2lip.loss import C2LIPLoss
from open_clip_c2lip.model import enable_c2lip
from open_clip_c2lip.packing import TextPacker
from upstream_fixtures import apply_diff

torch.set_num_threads(1)

MICRO_BATCH = 4


# ----------------------------------------------------------------------------- exact accumulation

def test_scale_grad_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([2.302585093, -10.0, 1e-30, 3e38], requires_grad=True)
    y = train_loop.scale_grad(x, 1 / 3)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]) / 3, rtol=1e-7, atol=0)


def test_train_one_epoch_is_wrapped_once_and_main_sees_it():
    import open_clip_train.main

    wrapped = open_clip_train.train.train_one_epoch
    assert getattr(wrapped, WRAPPED) and not getattr(wrapped.__wrapped__, WRAPPED, False)
    train_loop.patch_train(open_clip_train.train)  # idempotent
    assert open_clip_train.train.train_one_epoch is wrapped
    assert open_clip_train.main.train_one_epoch is wrapped


class _Loader(list):
    """A list of batches with the two attributes ``train_one_epoch`` reads from a dataloader."""

    def __init__(self, batches, batch_size):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = len(batches) * batch_size


def _samples(count: int):
    """Captions with concepts (some repeat across samples, one per caption is not in its caption)."""
    colours, things = ("red", "blue", "green"), ("dog", "couch", "ball", "hat")
    samples = []
    for i in range(count):
        first = f"a {colours[i % 3]} {things[i % 4]}"
        second = f"a {colours[(i + 1) % 3]} {things[(i // 2) % 4]}"
        samples.append((f"{first} next to {second}", [first, second, "a striped lamp"][: 1 + i % 3]))
    return samples


def _model_and_batch(kind: str, count: int):
    torch.manual_seed(0)
    # open_clip_train's --siglip init (main.py); the plain CLIP loss case keeps the config's bias
    model = open_clip.create_model("C2LIP-Tiny", output_dict=True, init_logit_scale=math.log(10),
                                   init_logit_bias=-10.0)
    images = torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    samples = _samples(count)
    if kind.startswith("c2lip"):
        enable_c2lip(model, concept_mode=kind.split("-")[1])
        texts = TextPacker(open_clip.get_tokenizer("C2LIP-Tiny"), max_concepts=3)(samples)
        loss = C2LIPLoss(npc_weight=1.0, xac_weight=0.5)  # a large xac weight: its gradient matters
    else:
        texts = open_clip.get_tokenizer("C2LIP-Tiny")([caption for caption, _ in samples])
        loss = SigLipLoss() if kind == "siglip" else ClipLoss()
    return model, loss, images, texts


def _run(train_one_epoch, kind: str, total: int, accum_freq: int):
    model, loss, images, texts = _model_and_batch(kind, total)
    batch_size = total // accum_freq
    batches = [(images[i:i + batch_size], texts[i:i + batch_size]) for i in range(0, total, batch_size)]
    args = argparse.Namespace(
        device="cpu", precision="fp32", accum_freq=accum_freq, distill=False, skip_scheduler=True,
        horovod=False, grad_clip_norm=None, log_every_n_steps=1, batch_size=batch_size, world_size=1,
        rank=0, local_rank=0, wandb=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step leaves the weights and grads
    train_one_epoch(model, {"train": DataInfo(_Loader(batches, batch_size))}, loss, 0, optimizer,
                    None, None, None, args)
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _compare(accumulated, one_batch):
    """Per parameter: ratio of gradient norms and max deviation relative to the one-batch norm.

    A parameter whose true gradient is zero is left out: the CLIP softmax loss is invariant to a
    logit bias added to every logit, so the bias gets rounding noise only, and a ratio of noises
    depends on the float environment (asserted to be ~0 instead)."""
    assert accumulated.keys() == one_batch.keys()
    scale_of_all = max(g.norm().item() for g in one_batch.values())
    report = {}
    for name, reference in one_batch.items():
        if reference.norm().item() < 1e-6 * scale_of_all:
            assert accumulated[name].norm().item() < 1e-6 * scale_of_all, name
            continue
        scale = reference.norm().item()
        report[name] = (accumulated[name].norm().item() / scale,
                        (accumulated[name] - reference).norm().item() / scale)
    return report


@pytest.mark.parametrize("kind", ["c2lip-text", "c2lip-span", "siglip", "clip"])
@pytest.mark.parametrize("accum_freq", [2, 3])
def test_accumulation_gives_every_parameter_the_one_batch_gradient(kind, accum_freq):
    """The installed (hooked) ``train_one_epoch`` with ``--accum-freq k`` on k x 4 samples vs the
    same function with ``--accum-freq 1`` on the 4k samples at once; and the unhooked upstream
    function, which gives the logit scale and bias k x their gradient."""
    total = accum_freq * MICRO_BATCH
    hooked = open_clip_train.train.train_one_epoch
    one_batch = _run(hooked, kind, total, accum_freq=1)
    assert "logit_scale" in one_batch and (kind == "clip" or "logit_bias" in one_batch)
    for name, (ratio, error) in _compare(_run(hooked, kind, total, accum_freq), one_batch).items():
        assert error < 2e-5, (name, ratio, error)
    upstream = _compare(_run(hooked.__wrapped__, kind, total, accum_freq), one_batch)
    for name, (ratio, error) in upstream.items():
        if name in ("logit_scale", "logit_bias"):
            assert ratio == pytest.approx(accum_freq, rel=2e-5), name
        else:
            assert error < 2e-5, (name, ratio, error)


def test_accum_diff_fixes_upstream_train_one_epoch(tmp_path):
    """The upstream-ready diff applies to the installed train.py and makes its accumulation exact
    on its own (no plugin wrapper)."""
    path = apply_diff(tmp_path, "open_clip_train-accum-shared-grad.diff", "train.py")
    spec = importlib.util.spec_from_file_location("patched_open_clip_train_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not getattr(module.train_one_epoch, WRAPPED, False)
    total = 3 * MICRO_BATCH
    one_batch = _run(module.train_one_epoch, "c2lip-text", total, accum_freq=1)
    for name, (ratio, error) in _compare(_run(module.train_one_epoch, "c2lip-text", total, 3), one_batch).items():
        assert error < 2e-5, (name, ratio, error)


# ----------------------------------------------------------------------------- diverged runs stop

def _run_on_images(train_one_epoch, images, lr: float = 0.1):
    model, loss, _, texts = _model_and_batch("c2lip-text", len(images))
    args = argparse.Namespace(
        device="cpu", precision="fp32", accum_freq=1, distill=False, skip_scheduler=True, horovod=False,
        grad_clip_norm=None, log_every_n_steps=1, batch_size=len(images), world_size=1, rank=0,
        local_rank=0, wandb=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    train_one_epoch(model, {"train": DataInfo(_Loader([(images, texts)], len(images)))}, loss, 7, optimizer,
                    None, None, None, args)
    return model


def test_a_diverged_epoch_raises_before_its_checkpoint():
    """One NaN pixel makes the loss, the gradients and (after the step) the weights NaN. Upstream's
    train_one_epoch returns normally (main.py then saves the NaN checkpoint and exits 0); the hooked
    one raises, naming the epoch and a parameter."""
    images = torch.randn(MICRO_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    hooked = open_clip_train.train.train_one_epoch
    clean = _run_on_images(hooked, images)
    assert all(torch.isfinite(p).all() for p in clean.parameters())
    images[2, 1, 10, 10] = float("nan")
    upstream = _run_on_images(hooked.__wrapped__, images)
    assert not all(torch.isfinite(p).all() for p in upstream.parameters())
    with pytest.raises(FloatingPointError, match=r"after epoch 7, \d+ parameter tensor\(s\) hold NaN or inf"):
        _run_on_images(hooked, images)
    model = torch.nn.Linear(2, 2)
    train_loop.check_finite_parameters(model, 0)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"\(first: bias\)"):
        train_loop.check_finite_parameters(model, 0)


def test_nonfinite_diff_stops_upstream_train_one_epoch(tmp_path):
    path = apply_diff(tmp_path, "open_clip_train-stop-on-nonfinite.diff", "train.py")
    spec = importlib.util.spec_from_file_location("nonfinite_open_clip_train_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = torch.randn(MICRO_BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    _run_on_images(module.train_one_epoch, images)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="after epoch 7"):
        _run_on_images(module.train_one_epoch, images)


def test_accumulation_loss_wrapper_scales_only_shared_inputs():
    seen = {}

    def loss(**inputs):
        seen.update(inputs)
        return sum(v.float().sum() for v in inputs.values() if v.requires_grad)

    features = torch.randn(6, 4, requires_grad=True)
    scale, bias = torch.tensor(2.0, requires_grad=True), torch.tensor([-1.0], requires_grad=True)
    extra = torch.randn(5, requires_grad=True)  # not per-sample: 5 rows, 6 samples
    wrapped = train_loop.AccumulationExactLoss(loss, 3)
    wrapped(image_features=features, logit_scale=scale, logit_bias=bias, other=extra,
            concept_mask=torch.ones(6, 2, dtype=torch.bool)).backward()
    assert seen["image_features"] is features and seen["concept_mask"].dtype == torch.bool
    torch.testing.assert_close(features.grad, torch.ones(6, 4))
    for tensor in (scale, bias, extra):
        torch.testing.assert_close(tensor.grad, torch.full_like(tensor, 1 / 3))
    with torch.no_grad():
        wrapped(image_features=features, logit_scale=scale)
    assert seen["logit_scale"] is scale
