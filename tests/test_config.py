"""One rule per parameter (``open_clip_c2lip.config``), the same at the flag and in the classes."""
import math

import pytest

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
from open_clip_c2lip import config
from open_clip_c2lip.config import C2LIPConfig

# (C2LIPConfig field, flag, accepted values, refused values)
CASES = [
    ("npc_weight", "--c2lip-npc-weight", [0, 0.5, 1e4], [-0.5, 1e4 + 1, 1e38, math.inf, math.nan]),
    ("xac_weight", "--c2lip-xac-weight", [0, 0.01, 1e4], [-1e-9, 1e5, -math.inf]),
    ("xac_temperature", "--c2lip-xac-temperature", [1e-6, 1, 1e4], [0, -1.5, 1e4 + 1, math.nan]),
    ("max_concepts", "--c2lip-max-concepts", [1, 8, 256], [0, -3, 257, 1.5]),
    ("concept_mode", "--c2lip-concept-mode", ["text", "span"], ["tokens", ""]),
    ("duplicate_concepts", "--c2lip-duplicate-concepts", ["negative", "ignore"], ["merge"]),
    ("concepts_key", "--c2lip-concepts-key", ["concepts", "nounphrases"], ["", "  "]),
    ("spacy_model", "--c2lip-spacy-model", ["en_core_web_sm"], [""]),
]


@pytest.mark.parametrize("field, flag, good, bad", CASES)
def test_config_fields_follow_their_rule(field, flag, good, bad):
    for value in good:
        assert getattr(C2LIPConfig(**{field: value}), field) == value
    for value in bad:
        with pytest.raises(ValueError, match=f"^{field} must"):
            C2LIPConfig(**{field: value})


@pytest.mark.parametrize("field, flag, good, bad", [c for c in CASES if c[0] in config.RULES
                                                    and c[0] not in ("concept_mode", "duplicate_concepts")])
def test_flag_and_class_refuse_in_the_same_words(field, flag, good, bad, capsys):
    """The flag's error is the rule's message (argparse adds ``argument --flag:``)."""
    from open_clip_train.params import parse_args

    for value in bad:
        with pytest.raises(ValueError) as refused:
            config.RULES[field](str(value), "")  # the flag hands the rule its text
        with pytest.raises(SystemExit):
            parse_args(["--model", "C2LIP-Tiny", "--c2lip-loss", f"{flag}={value}"])
        assert f"argument {flag}: {refused.value}" in capsys.readouterr().err


def test_the_classes_apply_the_same_rules():
    import open_clip
    from open_clip_c2lip.loss import C2LIPLoss
    from open_clip_c2lip.model import enable_c2lip
    from open_clip_c2lip.packing import TextPacker

    with pytest.raises(ValueError, match=r"^xac_temperature must be finite, > 0"):
        C2LIPLoss(xac_temperature=-1.0)  # refused at the flag, so refused here too
    with pytest.raises(ValueError, match=r"^npc_weight must be finite, >= 0"):
        C2LIPLoss(npc_weight=-1.0)
    with pytest.raises(ValueError, match=r"^duplicate_concepts must be one of"):
        C2LIPLoss(duplicate_concepts="merge")
    with pytest.raises(ValueError, match=r"^max_concepts must be >= 1 and <= 256"):
        TextPacker(open_clip.get_tokenizer("C2LIP-Tiny"), max_concepts=257)
    with pytest.raises(ValueError, match=r"^concept_mode must be one of \('text', 'span'\)"):
        enable_c2lip(open_clip.create_model("C2LIP-Tiny"), concept_mode="tokens")


def test_config_is_plain_data():
    settings = C2LIPConfig(npc_weight=0.5)
    assert settings.to_dict()["npc_weight"] == 0.5 and settings == C2LIPConfig(npc_weight=0.5)
    with pytest.raises(AttributeError):
        settings.npc_weight = 2.0  # frozen: the parsed configuration cannot drift
    assert set(config.RULES) == set(settings.to_dict())
