"""Vary the xac temperature and weight on VALIDATION worlds: does C2LIP need them?

Each ``--grid T:W`` point becomes a demo variant ``xac_t{T}_w{W}``: the text-mode ``c2lip`` variant
with ``--c2lip-xac-temperature T --c2lip-xac-weight W`` (npc weight and everything else unchanged).
The demo (``python -m open_clip_c2lip.demo``, same world, budget and report) then trains SigLIP,
the default ``c2lip`` (temperature 1, weight 0.01) and every grid point on each world and training
seed. The pre-registered study's worlds are refused: settings are chosen on validation worlds only.

Writes the demo's outputs under ``--output-dir`` and ``sweep.md``: the demo's report and the paired
difference over worlds of every grid point to the default ``c2lip``.

``python scripts/demo_sweep.py --seeds 300 301 --grid 1:0.1 1:1 5:0.1 --output-dir /tmp/demo_sweep``
"""
import argparse
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple


def grid_point(text: str) -> Tuple[float, float]:
    try:
        temperature, weight = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid point {text!r} is not TEMPERATURE:WEIGHT, e.g. 5:0.1")
    return temperature, weight


def register(points: Sequence[Tuple[float, float]]) -> List[str]:
    """Add one demo variant per grid point; returns their names."""
    from open_clip_c2lip.demo.variants import VARIANTS, Variant, _c2lip

    names = []
    for temperature, weight in points:
        name = f"xac_t{temperature:g}_w{weight:g}"
        VARIANTS[name] = Variant(
            f"c2lip with --c2lip-xac-temperature {temperature:g} --c2lip-xac-weight {weight:g}",
            lambda s, t=temperature, w=weight: _c2lip(dataclasses.replace(s, xac_temperature=t, xac_weight=w)))
        names.append(name)
    return names


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", nargs="+", type=grid_point, required=True, metavar="T:W",
                        help="xac temperature:weight points, e.g. 1:0.1 5:0.1")
    own, rest = parser.parse_known_args(argv)
    if "--variants" in rest or "--runs" in rest:
        parser.error("the variants are siglip, c2lip and the grid points")
    from open_clip_c2lip.demo import cli, preregistration
    from open_clip_c2lip.demo.analysis import metric_names, summarize
    from open_clip_c2lip.demo.report import comparison_table, is_shown, ordered_metrics

    names = register(own.grid)
    args = cli.parse_args(rest)
    if set(args.seeds) & set(preregistration.STUDY_WORLDS) or len(args.seeds) < 2:
        parser.error(f"--seeds: two or more validation worlds, none of {preregistration.STUDY_WORLDS} (the study's)")
    results = cli.main(list(rest) + ["--variants", "siglip", "c2lip", *names])
    worlds = results["worlds"]
    summary = summarize(worlds, ["c2lip", *names], args.train_seeds, comparisons=[(n, "c2lip") for n in names])
    metrics = ordered_metrics([m for m in metric_names(worlds) if is_shown(m)])
    text = (f"# xac sweep on validation worlds {list(worlds)}\n\n`python scripts/demo_sweep.py "
            f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
            f"{(Path(args.output_dir) / 'results.md').read_text()}\n\n"
            f"## Paired difference to the default c2lip (xac temperature 1, weight 0.01)\n\n"
            f"{comparison_table(summary, metrics)}\n")
    out = Path(args.output_dir) / "sweep.md"
    out.write_text(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
