"""Tests for open_clip_c2lip.eval.core: interning, strict comparisons, file checks with clear errors."""
import numpy as np
import pytest

from eval_fixtures import c2eval, data_root, stub, write_json  # noqa: F401


def test_vocabulary_interns():
    vocabulary = c2eval.Vocabulary()
    assert [vocabulary.add(x) for x in ("a", "b", "a", "c", "b")] == [0, 1, 0, 2, 1]
    assert vocabulary.items == ["a", "b", "c"] and len(vocabulary) == 3


def test_selection_is_strict():
    pos = np.array([0.3, 0.2, 0.5])
    neg = np.array([0.1, 0.2, 0.6])
    assert c2eval.selection_correct(pos, neg).tolist() == [True, False, False]  # tie is wrong


def test_missing_and_bad_files_give_clear_errors(stub, data_root, tmp_path):
    model, preprocess, tokenizer = stub
    run = lambda root, names, **kw: c2eval.evaluate(model, preprocess, tokenizer, names, root, progress=False, **kw)
    # a benchmark asked for by name whose files are all absent: which files were expected
    with pytest.raises(FileNotFoundError, match=r"sugarcrepe: not found under .* \(expected sugarcrepe/add_att.json, "):
        run(tmp_path, ["sugarcrepe"])
    # annotations present but the image folder absent: a broken root, not a partial one
    write_json(tmp_path / "sugarcrepe" / "add_att.json", {"7": {"filename": "x.jpg", "caption": "a",
                                                                "negative_caption": "b"}})
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "val2017")):
        run(tmp_path, ["sugarcrepe"])
    (tmp_path / "val2017").mkdir()
    # an explicitly requested split that is absent
    with pytest.raises(FileNotFoundError, match=r"sugarcrepe: requested split file\(s\) not found under .*: "
                                                r"sugarcrepe/swap_obj.json$"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["add_att", "swap_obj"]}})
    # a 0-byte annotation (what clip_benchmark's failed wget leaves behind)
    (tmp_path / "sugarcrepe" / "swap_att.json").write_text("")
    with pytest.raises(ValueError, match="0-byte"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    write_json(tmp_path / "sugarcrepe" / "swap_att.json", {"7": {"filename": "x.jpg", "caption": "a"}})
    with pytest.raises(ValueError, match=r"swap_att.json: item '7' lacks field 'negative_caption'"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    write_json(tmp_path / "sugarcrepe" / "swap_att.json",
               {"7": {"filename": "x.jpg", "caption": "a", "negative_caption": "b"}})
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) referenced by .*swap_att.json are missing .*x.jpg"):
        run(tmp_path, ["sugarcrepe"], options={"sugarcrepe": {"splits": ["swap_att"]}})
    with pytest.raises(FileNotFoundError, match="visual_genome_relation.json"):
        run(tmp_path, ["aro_vgr"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        run(data_root, ["no_such_benchmark"])


# ---------------------------------------------------------------------------------------- tie rules

def _naive_choice(row, answer, ties):
    """Independent scorer: the answer wins iff no other option beats it (ties: per rule)."""
    others = [s for k, s in enumerate(row) if k != answer]
    best = max(others)
    return (row[answer] > best) if ties == "wrong" else (row[answer] >= best), row[answer] == best


def test_choice_outcome_matches_naive_rule_with_ties():
    from open_clip_c2lip.eval.core import choice_outcome

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 4)).astype(float)  # small integers: many exact ties
    answers = rng.integers(0, 4, size=200)
    for ties in ("wrong", "correct"):
        correct, tied = choice_outcome(scores, answers, ties=ties)
        expected = [_naive_choice(list(r), a, ties) for r, a in zip(scores, answers)]
        assert correct.tolist() == [e[0] for e in expected]
        assert tied.tolist() == [e[1] for e in expected]
    assert 0 < tied.sum() < 200  # the fixture really has ties and non-ties


def test_choice_outcome_rejects_unknown_rule_and_bad_shape():
    from open_clip_c2lip.eval.core import choice_outcome

    with pytest.raises(ValueError, match="ties must be one of"):
        choice_outcome(np.zeros((2, 2)), ties="first")
    with pytest.raises(ValueError, match="K >= 2"):
        choice_outcome(np.zeros((2, 1)))


def test_tied_counts_any_equal_comparison():
    from open_clip_c2lip.eval.core import tied

    a, b, c = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 3.0]), np.array([0.0, 0.0, 3.0])
    assert tied((a, b)).tolist() == [True, False, True]
    assert tied((a, c), (b, c)).tolist() == [False, True, True]


def test_option_similarity_is_chunk_invariant_and_exact_for_equal_options():
    import torch
    from open_clip_c2lip.eval.core import option_similarity

    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(7, 16, generator=generator), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(9, 16, generator=generator), dim=-1)
    image_index = [0, 3, 3, 6, 1]
    options = [[0, 1, 2], [4, 4, 5], [8, 7, 6], [2, 2, 2], [5, 0, 1]]
    whole = option_similarity(images, texts, image_index, options)
    assert whole.shape == (5, 3) and whole.dtype == np.float64
    assert np.array_equal(whole, option_similarity(images, texts, image_index, options, chunk=2))
    naive = np.array([[float(images[i].double() @ texts[t].double()) for t in row]
                      for i, row in zip(image_index, options)])
    assert np.allclose(whole, naive, atol=1e-6)
    assert whole[1, 0] == whole[1, 1] and len(set(whole[3])) == 1  # the same text scores exactly the same


def test_check_images_names_nested_images_by_their_path_and_counts_each(tmp_path):
    from open_clip_c2lip.eval.core import check_images
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"x")
    paths = [tmp_path / "a" / "0.png", tmp_path / "b" / "0.png", tmp_path / "c" / "0.png", tmp_path / "c" / "0.png"]
    with pytest.raises(FileNotFoundError, match=r"2 image\(s\) referenced by ann.json are missing from .*: b/0.png, "
                                                r"c/0.png$"):
        check_images(paths, tmp_path, "ann.json")


def test_csv_row_names_short_and_long_lines():
    import csv
    import io
    from open_clip_c2lip.eval.core import csv_row
    rows = list(csv.DictReader(io.StringIO("a,b,c\n1,2,3\n1\n1,2,3,4\n")))
    assert csv_row(rows[0], "t.csv", 2) == {"a": "1", "b": "2", "c": "3"}
    with pytest.raises(ValueError, match=r"t.csv:3: lacks field\(s\) \['b', 'c'\]: 1 of the header's 3"):
        csv_row(rows[1], "t.csv", 3)
    with pytest.raises(ValueError, match=r"t.csv:4: 1 field\(s\) more than the header's 3"):
        csv_row(rows[2], "t.csv", 4)
