"""Tests for open_clip_c2lip.eval.imagecode against an independent reference of the official zero-shot
protocol, on real ImageCoDe descriptions (read from the shared data folder) with stand-in images."""
import json
import re

import pytest

from eval_fixtures import (Comparisons, Reference, Scripted, assert_results_equal, c2eval, data_root,  # noqa: F401
                           id_image, scored, shared_data, stub, write_json)


def reference_imagecode(ref: Reference, root, cmp: Comparisons):
    data = json.loads((root / "imagecode" / "valid_data.json").read_text())
    outcomes = {"static": [], "videos": []}
    ties = {"static": 0, "videos": 0}
    for set_name, descriptions in data.items():
        files = list((root / "imagecode" / "image-sets" / set_name).iterdir())
        files.sort(key=lambda p: int(re.sub(r"\D", "", p.name)))  # by frame number
        vectors = [ref.image(p) for p in files]
        subset = "static" if "open-images" in set_name else "videos"
        for index, text in descriptions.items():
            t = ref.text(text.strip())
            scores = [float(v @ t) for v in vectors]
            target = int(index)
            outcomes[subset].append(cmp.first_best(scores) == target)
            ties[subset] += scores[target] == max(s for k, s in enumerate(scores) if k != target)
    results = {s: {"acc": sum(o) / len(o), "n": len(o), "ties": ties[s]} for s, o in outcomes.items()}
    everything = outcomes["static"] + outcomes["videos"]
    results["_average"] = {"acc": sum(everything) / len(everything), "n": len(everything),
                           "ties": sum(ties.values())}
    return results


def test_imagecode_matches_independent_reference(stub, data_root):
    model, preprocess, tokenizer = stub
    results, records = c2eval.evaluate(model, preprocess, tokenizer, ["imagecode"], data_root, batch_size=7,
                                       progress=False, return_scores=True)
    cmp = Comparisons()
    want = {"imagecode": reference_imagecode(Reference(model, preprocess, tokenizer), data_root, cmp)}
    cmp.assert_clear()
    assert_results_equal(results, want)
    assert len(records) == results["imagecode"]["_average"]["n"] > 4
    assert all(len(r["scores"]) == 10 for r in records)


def _write_set(root, name, frames, first_id):
    for k, frame in enumerate(frames):
        id_image(root / "imagecode" / "image-sets" / name / f"img{frame}.jpg", first_id + k)


def test_target_is_a_position_in_frame_order_and_ties_go_to_the_first_frame(tmp_path):
    """Ten frames 2, 10, 33, ... (file-name order 10, 120, 2, 33, ...); image scores scripted per
    description text: "a" scores frame 10 highest, "b" ties frames 2 and 10, "c" ties frames 10 and 33."""
    video = "MSR-VTT-videoTestVideo_video7047-shot1_0"
    static = "open-images-1815_f91d6f546e63f20d"
    _write_set(tmp_path, video, (2, 10, 33, 47, 58, 61, 70, 85, 91, 120), 0)
    _write_set(tmp_path, static, range(10), 10)
    # images 0..2 (video frames 2, 10, 33) and 10..12 (static img0..2), each a direction in 5-d; the
    # other seven of each set lie along the 5th axis, which no text has (score 0); texts are mixtures
    # of those directions, so their score for each image is set here
    e = [[float(i == k) for i in range(5)] for k in range(5)]
    images = [e[0], e[1], e[2]] + [e[4]] * 7 + [e[0], e[1], e[3]] + [e[4]] * 7
    texts = {"a": [0.1, 0.9, 0.2, 0, 0], "b": [0.5, 0.5, 0.1, 0, 0], "c": [0.1, 0.5, 0.5, 0, 0],
             "d": [0.1, 0.2, 0, 0.9, 0]}
    write_json(tmp_path / "imagecode" / "valid_data.json", {
        video: {"1": "a ", "0": "b", "2": "c"},  # target = position in frame order; descriptions are stripped
        static: {"2": "d", "1": " b\n"},
    })
    results = Scripted(images, texts).evaluate(["imagecode"], tmp_path)["imagecode"]
    # video: "a" -> frame 10 (position 1) right; "b" ties positions 0 and 1, the first (0) wins: right;
    # "c" ties positions 1 and 2, position 1 wins, target 2: wrong. static: "d" -> img2 right;
    # "b" ties img0 and img1, target 1: wrong
    assert results["videos"] == {"acc": pytest.approx(2 / 3), "n": 3, "ties": 2}
    assert results["static"] == {"acc": pytest.approx(1 / 2), "n": 2, "ties": 1}
    assert results["_average"] == {"acc": pytest.approx(3 / 5), "n": 5, "ties": 3}


def test_bad_sets_are_named_errors(tmp_path):
    name = "open-images-1_x"
    _write_set(tmp_path, name, range(10), 0)
    scripted = Scripted([scored(0.05 * k) for k in range(10)], {"t": [1.0, 0.0]})
    write_json(tmp_path / "imagecode" / "valid_data.json", {name: {"10": "t"}})
    with pytest.raises(ValueError, match=r"image index 10 is out of range for the 10 images"):
        scripted.evaluate(["imagecode"], tmp_path)
    write_json(tmp_path / "imagecode" / "valid_data.json", {"missing-set": {"0": "t"}})
    with pytest.raises(FileNotFoundError, match=r"image set folder .*missing-set .*not found"):
        scripted.evaluate(["imagecode"], tmp_path)
    # an image missing from a set would silently shift every later position: an error naming the set
    write_json(tmp_path / "imagecode" / "valid_data.json", {name: {"7": "t"}})
    (tmp_path / "imagecode" / "image-sets" / name / "img3.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"open-images-1_x holds 9 img<X>.jpg files; an ImageCoDe set has 10"):
        scripted.evaluate(["imagecode"], tmp_path)
    id_image(tmp_path / "imagecode" / "image-sets" / name / "img3.jpg", 3)
    assert scripted.evaluate(["imagecode"], tmp_path)["imagecode"]["static"]["n"] == 1
    id_image(tmp_path / "imagecode" / "image-sets" / name / "frame7.jpg", 0)
    with pytest.raises(ValueError, match=r"frame7.jpg is not named img<frame number>.jpg"):
        scripted.evaluate(["imagecode"], tmp_path)


def test_subset_counts_on_the_real_file(tmp_path):
    """The whole real validation file through the loader: 430 static and 1,872 video descriptions
    (vl_compo's n), with empty stand-in files for the 10 images of each of the 1,039 sets."""
    import torch
    from open_clip_c2lip.eval import imagecode
    data = json.loads(shared_data("imagecode", "valid_data.json").read_text())
    (tmp_path / "imagecode").mkdir()
    (tmp_path / "imagecode" / "valid_data.json").symlink_to(shared_data("imagecode", "valid_data.json"))
    for set_name in data:
        folder = tmp_path / "imagecode" / "image-sets" / set_name
        folder.mkdir(parents=True)
        for k in range(10):
            (folder / f"img{k}.jpg").touch()  # only the names are read before encoding
    images, texts = c2eval.Vocabulary(), c2eval.Vocabulary()
    score = imagecode.load_imagecode(tmp_path, images, texts)
    generator = torch.Generator().manual_seed(0)
    results, records = score(torch.nn.functional.normalize(torch.randn(len(images), 8, generator=generator), dim=-1),
                             torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=generator), dim=-1))
    assert (len(data), len(images)) == (1039, 10390)
    assert (results["static"]["n"], results["videos"]["n"], results["_average"]["n"]) == (430, 1872, 2302)
    assert 0 < results["_average"]["acc"] < 0.3  # random features: about 1 in 10
