"""C2LIP's settings and the one rule that validates each of them.

``C2LIPConfig`` holds what ``--c2lip-*`` sets. Each ``check_*`` function below is the only
definition of what its parameter accepts: open_clip_train's flags use it as their argparse type
(``open_clip_c2lip.integration.train_params``), and ``C2LIPConfig``, ``C2LIPLoss``, ``TextPacker`` and
``enable_c2lip`` call it on their arguments, so a value is refused in the same words wherever it
enters. A rule raises ``ValueError`` and returns the (converted) value otherwise.

Plain data, no process state: the parsed configuration of a training run lives in
``open_clip_c2lip.integration.runtime``.
"""
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

CONCEPT_MODES = ("text", "span")
# C2LIPLoss(duplicate_concepts=...): "negative" is the authors' rule, "ignore" drops false negatives
DUPLICATE_CONCEPT_RULES = ("negative", "ignore")
# Upper bounds of the loss weights and the xac temperature. The authors use weights 1.0 / 0.01 and
# temperature 1; at 1e4 the weighted total and its gradients are still finite in float32 (tested at
# open_clip's largest logit scale, 100), while e.g. 1e38 overflows the total to inf and trains NaN.
# Past 1e4 a weight leaves the other terms < 1e-4 of the total and a temperature is an argmax:
# nothing a sweep needs.
MAX_LOSS_WEIGHT = 1e4
MAX_XAC_TEMPERATURE = 1e4
# a packed text row is [1 + 2P, L]: P beyond this allocates rows no caption can fill (a 77-token
# caption holds at most ~38 one-word noun phrases) and can exhaust memory before training starts
MAX_CONCEPTS = 256


def _fail(name: str, requirement: str, value: Any) -> ValueError:
    return ValueError(f"{name} {requirement}, got {value}".strip())


def _number(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _fail(name, "must be a number", repr(value)) from None


def check_loss_weight(value: Any, name: str = "loss weight") -> float:
    """A weight of the npc or xac term: finite, in ``[0, MAX_LOSS_WEIGHT]``."""
    number = _number(value, name)
    if not (math.isfinite(number) and 0 <= number <= MAX_LOSS_WEIGHT):
        raise _fail(name, f"must be finite, >= 0 and <= {MAX_LOSS_WEIGHT:g} (larger weights overflow "
                          "the loss)", value)
    return number


def check_xac_temperature(value: Any, name: str = "xac_temperature") -> float:
    """The xac softmax temperature λ (multiplies the cosine scores): finite, in ``(0, MAX_XAC_TEMPERATURE]``."""
    number = _number(value, name)
    if not (math.isfinite(number) and 0 < number <= MAX_XAC_TEMPERATURE):
        raise _fail(name, f"must be finite, > 0 and <= {MAX_XAC_TEMPERATURE:g}", value)
    return number


def check_max_concepts(value: Any, name: str = "max_concepts") -> int:
    """Concept slots P per caption: an integer in ``[1, MAX_CONCEPTS]`` (a packed caption is ``[1 + 2P, L]``)."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _fail(name, "must be an integer", repr(value)) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, "must be an integer", repr(value))
    if not 1 <= value <= MAX_CONCEPTS:
        raise _fail(name, f"must be >= 1 and <= {MAX_CONCEPTS} (each packed caption holds 1 + 2*P token "
                          "rows)", value)
    return value


def _check_choice(value: Any, name: str, choices) -> str:
    if value not in choices:
        raise _fail(name, f"must be one of {choices}", repr(value))
    return value


def check_concept_mode(value: Any, name: str = "concept_mode") -> str:
    """How concepts are embedded: one of ``CONCEPT_MODES``."""
    return _check_choice(value, name, CONCEPT_MODES)


def check_duplicate_concepts(value: Any, name: str = "duplicate_concepts") -> str:
    """What a concept text shared with another image is: one of ``DUPLICATE_CONCEPT_RULES``."""
    return _check_choice(value, name, DUPLICATE_CONCEPT_RULES)


def check_non_empty(value: Any, name: str = "value") -> str:
    """A key or model name: a string that is not blank."""
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, "must not be empty", repr(value))
    return value


@dataclass(frozen=True)
class C2LIPConfig:
    """The C2LIP settings of a training run (``--c2lip-*``); every field is validated by its rule."""
    npc_weight: float = 1.0
    xac_weight: float = 0.01
    xac_temperature: float = 1.0
    concept_mode: str = "text"
    max_concepts: int = 8
    concepts_key: str = "concepts"
    spacy_model: str = "en_core_web_sm"
    duplicate_concepts: str = "negative"

    def __post_init__(self):
        for item in fields(self):
            object.__setattr__(self, item.name, RULES[item.name](getattr(self, item.name), item.name))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# C2LIPConfig field -> its rule
RULES = {
    "npc_weight": check_loss_weight,
    "xac_weight": check_loss_weight,
    "xac_temperature": check_xac_temperature,
    "concept_mode": check_concept_mode,
    "max_concepts": check_max_concepts,
    "concepts_key": check_non_empty,
    "spacy_model": check_non_empty,
    "duplicate_concepts": check_duplicate_concepts,
}
