"""The hook of ``open_clip_train.main``: safe checkpoints, ``--resume latest`` that skips damaged
files, one writer per run folder, a failing exit for a refused run, C2LIP settings in checkpoints.

``python -m open_clip_train.main`` runs main.py as ``__main__`` (runpy), so there is no module import
to hook; ``main()`` itself calls ``parse_args`` first, though, and that is ``open_clip_train.params``'
binding, wrapped by ``patch_params_module`` (called by the params hook). The wrapper finds the module
whose ``main`` is running (``__main__`` with ``__spec__.name == "open_clip_train.main"``, or the
imported ``open_clip_train.main``) and ``patch_train_main`` replaces six of its globals, which
``main()`` looks up when it calls them:

| main.py global | replaced by | why |
|---|---|---|
| ``torch`` | ``TorchForMain``: ``torch`` except ``save(obj, path)`` | checkpoints written atomically (``checkpoints.save_checkpoint``) with the C2LIP settings (``checkpoint_settings``) |
| ``get_latest_checkpoint`` | ``wrap_get_latest_checkpoint`` | ``--resume latest``: newest complete checkpoint, skipped files named |
| ``pt_load`` | ``wrap_pt_load`` | ``--resume latest --save-most-recent``: a damaged ``epoch_latest.pt`` or a newer ``epoch_N.pt`` is handled the same way; ``--resume PATH`` that is missing, a folder, no readable checkpoint or another model's ends with one ``error:`` line naming it; C2LIP settings compared |
| ``create_model_and_transforms`` | ``wrap_create_model_and_transforms`` | remembers the trained model, for the architecture check of ``--resume PATH`` |
| ``init_distributed_device`` | ``wrap_init_distributed_device`` | run folder locked (``run_lock``) and "experiment already exists" refused with exit status 1 on every rank, before anything is written |
| ``parse_args`` | ``wrap_parse_args`` | (the trigger above) |

Each replacement is idempotent and documented; ``tests/test_integration_train_main.py`` fails if the
upstream code they rely on changes. Upstream-ready diffs: ``patches/open_clip_train-atomic-checkpoints.diff``,
``open_clip_train-run-lock.diff``, ``open_clip_train-exit-status.diff``, ``open_clip_train-resume-errors.diff``.
"""
import datetime
import functools
import logging
import os
import sys
import types
import weakref
from typing import Optional

from . import run_lock  # stdlib only: the params hook must not import torch (``checkpoints`` is loaded on use)

_logger = logging.getLogger(__name__)

WRAPPED = "__c2lip_wrapped__"
UPSTREAM_MAIN = "open_clip_train.main"
LATEST_CHECKPOINT_NAME = "epoch_latest.pt"  # open_clip_train.main.LATEST_CHECKPOINT_NAME


class _Run:
    """The arguments of the ``main()`` running in this process (set when it initialises its device)."""

    args = None
    resume_latest = False
    model = None  # weakref to the model main() trains (its first create_model_and_transforms), for --resume checks


# ------------------------------------------------------------------------------------- activation

def wrap_parse_args(parse_args):
    """``open_clip_train.params.parse_args`` that, once it has parsed, hooks open_clip_train's main
    module(s) of this process (``patch_train_main``): called by ``main()``, it runs before ``main`` goes
    on, with main.py fully executed. Idempotent."""
    if getattr(parse_args, WRAPPED, False):
        return parse_args

    @functools.wraps(parse_args)
    def c2lip_parse_args(*args, **kwargs):
        parsed = parse_args(*args, **kwargs)
        for module in running_main_modules():
            patch_train_main(module)
        return parsed

    setattr(c2lip_parse_args, WRAPPED, True)
    return c2lip_parse_args


def running_main_modules():
    """The module(s) holding open_clip_train's ``main``: the imported one and/or ``__main__`` of
    ``python -m open_clip_train.main``."""
    found = []
    for name in (UPSTREAM_MAIN, "__main__"):
        module = sys.modules.get(name)
        spec_name = getattr(getattr(module, "__spec__", None), "name", None)
        if module is not None and UPSTREAM_MAIN in (getattr(module, "__name__", None), spec_name):
            found.append(module)
    return found


def patch_params_module(params_module) -> None:
    """Called by the ``open_clip_train.params`` hook: wrap ``parse_args``; a main module imported
    before the hook gets its binding updated and is hooked now."""
    params_module.parse_args = wrap_parse_args(params_module.parse_args)
    for module in running_main_modules():
        patch_train_main(module)


def patch_train_main(module) -> None:
    """Replace the globals of open_clip_train's main module listed in the module docstring. Idempotent
    (each replacement is); names not defined yet (a main module still being imported) are left for
    the call from ``wrap_parse_args``, made when ``main()`` runs."""
    namespace = module.__dict__
    torch_module = namespace.get("torch")
    if torch_module is not None and not isinstance(torch_module, TorchForMain):
        namespace["torch"] = TorchForMain(torch_module)
    for name, wrap in (("get_latest_checkpoint", wrap_get_latest_checkpoint), ("pt_load", wrap_pt_load),
                       ("init_distributed_device", wrap_init_distributed_device), ("parse_args", wrap_parse_args),
                       ("create_model_and_transforms", wrap_create_model_and_transforms)):
        if name in namespace:
            namespace[name] = wrap(namespace[name])
    global LATEST_CHECKPOINT_NAME
    LATEST_CHECKPOINT_NAME = namespace.get("LATEST_CHECKPOINT_NAME", LATEST_CHECKPOINT_NAME)


# ------------------------------------------------------------------------------------- saving

class TorchForMain(types.ModuleType):
    """main.py's ``torch``: every attribute is the real ``torch``'s, except that ``save(obj, path)``
    goes through ``checkpoints.save_checkpoint`` (after ``checkpoint_settings.with_settings``).
    main.py calls ``torch.save`` only for its checkpoints (``epoch_N.pt`` and ``tmp.pt``)."""

    def __init__(self, torch_module):
        super().__init__(torch_module.__name__, torch_module.__doc__)
        self.__dict__["_torch"] = torch_module

    def __getattr__(self, name):
        return getattr(self.__dict__["_torch"], name)

    def save(self, obj, f, *args, **kwargs):
        if args or kwargs or not isinstance(f, (str, os.PathLike)):
            return self.__dict__["_torch"].save(obj, f, *args, **kwargs)
        from . import checkpoints
        from .checkpoint_settings import with_settings

        checkpoints.save_checkpoint(with_settings(obj), f)


# ------------------------------------------------------------------------------------- resuming

def wrap_get_latest_checkpoint(get_latest_checkpoint):
    """``get_latest_checkpoint(path, remote)``: for a local folder, the newest complete checkpoint
    (``checkpoints.select_resume_checkpoint``), each skipped file logged with its reason; remote
    folders (``--remote-sync``) as upstream. Runs on the master rank only (upstream broadcasts its answer).

    A whole checkpoint that cannot be read is returned as the choice (logged as an error): every rank
    then fails loading it with torch's message, instead of rank 0 failing alone while the others wait.
    """
    if getattr(get_latest_checkpoint, WRAPPED, False):
        return get_latest_checkpoint

    @functools.wraps(get_latest_checkpoint)
    def c2lip_get_latest_checkpoint(path: str, remote: bool):
        if remote:
            return get_latest_checkpoint(path, remote)
        from . import checkpoints

        try:
            selection = checkpoints.select_resume_checkpoint(checkpoints.checkpoint_candidates(path), folder=path)
        except checkpoints.UnreadableCheckpointError as error:
            _logger.error("%s", error)
            return error.path
        selection.log(_logger)
        return selection.path

    setattr(c2lip_get_latest_checkpoint, WRAPPED, True)
    return c2lip_get_latest_checkpoint


def _resume_most_recent(args, path: str) -> str:
    """``--resume latest --save-most-recent`` picked ``path`` (``epoch_latest.pt``): the newest complete
    checkpoint of the folder instead, chosen on rank 0 and shared with every rank."""
    from . import checkpoints

    choice, error = None, None
    if args.rank == 0:
        folder = os.path.dirname(path)
        try:
            selection = checkpoints.select_resume_checkpoint(checkpoints.checkpoint_candidates(folder), folder=folder)
            if selection.path != path or selection.skipped:
                selection.log(_logger)
            choice = selection.path
            if choice is None:
                error = (f"--resume latest: {path} is not a complete checkpoint and no other checkpoint in {folder} "
                         f"is; move the damaged file(s) away to start from scratch")
        except checkpoints.UnreadableCheckpointError as unreadable:
            choice, error = None, str(unreadable)
    if getattr(args, "distributed", False):
        from open_clip_train.distributed import broadcast_object

        choice, error = broadcast_object(args, (choice, error))
    if error is not None:
        raise checkpoints.UnreadableCheckpointError(error)
    return choice


def _is_local(file_path) -> bool:
    return isinstance(file_path, (str, os.PathLike)) and "://" not in os.fspath(file_path)


def check_resume_file(file_path) -> None:
    """A local ``--resume PATH`` that does not exist or is a folder: ``SystemExit`` with one ``error:``
    line naming it and what to pass (upstream fails with a bare ``FileNotFoundError`` /
    ``IsADirectoryError`` traceback)."""
    path = os.fspath(file_path)
    if not os.path.exists(path):
        raise SystemExit(f"error: --resume {path}: no such checkpoint file; pass a checkpoint (a run's "
                         f"checkpoints/epoch_N.pt), or --resume latest to continue the run named by --logs and --name")
    if os.path.isdir(path):
        found = sorted((name for name in os.listdir(path) if name.endswith(".pt")),
                       key=lambda name: (len(name), name))
        example = f" (it holds {', '.join(found[-3:])})" if found else ""
        raise SystemExit(f"error: --resume {path} is a folder{example}; pass one checkpoint file, or --resume latest "
                         f"to continue the run named by --logs and --name")


def unreadable_resume_error(file_path, error: BaseException) -> Optional[SystemExit]:
    """The one-line exit for a local ``--resume`` file ``pt_load`` failed on (empty, truncated, not a
    checkpoint: ``fileio.checkpoint.read_checkpoint`` says which), or None when the file reads there
    (a fault of another kind, left to upstream's traceback)."""
    from ..fileio.checkpoint import CheckpointError, read_checkpoint

    try:
        read_checkpoint(file_path)
    except (CheckpointError, OSError) as problem:
        return SystemExit(f"error: --resume: {problem}")
    return None


def resume_architecture_error(checkpoint, file_path, model, model_name: str) -> Optional[SystemExit]:
    """The one-line exit when the loaded ``checkpoint`` (an open_clip_train checkpoint or a bare state
    dict) does not fit ``model`` (missing / unknown entries, other shapes: ``architecture_mismatch``),
    None when it fits or is no state dict at all (left to upstream)."""
    from ..fileio.checkpoint import architecture_mismatch

    if model is None or not isinstance(checkpoint, dict):
        return None
    state_dict = checkpoint.get("state_dict") if "epoch" in checkpoint else checkpoint
    if not isinstance(state_dict, dict) or not state_dict:
        return None
    if all(str(k).startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    lines = architecture_mismatch(model, state_dict)
    if not lines:
        return None
    return SystemExit(f"error: --resume {os.fspath(file_path)} is not a checkpoint of --model {model_name}: "
                      + "; ".join(lines) + ". Was it trained as another --model?")


def wrap_pt_load(pt_load):
    """``pt_load(file_path, map_location)`` as main.py calls it to resume: with ``--resume latest
    --save-most-recent`` the newest complete checkpoint replaces ``epoch_latest.pt`` when that is damaged
    or older; a local checkpoint that is missing, a folder, unreadable or of another architecture than
    the model main() built ends the run with one ``error:`` line (exit status 1) before anything is
    loaded into the model; a training checkpoint's C2LIP settings are compared with this run's
    (``checkpoint_settings.log_resume_differences``)."""
    if getattr(pt_load, WRAPPED, False):
        return pt_load

    @functools.wraps(pt_load)
    def c2lip_pt_load(file_path, map_location=None):
        args = _Run.args
        if (args is not None and _Run.resume_latest and getattr(args, "save_most_recent", False)
                and getattr(args, "remote_sync", None) is None and isinstance(file_path, str)
                and file_path == os.path.join(args.checkpoint_path, LATEST_CHECKPOINT_NAME)):
            file_path = _resume_most_recent(args, file_path)
            args.resume = file_path
        local = _is_local(file_path)
        if local:
            check_resume_file(file_path)
        try:
            checkpoint = pt_load(file_path, map_location)
        except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
            exit_ = unreadable_resume_error(file_path, error) if local else None
            if exit_ is None:
                raise
            raise exit_ from error
        if args is not None:
            model = _Run.model() if _Run.model is not None else None
            exit_ = resume_architecture_error(checkpoint, file_path, model, getattr(args, "model", "?"))
            if exit_ is not None:
                raise exit_
        if args is not None and isinstance(checkpoint, dict) and "epoch" in checkpoint and args.rank == 0:
            from .checkpoint_settings import log_resume_differences

            log_resume_differences(checkpoint, str(file_path))
        return checkpoint

    setattr(c2lip_pt_load, WRAPPED, True)
    return c2lip_pt_load


def wrap_create_model_and_transforms(create_model_and_transforms):
    """main.py's ``create_model_and_transforms``: the first model built after ``init_distributed_device``
    (the trained one; a later call builds the distillation teacher) is remembered in ``_Run.model`` (a weak
    reference: the run's model is not kept alive after ``main()``)."""
    if getattr(create_model_and_transforms, WRAPPED, False):
        return create_model_and_transforms

    @functools.wraps(create_model_and_transforms)
    def c2lip_create_model_and_transforms(*args, **kwargs):
        created = create_model_and_transforms(*args, **kwargs)
        if _Run.model is None:
            _Run.model = weakref.ref(created[0])
        return created

    setattr(c2lip_create_model_and_transforms, WRAPPED, True)
    return c2lip_create_model_and_transforms


# ------------------------------------------------------------------------------------- run folder

def default_run_name(args) -> str:
    """open_clip_train's name for a run without ``--name`` (main.py; the date broadcast from rank 0)."""
    model_name_safe = args.model.replace('/', '-')
    date_str = datetime.datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
    if args.distributed:
        from open_clip_train.distributed import broadcast_object

        date_str = broadcast_object(args, date_str)
    return '-'.join([
        date_str,
        f"model_{model_name_safe}",
        f"lr_{args.lr}",
        f"b_{args.batch_size}",
        f"j_{args.workers}",
        f"p_{args.precision}",
    ])


def run_folder_refusal(args) -> Optional[str]:
    """Why this rank must not start (None: it may): the run folder is locked by another training
    (global master only; this takes the lock), or, on a logging master, it holds a log file and
    ``--resume latest`` was not given (upstream's "Experiment already exists")."""
    from open_clip_train.distributed import is_master

    folder = os.path.join(args.logs, args.name)
    if is_master(args):
        try:
            run_lock.acquire(folder)
        except run_lock.RunFolderBusy as busy:
            return str(busy)
        except OSError as error:
            return f"cannot create or lock the run folder {folder}: {error}"
    if is_master(args, local=args.log_local):
        log_file = os.path.join(folder, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(log_file) and args.resume != "latest":
            return (f"experiment {folder} already exists (it has {log_file}); pass another --name, or "
                    f"--resume latest to continue it")
    return None


def claim_run_folder(args) -> None:
    """Name the run as upstream does, then lock its folder and apply upstream's "experiment already
    exists" rule, agreed over all ranks; a refusal ends every rank with exit status 1 and one
    ``error:`` line (upstream prints its refusal on the master alone and exits 0)."""
    if args.name is None:
        args.name = default_run_name(args)
    refusal = run_folder_refusal(args)
    if args.distributed:
        from open_clip_train.distributed import all_gather_object

        refusal = next((r for r in all_gather_object(args, refusal) if r), None)
    if refusal is None:
        return
    if args.distributed and not args.horovod:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    raise SystemExit(f"error: {refusal}")


def wrap_init_distributed_device(init_distributed_device):
    """``init_distributed_device(args)`` followed by ``claim_run_folder(args)``: the last call main.py
    makes before it names the run and writes into its folder, with the process group ready for the
    ranks to agree. Also records ``args`` for ``wrap_pt_load``."""
    if getattr(init_distributed_device, WRAPPED, False):
        return init_distributed_device

    @functools.wraps(init_distributed_device)
    def c2lip_init_distributed_device(args):
        device = init_distributed_device(args)
        _Run.args, _Run.resume_latest, _Run.model = args, args.resume == "latest", None
        claim_run_folder(args)
        return device

    setattr(c2lip_init_distributed_device, WRAPPED, True)
    return c2lip_init_distributed_device
