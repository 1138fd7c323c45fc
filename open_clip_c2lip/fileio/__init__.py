"""All file and archive I/O of the package, one module per kind of file.

- ``atomic``: every output is written to a new partial file and renamed when complete.
- ``tar``: reading webdataset shards as webdataset groups them (damage detected), byte-exact members.
- ``shards``: writing webdataset shards from images and captions.
- ``formats``: file kinds by suffix and leading bytes; compressed shards.
- ``tables``: the one reader of caption tables (CSV/TSV/parquet) and their image path rule.
- ``images``: image bytes to the RGB a viewer shows, for training and ``make_shards.py``.
- ``checkpoint``: reading training checkpoints with errors that name the fault.
"""
