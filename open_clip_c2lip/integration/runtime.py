"""The only process-wide C2LIP state: the configuration parsed from open_clip_train's arguments.

``train_params`` sets it when ``parse_args`` sees ``--c2lip-loss`` (and clears it otherwise); the
``open_clip`` factory wrappers and ``get_data`` read it to swap the training model's class, build
``C2LIPLoss`` and pack the training texts. It is empty (``active() is False``) unless ``--c2lip-loss``
was parsed, so every other process behaves exactly like upstream. The method modules never read it:
they get their settings as arguments.
"""
from typing import List, Optional

from ..config import C2LIPConfig

_config: Optional[C2LIPConfig] = None
_training_model: Optional[str] = None
# messages for open_clip_train's log: logging is configured only after parse_args, so the factory
# wrappers emit them (pop_messages) once main has called setup_logging
_messages: List[str] = []


def configure(config: Optional[C2LIPConfig], training_model: Optional[str] = None) -> None:
    """Set (or clear, with ``None``) the active C2LIP configuration; ``training_model`` is the
    ``--model`` it was parsed with (only that model becomes a C2 model; None: any model)."""
    global _config, _training_model
    if config is not None and not isinstance(config, C2LIPConfig):
        raise TypeError(f"expected a C2LIPConfig or None, got {type(config).__name__}")
    _config = config
    _training_model = training_model if config is not None else None


def config() -> Optional[C2LIPConfig]:
    return _config


def active() -> bool:
    return _config is not None


def training_model() -> Optional[str]:
    """``--model`` of the ``--c2lip-loss`` parse that set the configuration, else None (no parse, or the
    configuration was set directly since)."""
    return _training_model


def queue_message(message: str) -> None:
    """Queue a message for open_clip_train's log (see ``pop_messages``)."""
    _messages.append(message)


def pop_messages() -> List[str]:
    """Queued messages (each returned once)."""
    messages = list(_messages)
    _messages.clear()
    return messages
