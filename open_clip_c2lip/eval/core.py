"""The scoring core shared by every benchmark: interned images / captions, the benchmark registry,
file checks with clear errors, cosine scores of item pairs and the aggregate helpers."""
import io
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

_IMAGE_SUFFIXES = ("", ".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------------------
# Loaded benchmarks: distinct images / captions, interned across benchmarks

@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to a PIL box ``(left, upper, right, lower)``; ``reader`` names
    an entry of ``IMAGE_READERS`` for files PIL cannot open (None: ``PIL.Image.open``)."""
    path: Path
    box: Optional[Tuple[float, float, float, float]] = None
    reader: Optional[str] = None


# name -> function(path) -> RGB PIL image, for image files that are not PIL-readable (EqBen's
# YouCook2 frames are BGR ``.npy`` arrays); a benchmark module registers its reader here.
IMAGE_READERS: Dict[str, Callable[[Path], Any]] = {}


class Vocabulary:
    """Interns hashable items (image refs, captions) so each distinct one is encoded once."""

    def __init__(self):
        self.items: List[Any] = []
        self._index: Dict[Any, int] = {}

    def add(self, item) -> int:
        index = self._index.get(item)
        if index is None:
            index = self._index[item] = len(self.items)
            self.items.append(item)
        return index

    def __len__(self) -> int:
        return len(self.items)


# A scorer maps (image_features [N_img, D], text_features [N_txt, D]), both L2-normalized,
# to (results {split: {metric: value, "n": n}, "_average": {...}}, per-item score rows).
Scorer = Callable[[torch.Tensor, torch.Tensor], Tuple[Dict[str, Dict[str, float]], List[Dict[str, Any]]]]
BenchmarkLoader = Callable[..., Scorer]

# files(data_root) -> {split: annotation file}; one entry (the benchmark's name) without splits
AnnotationFiles = Callable[[Path], Mapping[str, Path]]

BENCHMARKS: "OrderedDict[str, BenchmarkLoader]" = OrderedDict()
BENCHMARK_FILES: Dict[str, AnnotationFiles] = {}
BENCHMARK_SOURCES: Dict[str, str] = {}  # where to get a benchmark's files (named when they are absent)
SPLIT_OPTION = "splits"  # the loader option that selects splits (benchmarks registered with splits=True)
SPLIT_BENCHMARKS: List[str] = []


def register_benchmark(name: str, files: Optional[AnnotationFiles] = None, splits: bool = False,
                       source: Optional[str] = None):
    """Register ``loader(data_root, images, texts, **options) -> Scorer`` under ``name``.

    ``files`` names the annotation file of each split (how a partial data root is told apart from
    a broken one); with ``splits`` the loader takes ``splits=[...]`` to read only some of them;
    ``source`` says where to get the files (shown when they are absent)."""
    def decorator(loader: BenchmarkLoader) -> BenchmarkLoader:
        BENCHMARKS[name] = loader
        if files is not None:
            BENCHMARK_FILES[name] = files
        if source is not None:
            BENCHMARK_SOURCES[name] = source
        if splits and name not in SPLIT_BENCHMARKS:
            SPLIT_BENCHMARKS.append(name)
        return loader
    return decorator


def list_benchmarks() -> List[str]:
    return list(BENCHMARKS)


# ------------------------------------------------------------------------------------------------
# Reading the official files, with errors that name the file and the item

def require_file(path: Path, benchmark: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark}: expected file not found: {path}")
    return path


def require_dir(path: Path, benchmark: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{benchmark}: expected image folder not found: {path}")
    return path


def read_text(path: Path, benchmark: str) -> str:
    """The text of an annotation file (UTF-8; a leading byte-order mark, as spreadsheet programs
    write, is dropped); ValueError naming the file when it cannot be read or is not UTF-8."""
    try:
        with open(path, "r", encoding="utf-8-sig", newline="") as f:
            return f.read()
    except OSError as e:  # e.g. no read permission
        raise ValueError(f"{benchmark}: cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{benchmark}: {path} is not UTF-8 text (byte {e.start}: {e.reason}); the release's "
                         f"files are UTF-8: re-download or re-export it") from e


def _unique_keys(path: Path, benchmark: str):
    def hook(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                # json.load would keep the last one and silently drop the other item
                raise ValueError(f"{benchmark}: {path} has the key {key!r} twice in one object (a damaged or "
                                 f"concatenated file); each item id must be unique")
            seen.add(key)
        return dict(pairs)
    return hook


def load_json(path: Path, benchmark: str):
    """A JSON annotation file; ValueError naming the file for invalid JSON, non-UTF-8 text and an
    object with a repeated key."""
    text = read_text(path, benchmark)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(path, benchmark))
    except json.JSONDecodeError as e:
        hint = " (0-byte file: a failed download?)" if not text else ""
        raise ValueError(f"{benchmark}: {path} is not valid JSON{hint}: {e}") from e


def csv_lines(path: Path, benchmark: str) -> io.StringIO:
    """A CSV annotation file as lines for ``csv.reader`` / ``csv.DictReader`` (read as :func:`read_text`;
    split at ``\n``, ``\r`` and ``\r\n`` only, as ``open(..., newline="")`` would)."""
    return io.StringIO(read_text(path, benchmark), newline="")


def csv_row(row: Mapping, source: Path, line: int) -> Mapping:
    """One ``csv.DictReader`` row unchanged; ValueError naming ``source:line`` when the line has fewer
    fields than the header (a truncated file: the reader fills them with None) or more (an unquoted
    comma), which would otherwise fail as a raw error or shift the columns."""
    if None in row:
        raise ValueError(f"{source}:{line}: {len(row[None])} field(s) more than the header's {len(row) - 1} "
                         f"(an unquoted comma?)")
    short = [key for key, value in row.items() if value is None]
    if short:
        raise ValueError(f"{source}:{line}: lacks field(s) {short}: {len(row) - len(short)} of the header's "
                         f"{len(row)} (a truncated line?)")
    return row


def field(item: Mapping, key: str, source: Path, item_id) -> Any:
    if not isinstance(item, Mapping):
        raise ValueError(f"{source}: item {item_id!r} is not an object: {item!r:.80}")
    if key not in item:
        raise ValueError(f"{source}: item {item_id!r} lacks field {key!r} (has {sorted(item)})")
    return item[key]


def text_field(item: Mapping, key: str, source: Path, item_id) -> str:
    """``item[key]``, which must be a text (a caption, a file name); ValueError naming the file,
    the item and the field otherwise (a null or a number would fail in the tokenizer after every
    image was encoded, or be scored as the text "None")."""
    value = field(item, key, source, item_id)
    if not isinstance(value, str):
        raise ValueError(f"{source}: item {item_id!r}: field {key!r} must be a text, got {value!r:.80}")
    return value


def number_field(item: Mapping, key: str, source: Path, item_id) -> float:
    """``item[key]`` as a finite float (a number or a numeric text); ValueError naming the file, the
    item and the field otherwise."""
    value = field(item, key, source, item_id)
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not np.isfinite(number):
        raise ValueError(f"{source}: item {item_id!r}: field {key!r} must be a finite number, got {value!r:.80}")
    return number


def check_images(paths: Sequence[Path], folder: Path, source: Path) -> None:
    """FileNotFoundError naming ``source`` and the absent images, each by its path under ``folder``
    (benchmarks nest images in per-type / per-scene folders, where base names repeat)."""
    missing = sorted({_shown_path(p, folder) for p in paths if not p.is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) referenced by {source} are missing from {folder}: {shown}")


def _shown_path(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


def resolve_image(folder: Path, name: str) -> Path:
    """``folder/name``, trying common suffixes for names stored without one (Winoground)."""
    for suffix in _IMAGE_SUFFIXES:
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return folder / name


def split_names(requested: Optional[Sequence[str]], known: Sequence[str], benchmark: str) -> Sequence[str]:
    if requested is None:
        return known
    unknown = [s for s in requested if s not in known]
    if unknown:
        raise ValueError(f"{benchmark}: unknown split(s) {unknown}; known: {list(known)}")
    return list(requested)


def require_items(items: Sequence, source: Path) -> Sequence:
    """``items`` unchanged; ValueError naming ``source`` when it holds none (an empty annotation file
    would otherwise score as null / crash the averages after the model has run)."""
    if not len(items):
        raise ValueError(f"{source}: holds no items (an empty annotation file: a failed download or export?)")
    return items


def items_of(data, source: Path):
    """(item id, item) pairs of a JSON dict keyed by id (SugarCrepe) or a list (SugarCrepe++, ARO);
    ValueError when there are none."""
    if isinstance(data, Mapping):
        return require_items(list(data.items()), source)
    if isinstance(data, list):
        return require_items([(item.get("id", i) if isinstance(item, Mapping) else i, item)
                              for i, item in enumerate(data)], source)
    raise ValueError(f"{source}: expected a JSON object or list, got {type(data).__name__}")


def coco_caption_splits(data_root: Path, name: str, splits: Sequence[str], images: Vocabulary,
                        texts: Vocabulary, caption_fields: Dict[str, str]) -> "OrderedDict[str, Dict[str, list]]":
    """Rows of each SugarCrepe(++)-style split file ``<data_root>/<name>/<split>.json``: item ``id``,
    ``image`` index (COCO files in ``<data_root>/val2017``) and, per key of ``caption_fields``, the
    text index of that item field."""
    image_dir = require_dir(data_root / "val2017", name)
    per_split = OrderedDict()
    for split in splits:
        source = require_file(data_root / name / f"{split}.json", name)
        rows = {"id": [], "image": [], **{key: [] for key in caption_fields}}
        paths = []
        for item_id, item in items_of(load_json(source, name), source):
            path = image_dir / text_field(item, "filename", source, item_id)
            paths.append(path)
            rows["id"].append(item_id)
            rows["image"].append(images.add(ImageRef(path)))
            for key, item_field in caption_fields.items():
                rows[key].append(texts.add(text_field(item, item_field, source, item_id)))
        check_images(paths, image_dir, source)
        per_split[split] = rows
    return per_split


# ------------------------------------------------------------------------------------------------
# Scores and aggregates (strict comparisons as in the official scripts: a tie counts as wrong)

def pair_similarity(image_features: torch.Tensor, text_features: torch.Tensor,
                    image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (image, text) index pair -> ``[N]`` float64."""
    image_index = torch.as_tensor(image_index, dtype=torch.long)
    text_index = torch.as_tensor(text_index, dtype=torch.long)
    sims = (image_features[image_index] * text_features[text_index]).sum(-1)
    return sims.double().numpy()


def text_similarity(text_features: torch.Tensor, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each (text, text) index pair -> ``[N]`` float64."""
    return pair_similarity(text_features, text_features, a, b)


def option_similarity(image_features: torch.Tensor, text_features: torch.Tensor, image_index: Sequence[int],
                      option_index, chunk: int = 4096) -> np.ndarray:
    """Cosine similarity of each item's image with each of its K text options -> ``[N, K]`` float64.

    ``image_index [N]``, ``option_index [N, K]``; float32 products as :func:`pair_similarity`, so equal
    options score exactly equal; computed ``chunk`` items at a time (25k items x 5 options x 768-d
    features would otherwise take 400 MB)."""
    image_index = torch.as_tensor(np.asarray(image_index), dtype=torch.long)
    option_index = torch.as_tensor(np.asarray(option_index), dtype=torch.long)
    out = [(image_features[image_index[s:s + chunk], None, :] * text_features[option_index[s:s + chunk]]).sum(-1)
           for s in range(0, len(image_index), chunk)]
    return torch.cat(out).double().numpy() if out else np.zeros((0, option_index.shape[-1]))


def selection_correct(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """SugarCrepe / ARO: correct iff sim(image, positive) > sim(image, negative). ``[N]`` bool."""
    return np.asarray(positive) > np.asarray(negative)


def tied(*comparisons: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``[N]`` bool: items where any of the ``(a, b)`` score comparisons is an exact tie ``a == b``.

    Every benchmark reports this count (``"ties"``) next to its accuracies: under reduced precision
    (bf16 autocast) equal scores are common, and whether a tie counts as right or wrong is a rule of
    each benchmark's official code (see ``TIE_RULES``)."""
    out = None
    for a, b in comparisons:
        equal = np.asarray(a) == np.asarray(b)
        out = equal if out is None else out | equal
    return out


# How a benchmark's official code counts an exact tie between the answer and the best other option:
# "wrong" (a strict ``>`` comparison: SugarCrepe, ARO VG, VALSE, ...) or "correct" (``argmax`` over the
# options with the answer listed first: WhatsUp, ARO order sets, ...).
TIE_RULES = ("wrong", "correct")


def choice_outcome(scores: np.ndarray, answer=0, ties: str = "wrong") -> Tuple[np.ndarray, np.ndarray]:
    """Multiple choice: ``scores [N, K]`` (one row per item, one column per option), ``answer`` the index
    of the right option (an int, or ``[N]`` ints). Returns ``(correct [N] bool, tied [N] bool)``;
    ``tied``: the answer's score equals the best other option's, and ``ties`` says how such an item
    counts (``TIE_RULES``)."""
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [N, K] with K >= 2 options, got shape {scores.shape}")
    rows = np.arange(scores.shape[0])
    answer = np.broadcast_to(np.asarray(answer, dtype=np.int64), rows.shape)
    right = scores[rows, answer]
    others = scores.copy()
    others[rows, answer] = -np.inf
    best_other = others.max(axis=1)
    is_tied = right == best_other
    correct = right > best_other if ties == "wrong" else right >= best_other
    return correct, is_tied


def fraction(correct: np.ndarray) -> Optional[float]:
    """Fraction of true entries; ``None`` (JSON null) when there are no items."""
    return float(np.mean(correct)) if len(correct) else None


def mean(values: Sequence[float]) -> Optional[float]:
    """Mean of ``values``; ``None`` (JSON null) when there are none."""
    return float(np.mean(values)) if len(values) else None
