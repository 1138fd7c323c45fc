"""open_clip_c2lip.demo.choices: probe accuracies of a real (random) C2LIP-Tiny against the cosines
computed by hand, per probe and per kind."""
import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from PIL import Image

from open_clip_c2lip.demo.choices import choice_accuracy, evaluate_probes

torch.set_num_threads(1)


def test_choice_accuracy_is_strict():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    assert choice_accuracy(image, positive, negative).tolist() == [True, False, True]  # a tie is wrong


def test_probes_score_like_the_model_by_hand(tmp_path):
    from open_clip_c2lip import eval as c2eval
    torch.manual_seed(0)
    model, preprocess, tokenizer = c2eval.load_model("C2LIP-Tiny")
    (tmp_path / "val2017").mkdir()
    (tmp_path / "probes").mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (60 * i, 40, 200 - 40 * i)).save(tmp_path / "val2017" / f"{i}.jpg")
    texts = ["a red bar", "a blue ring", "a green pole", "a yellow square"]
    items = [{"filename": f"{i % 4}.jpg", "caption": texts[i % 4], "negative_caption": texts[(i + 1) % 4],
              "kind": "novel_true" if i % 2 else "familiar_true"} for i in range(8)]
    (tmp_path / "probes" / "phrase_probe.json").write_text(json.dumps({str(i): it for i, it in enumerate(items)}))
    (tmp_path / "probes" / "novel_half.json").write_text(json.dumps({"0": {k: v for k, v in items[0].items() if k != "kind"}}))
    got = evaluate_probes(model, preprocess, tokenizer, tmp_path)
    with torch.no_grad():
        correct = []
        for item in items:
            with Image.open(tmp_path / "val2017" / item["filename"]) as image:
                v = model.encode_image(preprocess(image.convert("RGB"))[None], normalize=True)[0]
            t = model.encode_text(tokenizer([item["caption"], item["negative_caption"]]), normalize=True)
            correct.append(bool(v @ t[0] > v @ t[1]))
    assert got["phrase_probe"]["acc"] == pytest.approx(sum(correct) / 8) and got["phrase_probe"]["n"] == 8
    for kind, parity in (("novel_true", 1), ("familiar_true", 0)):
        part = [c for i, c in enumerate(correct) if i % 2 == parity]
        assert got["phrase_probe"]["kinds"][kind] == {"acc": pytest.approx(sum(part) / 4), "n": 4}
    assert got["novel_half"]["acc"] == float(correct[0]) and got["novel_half"]["kinds"] == {}
    assert evaluate_probes(model, preprocess, tokenizer, tmp_path / "nothing") == {}
