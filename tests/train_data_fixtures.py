"""Shared fixtures of the get_data / webdataset tests: tiny shards, open_clip_train args, tokenizer,
and the check of a packed batch.

Imported by ``tests/test_integration_train_data.py`` and ``tests/test_integration_wds.py``.
"""

import pytest
import torch

torch.set_num_threads(1)

import open_clip_train.data as upstream_data
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import image_transform
from open_clip_train.params import parse_args

from tar_fixtures import jpeg

from open_clip_c2lip.integration import runtime
from open_clip_c2lip.integration.train_data import patch_get_data
from open_clip_c2lip.integration.wds import patch_shard_reader
from open_clip_c2lip.layout import unpack_texts
from open_clip_c2lip.packing import concept_spans

CONTEXT_LENGTH = 24
MAX_CONCEPTS = 3

patch_shard_reader(upstream_data)  # the plugin's hooks, for every test module importing this one
patch_get_data(upstream_data)


CAPTIONS = [f"a red dog number {i} next to a blue car near a tree" for i in range(10)] + [
    "two cats sleeping on a sofa", "a man riding a horse on the beach"]


def _concepts_for(index: int):
    return ["a red dog", "a blue car", "a tree", "a red dog"] if index < 10 else None


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory):
    """3 shards x 4 samples: ``concepts`` key, the authors' ``nounphrases`` key, or no json at all."""
    from open_clip_c2lip.fileio.shards import write_shards

    samples = []
    for index, caption in enumerate(CAPTIONS):
        sample = {"jpg": jpeg(index), "txt": caption, "key": f"s{index:03d}"}
        if index < 5:
            sample["json"] = {"concepts": _concepts_for(index), "source": "test"}
        elif index < 10:
            sample["json"] = {"nounphrases": _concepts_for(index)}
        samples.append(sample)  # the last two have no json: concepts extracted on the fly
    directory = tmp_path_factory.mktemp("shards")
    paths = write_shards(samples, str(directory), prefix="train", samples_per_shard=4)
    assert len(paths) == 3
    return str(directory / "train-{000000..000002}.tar")


@pytest.fixture
def c2lip_off():
    runtime.configure(None)
    yield
    runtime.configure(None)


def _args(*argv, c2lip=True):
    flags = list(argv) + ["--batch-size", "4", "--workers", "0", "--model", "C2LIP-Tiny"]
    if c2lip:
        flags += ["--c2lip-loss", "--c2lip-max-concepts", str(MAX_CONCEPTS)]
    args = parse_args(flags)
    # set by open_clip_train.main after distributed init
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def _transforms():
    return image_transform(16, is_train=True), image_transform(16, is_train=False)


def _tokenizer():
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def _caption_of(tokenizer, caption_ids):
    decoded = " ".join(tokenizer.decode([i for i in caption_ids.tolist() if i not in (0, 49406, 49407)]).split())
    matches = [c for c in CAPTIONS + ["dummy caption"] if " ".join(tokenizer.pat.findall(c.lower())) == decoded]
    assert len(matches) == 1, decoded
    return matches[0]


def _check_packed_batch(tokenizer, texts, expected_concepts):
    """Each sample's rows equal an independent rebuild from its caption and expected concepts."""
    assert texts.ndim == 3 and texts.shape[1:] == (1 + 2 * MAX_CONCEPTS, CONTEXT_LENGTH)
    caption_ids, concept_ids, span_masks = unpack_texts(texts)
    seen = []
    for sample in range(texts.shape[0]):
        caption = _caption_of(tokenizer, caption_ids[sample])
        concepts = expected_concepts(caption)[:MAX_CONCEPTS]
        assert torch.equal(caption_ids[sample], tokenizer([caption])[0])
        assert torch.equal(concept_ids[sample, :len(concepts)], tokenizer(concepts))
        assert not concept_ids[sample, len(concepts):].any()
        for slot, span in enumerate(concept_spans(tokenizer, caption, concepts)):
            assert span is not None
            assert span_masks[sample, slot].nonzero().flatten().tolist() == list(range(*span))
        seen.append(caption)
    return seen


def _expected_from_data(caption):
    index = CAPTIONS.index(caption)
    if index < 10:
        return _concepts_for(index)
    from open_clip_c2lip.concepts import extract_concepts
    return extract_concepts([caption])[0]
