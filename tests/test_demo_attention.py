"""open_clip_c2lip.demo.attention: the patches of an object's cell and the attention mass on them."""
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from open_clip_c2lip.demo import evalsets
from open_clip_c2lip.demo.world import Obj, WorldSpec, held_out_pairs

torch.set_num_threads(1)
SPEC = WorldSpec()


def test_object_patches_cover_the_cell():
    from open_clip_c2lip.demo.attention import object_patches
    assert object_patches(0, 2, 4, 4, 64) == [0, 1, 4, 5]
    assert object_patches(3, 2, 4, 4, 64) == [10, 11, 14, 15]
    assert object_patches(5, 4, 4, 4, 64) == [5]
    cells = [object_patches(c, 2, 4, 4, 64) for c in range(4)]
    assert sorted(p for c in cells for p in c) == list(range(16))  # a partition of the patches


def test_attention_mass_counts_the_named_object(tmp_path, monkeypatch):
    from open_clip_c2lip import viz
    from open_clip_c2lip.demo import attention
    spec = SPEC
    counts = evalsets.write_eval_sets(str(tmp_path), spec, 6, seed=0)
    items = json.loads((tmp_path / "retrieval.json").read_text())
    # the fake below knows each phrase's cell in the first image only, so measure that one (limit=1)
    cell_of = {Obj(o["shape"], o["colour"], o["cell"]).phrase: o["cell"] for o in items[0]["objects"]}

    def fake_maps(model, image, concepts, tokenizer, temperature=1.0):
        maps = torch.zeros(len(concepts), 4, 4)
        for index, concept in enumerate(concepts):  # all mass on the first patch of the object's cell
            first = attention.object_patches(cell_of[concept], spec.grid, 4, 4, spec.image_size)[0]
            maps[index].view(-1)[first] = 1.0
        return maps

    monkeypatch.setattr(viz, "concept_attention_maps", fake_maps)
    preprocess = lambda image: torch.zeros(3, 64, 64)
    result = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size,
                                      limit=1)
    n = len(items[0]["objects"])
    assert result == pytest.approx({"mass": 1.0, "uniform": 0.25, "ratio": 4.0, "top1": 1.0, "n": n})
    monkeypatch.setattr(viz, "concept_attention_maps",
                        lambda model, image, concepts, tokenizer, temperature=1.0: torch.full((len(concepts), 4, 4), 1 / 16))
    uniform = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size)
    assert uniform["ratio"] == pytest.approx(1.0) and uniform["n"] == sum(len(i["objects"]) for i in items)
    some = next(iter(held_out_pairs(spec, 0)))
    only = attention.attention_mass(torch.nn.Linear(1, 1), preprocess, None, tmp_path, spec.grid, spec.image_size,
                                    only_pairs=[some])
    assert only["n"] == sum((o["colour"], o["shape"]) == some for i in items for o in i["objects"])
    assert counts["retrieval"] == 6
