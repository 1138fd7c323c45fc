"""Everything that touches open_clip / open_clip_train: one module per upstream surface.

The activation (``open_clip_c2lip._bootstrap.HOOKS``) calls one ``patch_*`` function here right after
each upstream module is imported; nothing outside this package imports ``open_clip_train`` or
patches upstream. Following ``python -m open_clip_train.main ... --c2lip-loss``:

| upstream surface | module here | what it does |
|---|---|---|
| ``open_clip`` (``factory.create_model`` / ``create_loss``) | ``open_clip_factory`` | registers the C2 names; the training model becomes a C2 model (``open_clip_c2lip.model.enable_c2lip``), the loss ``open_clip_c2lip.loss.C2LIPLoss`` |
| ``open_clip_train.params`` (``parse_args``) | ``train_params`` | the ``--c2lip-*`` flags (validated by ``open_clip_c2lip.config``), ``--c2lip-loss`` implies ``--siglip``, sets ``runtime`` |
| ``open_clip_train.data`` (``get_data``) | ``train_data`` | the train split's texts packed with concepts (``open_clip_c2lip.packing.TextPacker``); CSV with concepts |
| ``open_clip_train.data`` (webdataset pipeline) | ``wds`` | end-of-shard fix, one shard per group, damaged shards, bad samples named and counted |
| ``open_clip_train.data`` (data order) | ``data_order`` | same ``--seed`` -> same data order (generic, no C2LIP code) |
| ``open_clip_train.data`` (``decode("pilrgb")`` of the webdataset pipelines) | ``images`` | images as a viewer shows them (``open_clip_c2lip.fileio.images``; generic) |
| ``open_clip_train.data`` (``CsvDataset``, ``get_dataset_fn``) | ``csv_data`` | CSV/TSV/parquet tables, image paths relative to the table's folder, skipped images named, counted and substituted (generic) |
| ``open_clip_train.train`` (``train_one_epoch``) | ``train_loop`` | exact gradient accumulation, stop on non-finite weights (generic) |
| ``open_clip_train.train`` (``train_one_epoch``, the loss it is given) | ``concept_usage`` | the loss's usable concepts counted per step, reported after 10 steps and every epoch; a warning past 50 % of samples without one, a stop when the first steps have none |
| ``torch.nn.parallel.DistributedDataParallel`` as main.py calls it | ``ddp`` | CPU / gloo DDP without ``device_ids`` (generic) |
| ``open_clip_train.main`` (checkpoint save, ``--resume latest``, run folder, exit status) | ``train_main`` (with ``checkpoints``, ``run_lock``, ``checkpoint_settings``) | preemption-safe saves, resume from the newest complete checkpoint, one writer per run folder, non-zero exit on refusal (generic); the C2LIP settings stored in checkpoints and compared on resume |
| ``open_clip.factory.load_checkpoint`` | ``logit_bias`` | a checkpoint without ``logit_bias`` keeps the model's initial bias, and says so (generic) |

``runtime`` holds the only process-wide state (the parsed C2LIP configuration), ``counters`` the data
counters shared by DataLoader workers, ``launch`` is ``python -m open_clip_c2lip.train``. Every
patch is an idempotent attribute replacement with an upstream-ready diff in ``patches/``; a port to
another open_clip_train version touches this package alone.
"""

# marks a function this package wrapped (wrapping it again is a no-op)
WRAPPED = "__c2lip_wrapped__"
