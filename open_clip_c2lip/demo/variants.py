"""The demo's training variants: name -> the loss flags of one ``open_clip_train`` run.

Every variant of a world and training seed shares that world's shards, the data order, the
initialisation, batch, steps and schedule; only these flags differ (they are the tail of the
command, see ``runs.RunSpec.command``). ``siglip_concepts`` is the control of docs/demo_study.md.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List


@dataclass(frozen=True)
class Variant:
    description: str
    loss_args: Callable[["LossSettings"], List[str]]
    baseline: bool = False
    # open_clip_train flag this variant needs (None: always available)
    requires_flag: str = ""


@dataclass(frozen=True)
class LossSettings:
    npc_weight: float = 1.0
    xac_weight: float = 0.01
    xac_temperature: float = 1.0
    max_concepts: int = 4
    # mean concepts per image of the training set (the world's mean object count): the npc weight
    # that makes c2lip's loss without xac SigLIP over [captions; concepts] (siglip_concepts)
    concepts_per_image: float = 3.0


def _c2lip(settings: LossSettings, *, mode: str = "text", npc=None, xac=None, extra=()) -> List[str]:
    return ["--c2lip-loss",
            "--c2lip-npc-weight", str(settings.npc_weight if npc is None else npc),
            "--c2lip-xac-weight", str(settings.xac_weight if xac is None else xac),
            "--c2lip-xac-temperature", str(settings.xac_temperature),
            "--c2lip-max-concepts", str(settings.max_concepts),
            "--c2lip-concept-mode", mode, *extra]


VARIANTS: Dict[str, Variant] = {
    "siglip": Variant("SigLIP baseline (--siglip)", lambda s: ["--siglip"], baseline=True),
    "c2lip": Variant("C2LIP, concepts encoded as their own text (the authors' semantics)", lambda s: _c2lip(s)),
    "c2lip_span": Variant("C2LIP, concepts pooled over their caption span (--c2lip-concept-mode span)",
                          lambda s: _c2lip(s, mode="span")),
    # The ablations change the authors' default (text mode), the variant whose gain they explain; a
    # text-mode step costs ~1.05-1.25x a SigLIP step in this world (benchmarks/demo.md)
    # SigLIP over [captions; concepts]: L_con + (N/B) L_npc (docs/demo_study.md); N/B, the concepts
    # per image of a batch, is replaced by its training-set mean
    "siglip_concepts": Variant("control: SigLIP with every concept as one more caption of its image "
                               "(c2lip without xac, --c2lip-npc-weight = mean concepts per image)",
                               lambda s: _c2lip(s, npc=s.concepts_per_image, xac=0.0)),
    "npc_only": Variant("c2lip without xac (--c2lip-xac-weight 0)", lambda s: _c2lip(s, xac=0.0)),
    "xac_only": Variant("c2lip without npc (--c2lip-npc-weight 0)", lambda s: _c2lip(s, npc=0.0)),
    "dup_ignore": Variant("c2lip with duplicate concept texts left out of npc/xac "
                          "(--c2lip-duplicate-concepts ignore)",
                          lambda s: _c2lip(s, extra=("--c2lip-duplicate-concepts", "ignore")),
                          requires_flag="--c2lip-duplicate-concepts"),
}

BASELINE = "siglip"
DEFAULT_SINGLE = ("siglip", "c2lip")
CONTROL = "siglip_concepts"


def available(name: str) -> bool:
    """Whether the installed plugin has the flag variant ``name`` needs."""
    flag = VARIANTS[name].requires_flag
    if not flag:
        return True
    import argparse
    from ..integration.train_params import add_c2lip_args
    parser = argparse.ArgumentParser()
    add_c2lip_args(parser)
    return any(flag in action.option_strings for action in parser._actions)


def all_available() -> List[str]:
    """All variants the installed plugin supports, baseline first."""
    return [name for name in VARIANTS if available(name)]
