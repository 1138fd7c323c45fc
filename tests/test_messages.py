"""Quoting user text in error messages (``open_clip_c2lip.messages``)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest


def test_excerpt():
    from open_clip_c2lip.messages import excerpt
    assert excerpt("a dog") == "'a dog'"
    assert excerpt("x" * 81) == repr("x" * 80) + "… (81 characters)"
    assert excerpt("x" * 80) == repr("x" * 80)
    assert excerpt(None) == "None"


def test_packer_messages_quote_a_short_prefix():
    from open_clip_c2lip import packing
    with pytest.raises(TypeError) as info:
        packing._as_samples([("a dog " * 100_000, ["a dog", 3])])
    assert "(600000 characters)" in str(info.value) and len(str(info.value)) < 300
