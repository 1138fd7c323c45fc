"""The README's Python example runs as printed, and every relative link of the README and docs/
points at a file of the repository (so neither can rot unnoticed)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
# markdown inline links and images: [text](target) / ![alt](target), target without spaces
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
QUICK_START = ('pip install ".[spacy-model]" && python -m open_clip_c2lip.demo',
               'pip install ".[test]" && python -m pytest -q')


def anchors(path: Path):
    """GitHub's heading anchors of a markdown file: lower case, punctuation dropped, spaces -> '-'."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def code_blocks(text: str, language: str):
    return [body for lang, body in FENCE.findall(text) if lang == language]


def relative_links(path: Path):
    """(line number, target) of every link that is not a URL or an in-page anchor."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
                continue
            yield number, target


def test_readme_python_example_runs(tmp_path):
    blocks = code_blocks(README.read_text(encoding="utf-8"), "python")
    assert len(blocks) == 1, "the README has exactly one Python example"
    example = blocks[0]
    assert 8 <= len(example.strip().splitlines()) <= 15, "about ten lines"
    # the last line prints the loss terms; read them back to check what the example computed
    script = tmp_path / "example.py"
    script.write_text(example + "\nimport json as _j\nprint('TERMS', _j.dumps({k: v.item() for k, v in terms.items()}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OPEN_CLIP_C2LIP_DISABLE", None)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    terms = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("TERMS "))[6:])
    assert set(terms) == {"contrastive_loss", "npc_loss", "xac_loss"}
    assert all(value > 0 and value < float("inf") for value in terms.values()), terms


def test_readme_quick_start_has_the_two_commands():
    blocks = code_blocks(README.read_text(encoding="utf-8"), "bash")
    quick = next(b for b in blocks if "open_clip_c2lip.demo" in b)
    commands = [line.split("#")[0].strip() for line in quick.splitlines() if line.strip()]
    assert commands == list(QUICK_START)


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_files(path):
    missing = []
    for number, target in relative_links(path):
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve()
        if not linked.exists():
            missing.append(f"{path.relative_to(REPO)}:{number}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            missing.append(f"{path.relative_to(REPO)}:{number}: {target} (no such heading)")
    assert not missing, "links to nothing:\n" + "\n".join(missing)


def test_docs_exist_and_are_linked_from_the_index():
    index = REPO / "docs" / "README.md"
    linked = {(index.parent / target.split("#")[0]).resolve() for _, target in relative_links(index)}
    assert len(DOCS) >= 9
    assert {p.resolve() for p in DOCS if p != index} <= linked, "every docs/ page is in docs/README.md"


@pytest.mark.parametrize("path", [README, *DOCS, *sorted((REPO / "benchmarks").glob("*.md"))],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_outside_the_repository(path):
    """A clone holds no design notes beside it: the docs must not send the reader there."""
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared", "/work/shared", "METHOD.md", "DEMO_NOTES", "OPEN_CLIP_INTEGRATION.md",
                    "design README", "design/"):
        assert outside not in text, f"{path.relative_to(REPO)} points at {outside!r}"


PARSE = """
import json, sys
import open_clip_c2lip  # activates the hooks also where the .pth is absent
from open_clip_train.params import parse_args
args = parse_args(sys.argv[1:])
print("ARGS " + json.dumps({k: getattr(args, k) for k in ("model", "c2lip_loss", "siglip", "batch_size", "precision")}))
"""


def training_commands():
    """(file, argv) of every documented ``open_clip_train.main`` / ``open_clip_c2lip.train`` command."""
    import shlex

    for path in (README, REPO / "docs" / "training.md"):
        for block in code_blocks(path.read_text(encoding="utf-8"), "bash"):
            for command in block.replace("\\\n", " ").splitlines():
                if "open_clip_train.main" in command or "-m open_clip_c2lip.train" in command:
                    words = shlex.split(command, comments=True)
                    module = next(i for i, w in enumerate(words) if w in ("open_clip_train.main", "open_clip_c2lip.train"))
                    argv = words[module + 1:]
                    yield path.name, argv[1:] if argv[:1] == ["--"] else argv


@pytest.mark.slow
@pytest.mark.parametrize("where, argv", list(training_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_training_commands_parse(where, argv):
    """Every documented training command is accepted by open_clip_train's parser with the plugin."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPEN_CLIP_C2LIP_DISABLE", None)
    result = subprocess.run([sys.executable, "-c", PARSE, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{where}: {result.stderr[-2000:]}"
    parsed = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("ARGS "))[5:])
    assert parsed["c2lip_loss"] and parsed["siglip"] and parsed["model"] == "ViT-B-16-SigLIP-C2", parsed
