"""The embedded demo: a synthetic world of coloured shapes where C2LIP and SigLIP are compared on a CPU.

``python -m open_clip_c2lip.demo [--output-dir DIR] [--quick]`` builds the world
(``world.py``; training shards with spaCy concepts, ``build.py``; held-out SugarCrepe-format sets,
``evalsets.py``), trains ``C2LIP-Tiny`` twice through ``open_clip_train`` (``runs.py``), evaluates
both (``open_clip_c2lip.eval`` plus ``retrieval.py``) and writes the table, JSON and figure
(``report.py``). Orchestration and the command line live in ``cli.py``.
"""
