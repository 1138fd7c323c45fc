"""The one reader of caption tables (``open_clip_c2lip.fileio.tables``), as the concepts CLI and training use it."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


from open_clip_c2lip import concepts as C


# ------------------------------------------------------------------------------------------------
# Tables: one reader, one rule, open_clip's separator

NA_LIKE = ["N/A", "NA", "None", "null", "nan", "NaN", "#N/A", "NULL", "<NA>"]


def test_na_like_captions_are_text_in_cli_and_training_reader(tmp_path):
    """A caption 'N/A' is text for the CLI and for training's CSV reader alike (one reader)."""
    from open_clip_c2lip.integration.train_data import ConceptCsvDataset

    src = tmp_path / "train.csv"  # tab-separated, as open_clip_train reads by default
    rows = ["filepath\ttitle"] + [f"img/{i}.jpg\t{c}" for i, c in enumerate(NA_LIKE + ["a red ball"])]
    src.write_text("\n".join(rows) + "\n")
    assert C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 0
    out = tmp_path / "out" / "train.csv"
    dataset = ConceptCsvDataset(str(out), None, "filepath", "title", sep="\t")
    assert dataset.captions == NA_LIKE + ["a red ball"]
    assert all(concepts for concepts in dataset.concepts)  # every row annotated, read back as given
    assert dataset.concepts == C.extract_concepts(NA_LIKE + ["a red ball"])
