"""Worker processes end with the CLI that started them (``open_clip_c2lip.concepts.workers``)."""
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd
import pytest

from concepts_fixtures import (coco, coco_all, make_shard, shard_samples)  # noqa: F401


# ------------------------------------------------------------------------------------------------
# Worker processes end with their parent

def _children(pid):
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == int(pid) and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("inputs", ["files", "batches"])
def test_sigkill_of_the_cli_ends_its_workers(tmp_path, coco, inputs):
    """SIGKILL the CLI (--processes 2) while its workers are busy: the workers end too, in bounded time.

    The workers are held busy (annotation sleeps in them) so the kill surely finds them working."""
    if inputs == "files":
        for i in range(2):
            make_shard(tmp_path / f"p{i}.tar", shard_samples(coco, 3 * i, 3))
        paths = [str(tmp_path / "p0.tar"), str(tmp_path / "p1.tar")]
        hold = "cli.annotate_file = lambda *a, **k: time.sleep(600)"
    else:  # one file: the workers parse batches
        pd.DataFrame({"caption": coco[:64]}).to_csv(tmp_path / "t.csv", sep="\t", index=False)
        paths = [str(tmp_path / "t.csv")]
        hold = "extract._parse_texts = lambda *a, **k: time.sleep(600)"
    script = ("import sys, time\nfrom open_clip_c2lip.concepts import cli, extract\n" + hold +
              "\nsys.exit(cli.main(sys.argv[1:]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    parent = subprocess.Popen([sys.executable, "-c", script, *paths, "--output-dir", str(tmp_path / "out"),
                               "--processes", "2", "--batch-size", "8", "--quiet"], env=env)
    workers = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            workers = _children(parent.pid)
        assert len(workers) >= 2, f"workers never started (exit {parent.poll()})"
        time.sleep(1.0)  # let the pool hand them their (sleeping) tasks
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"
    finally:
        for pid in [parent.pid] + workers:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
