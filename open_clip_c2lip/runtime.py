"""Process-wide C2LIP training state, set from the parsed open_clip_train arguments.

The hooks read it to decide whether to swap the model class, pack the training texts and build
``C2LIPLoss``. It is empty (``active() is False``) unless ``--c2lip-loss`` was parsed, so every
other process behaves exactly like upstream.
"""
from typing import Optional

from .config import C2LIPConfig

_config: Optional[C2LIPConfig] = None


def configure(config: Optional[C2LIPConfig]) -> None:
    """Set (or clear, with ``None``) the active C2LIP training config of this process."""
    global _config
    if config is not None and not isinstance(config, C2LIPConfig):
        raise TypeError(f"expected a C2LIPConfig or None, got {type(config).__name__}")
    _config = config


def config() -> Optional[C2LIPConfig]:
    return _config


def active() -> bool:
    return _config is not None
