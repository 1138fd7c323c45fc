"""Activation: post-import hooks that patch open_clip / open_clip_train when they are imported.

Runs in every Python process of an environment with the plugin installed (``open_clip_c2lip.pth``
or, on Python >= 3.15, ``open_clip_c2lip.start``), so it is stdlib-only and cheap: it installs one
``sys.meta_path`` finder and imports nothing else. The finder reacts to exactly the modules in
``HOOKS``; after such a module has executed, the patch functions listed for it (all in
``open_clip_c2lip.integration``) patch it, in order. ``importlib.abc`` is deliberately not imported (it costs ~25 ms at startup); the finder and
loader are plain duck-typed classes.

Set ``OPEN_CLIP_C2LIP_DISABLE=1`` to turn the hooks off (pure upstream behaviour). The explicit
entry point ``python -m open_clip_c2lip.train`` installs them regardless (``install(force=True)``).
"""
import os
import sys

DISABLE_ENV = "OPEN_CLIP_C2LIP_DISABLE"

# upstream module -> its patches, "module:function" (each function takes the upstream module)
HOOKS = {
    "open_clip": ("open_clip_c2lip.integration.open_clip_factory:patch_open_clip",
                  "open_clip_c2lip.integration.logit_bias:patch_open_clip_module"),
    "open_clip_train.params": ("open_clip_c2lip.integration.train_params:patch_params",
                               "open_clip_c2lip.integration.train_main:patch_params_module"),
    "open_clip_train.data": ("open_clip_c2lip.integration.wds:patch_shard_reader",
                             "open_clip_c2lip.integration.train_data:patch_get_data",
                             "open_clip_c2lip.integration.data_order:patch_data_order",
                             "open_clip_c2lip.integration.images:patch_image_decoding",
                             "open_clip_c2lip.integration.csv_data:patch_csv_data"),
    # concept_usage first: its train_one_epoch wrapper is the inner one
    "open_clip_train.train": ("open_clip_c2lip.integration.concept_usage:patch_train",
                              "open_clip_c2lip.integration.train_loop:patch_train"),
}

# set on a module once its hook ran (idempotency across install() calls, reloads, finder copies)
SENTINEL = "__open_clip_c2lip_hooked__"
_FINDER_MARKER = "_open_clip_c2lip_finder"


def disabled() -> bool:
    """True when ``OPEN_CLIP_C2LIP_DISABLE`` is set to anything but '', '0', 'false', 'no'."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _run_hook(module, executed: bool = False) -> None:
    """Run the module's patches unless they already ran; ``executed``: the module body just (re)ran,
    e.g. ``importlib.reload``, which undoes earlier patches, so the (idempotent) patches run again."""
    patches = HOOKS.get(getattr(module, "__name__", None))
    if patches is None or (getattr(module, SENTINEL, False) and not executed):
        return
    # mark first: a patch that fails half-way must not be re-run on top of its own partial patches
    setattr(module, SENTINEL, True)
    for patch in patches:
        try:
            patch_module, _, function = patch.partition(":")
            getattr(__import__(patch_module, fromlist=[function]), function)(module)
        except Exception:  # a broken patch must never break upstream
            import logging
            logging.getLogger(__name__).warning(
                "open_clip_c2lip: the hook %s for %r failed, so that part keeps its upstream behaviour "
                "(%s=1 disables the plugin)", patch, module.__name__, DISABLE_ENV, exc_info=True)


class _HookedLoader:
    """Delegates to the real loader, then runs the hook on the executed module."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        # put the real loader back so the module looks exactly as upstream's (inspect, resources)
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self.loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self.loader
        self.loader.exec_module(module)
        _run_hook(module, executed=True)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _PostImportFinder:
    """``sys.meta_path`` entry: finds ``HOOKS`` modules via the other finders and wraps their loader."""

    _open_clip_c2lip_finder = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOOKS:
            return None
        for finder in sys.meta_path:
            if finder is self or getattr(finder, _FINDER_MARKER, False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _HookedLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def install(force: bool = False) -> bool:
    """Install the post-import finder (once) and hook the ``HOOKS`` modules already imported.

    Idempotent. Returns False (doing nothing) when disabled by ``OPEN_CLIP_C2LIP_DISABLE`` unless
    ``force``.
    """
    if not force and disabled():
        return False
    if not any(getattr(finder, _FINDER_MARKER, False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    for name in HOOKS:
        module = sys.modules.get(name)
        if module is not None:
            _run_hook(module)
    return True


def installed() -> bool:
    """Whether the post-import finder is on ``sys.meta_path`` in this process."""
    return any(getattr(finder, _FINDER_MARKER, False) for finder in sys.meta_path)
