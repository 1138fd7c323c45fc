"""The software and hardware a result was measured in, recorded next to every result.

Same seed -> same numbers holds only within one environment: another torch build, BLAS or CPU
instruction set changes floating-point rounding, and a short training run amplifies it. So every
``results.json`` and benchmark table carries :func:`describe` (versions and CPU) with its numbers.
"""
import os
import platform
import sys
from importlib import metadata
from typing import Dict, Optional

# distributions whose versions decide the numbers (import names differ for some: open_clip_torch)
PACKAGES = ("torch", "open_clip_torch", "timm", "numpy", "webdataset", "spacy", "pillow", "open_clip_c2lip")


def package_version(distribution: str) -> Optional[str]:
    """Installed version of ``distribution`` (None if it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe() -> Dict[str, object]:
    """``{"python", "platform", "cpu", "cpu_count", "gpu", "packages": {name: version}, "threads"}``."""
    env: Dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "packages": {name: package_version(name) for name in PACKAGES},
        "threads": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    if "torch" in sys.modules:  # never import torch just to describe the machine
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
        env["torch_threads"] = torch.get_num_threads()
    return env


def markdown(env: Optional[Dict[str, object]] = None) -> str:
    """One line for a report: ``torch 2.14.1, open_clip_torch 3.3.0, ... on <cpu> (N cores)``."""
    env = describe() if env is None else env
    packages = ", ".join(f"{name} {version}" for name, version in env["packages"].items() if version)
    where = env["gpu"] or f"{env['cpu']} ({env['cpu_count']} cores)"
    return f"Python {env['python']}, {packages}; {where}; {env['platform']}"
