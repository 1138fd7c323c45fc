"""C2LIP (concept-centric contrastive learning) as a plugin for open_clip.

Importing this package installs the hooks that register the C2 model names in open_clip and add
the C2LIP flags to open_clip_train (immediately if those are already imported, else on import).
Kept stdlib-only: the ``.pth`` activation imports it in every Python process of the environment.
Heavy names (``C2LIPLoss``, ``extract_concepts`` ...) are loaded on first attribute access.
"""
__version__ = "0.1.0"

_LAZY = {
    "C2LIPLoss": "open_clip_c2lip.loss",
    "extract_concepts": "open_clip_c2lip.concepts",
    "TextPacker": "open_clip_c2lip.packing",
    "enable_c2lip": "open_clip_c2lip.model",
    "disable_c2lip": "open_clip_c2lip.model",
    "is_c2lip": "open_clip_c2lip.model",
    "image_token_features": "open_clip_c2lip.model",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'open_clip_c2lip' has no attribute {name!r}")
    import importlib  # here, not at top: this module is imported at every interpreter start-up
    return getattr(importlib.import_module(module), name)


from . import _bootstrap  # noqa: E402  (stdlib-only)

_bootstrap.install()
