"""A results row in the vl_compo study's CSV format, and the study's Figure-1-style comparison.

The vl_compo study (Oh et al., CVPR-W 2024; ``ytaek-oh/vl_compo``) published ``results.csv`` (one
summary column per benchmark, ``comp_avg``, ImageNet and retrieval) and ``individual_results.csv``
(one ``benchmark::subset[::metric]`` column per subset) for 202 checkpoints, values in percent. One
row written here carries both column sets (``HEADER``: the ``results.csv`` columns, then the
per-subset columns), so a model can be placed among the published checkpoints.

- ``SUBSET_COLUMNS``: each per-subset column and where its value is in this package's results
  (``benchmark, subset, metric``; alternatives in order). Columns of a toolkit we do not run (the
  study's ELEVATER zero-shot tasks, ``elevator::*``) stay empty.
- ``SUMMARY_RULES``: each summary column as a rule over per-subset columns; ``("mean", parts)`` is
  the plain mean, ``("micro", columns)`` the item-weighted mean (by each subset's ``n``), a string
  a column, ``("source", alternatives)`` a value read directly. Every rule was checked against the
  published files: applied to ``individual_results.csv`` it gives ``results.csv`` to 1e-8 for all
  rows (item counts of ImageCoDe and SugarCrepe from the benchmarks' files).
- A summary whose parts did not all run stays empty (``comp_avg`` needs all 12 benchmarks);
  :func:`vl_compo_row` says which benchmarks are missing.

``compare_figure`` plots the compositionality average against ImageNet zero-shot top-1 for the
published rows (by family) with the user's rows marked. When a user row lacks some of the 12
benchmarks, every point is the mean over the benchmarks all marked rows have (the axis says which),
so the comparison stays like for like.

CLI: ``python -m open_clip_c2lip.eval.report --ours ours.csv [...] --compare results.csv --figure
fig.png`` (the eval CLI writes ``ours.csv`` with ``--csv`` and can draw the figure itself).
"""
import argparse
import csv
import io
import logging
import math
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..fileio.atomic import write_text

_logger = logging.getLogger(__name__)

Source = Tuple[str, str, str]  # (benchmark, subset, metric) in this package's results
Rule = Union[str, Tuple[str, Any]]

WHATSUP_SUBSETS = ("WhatsUp_A", "WhatsUp_B", "COCO_QA_ONE", "COCO_QA_TWO", "VG_QA_ONE", "VG_QA_TWO")
VALSE_PIECES = ("existence", "plurals", "counting-hard", "counting-small-quant", "counting-adversarial",
                "relations", "action-replacement", "actant-swap", "coreference-standard", "coreference-hard",
                "foil-it")
VL_CHECKLIST_TYPES = ("Object_Location_center", "Object_Location_margin", "Object_Location_mid", "Object_Size_large",
                      "Object_Size_medium", "Object_Size_small", "Attribute_action", "Attribute_color",
                      "Attribute_material", "Attribute_size", "Attribute_state", "Relation_action",
                      "Relation_spatial")
SUGARCREPE_SPLITS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")
EQBEN_SUBSETS = ("eqbenyoucook2", "eqbengebc", "eqbenag", "eqbenkubric_loc", "eqbenkubric_cnt", "eqbenkubric_attr",
                 "eqbensd")
MMVP_CATEGORIES = ("Orientation and Direction", "Presence of Specific Features", "State and Condition",
                   "Quantity and Count", "Positional and Relational Context", "Color and Appearance",
                   "Structural Characteristics", "Texts", "Viewpoint and Perspective")
ELEVATER_TASKS = ("caltech101", "cifar10", "cifar100", "country211", "dtd", "eurosat-clip", "fer2013",
                  "fgvc-aircraft-2013b", "flower102", "food101", "gtsrb", "hateful-memes", "imagenet-1k",
                  "kitti-distance", "mnist", "oxford-iiit-pets", "patchcamelyon", "rendered-sst2", "resisc45-clip",
                  "stanfordcar", "voc2007classification")
GROUP = ("text", "image", "group")
RECALL = (1, 5, 10)
RETRIEVAL = (("coco_karpathy", "mscoco_captions"), ("flickr30k", "flickr30k"))


def _one(benchmark: str, subset: str, metric: str) -> Tuple[Source, ...]:
    return ((benchmark, subset, metric),)


# per-subset column -> where its value is (alternatives in order; () = never filled here)
SUBSET_COLUMNS: "OrderedDict[str, Tuple[Source, ...]]" = OrderedDict([
    ("aro::VG_Relation", _one("aro_vgr", "_average", "acc")),
    ("aro::VG_Attribute", _one("aro_vga", "_average", "acc")),
    ("aro::Flickr30k_Order", _one("aro_flickr_order", "_average", "acc")),
    ("aro::COCO_Order", _one("aro_coco_order", "_average", "acc")),
    *[(f"colorswap::{m}", _one("colorswap", "_average", m)) for m in GROUP],
    *[(f"crepe::{t}", _one("crepe", t, "acc")) for t in ("atom", "swap", "negate")],
    *[(f"eqben::{s}::{m}", _one("eqben", s, m)) for s in EQBEN_SUBSETS for m in GROUP],
    *[(f"imagecode::{s}", _one("imagecode", s, "acc")) for s in ("videos", "static")],
    *[(f"mmvp_vlm::{c}::{m}", _one("mmvp_vlm", c, m)) for c in MMVP_CATEGORIES for m in GROUP],
    *[(f"sugarcrepe::{s}", _one("sugarcrepe", s, "acc")) for s in SUGARCREPE_SPLITS],
    *[(f"svo_probes::{s}", _one("svo_probes", s, "acc")) for s in ("subj_neg", "verb_neg", "obj_neg")],
    *[(f"valse::{p}", _one("valse", p, "acc")) for p in VALSE_PIECES],
    *[(f"vl_checklist::{t}", _one("vl_checklist", t, "acc")) for t in VL_CHECKLIST_TYPES],
    *[(f"whatsup::{s}", _one("whatsup", s, "acc")) for s in WHATSUP_SUBSETS],
    *[(f"winoground::{m}", _one("winoground", "_average", m)) for m in GROUP],
    # clip_benchmark retrieval: text retrieval = image->text (i2t), image retrieval = text->image (t2i)
    *[(f"{column}::{direction}/R@{k}", _one("clip_benchmark", dataset, f"{kind}_retrieval_recall@{k}"))
      for column, dataset in RETRIEVAL for direction, kind in (("i2t", "text"), ("t2i", "image")) for k in RECALL],
    *[(f"elevator::{task}", ()) for task in ELEVATER_TASKS],
])

_micro = lambda prefix, names: ("micro", [f"{prefix}::{n}" for n in names])  # noqa: E731
_mean = lambda prefix, names: ("mean", [f"{prefix}::{n}" for n in names])  # noqa: E731

# summary column -> rule (see the module docstring); the 12 compositionality benchmarks first
SUMMARY_RULES: "OrderedDict[str, Optional[Rule]]" = OrderedDict([
    ("aro", _mean("aro", ("VG_Relation", "VG_Attribute", "Flickr30k_Order", "COCO_Order"))),
    ("colorswap", "colorswap::group"),
    ("crepe", _mean("crepe", ("atom", "swap", "negate"))),
    ("eqben", ("mean", ["eqben::eqbenyoucook2::group", "eqben::eqbengebc::group", "eqben::eqbenag::group",
                        _mean("eqben", [f"eqbenkubric_{k}::group" for k in ("loc", "cnt", "attr")]),
                        "eqben::eqbensd::group"])),
    ("imagecode", _micro("imagecode", ("videos", "static"))),
    ("mmvp_vlm", _mean("mmvp_vlm", [f"{c}::group" for c in MMVP_CATEGORIES])),
    ("sugarcrepe", ("mean", [_micro("sugarcrepe", [s for s in SUGARCREPE_SPLITS if s.startswith(c)])
                             for c in ("replace", "swap", "add")])),
    ("svo_probes", _mean("svo_probes", ("subj_neg", "verb_neg", "obj_neg"))),
    ("valse", ("mean", ["valse::existence", "valse::plurals",
                        _mean("valse", ("counting-hard", "counting-small-quant", "counting-adversarial")),
                        "valse::relations", _mean("valse", ("action-replacement", "actant-swap")),
                        _mean("valse", ("coreference-standard", "coreference-hard")), "valse::foil-it"])),
    ("vl_checklist", ("mean", [_mean("vl_checklist", [t for t in VL_CHECKLIST_TYPES if t.startswith(k)])
                               for k in ("Object", "Attribute", "Relation")])),
    ("whatsup", _mean("whatsup", WHATSUP_SUBSETS)),
    ("winoground", "winoground::group"),
    ("coco_i2t", "coco_karpathy::i2t/R@1"),
    ("coco_t2i", "coco_karpathy::t2i/R@1"),
    ("flickr_i2t", "flickr30k::i2t/R@1"),
    ("flickr_t2i", "flickr30k::t2i/R@1"),
    # clip_benchmark's ImageNet-1k zero-shot top-1 (the study used ELEVATER's; see docs)
    ("imagenet", ("source", (("clip_benchmark", "imagenet1k", "acc1"),
                             ("clip_benchmark", "imagenet1k-unverified", "acc1")))),
    ("21_tasks_avg", None),  # ELEVATER's 21 tasks: not run here
    ("comp_avg", None),  # set below: the mean of the 12 benchmark columns
    ("i2t_avg", ("mean", ["coco_i2t", "flickr_i2t"])),
    ("t2i_avg", ("mean", ["coco_t2i", "flickr_t2i"])),
])
COMPOSITIONALITY = ("aro", "colorswap", "crepe", "eqben", "imagecode", "mmvp_vlm", "sugarcrepe", "svo_probes",
                    "valse", "vl_checklist", "whatsup", "winoground")
SUMMARY_RULES["comp_avg"] = ("mean", list(COMPOSITIONALITY))
FIGURE_COLUMNS = ("imagenet", "21_tasks_avg", "comp_avg") + COMPOSITIONALITY  # read as numbers by read_csv
ID_COLUMNS = ("", "arch", "pretrained", "family")
HEADER = list(ID_COLUMNS) + list(SUMMARY_RULES) + list(SUBSET_COLUMNS)


# ------------------------------------------------------------------------------------------------
# results -> one row

def _lookup(results: Mapping[str, Any], sources: Sequence[Source]) -> Tuple[Optional[float], Optional[int]]:
    """(value in percent, n) of the first available source; (None, None) when none is."""
    for benchmark, subset, metric in sources:
        values = results.get(benchmark, {}).get(subset, {})
        value = values.get(metric) if isinstance(values, Mapping) else None
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return 100.0 * float(value), values.get("n")
    return None, None


class _Row:
    """Evaluates the rules on one results dict, remembering which benchmarks each value misses."""

    def __init__(self, results: Mapping[str, Any]):
        self.results = results
        self.values: Dict[str, Tuple[Optional[float], Optional[int]]] = {}
        self.missing: Dict[str, List[str]] = {}
        for column, sources in SUBSET_COLUMNS.items():
            self.values[column] = _lookup(results, sources)
            self.missing[column] = [] if self.values[column][0] is not None else sorted({s[0] for s in sources})

    def evaluate(self, rule: Rule) -> Tuple[Optional[float], Optional[int], List[str]]:
        """(value, n, missing benchmarks) of ``rule``."""
        if isinstance(rule, str):
            if rule in SUBSET_COLUMNS:
                value, n = self.values[rule]
                return value, n, self.missing[rule]
            return self.evaluate(SUMMARY_RULES[rule])  # a summary column (comp_avg's parts)
        kind, parts = rule
        if kind == "source":
            value, n = _lookup(self.results, parts)
            return value, n, [] if value is not None else sorted({s[0] for s in parts})
        evaluated = [self.evaluate(part) for part in parts]
        missing = sorted({b for _, _, m in evaluated for b in m})
        if missing or not evaluated:
            return None, None, missing
        values = [v for v, _, _ in evaluated]
        if kind == "mean":
            return sum(values) / len(values), None, []
        if kind == "micro":
            counts = [n for _, n, _ in evaluated]
            if any(not n for n in counts):
                raise ValueError(f"a micro average needs each part's item count n: {parts}")
            return sum(v * n for v, n in zip(values, counts)) / sum(counts), sum(counts), []
        raise ValueError(f"unknown rule kind {kind!r}")


def vl_compo_row(results: Mapping[str, Any], arch: str, pretrained: str = "", family: str = "ours",
                 label: str = "") -> Tuple["OrderedDict[str, Any]", Dict[str, List[str]]]:
    """One row in ``HEADER`` order (values in percent, ``""`` where not computed) and, per empty
    summary column with a rule, the benchmarks it misses."""
    row = _Row(results)
    out: "OrderedDict[str, Any]" = OrderedDict([("", label), ("arch", arch), ("pretrained", pretrained),
                                                 ("family", family)])
    missing: Dict[str, List[str]] = {}
    for column, rule in SUMMARY_RULES.items():
        value = None
        if rule is not None:
            value, _, lacking = row.evaluate(rule)
            if value is None:
                missing[column] = lacking
        out[column] = "" if value is None else value
    for column in SUBSET_COLUMNS:
        value = row.values[column][0]
        out[column] = "" if value is None else value
    return out, missing


def describe_missing(missing: Mapping[str, List[str]]) -> List[str]:
    """One line per empty summary column, naming the benchmarks it lacks."""
    return [f"{column}: not computed, missing {', '.join(benchmarks)}" for column, benchmarks in missing.items()
            if benchmarks]


def write_csv(path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows (``HEADER`` keys) to a CSV with ``HEADER`` as its header (written atomically)."""
    import io
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HEADER, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(str(path), buffer.getvalue())


def read_csv(path) -> List[Dict[str, Any]]:
    """Rows of a vl_compo-format CSV (``results.csv``, or rows written here): numbers as floats,
    empty and non-finite cells as None. Needs the ``arch`` column; ValueError naming the file, line
    and column for a figure column (``FIGURE_COLUMNS``) that is not a number, and for a file that is
    not UTF-8 (a leading byte-order mark is fine)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found (or not a file): {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "arch" not in reader.fieldnames:
        raise ValueError(f"{path}: not a vl_compo-format CSV (no 'arch' column; has {reader.fieldnames})")
    rows = []
    for row in reader:
        parsed = {}
        for key, cell in row.items():
            if key in ID_COLUMNS or key is None:
                parsed[key] = cell
                continue
            try:
                value = float(cell) if cell not in ("", None) else None
                parsed[key] = value if value is None or math.isfinite(value) else None
            except ValueError:
                if key in FIGURE_COLUMNS:
                    raise ValueError(f"{path}:{reader.line_num}: column {key!r} must be a number (percent) or "
                                     f"empty, got {cell!r}") from None
                parsed[key] = cell
        rows.append(parsed)
    if not rows:
        raise ValueError(f"{path}: holds no rows")
    return rows


def check_published(rows: Sequence[Mapping[str, Any]], path, x: str = "imagenet") -> None:
    """ValueError naming ``path`` when its rows cannot be the figure's published points: no ``x``
    column or none of the 12 benchmark columns, or no row with both."""
    columns = set().union(*(row.keys() for row in rows))
    if x not in columns:
        raise ValueError(f"{path}: no {x!r} column (the vl_compo study's results.csv has one; its "
                         f"individual_results.csv does not)")
    present = [c for c in COMPOSITIONALITY if c in columns]
    if not present:
        raise ValueError(f"{path}: none of the benchmark columns {', '.join(COMPOSITIONALITY)}")
    if not any(row.get(x) is not None and any(row.get(c) is not None for c in present) for row in rows):
        raise ValueError(f"{path}: no row has both {x!r} and a benchmark value")


# ------------------------------------------------------------------------------------------------
# the comparison figure

def comparison_axis(ours: Sequence[Mapping[str, Any]], x: str = "imagenet") -> List[str]:
    """The compositionality columns every row of ``ours`` has (all 12: ``comp_avg``); ValueError
    when a row lacks ``x`` or has none of them."""
    for row in ours:
        if row.get(x) in (None, ""):
            raise ValueError(f"{row.get('arch')} {row.get('pretrained')}: no {x!r} value (run clip_benchmark's "
                             f"imagenet1k with --clip-benchmark-root / --clip-benchmark-datasets)")
    shared = [c for c in COMPOSITIONALITY if all(row.get(c) not in (None, "") for row in ours)]
    if not shared:
        raise ValueError("the marked rows share none of the 12 compositionality benchmarks: "
                         + ", ".join(COMPOSITIONALITY))
    return shared


def compare_figure(published: Sequence[Mapping[str, Any]], ours: Sequence[Mapping[str, Any]], path,
                   x: str = "imagenet", title: Optional[str] = None):
    """Scatter of the compositionality average (y) against ``x`` (ImageNet zero-shot top-1), the
    ``published`` rows coloured by family and the ``ours`` rows marked and labelled. Returns the
    matplotlib Figure (saved to ``path``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    columns = comparison_axis(ours, x)
    lacking = [c for c in columns if all(r.get(c) is None for r in published)]
    if lacking:
        _logger.warning("the published rows have no %s: left out of the figure's average", ", ".join(lacking))
        columns = [c for c in columns if c not in lacking]
    y_of = lambda row: sum(row[c] for c in columns) / len(columns)  # noqa: E731
    usable = [r for r in published if r.get(x) is not None and all(r.get(c) is not None for c in columns)]
    if not columns or not usable:
        raise ValueError(f"no published row has {x!r} and any of the benchmarks of this run "
                         f"({', '.join(comparison_axis(ours, x))})")
    figure = Figure(figsize=(7.5, 6))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    families = sorted({str(r.get("family")) for r in usable})
    cmap = __import__("matplotlib").colormaps["tab20"]
    for k, family in enumerate(families):
        rows = [r for r in usable if str(r.get("family")) == family]
        axes.scatter([r[x] for r in rows], [y_of(r) for r in rows], s=22, alpha=0.75, color=cmap(k % 20),
                     label=f"{family} ({len(rows)})", gid=f"published:{family}")
    axes.scatter([r[x] for r in ours], [y_of(r) for r in ours], s=160, marker="*", color="red",
                 edgecolors="black", zorder=5, label="ours", gid="ours")
    for row in ours:
        name = row.get("") or " ".join(str(v) for v in (row.get("arch"), row.get("pretrained")) if v)
        axes.annotate(name, (row[x], y_of(row)), textcoords="offset points", xytext=(6, 6), fontsize=8)
    x_label = {"imagenet": "ImageNet zero-shot top-1 (%)", "21_tasks_avg": "21 classification tasks avg. (%)"}.get(x, x)
    if len(columns) == len(COMPOSITIONALITY):
        y_label = "12 compositional tasks avg. (%) (comp_avg)"
    else:
        names = textwrap.fill(", ".join(columns), width=60)
        y_label = f"compositional avg. over {len(columns)} of 12 tasks (%)\n({names})"
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.grid(True, linestyle="--", alpha=0.5)
    axes.legend(fontsize=7, ncol=2, loc="best")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return figure


# ------------------------------------------------------------------------------------------------
# command line (also used by the eval CLI)

def add_report_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vl_compo report")
    group.add_argument("--csv", type=Path, default=None,
                       help="also write the results as one row in the vl_compo study's CSV format (percent)")
    group.add_argument("--csv-family", default="ours", help="the row's 'family' cell (default: ours)")
    group.add_argument("--run-name", default=None, help="the row's first cell / label in the figure "
                                                        "(default: the checkpoint's file name or the model name)")
    group.add_argument("--compare", type=Path, default=None,
                       help="vl_compo results.csv (or rows in its format) to compare against: needs --figure")
    group.add_argument("--figure", type=Path, default=None,
                       help="with --compare: PNG of the compositionality average vs ImageNet zero-shot")


def check_report_args(args: argparse.Namespace, zeroshot_datasets: Sequence[str] = ()) -> None:
    """Fail before the model is loaded: --compare without --figure (or the reverse), an unreadable
    comparison CSV, or a comparison without an ImageNet zero-shot run (the figure's x-axis)."""
    if (args.compare is None) != (args.figure is None):
        raise ValueError("--compare and --figure go together")
    if args.compare is not None:
        check_published(read_csv(args.compare), args.compare)
        from .zeroshot import absent_files
        imagenet = [d for d in ("imagenet1k", "imagenet1k-unverified") if d in zeroshot_datasets]
        if not imagenet:
            raise ValueError("--compare plots against ImageNet zero-shot top-1: add --clip-benchmark-root DIR "
                             "with imagenet1k (or imagenet1k-unverified) among --clip-benchmark-datasets")
        root = getattr(args, "clip_benchmark_root", None)
        absent = {d: absent_files(root, d) for d in imagenet} if root is not None else {}
        if absent and all(absent.values()):
            raise FileNotFoundError(f"--compare plots against ImageNet zero-shot top-1, but {' / '.join(imagenet)} "
                                    f"is not under {root} (missing "
                                    f"{'; '.join(', '.join(files) for files in absent.values())})")


def write_report(args: argparse.Namespace, results: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The eval CLI's ``--csv`` / ``--compare --figure`` outputs for ``results`` of one model."""
    if args.csv is None and args.compare is None:
        return None
    pretrained = Path(args.pretrained).name if args.pretrained else ""
    label = args.run_name or (Path(args.pretrained).stem if args.pretrained else args.model)
    row, missing = vl_compo_row(results, args.model, pretrained, args.csv_family, label)
    for line in describe_missing({k: v for k, v in missing.items() if k in ("comp_avg", "imagenet")}):
        _logger.warning("vl_compo row: %s", line)
    if args.csv is not None:
        write_csv(args.csv, [row])
        print(f"vl_compo-format row written to {args.csv}")
    if args.compare is not None:
        ours = [{k: (None if v == "" else v) for k, v in row.items()}]
        compare_figure(read_csv(args.compare), ours, args.figure)
        print(f"comparison figure written to {args.figure}")
    return row


def check_figure_path(path) -> None:
    """ValueError unless ``path`` names a file with a type matplotlib writes (without a suffix
    ``savefig`` would write ``<path>.png`` instead)."""
    from matplotlib.backend_bases import FigureCanvasBase
    path = Path(path)
    kinds = FigureCanvasBase.get_supported_filetypes()
    if path.is_dir():
        raise ValueError(f"--figure {path} is a folder; give a file path")
    if path.suffix.lower().lstrip(".") not in kinds:
        raise ValueError(f"--figure {path}: name the file with a type suffix, one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m open_clip_c2lip.eval.report",
                                     description="Place vl_compo-format rows among the published checkpoints.")
    parser.add_argument("--ours", type=Path, nargs="+", required=True, help="CSVs written with the eval CLI's --csv")
    parser.add_argument("--compare", type=Path, required=True, help="the vl_compo study's results.csv")
    parser.add_argument("--figure", type=Path, required=True, help="output PNG")
    parser.add_argument("--x", default="imagenet", choices=["imagenet", "21_tasks_avg"])
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    check_figure_path(args.figure)
    published = read_csv(args.compare)
    check_published(published, args.compare, args.x)
    ours = [row for path in args.ours for row in read_csv(path)]
    compare_figure(published, ours, args.figure, x=args.x, title=args.title)
    print(f"comparison figure written to {args.figure}")


if __name__ == "__main__":
    import sys

    from ..cli_errors import run
    run(main, sys.argv[1:])
