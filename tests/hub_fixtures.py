"""Local stand-ins for the Hugging Face Hub in tests (no test reaches the network).

- ``hub_cache``: an empty Hugging Face cache in ``tmp_path`` (``HF_HUB_CACHE`` for huggingface_hub,
  transformers and open_clip), filled with :func:`add_cached_repo` in the layout huggingface_hub
  writes (``models--org--name/{refs/main, snapshots/<commit>/, .no_exist/<commit>/}``).
- ``refused_hub``: huggingface_hub's real HTTP client with a transport that refuses every
  connection (``httpx2.ConnectError``, the error a machine without network gets) and records the
  URLs asked, so a test can say how many requests were made.
- ``tiny_hf_tokenizer``: a small HF fast tokenizer built offline with ``tokenizers``.

Imported by tests that need them (pytest puts ``tests/`` on ``sys.path``).
"""
import json
from pathlib import Path
from typing import Iterable, List, Mapping

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "open_clip_c2lip" / "model_configs" / "C2LIP-Tiny.json"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WORDS = ("a", "photo", "of", "dog", "two", "red", "apples", "on", "wooden", "table", "cat", "sofa")


def add_cached_repo(cache: Path, repo_id: str, files: Mapping[str, bytes] = None, folder: Path = None,
                    absent: Iterable[str] = ()) -> Path:
    """Put ``files`` (name -> bytes) and/or the files of ``folder`` into ``cache`` as the cached
    ``main`` of the model repo ``repo_id``; ``absent`` names files the Hub answered 404 for
    (huggingface_hub's ``.no_exist`` markers). Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in (files or {}).items():
        (snapshot / name).write_bytes(data)
    if folder is not None:
        for path in Path(folder).iterdir():
            (snapshot / path.name).write_bytes(path.read_bytes())
    for name in absent:
        (repo / ".no_exist" / COMMIT).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / COMMIT / name).touch()
    return snapshot


def tiny_hf_tokenizer(folder: Path) -> Path:
    """A WordLevel HF fast tokenizer (``</s>`` appended) saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    fast.save_pretrained(folder)
    return Path(folder)


def hub_tokenizer_config(folder: Path, name: str, repo_id: str) -> str:
    """Register model config ``name``: C2LIP-Tiny whose tokenizer is the Hub repo ``repo_id``."""
    import open_clip
    config = json.loads(TINY_CONFIG.read_text())
    config["text_cfg"].update(vocab_size=len(WORDS) + 3, hf_tokenizer_name=repo_id)
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def refused_hub(monkeypatch) -> List[str]:
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils import _http
    asked: List[str] = []

    def refuse(request):
        asked.append(f"{request.method} {request.url}")
        raise httpx2.ConnectError("[Errno 111] Connection refused (test stand-in)", request=request)

    huggingface_hub.set_client_factory(lambda: httpx2.Client(
        transport=httpx2.MockTransport(refuse), event_hooks={"request": [_http.hf_request_event_hook]}))
    yield asked
    huggingface_hub.set_client_factory(_http.default_client_factory)
