"""Zero-shot classification and retrieval through clip_benchmark (LAION-AI/CLIP_benchmark 1.6.2),
on the model the compositionality suite evaluates, in the same command.

clip_benchmark builds the datasets (``datasets.builder.build_dataset``), the zero-shot classifier
(``metrics.zeroshot_classification.zero_shot_classifier``: its templates and class names), the
logits (``run_classification``) and the retrieval recalls (``metrics.zeroshot_retrieval.evaluate``);
everything runs in fp32 (``amp=False``, as ``clip_benchmark eval --no_amp``), so no score is
rounded into a tie. The only part not taken from clip_benchmark is the top-k accuracy: its
``accuracy`` calls ``float()`` on a 1-element array, which NumPy >= 2.4 rejects (TypeError;
LAION-AI/CLIP_benchmark#147). ``topk_accuracy`` computes the same quantity (the target among the
``topk(max k)`` logits, the first k of them) and ``mean_per_class_recall`` is sklearn's
``balanced_accuracy_score`` of the argmax, as in clip_benchmark.

Datasets are read from ``<root>/<dataset>`` (or ``root`` with ``{dataset}`` formatted in, as
clip_benchmark's ``--dataset_root``) and only when their files are there (``CLIP_BENCHMARK_DATASETS``
lists what each needs): clip_benchmark would otherwise start a download (wget / kaggle), which here
is never triggered. Absent datasets are skipped and listed.
"""
import argparse
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

_logger = logging.getLogger(__name__)

# dataset -> (task, files under its root: each entry a tuple of alternatives, one of which must exist)
CLIP_BENCHMARK_DATASETS: "OrderedDict[str, Tuple[str, Tuple[Tuple[str, ...], ...]]]" = OrderedDict([
    ("imagenet1k", ("zeroshot_classification", (("meta.bin", "ILSVRC2012_devkit_t12.tar.gz"),
                                                ("val", "ILSVRC2012_img_val.tar")))),
    ("imagenet1k-unverified", ("zeroshot_classification", (("val",),))),
    ("mscoco_captions", ("zeroshot_retrieval", (("val2014",), ("coco_test_karpathy.json",)))),
    ("flickr30k", ("zeroshot_retrieval", (("flickr30k_test_karpathy.txt",),))),
    ("flickr8k", ("zeroshot_retrieval", (("flickr8k_test_karpathy.txt",),))),
])
RECALL_K = (1, 5, 10)


def dataset_root(root, dataset: str) -> Path:
    """``root`` with ``{dataset}`` formatted in, else ``root/<dataset>``."""
    text = str(root)
    return Path(text.format(dataset=dataset)) if "{dataset}" in text else Path(text) / dataset


def absent_files(root, dataset: str) -> List[str]:
    """The required files of ``dataset`` missing under its root (``[]``: present)."""
    if dataset not in CLIP_BENCHMARK_DATASETS:
        raise ValueError(f"clip_benchmark dataset {dataset!r} is not supported here; choose from "
                         f"{list(CLIP_BENCHMARK_DATASETS)}")
    folder = dataset_root(root, dataset)
    _, needed = CLIP_BENCHMARK_DATASETS[dataset]
    return [" or ".join(str(folder / name) for name in options)
            for options in needed if not any((folder / name).exists() for name in options)]


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> List[float]:
    """Fraction of rows of ``logits [N, C]`` whose ``target [N]`` is among the first k of the
    ``topk(max k)`` logits, for each k (clip_benchmark's ``accuracy``, NumPy-2.4-safe)."""
    top = logits.topk(max(topk), dim=1, largest=True, sorted=True).indices  # [N, max k]
    hits = top == target.view(-1, 1)
    return [hits[:, :k].any(dim=1).sum().item() / len(target) for k in topk]


def _device_type(device: str) -> str:
    """clip_benchmark moves tensors to and autocasts on the same ``device`` string; autocast wants a
    type ("cuda"), so an indexed device becomes the current CUDA device."""
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is not None:
        torch.cuda.set_device(parsed.index)
    return parsed.type


def classification(model, preprocess: Callable, tokenizer: Callable, dataset: str, root: Path, *, device: str,
                   batch_size: int, workers: int, classnames_file: Optional[str] = None,
                   templates_file: Optional[str] = None) -> Dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    ds = build_dataset(dataset, root=str(root), transform=preprocess, split="test", download=False,
                       task="zeroshot_classification", custom_classname_file=classnames_file,
                       custom_template_file=templates_file)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         collate_fn=get_dataset_collate_fn(dataset))
    classifier = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates, device, amp=False)
    logits, target = run_classification(model, classifier, loader, device, amp=False)
    if target.ndim != 1:
        raise ValueError(f"{dataset}: multi-label targets are not supported here")
    if len(ds.classes) >= 5:
        acc1, acc5 = topk_accuracy(logits, target, (1, 5))
    else:
        (acc1,), acc5 = topk_accuracy(logits, target, (1,)), None
    recall = float(balanced_accuracy_score(target.numpy(), logits.argmax(dim=1).numpy()))
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": recall, "n": int(len(target))}


def retrieval(model, preprocess: Callable, tokenizer: Callable, dataset: str, root: Path, *, device: str,
              batch_size: int, workers: int, recall_k: Sequence[int] = RECALL_K) -> Dict[str, Any]:
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics.zeroshot_retrieval import evaluate
    ds = build_dataset(dataset, root=str(root), transform=preprocess, split="test", download=False,
                       task="zeroshot_retrieval")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False,
                                         collate_fn=get_dataset_collate_fn(dataset))
    usable = [k for k in recall_k if k <= len(ds)]
    if len(usable) < len(recall_k):
        _logger.warning("%s: %d images; recall@k for k > %d left out", dataset, len(ds), len(ds))
    metrics = evaluate(model, loader, tokenizer, device, amp=False, recall_k_list=usable)
    return {**{k: float(v) for k, v in metrics.items()}, "n": int(len(ds))}


TASKS = {"zeroshot_classification": classification, "zeroshot_retrieval": retrieval}


def run_clip_benchmark(model, preprocess: Callable, tokenizer: Callable, root, datasets: Sequence[str], *,
                       device: str = "cpu", batch_size: int = 64, workers: int = 0,
                       classnames_file: Optional[str] = None, templates_file: Optional[str] = None
                       ) -> Tuple["OrderedDict[str, Dict[str, Any]]", Dict[str, List[str]]]:
    """``({dataset: metrics}, {dataset: absent files})`` for the ``datasets`` present under ``root``
    (fractions in [0, 1]; ``n`` = images). Classification: ``acc1``, ``acc5``,
    ``mean_per_class_recall``; retrieval: ``image_retrieval_recall@k`` (text -> image) and
    ``text_retrieval_recall@k`` (image -> text) for k in 1, 5, 10."""
    results, skipped = OrderedDict(), OrderedDict()
    device_type = _device_type(device)
    was_training = model.training
    model.eval()
    try:
        for dataset in datasets:
            absent = absent_files(root, dataset)
            if absent:
                skipped[dataset] = absent
                _logger.warning("clip_benchmark %s: not found (%s), skipped", dataset, ", ".join(absent))
                continue
            task, _ = CLIP_BENCHMARK_DATASETS[dataset]
            kwargs = {"classnames_file": classnames_file, "templates_file": templates_file} \
                if task == "zeroshot_classification" else {}
            _logger.info("clip_benchmark %s (%s, fp32)", dataset, task)
            try:
                results[dataset] = TASKS[task](model, preprocess, tokenizer, dataset, dataset_root(root, dataset),
                                               device=device_type, batch_size=batch_size, workers=workers, **kwargs)
            except Exception as e:  # clip_benchmark's own errors rarely say which dataset or file
                raise ValueError(f"clip_benchmark {dataset} under {dataset_root(root, dataset)} failed: "
                                 f"{type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)
    return results, skipped


def add_clip_benchmark_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("zero-shot classification and retrieval (clip_benchmark)")
    group.add_argument("--clip-benchmark-root", default=None,
                       help="folder of clip_benchmark datasets, one sub-folder per dataset (or a path with "
                            "{dataset}, as clip_benchmark's --dataset_root); absent ones are skipped")
    group.add_argument("--clip-benchmark-datasets", nargs="+", default=None, choices=list(CLIP_BENCHMARK_DATASETS),
                       help="default with --clip-benchmark-root: imagenet1k mscoco_captions flickr30k")
    group.add_argument("--clip-benchmark-classnames", default=None,
                       help="clip_benchmark --custom_classname_file (JSON: dataset -> class names)")
    group.add_argument("--clip-benchmark-templates", default=None,
                       help="clip_benchmark --custom_template_file (JSON: dataset -> prompt templates)")


DEFAULT_DATASETS = ("imagenet1k", "mscoco_captions", "flickr30k")


def _check_json_file(path, flag: str) -> None:
    """clip_benchmark reads these with a bare ``assert`` / ``json.load``: fail early, naming the file."""
    import json
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{flag}: {path} is not a readable UTF-8 JSON file: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{flag}: {path} must hold a JSON object (dataset -> list), got {type(data).__name__}")


def clip_benchmark_datasets(args: argparse.Namespace) -> List[str]:
    """The clip_benchmark datasets to run, checked before the model is loaded: the root must be a
    folder holding at least one of them (absent ones are skipped and listed when the run ends), the
    custom class name / template files must be JSON objects."""
    if args.clip_benchmark_root is None:
        if args.clip_benchmark_datasets:
            raise ValueError("--clip-benchmark-datasets needs --clip-benchmark-root")
        return []
    root = args.clip_benchmark_root
    if "{dataset}" not in str(root) and not Path(root).is_dir():
        raise FileNotFoundError(f"--clip-benchmark-root folder not found: {root}")
    datasets = list(args.clip_benchmark_datasets or DEFAULT_DATASETS)
    absent = {d: absent_files(root, d) for d in datasets}
    if all(absent.values()):
        raise FileNotFoundError(f"none of the clip_benchmark datasets {', '.join(datasets)} is under {root}: "
                                + "; ".join(f"{d} (missing {', '.join(f)})" for d, f in absent.items()))
    for flag, path in (("--clip-benchmark-classnames", args.clip_benchmark_classnames),
                       ("--clip-benchmark-templates", args.clip_benchmark_templates)):
        if path is not None:
            _check_json_file(path, flag)
    return datasets
