"""The C2LIP settings in training checkpoints, and a warning when a resume changes them.

A ``--c2lip-loss`` run's checkpoints get one extra entry, ``"c2lip": {"plugin_version": str, "config":
{field: value}}`` (``runtime.C2LIPConfig`` fields; str / int / float only), so they still load with
``torch.load(weights_only=True)``, plain ``open_clip.create_model(pretrained=...)`` and clip_benchmark,
which read ``state_dict`` alone. Runs without ``--c2lip-loss`` save upstream's dict unchanged.

On resume, ``resume_differences`` names every setting the run changes (flag, checkpoint value, this
run's value), and says when a C2LIP checkpoint is resumed without ``--c2lip-loss`` or a checkpoint
without recorded settings (a plain run, or an older plugin) with it.
"""
import dataclasses
import logging
from typing import Any, Dict, List, Mapping, Optional

from .. import __version__
from . import runtime

_logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "c2lip"
_DEFAULTS = runtime.C2LIPConfig().to_dict()


def flag(field: str) -> str:
    """The command-line flag of a ``C2LIPConfig`` field (``npc_weight`` -> ``--c2lip-npc-weight``)."""
    return "--c2lip-" + field.replace("_", "-")


def settings_entry(config: runtime.C2LIPConfig) -> Dict[str, Any]:
    """The checkpoint entry for ``config``: plain str / int / float / dict values only."""
    values = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"C2LIPConfig.{item.name} = {value!r} is not a plain value; it cannot go into a "
                            f"checkpoint that loads with torch.load(weights_only=True)")
        values[item.name] = value
    return {"plugin_version": __version__, "config": values}


def with_settings(checkpoint: Any, config: Optional[runtime.C2LIPConfig] = None) -> Any:
    """``checkpoint`` plus the C2LIP entry when it is an open_clip_train checkpoint dict (``epoch`` and
    ``state_dict`` entries) of a ``--c2lip-loss`` run; otherwise ``checkpoint`` itself. Never mutates it."""
    config = runtime.config() if config is None else config
    if config is None or not isinstance(checkpoint, dict) or not {"epoch", "state_dict"} <= checkpoint.keys():
        return checkpoint
    return {**checkpoint, CHECKPOINT_KEY: settings_entry(config)}


def _value(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value}"


def resume_differences(checkpoint: Mapping, path: str, config: Optional[runtime.C2LIPConfig]) -> List[str]:
    """Warnings for resuming the training checkpoint ``checkpoint`` (read from ``path``) with ``config``
    (None: without ``--c2lip-loss``); empty when the settings agree."""
    entry = checkpoint.get(CHECKPOINT_KEY)
    current = config.to_dict() if config is not None else None
    if entry is not None and not (isinstance(entry, Mapping) and isinstance(entry.get("config"), Mapping)):
        return [f"{path}: its {CHECKPOINT_KEY!r} entry is not a C2LIP settings record ({type(entry).__name__}); "
                f"the C2LIP settings it was trained with are unknown"]
    if entry is None and current is None:
        return []
    if entry is None:
        return [f"{path} records no C2LIP settings (it was trained without --c2lip-loss, or before checkpoints "
                f"recorded them); this run continues it with --c2lip-loss and "
                + ", ".join(f"{flag(k)} {_value(v)}" for k, v in current.items())]
    recorded = dict(entry["config"])
    if current is None:
        return [f"{path} was trained with --c2lip-loss ("
                + ", ".join(f"{flag(k)} {_value(v)}" for k, v in recorded.items())
                + "); this run continues it without --c2lip-loss"]
    changes = []
    for key, value in current.items():
        if key not in recorded:
            if value != _DEFAULTS.get(key):
                changes.append(f"{flag(key)}: not recorded in the checkpoint (plugin "
                               f"{entry.get('plugin_version', '?')}), this run {_value(value)}")
        elif recorded[key] != value:
            changes.append(f"{flag(key)}: checkpoint {_value(recorded[key])}, this run {_value(value)}")
    unknown = sorted(set(recorded) - set(current))
    if unknown:
        changes.append("recorded settings this plugin version does not know (ignored): "
                       + ", ".join(f"{k}={_value(recorded[k])}" for k in unknown))
    if not changes:
        return []
    return [f"resuming {path} with other C2LIP settings than it was trained with: " + "; ".join(changes)]


def log_resume_differences(checkpoint: Mapping, path: str, config: Optional[runtime.C2LIPConfig] = None) -> None:
    """``resume_differences`` as WARNINGs (``config`` defaults to this process's ``runtime.config()``)."""
    for message in resume_differences(checkpoint, path, runtime.config() if config is None else config):
        _logger.warning(message)
