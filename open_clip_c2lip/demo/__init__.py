"""The embedded demo: a synthetic world of coloured shapes where C2LIP and SigLIP are compared on a CPU.

``python -m open_clip_c2lip.demo [--output-dir DIR] [--quick] [--seed S | --seeds S1 S2 ...]`` builds
one world per seed (``world.py``; training shards with spaCy concepts, ``build.py``; held-out
SugarCrepe-format sets of seen and of held-out colour-shape pairs, ``evalsets.py``), trains
``C2LIP-Tiny`` once per variant (``variants.py``) through ``open_clip_train`` (``runs.py``,
scheduled by ``study.py``), evaluates every run (``open_clip_c2lip.eval``, ``retrieval.py`` and the
attention mass of ``attention.py``) and writes tables with seed statistics (``stats.py``), JSON and
figures (``report.py``). The command line lives in ``cli.py``.
"""
