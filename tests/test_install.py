"""Real installs (``pip install .`` and ``pip install -e .``) into throwaway environments: the
activation files land at the purelib root and, in new processes that import nothing of ours,
open_clip lists the C2 names and ``python -m open_clip_train.main --help`` shows the C2LIP group.

Fast and offline: each throwaway env is ``python -m venv --without-pip`` whose site-packages holds a
path line to a *view* of this interpreter's site-packages (symlinks to everything but our own
distribution and .pth files, so only the fresh install can provide ``open_clip_c2lip``), and pip
runs with ``--no-deps --no-build-isolation``.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--c2lip-loss", "--c2lip-npc-weight", "--c2lip-xac-weight", "--c2lip-xac-temperature",
         "--c2lip-concept-mode", "--c2lip-max-concepts", "--c2lip-concepts-key", "--c2lip-spacy-model"]
HEAVY = ("torch", "numpy", "open_clip", "open_clip_train", "timm", "importlib.abc")
STARTUP_PROBE = (
    "import sys, json; import open_clip_c2lip as p; print(json.dumps({'file': p.__file__, "
    "'modules': sorted(sys.modules), "
    "'finder': any(getattr(f, '_open_clip_c2lip_finder', False) for f in sys.meta_path)}))")
LIST_MODELS = "import json, open_clip; print(json.dumps(open_clip.list_models()))"


def _copy_repo(dest: Path) -> Path:
    """The repo's tracked + untracked-not-ignored files (builds must not litter the checkout)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True)
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            if (REPO / rel).is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)
    else:  # not a git checkout
        shutil.copytree(REPO, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", "__pycache__", "logs", ".pytest_cache"))
    return dest


def _base_env_view(dest: Path) -> Path:
    """Symlinks to this interpreter's site-packages minus open_clip_c2lip and every .pth file."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in purelib.iterdir():
        name = entry.name
        if name.startswith(("open_clip_c2lip", "__editable__")) or name.endswith(".pth") or \
                name == "__pycache__":
            continue
        (dest / name).symlink_to(entry)
    return dest


def _make_env(root: Path, view: Path, source: Path, editable: bool) -> dict:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_c2lip_test_base_env.pth").write_text(f"{view}\n")
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
               "--no-build-isolation", "--no-index", "-q"] + (["-e"] if editable else []) + [str(source)]
    result = subprocess.run(command, capture_output=True, text=True, env=_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return {"python": str(python), "purelib": purelib, "source": source}


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPEN_CLIP_C2LIP_DISABLE", "PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _run(env_info, *args, disabled=False):
    """Start ``python *args`` in the env from a neutral cwd; returns the Popen."""
    extra = {"OPEN_CLIP_C2LIP_DISABLE": "1"} if disabled else {}
    return subprocess.Popen([env_info["python"], *args], env=_env(**extra), cwd=env_info["purelib"].parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    view = _base_env_view(tmp / "base_view")
    wheel_src = _copy_repo(tmp / "src_wheel")
    editable_src = _copy_repo(tmp / "src_editable")
    return {
        "wheel": _make_env(tmp / "env_wheel", view, wheel_src, editable=False),
        "editable": _make_env(tmp / "env_editable", view, editable_src, editable=True),
    }


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_activation_files_installed_at_purelib_root(envs, kind):
    env = envs[kind]
    for name in ("open_clip_c2lip.pth", "open_clip_c2lip.start"):
        assert (env["purelib"] / name).read_text() == (REPO / "patches" / name).read_text()


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_startup_installs_finder_without_heavy_imports(envs, kind):
    env = envs[kind]
    probe = json.loads(_wait(_run(env, "-c", STARTUP_PROBE)))
    expected_root = env["purelib"] if kind == "wheel" else env["source"]
    assert Path(probe["file"]).resolve().is_relative_to(expected_root.resolve())
    assert probe["finder"]
    heavy = [m for m in probe["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert heavy == []


def test_disabled_env_var_skips_activation(envs):
    code = "import sys; print(any(m.startswith('open_clip_c2lip') for m in sys.modules))"
    assert _wait(_run(envs["wheel"], "-c", code, disabled=True)).split() == ["False"]


@pytest.mark.slow
def test_new_processes_see_c2_names_and_flags(envs):
    twins = sorted(p.stem for p in (REPO / "open_clip_c2lip" / "model_configs").glob("*-C2.json"))
    # started together: the torch/open_clip imports dominate and overlap on 2 cores. The model
    # registration is the same code in both install kinds once activated, so it is checked once.
    procs = {kind: _run(env, "-m", "open_clip_train.main", "--help") for kind, env in envs.items()}
    models_proc = _run(envs["wheel"], "-c", LIST_MODELS)
    for kind, proc in procs.items():
        help_text = _wait(proc)
        group = help_text[help_text.index("\nC2LIP:\n"):]
        assert all(flag in group for flag in FLAGS), kind
    models = set(json.loads(_wait(models_proc).splitlines()[-1]))
    assert {"ViT-B-16-SigLIP-C2", "C2LIP-Tiny", *twins} <= models
