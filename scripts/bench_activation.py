"""Measure the startup cost of the ``open_clip_c2lip.pth`` activation in a process that never
imports open_clip, and write the table to ``benchmarks/activation.md``.

Runs ``python -X importtime -c pass`` REPEATS times with the plugin enabled and reads the
cumulative import time of ``open_clip_c2lip`` (package + ``_bootstrap``; min and median over
runs: the min is the cost without interference from other load); also
the median wall time of ``python -c pass`` enabled vs ``OPEN_CLIP_C2LIP_DISABLE=1`` and the modules
the activation adds to ``sys.modules``. Needs an environment where the plugin is installed
(``pip install .`` or ``pip install -e .``).

    python scripts/bench_activation.py [--python LABEL=PYTHON ...] [--repeats 30] [--out FILE]
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
_MODULES = "import sys, json; print(json.dumps(sorted(sys.modules)))"


def _env(disabled: bool) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPEN_CLIP_C2LIP_DISABLE"}
    if disabled:
        env["OPEN_CLIP_C2LIP_DISABLE"] = "1"
    return env


def importtime_us(python: str) -> Dict[str, int]:
    """Cumulative microseconds of each top-level import at startup (``-X importtime -c pass``)."""
    stderr = subprocess.run([python, "-X", "importtime", "-c", "pass"], env=_env(False),
                            capture_output=True, text=True, check=True).stderr
    outermost = {}  # name -> (indent, cumulative): a module's outermost entry includes its children
    for _self_us, cumulative_us, indent, name in _IMPORTTIME.findall(stderr):
        if name not in outermost or len(indent) < outermost[name][0]:
            outermost[name] = (len(indent), int(cumulative_us))
    return {name: cumulative for name, (_indent, cumulative) in outermost.items()}


def wall_ms(python: str, disabled: bool) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=_env(disabled), check=True)
    return (time.perf_counter() - start) * 1e3


def added_modules(python: str) -> List[str]:
    def modules(disabled: bool) -> set:
        out = subprocess.run([python, "-c", _MODULES], env=_env(disabled), capture_output=True,
                             text=True, check=True).stdout
        return set(json.loads(out))

    return sorted(modules(False) - modules(True))


def measure(python: str, repeats: int) -> Dict[str, str]:
    """One column of the table for the environment of ``python``."""
    runs = [importtime_us(python) for _ in range(repeats)]
    if "open_clip_c2lip" not in runs[0]:
        raise SystemExit(f"{python}: open_clip_c2lip is not imported at startup; is the plugin installed?")
    ours = [run["open_clip_c2lip"] / 1e3 for run in runs]
    editable = [name for name in runs[0] if name.startswith("__editable__") and "open_clip_c2lip" in name]
    enabled, disabled = [], []
    for _ in range(repeats):  # interleaved so load drift hits both alike
        enabled.append(wall_ms(python, False))
        disabled.append(wall_ms(python, True))
    return {
        "`open_clip_c2lip` import at startup (`-X importtime` cumulative), min / median":
            f"{min(ours):.2f} / {statistics.median(ours):.2f} ms",
        "setuptools' editable finder import (not ours), min":
            f"{min(sum(run.get(n, 0) for n in editable) for run in runs) / 1e3:.2f} ms" if editable else "-",
        "`python -c pass` wall, enabled / `OPEN_CLIP_C2LIP_DISABLE=1` (medians)":
            f"{statistics.median(enabled):.1f} / {statistics.median(disabled):.1f} ms",
        "modules the activation adds to `sys.modules`": ", ".join(f"`{m}`" for m in added_modules(python)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", metavar="LABEL=PYTHON",
                        help="environment(s) to measure (repeatable); default: this interpreter")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "activation.md")
    args = parser.parse_args(argv)

    envs = [item.split("=", 1) if "=" in item else [item, item] for item in args.python or [sys.executable]]
    columns = {label: measure(python, args.repeats) for label, python in envs}
    labels = list(columns)
    rows = "\n".join(f"| {what} | " + " | ".join(columns[label][what] for label in labels) + " |"
                     for what in columns[labels[0]])
    report = (
        "# Activation cost (`open_clip_c2lip.pth`)\n\n"
        f"Machine: 2-core CPU dev box (wall times are noisy under load; the importtime "
        f"min is the cost without interference). Python {platform.python_version()}, "
        f"{args.repeats} runs each. Command: `python scripts/bench_activation.py "
        + " ".join(f"--python '{label}=PYTHON'" for label in labels) + f" --repeats {args.repeats}`.\n\n"
        "| what | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels) + "\n" + rows + "\n\n"
        "Budget: <= 5 ms for the activation in a process that never imports open_clip. The bootstrap\n"
        "imports no third-party module (no torch/open_clip) and not `importlib.abc`; the package\n"
        "`__init__` imports `importlib` only on first access to a lazy attribute.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
