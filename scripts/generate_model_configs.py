"""Generate the ``-C2`` twin configs in ``open_clip_c2lip/model_configs/`` from the installed open_clip.

A twin is written for every open_clip config matching ``open_clip_c2lip.registry.is_twin_base``
(name contains "siglip", timm MAP vision head); its content is the base config verbatim. Stale
twins (whose base no longer matches) are removed; own configs (``C2LIP-Tiny``) are left alone.

    python scripts/generate_model_configs.py          # write
    python scripts/generate_model_configs.py --check  # exit 1 if the shipped set is out of date
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

from open_clip_c2lip import registry


def expected_twins(upstream_dir: Path) -> Dict[str, dict]:
    """``{twin_name: config}`` computed from open_clip's bundled configs."""
    upstream = registry.read_model_configs(upstream_dir)
    return {twin: upstream[base] for twin, base in registry.twin_names(upstream).items()}


def diff(out_dir: Path, expected: Dict[str, dict]) -> List[str]:
    """Problems of the shipped twins in ``out_dir`` vs ``expected`` (empty when up to date)."""
    shipped = {p.stem: p for p in out_dir.glob(f"*{registry.C2_SUFFIX}.json")}
    problems = [f"missing {name}.json" for name in sorted(set(expected) - set(shipped))]
    problems += [f"stale {name}.json (no matching base)" for name in sorted(set(shipped) - set(expected))]
    problems += [
        f"{name}.json differs from its base config"
        for name in sorted(set(shipped) & set(expected))
        if json.loads(shipped[name].read_text()) != expected[name]
    ]
    return problems


def write(out_dir: Path, expected: Dict[str, dict]) -> None:
    for path in out_dir.glob(f"*{registry.C2_SUFFIX}.json"):
        if path.stem not in expected:
            path.unlink()
    for name, cfg in expected.items():
        (out_dir / f"{name}.json").write_text(json.dumps(cfg, indent=4) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences; exit 1 if any")
    parser.add_argument("--out", type=Path, default=registry.MODEL_CONFIG_DIR)
    args = parser.parse_args(argv)
    expected = expected_twins(registry.upstream_config_dir())
    problems = diff(args.out, expected)
    if args.check:
        for problem in problems:
            print(problem)
        return 1 if problems else 0
    write(args.out, expected)
    print(f"wrote {len(expected)} twin configs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
