"""The embedded demo: a synthetic world of coloured shapes where C2LIP and SigLIP are compared on a CPU.

``python -m open_clip_c2lip.demo [--output-dir DIR] [--quick] [--seed W | --seeds W1 W2 ... [--train-seeds
T1 T2 ...]]`` builds one world per world seed (``world.py``; training shards with spaCy concepts,
``build.py``; held-out sets of seen and of never-seen colour-shape pairs with single-phrase probes,
``evalsets.py``, checked against image-blind rules, ``blind.py``), trains ``C2LIP-Tiny`` once per
variant and training seed (``variants.py``) through ``open_clip_train`` (``runs.py``, scheduled and
resumed by ``study.py``), evaluates every run (``open_clip_c2lip.eval``, ``choices.py``,
``retrieval.py`` and the attention mass of ``attention.py``) and reports the pre-registered
analysis (``preregistration.py``, ``analysis.py``, ``stats.py``) as tables (``report.py``), JSON and
figures (``figures.py``). The command line lives in ``cli.py``; docs/demo_study.md describes the study.
"""
