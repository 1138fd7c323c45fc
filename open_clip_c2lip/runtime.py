"""Process-wide C2LIP training state, set from the parsed open_clip_train arguments.

The hooks read it to decide whether to swap the model class, pack the training texts and build
``C2LIPLoss``. It is empty (``active() is False``) unless ``--c2lip-loss`` was parsed, so every
other process behaves exactly like upstream.
"""
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

CONCEPT_MODES = ("text", "span")
# C2LIPLoss(duplicate_concepts=...): "negative" is the authors' rule, "ignore" drops false negatives
DUPLICATE_CONCEPT_RULES = ("negative", "ignore")
# Upper bounds of the loss weights and the xac temperature (flags and C2LIPLoss alike). The authors
# use weights 1.0 / 0.01 and temperature 1; at 1e4 the weighted total and its gradients are still
# finite in float32 (tested at open_clip's largest logit scale, 100), while e.g. 1e38 overflows the
# total to inf and trains NaN (issue #11). Past 1e4 a weight leaves the other terms < 1e-4 of the
# total and a temperature is an argmax: nothing a sweep needs.
MAX_LOSS_WEIGHT = 1e4
MAX_XAC_TEMPERATURE = 1e4
# a packed text row is [1 + 2P, L]: P beyond this allocates rows no caption can fill (a 77-token
# caption holds at most ~38 one-word noun phrases) and can exhaust memory before training starts
MAX_CONCEPTS = 256


@dataclass
class C2LIPConfig:
    npc_weight: float = 1.0
    xac_weight: float = 0.01
    xac_temperature: float = 1.0
    concept_mode: str = "text"
    max_concepts: int = 8
    concepts_key: str = "concepts"
    spacy_model: str = "en_core_web_sm"
    duplicate_concepts: str = "negative"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


_config: Optional[C2LIPConfig] = None


def configure(config: Optional[C2LIPConfig]) -> None:
    """Set (or clear, with ``None``) the active C2LIP training config of this process."""
    global _config
    if config is not None and config.concept_mode not in CONCEPT_MODES:
        raise ValueError(f"concept_mode must be one of {CONCEPT_MODES}, got {config.concept_mode!r}")
    if config is not None and config.duplicate_concepts not in DUPLICATE_CONCEPT_RULES:
        raise ValueError(f"duplicate_concepts must be one of {DUPLICATE_CONCEPT_RULES}, "
                         f"got {config.duplicate_concepts!r}")
    _config = config


def config() -> Optional[C2LIPConfig]:
    return _config


def active() -> bool:
    return _config is not None
