"""The stdlib-only activation: post-import finder, idempotency, env gate, the .pth/.start files."""
import ast
import importlib
import inspect
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import open_clip_c2lip  # noqa: F401  (installs the hooks in this process)
from open_clip_c2lip import _bootstrap

REPO = Path(__file__).resolve().parents[1]
PATCHES = REPO / "patches"
HEAVY = ("torch", "numpy", "open_clip", "open_clip_train", "timm", "importlib.abc", "logging")


def _subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != _bootstrap.DISABLE_ENV}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def test_bootstrap_source_imports_only_stdlib():
    tree = ast.parse(Path(_bootstrap.__file__).read_text())
    top_level = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            top_level.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top_level.add(node.module)
    assert top_level <= set(sys.stdlib_module_names), top_level
    assert not any(name.startswith("importlib") for name in top_level)


def test_package_import_adds_no_heavy_module():
    # -S: no site processing, so nothing of an installed .pth runs before we measure
    code = ("import sys; before = set(sys.modules); import open_clip_c2lip; "
            "from open_clip_c2lip import _bootstrap; _bootstrap.install(force=True); "
            "import json; print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=_subprocess_env(),
                         capture_output=True, text=True, check=True).stdout
    added = json.loads(out.splitlines()[-1])
    ours = [m for m in added if m.startswith("open_clip_c2lip")]
    assert ours == ["open_clip_c2lip", "open_clip_c2lip._bootstrap"]
    others = [m for m in added if not m.startswith("open_clip_c2lip")]
    assert all(m.split(".")[0] in sys.stdlib_module_names for m in others), others
    assert not any(m == h or m.startswith(h + ".") for m in added for h in HEAVY), added


@pytest.mark.parametrize("value, active", [(None, True), ("", True), ("0", True), ("false", True),
                                           ("1", False), ("yes", False), ("TRUE", False)])
def test_pth_line_is_gated_by_env(tmp_path, value, active):
    (tmp_path / "open_clip_c2lip.pth").write_text((PATCHES / "open_clip_c2lip.pth").read_text())
    code = (f"import site, sys; site.addsitedir({str(tmp_path)!r}); "
            "print('open_clip_c2lip._bootstrap' in sys.modules, "
            "any(getattr(f, '_open_clip_c2lip_finder', False) for f in sys.meta_path))")
    extra = {} if value is None else {_bootstrap.DISABLE_ENV: value}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=_subprocess_env(**extra),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(active), str(active)], out.stderr


def test_pth_is_one_import_line_and_start_names_install():
    pth_lines = (PATCHES / "open_clip_c2lip.pth").read_text().splitlines()
    assert len(pth_lines) == 1 and pth_lines[0].startswith("import ")  # site only execs 'import' lines
    entry = (PATCHES / "open_clip_c2lip.start").read_text().strip()
    module_name, attr = entry.split(":")
    assert getattr(importlib.import_module(module_name), attr) is _bootstrap.install


@pytest.mark.parametrize("value, expected", [(None, False), ("0", False), (" no ", False), ("1", True),
                                             ("on", True)])
def test_disabled_reads_env(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(_bootstrap.DISABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(_bootstrap.DISABLE_ENV, value)
    assert _bootstrap.disabled() is expected


def _our_finders():
    return [f for f in sys.meta_path if getattr(f, "_open_clip_c2lip_finder", False)]


def test_install_is_idempotent_and_respects_disable(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if f not in _our_finders()])
    monkeypatch.setenv(_bootstrap.DISABLE_ENV, "1")
    assert _bootstrap.install() is False and not _our_finders()
    assert _bootstrap.install(force=True) is True
    monkeypatch.delenv(_bootstrap.DISABLE_ENV)
    assert _bootstrap.install() is True and _bootstrap.install() is True
    assert len(_our_finders()) == 1 and sys.meta_path[0] is _our_finders()[0]


def test_every_hook_is_a_function_of_the_integration_package():
    assert set(_bootstrap.HOOKS) == {"open_clip", "open_clip_train.params", "open_clip_train.data",
                                     "open_clip_train.train"}
    for patches in _bootstrap.HOOKS.values():
        for patch in patches:
            module, _, function = patch.partition(":")
            assert module.startswith("open_clip_c2lip.integration."), patch
            assert callable(getattr(importlib.import_module(module), function)), patch


@pytest.fixture
def fake_hooked_module(tmp_path, monkeypatch):
    """A module ``c2lip_fake_<n>`` on sys.path registered in HOOKS with a recording hook, the function
    ``fake_hook`` of the module ``c2lip_fake_<n>_patches`` (yielded third)."""
    name = f"c2lip_fake_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("VALUE = 41\n\ndef answer():\n    return VALUE + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    calls = []

    def fake_hook(module):
        calls.append((module, module.VALUE))  # module body has executed when the hook runs
        module.VALUE += 1

    patches = types.ModuleType(f"{name}_patches")
    patches.fake_hook = fake_hook
    monkeypatch.setitem(sys.modules, patches.__name__, patches)
    monkeypatch.setitem(_bootstrap.HOOKS, name, (f"{patches.__name__}:fake_hook",))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name, calls, patches
    sys.modules.pop(name, None)


def test_finder_runs_hook_once_after_exec(fake_hooked_module):
    name, calls, _ = fake_hooked_module
    _bootstrap.install()
    module = importlib.import_module(name)
    assert calls == [(module, 41)] and module.VALUE == 42
    # the module looks exactly like upstream's: real loader, source available
    assert type(module.__loader__).__name__ == "SourceFileLoader"
    assert module.__spec__.loader is module.__loader__
    assert "return VALUE + 1" in inspect.getsource(module.answer)
    importlib.import_module(name)
    _bootstrap.install()
    assert len(calls) == 1
    # a reload re-executes the body (undoing the patch), so the hook runs again
    assert importlib.reload(module) is module
    assert calls[1] == (module, 41) and module.VALUE == 42


def test_install_hooks_already_imported_module(fake_hooked_module, monkeypatch):
    name, calls, _ = fake_hooked_module
    hooked = dict(_bootstrap.HOOKS)
    monkeypatch.delitem(_bootstrap.HOOKS, name)
    module = importlib.import_module(name)  # imported while not hooked
    assert calls == []
    monkeypatch.setattr(_bootstrap, "HOOKS", hooked)
    _bootstrap.install()
    assert calls == [(module, 41)]


def test_failing_hook_warns_and_import_still_works(fake_hooked_module, monkeypatch, caplog):
    name, _, patches = fake_hooked_module

    def broken_hook(module):
        raise RuntimeError("boom")

    monkeypatch.setattr(patches, "fake_hook", broken_hook)
    _bootstrap.install()
    with caplog.at_level(logging.WARNING, logger=_bootstrap.__name__):
        module = importlib.import_module(name)
    assert module.answer() == 42
    assert any(name in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
