"""scripts/demo_*.py: the false-negative share, the xac sweep's variants and the validation guard."""
import importlib.util
from pathlib import Path

import pytest

from open_clip_c2lip.demo.world import WorldSpec

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_false_negative_share_script():
    module = _load("demo_false_negatives")
    one = WorldSpec(shapes=("square",), colours=("red",), min_objects=1, max_objects=1, held_out_block=0)
    assert module.false_negative_share(one, frozenset(), batch_size=4, batches=2) == 1.0  # same object everywhere
    # two objects from 2 shapes x 2 colours, all distinct: image i shows concept c with probability 1/2
    two = WorldSpec(shapes=("square", "ring"), colours=("red", "blue"), min_objects=2, max_objects=2, held_out_block=0)
    assert module.false_negative_share(two, frozenset(), batch_size=16, batches=20) == pytest.approx(0.5, abs=0.05)


def test_sweep_grid_points_are_c2lip_with_their_xac_flags(monkeypatch):
    """scripts/demo_sweep.py: each T:W point is the text-mode c2lip command with only the xac
    temperature and weight changed; malformed points and the evaluation seeds are refused."""
    import argparse

    from open_clip_c2lip.demo import variants
    module = _load("demo_sweep")
    monkeypatch.setattr(variants, "VARIANTS", dict(variants.VARIANTS))
    assert module.grid_point("5:0.1") == (5.0, 0.1)
    for bad in ("5", "5:x", "1:2:3"):
        with pytest.raises(argparse.ArgumentTypeError, match="TEMPERATURE:WEIGHT"):
            module.grid_point(bad)
    names = module.register([(5.0, 0.1), (1.0, 1.0)])
    assert names == ["xac_t5_w0.1", "xac_t1_w1"]
    settings = variants.LossSettings()
    default = variants.VARIANTS["c2lip"].loss_args(settings)
    point = variants.VARIANTS["xac_t5_w0.1"].loss_args(settings)
    changed = {default[i - 1]: (default[i], point[i]) for i in range(len(default)) if default[i] != point[i]}
    assert changed == {"--c2lip-xac-temperature": ("1.0", "5.0"), "--c2lip-xac-weight": ("0.01", "0.1")}
    for seeds in (["200", "300"], ["300"]):
        with pytest.raises(SystemExit):
            module.main(["--grid", "5:0.1", "--seeds", *seeds, "--quick", "--output-dir", "unused"])


def test_validation_refuses_the_study_worlds():
    module = _load("demo_validate")
    with pytest.raises(SystemExit):
        module.main(["--seeds", "200", "--quick", "--output-dir", "unused"])
