"""Reading shards (``open_clip_c2lip.fileio.tar``) as webdataset groups them. Damaged tars: the concepts
CLI's tests (``test_concepts_annotate.py``) and the train reader's (``test_integration_wds_passes.py``)."""
import io
import tarfile

from tar_fixtures import wds_samples

from open_clip_c2lip.fileio import tar as T


def test_iter_tar_samples_groups_like_webdataset(tmp_path):
    path = tmp_path / "mixed.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.jpg", b"1"), ("a.txt", b"x"), ("dir", None), ("__meta__", b"m"),
                           ("b.seg.png", b"2"), ("b.txt", b"y"), ("sub/c.jpg", b"3"), ("README", b"r")]:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ours = [{"__key__": s["__key__"], **{k: v for k, v in s.items() if k != "__key__"}}
            for s in T.read_shard(str(path))]
    theirs = [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
              for s in wds_samples([path])]
    assert ours == theirs
    groups = list(T.iter_tar_samples(str(path)))
    assert [m.name for g in groups for m, _ in g.members] == [
        "a.jpg", "a.txt", "dir", "__meta__", "b.seg.png", "b.txt", "sub/c.jpg", "README"]
    assert [g.key for g in groups] == ["a", None, None, "b", "sub/c", None]
