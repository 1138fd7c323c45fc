"""Tests for open_clip_c2lip.hub: cache first, one probe, one clear error (no network: a fake cache
and a client that refuses every connection)."""
import time

import pytest
from huggingface_hub import constants, hf_hub_download

from hub_fixtures import add_cached_repo, hub_cache, refused_hub  # noqa: F401
from open_clip_c2lip import hub


def test_probe_says_why_the_hub_is_out_of_reach(hub_cache, refused_hub, monkeypatch):
    start = time.monotonic()
    reason = hub.unreachable_reason()
    assert reason.startswith(f"{constants.ENDPOINT} does not answer: ") and "Connection refused" in reason
    assert refused_hub == [f"HEAD {constants.ENDPOINT}"]  # one request, no retry
    assert time.monotonic() - start < 5
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.unreachable_reason() == "HF_HUB_OFFLINE is set"
    assert len(refused_hub) == 1  # offline mode asks nothing

    class Answer:
        def __init__(self, status):
            self.status_code = status

    for status, expected in ((200, None), (404, None), (503, f"{constants.ENDPOINT} answers HTTP 503")):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr("huggingface_hub.utils.get_session",
                            lambda status=status: type("S", (), {"head": lambda self, url, timeout: Answer(status)})())
        assert hub.unreachable_reason() == expected


def test_cache_only_is_scoped_and_misses_are_recognized(hub_cache, refused_hub):
    assert constants.HF_HUB_OFFLINE is False
    with pytest.raises(RuntimeError), hub.cache_only():
        assert constants.HF_HUB_OFFLINE is True
        raise RuntimeError("inside")
    assert constants.HF_HUB_OFFLINE is False
    # the real error chain of a file that is not cached, wrapped as open_clip wraps it
    with hub.cache_only():
        try:
            hf_hub_download("c2lip-test/absent", "open_clip_config.json")
        except Exception as e:
            miss = e
    assert refused_hub == []  # cache-only: nothing asked
    try:
        try:
            raise miss
        except Exception:
            raise FileNotFoundError("Failed to download file")  # open_clip: no "from", only __context__
    except FileNotFoundError as wrapped:
        assert hub.is_cache_miss(wrapped)
    looped = OSError("transformers")
    looped.__context__ = OSError("again")
    looped.__context__.__context__ = looped  # chains can loop
    assert not hub.is_cache_miss(looped)
    assert not hub.is_cache_miss(ValueError("another fault"))


def test_is_cached_reads_the_cache_layout(hub_cache):
    add_cached_repo(hub_cache, "org/model", {"open_clip_model.safetensors": b"x"}, absent=["config.json"])
    assert hub.is_cached("org/model", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
    assert not hub.is_cached("org/model", ["open_clip_pytorch_model.bin"])
    assert not hub.is_cached("org/model", ["config.json"])  # known absent is not cached
    assert not hub.is_cached("org/other", ["open_clip_model.safetensors"])


def test_load_uses_the_cache_then_fails_fast_with_one_message(hub_cache, refused_hub, monkeypatch):
    snapshot = add_cached_repo(hub_cache, "org/model", {"weights.bin": b"cached"})

    def fetch(name):
        return lambda: open(hf_hub_download("org/model", name), "rb").read()

    # cached: read without a single request, even though the Hub is not known to be offline
    assert hub.load(fetch("weights.bin"), "the weights", "pass --x") == b"cached"
    assert refused_hub == []
    # not cached, Hub refused: one probe, then the error naming what and what instead
    start = time.monotonic()
    with pytest.raises(hub.HubUnavailableError) as caught:
        hub.load(fetch("other.bin"), "the other file (Hub repo org/model)", "pass --other FILE")
    assert time.monotonic() - start < 5
    assert refused_hub == [f"HEAD {constants.ENDPOINT}"]
    message = str(caught.value)
    assert message == (f"the other file (Hub repo org/model) is not in the local Hugging Face cache ({hub_cache}) and "
                       f"the Hub cannot be reached ({constants.ENDPOINT} does not answer: [Errno 111] Connection "
                       f"refused (test stand-in)); pass --other FILE")
    assert "\n" not in message
    # not cached, Hub answers: the load runs again online (download stood in by a copy)
    monkeypatch.setattr(hub, "unreachable_reason", lambda timeout=None: None)
    calls = []

    def download():
        calls.append(constants.HF_HUB_OFFLINE)
        if constants.HF_HUB_OFFLINE:
            return fetch("late.bin")()
        (snapshot / "late.bin").write_bytes(b"downloaded")
        return b"downloaded"

    assert hub.load(download, "late.bin", "pass --late") == b"downloaded"
    assert calls == [True, False]
    # errors other than a cache miss are not masked
    with pytest.raises(ValueError, match="broken"):
        hub.load(lambda: (_ for _ in ()).throw(ValueError("broken")), "x", "y")


def test_require_lists_every_missing_item(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(hub.HubUnavailableError, match=r"^the tokenizer \(Hub repo a/b\) and the weights \(w of Hub "
                                                      r"repo a/b\) are not in the local Hugging Face cache .* "
                                                      r"\(HF_HUB_OFFLINE is set\); pass X$"):
        hub.require(["the tokenizer (Hub repo a/b)", "the weights (w of Hub repo a/b)"], "pass X")
