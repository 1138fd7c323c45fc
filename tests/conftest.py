"""Where the tests find real annotation data, and the ``slow`` marker's option.

Real data (COCO captions, SugarCrepe / SugarCrepe++ annotations) is never part of the repository.
Tests that need it ask ``real_data(name)`` (or the ``real_data`` fixture), which looks in
``$C2LIP_TEST_DATA`` (default: ``<repo>/../shared/data``) and skips the test, saying what to get
and from where, when the file or folder is absent. Every other test generates what it needs.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "C2LIP_TEST_DATA"

# name under $C2LIP_TEST_DATA -> what it is and where it comes from
REAL_DATA = {
    "coco_captions_val2017.json": (
        "COCO 2017 val captions (captions_val2017.json from cocodataset.org's annotations_trainval2017.zip, "
        "saved under this name)"),
    "sugar_crepe": "SugarCrepe annotation files (the data/*.json files of github.com/RAIVNLab/sugar-crepe)",
    "sugarcrepe_pp": "SugarCrepe++ annotation files (the data/*.json files of github.com/Aman-J/SugarCrepe_pp)",
    "valse": "VALSE annotation files (the data/*.json files of github.com/Heidelberg-NLP/VALSE)",
    "imagecode": "ImageCoDe descriptions (data/valid_data.json of github.com/McGill-NLP/imagecode)",
}


def data_dir() -> Path:
    """``$C2LIP_TEST_DATA``, else ``<repo>/../shared/data`` (whether it exists or not)."""
    return Path(os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data")


def real_data(name: str) -> Path:
    """The path of real data file / folder ``name`` (a key of ``REAL_DATA``); skips the calling test
    (or fixture) with a reason that says what to get, when it is absent."""
    path = data_dir() / name
    if not path.exists():
        what = REAL_DATA.get(name, name)
        pytest.skip(f"{what} not found at {path}: put it there or point ${DATA_ENV} at the folder holding "
                    f"{name}")
    return path


@pytest.fixture(name="real_data", scope="session")
def real_data_fixture():
    """``real_data`` as a fixture: ``real_data("coco_captions_val2017.json")`` in a test."""
    return real_data
