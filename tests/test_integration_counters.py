"""Data counters (``open_clip_c2lip.integration.counters``): summed over DataLoader workers, reported by
the training process every epoch.
"""
import json
import logging
import re

import torch

torch.set_num_threads(1)


from tar_fixtures import jpeg, write_tar

from open_clip_c2lip.integration.counters import DATA_KEYS, SharedCounters, format_report
from open_clip_c2lip.packing import STAT_KEYS
from wds_fixtures import GOOD_CAPTIONS, c2lip_off, _args, _epoch, _good, _train  # noqa: F401  (c2lip_off: autouse)


# ------------------------------------------------------------------------------------------------
# counters reach the training process

def test_worker_counters_reach_the_training_process_every_epoch(tmp_path, caplog):
    rows = ["filepath\ttitle\tconcepts"]
    for index in range(10):
        (tmp_path / f"{index}.jpg").write_bytes(jpeg(index))
        concepts = json.dumps(GOOD_CAPTIONS[index % 8].split(" ")[:2] + [" "])  # one blank concept each
        rows.append(f"{tmp_path / f'{index}.jpg'}\t{GOOD_CAPTIONS[index % 8]}\t{concepts}")
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    info = _train(_args("--train-data", str(tmp_path / "t.csv"), "--dataset-type", "csv", workers=2))
    with caplog.at_level(logging.INFO):
        for epoch in range(2):
            info.set_epoch(epoch)
            assert len(_epoch(info, seconds=120)) == 2  # 10 rows, batch 4, drop_last
    totals = info.c2lip_counters.totals()
    assert totals["samples"] == 16 and totals["blank_concepts"] == 16
    assert info.c2lip_packer.stats["samples"] == 0  # the main process packed nothing itself
    reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("C2LIP data counters")]
    assert len(reports) == 4
    assert "epoch 0" in reports[0] and "packed=8" in reports[0] and "blank_concepts=8" in reports[0]
    assert "epoch 1" in reports[2] and "packed=8" in reports[2]
    assert "run total to epoch 1" in reports[3] and "packed=16" in reports[3]


def test_webdataset_worker_counters_are_summed(tmp_path):
    for shard in range(4):
        members = []
        for index in range(2):
            members += _good(f"s{shard}k{index}", index)
        write_tar(tmp_path / f"w-{shard:06d}.tar", members)
    info = _train(_args("--train-data", str(tmp_path / "w-{000000..000003}.tar"), "--dataset-type", "webdataset",
                        "--train-num-samples", "8", workers=2))
    assert len(_epoch(info, seconds=120)) == 2
    totals = info.c2lip_counters.totals()
    assert totals["shards_read"] == 4 and totals["samples_read"] == 8 and totals["samples"] == 8
    assert info.c2lip_counters.table[1:].sum(dim=1).gt(0).all()  # both workers counted in their own row


def test_pickled_shared_counters_share_storage():
    """What a spawned worker receives (the multiprocessing pickler) adds to the same table."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  registers torch's shared-memory reductions

    counters = SharedCounters(num_workers=1)
    counters.add("samples", 2)
    copy = ForkingPickler.loads(ForkingPickler.dumps(counters))
    copy.add("samples_read", 5)
    assert counters.totals()["samples"] == 2 and counters.totals()["samples_read"] == 5
    assert set(counters.keys) == set(STAT_KEYS) | set(DATA_KEYS)


def test_format_report_is_the_difference_of_totals():
    previous = {key: 1 for key in STAT_KEYS + DATA_KEYS}
    totals = dict(previous, samples=11, skipped_bad_samples=4, skipped_incomplete=3, missing_shards=2)
    text = format_report(totals, previous)
    assert re.search(r"\bpacked=10\b", text) and re.search(r"\bskipped=5\b", text)  # (4-1) + (3-1) + (1-1)
    assert re.search(r"\bmissing=1\b", text) and re.search(r"\bconcepts=0\b", text)
