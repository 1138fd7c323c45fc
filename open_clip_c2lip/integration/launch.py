"""``python -m open_clip_c2lip.train ARGS``: ``python -m open_clip_train.main ARGS`` with C2LIP active.

Installs the hooks explicitly (also when the ``.pth`` activation is absent, e.g. after
``pip install --target``, or disabled by ``OPEN_CLIP_C2LIP_DISABLE``), then runs upstream's
``main``. Under torchrun, pass a leading ``--`` before the training flags
(``torchrun --nproc_per_node 2 -m open_clip_c2lip.train -- --logs DIR ...``): torchrun's own parser
otherwise rejects ``--logs`` as an ambiguous abbreviation of ``--logs-specs``; the ``--`` is
dropped here.
"""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None):
    """Run open_clip_train's ``main`` with the C2LIP hooks installed; returns its return value."""
    from .. import _bootstrap

    _bootstrap.install(force=True)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from open_clip_train.main import main as train_main

    return train_main(argv)
