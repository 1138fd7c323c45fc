"""Tests for open_clip_c2lip.eval.report: the vl_compo-format row (summary rules written out here by
hand from the study's definitions) and the comparison figure on a small CSV in its format."""
import csv
import random
import re

import numpy as np
import pytest

from open_clip_c2lip.eval import report

MMVP = ["Orientation and Direction", "Presence of Specific Features", "State and Condition", "Quantity and Count",
        "Positional and Relational Context", "Color and Appearance", "Structural Characteristics", "Texts",
        "Viewpoint and Perspective"]
VALSE = ["existence", "plurals", "counting-hard", "counting-small-quant", "counting-adversarial", "relations",
         "action-replacement", "actant-swap", "coreference-standard", "coreference-hard", "foil-it"]
VLC = ["Object_Location_center", "Object_Location_margin", "Object_Location_mid", "Object_Size_large",
       "Object_Size_medium", "Object_Size_small", "Attribute_action", "Attribute_color", "Attribute_material",
       "Attribute_size", "Attribute_state", "Relation_action", "Relation_spatial"]
SC = {"add_att": 692, "add_obj": 2062, "replace_att": 788, "replace_obj": 1652, "replace_rel": 1406, "swap_att": 666,
      "swap_obj": 245}
EQ = ["eqbenag", "eqbenyoucook2", "eqbengebc", "eqbenkubric_loc", "eqbenkubric_attr", "eqbenkubric_cnt", "eqbensd"]
WU = ["WhatsUp_A", "WhatsUp_B", "COCO_QA_ONE", "COCO_QA_TWO", "VG_QA_ONE", "VG_QA_TWO"]


def fake_results(seed=0):
    """Results of all 14 benchmarks and clip_benchmark in this package's format (random fractions)."""
    rng = random.Random(seed)
    f = lambda: rng.random()  # noqa: E731
    group = lambda: {"text": f(), "image": f(), "group": f(), "n": rng.randint(5, 50), "ties": 0}  # noqa: E731
    acc = lambda n=None: {"acc": f(), "n": n or rng.randint(5, 50), "ties": 0}  # noqa: E731
    r = {
        "sugarcrepe": {**{s: acc(n) for s, n in SC.items()}, "_average": {"micro": f(), "n": 7511}},
        "aro_vgr": {"on": acc(), "_average": {"acc": f(), "acc_micro": f(), "n": 9}},
        "aro_vga": {"_average": {"acc": f(), "n": 9}},
        "aro_coco_order": {"_average": {"acc": f(), "n": 25010}},
        "aro_flickr_order": {"_average": {"acc": f(), "n": 5000}},
        "winoground": {"Object": group(), "_average": group()},
        "colorswap": {"test": group(), "_average": group()},
        "crepe": {t: acc() for t in ("atom", "swap", "negate")},
        "eqben": {s: group() for s in EQ},
        "mmvp_vlm": {c: group() for c in MMVP},
        "svo_probes": {s: acc() for s in ("subj_neg", "verb_neg", "obj_neg")},
        "valse": {p: acc() for p in VALSE},
        "imagecode": {"static": acc(430), "videos": acc(1872)},
        "vl_checklist": {t: acc() for t in VLC},
        "whatsup": {s: acc() for s in WU},
        "clip_benchmark": {"imagenet1k": {"acc1": f(), "acc5": f(), "n": 50000},
                           "mscoco_captions": {f"{d}_retrieval_recall@{k}": f() for d in ("image", "text")
                                               for k in (1, 5, 10)},
                           "flickr30k": {f"{d}_retrieval_recall@{k}": f() for d in ("image", "text")
                                         for k in (1, 5, 10)}},
    }
    return r


def expected_summary(r):
    """vl_compo's summary definitions, written out directly (percent)."""
    m = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
    eq = lambda s: r["eqben"][s]["group"]  # noqa: E731
    v = lambda p: r["valse"][p]["acc"]  # noqa: E731

    def micro(splits):
        return 100 * sum(r["sugarcrepe"][s]["acc"] * SC[s] for s in splits) / sum(SC[s] for s in splits)

    def vl(kind):
        types = [t for t in VLC if t.startswith(kind)]
        return sum(r["vl_checklist"][t]["acc"] for t in types) / len(types)

    ic = r["imagecode"]
    out = {
        "aro": m([r[b]["_average"]["acc"] for b in ("aro_vgr", "aro_vga", "aro_coco_order", "aro_flickr_order")]),
        "colorswap": 100 * r["colorswap"]["_average"]["group"],
        "crepe": m([r["crepe"][t]["acc"] for t in ("atom", "swap", "negate")]),
        "eqben": m([eq("eqbenyoucook2"), eq("eqbengebc"), eq("eqbenag"),
                    (eq("eqbenkubric_loc") + eq("eqbenkubric_attr") + eq("eqbenkubric_cnt")) / 3, eq("eqbensd")]),
        "imagecode": 100 * (ic["static"]["acc"] * 430 + ic["videos"]["acc"] * 1872) / 2302,
        "mmvp_vlm": m([r["mmvp_vlm"][c]["group"] for c in MMVP]),
        "sugarcrepe": (micro(["add_att", "add_obj"]) + micro(["replace_att", "replace_obj", "replace_rel"])
                       + micro(["swap_att", "swap_obj"])) / 3,
        "svo_probes": m([r["svo_probes"][s]["acc"] for s in ("subj_neg", "verb_neg", "obj_neg")]),
        "valse": m([v("existence"), v("plurals"),
                    (v("counting-hard") + v("counting-small-quant") + v("counting-adversarial")) / 3, v("relations"),
                    (v("action-replacement") + v("actant-swap")) / 2,
                    (v("coreference-standard") + v("coreference-hard")) / 2, v("foil-it")]),
        "vl_checklist": m([vl("Object"), vl("Attribute"), vl("Relation")]),
        "whatsup": m([r["whatsup"][s]["acc"] for s in WU]),
        "winoground": 100 * r["winoground"]["_average"]["group"],
        "coco_i2t": 100 * r["clip_benchmark"]["mscoco_captions"]["text_retrieval_recall@1"],
        "coco_t2i": 100 * r["clip_benchmark"]["mscoco_captions"]["image_retrieval_recall@1"],
        "flickr_i2t": 100 * r["clip_benchmark"]["flickr30k"]["text_retrieval_recall@1"],
        "flickr_t2i": 100 * r["clip_benchmark"]["flickr30k"]["image_retrieval_recall@1"],
        "imagenet": 100 * r["clip_benchmark"]["imagenet1k"]["acc1"],
    }
    out["comp_avg"] = sum(out[c] for c in report.COMPOSITIONALITY) / 12
    out["i2t_avg"] = (out["coco_i2t"] + out["flickr_i2t"]) / 2
    out["t2i_avg"] = (out["coco_t2i"] + out["flickr_t2i"]) / 2
    return out


def test_row_summaries_follow_the_vl_compo_definitions():
    r = fake_results()
    row, missing = report.vl_compo_row(r, "C2LIP-B-16", "epoch_5.pt", "C2LIP", "run1")
    assert list(row) == report.HEADER and not missing.get("comp_avg")
    assert row[""] == "run1" and row["arch"] == "C2LIP-B-16" and row["21_tasks_avg"] == ""
    for column, value in expected_summary(r).items():
        assert row[column] == pytest.approx(value, abs=1e-10), column
    # per-subset columns: the subset's value in percent
    assert row["eqben::eqbenkubric_cnt::image"] == pytest.approx(100 * r["eqben"]["eqbenkubric_cnt"]["image"])
    assert row["mmvp_vlm::Texts::group"] == pytest.approx(100 * r["mmvp_vlm"]["Texts"]["group"])
    assert row["aro::COCO_Order"] == pytest.approx(100 * r["aro_coco_order"]["_average"]["acc"])
    assert row["coco_karpathy::t2i/R@10"] == pytest.approx(
        100 * r["clip_benchmark"]["mscoco_captions"]["image_retrieval_recall@10"])
    assert row["elevator::imagenet-1k"] == ""  # ELEVATER is not run here


def test_missing_benchmarks_leave_their_columns_empty_and_are_named():
    r = fake_results()
    del r["eqben"], r["aro_flickr_order"]
    r["clip_benchmark"] = {"imagenet1k-unverified": {"acc1": 0.5, "n": 10}}
    row, missing = report.vl_compo_row(r, "m")
    assert row["eqben"] == row["aro"] == row["comp_avg"] == row["coco_i2t"] == row["i2t_avg"] == ""
    assert row["crepe"] != "" and row["imagenet"] == pytest.approx(50.0)  # the unverified ImageNet folder
    assert missing["comp_avg"] == ["aro_flickr_order", "eqben"]
    assert "comp_avg: not computed, missing aro_flickr_order, eqben" in report.describe_missing(missing)


def test_csv_round_trip(tmp_path):
    row, _ = report.vl_compo_row(fake_results(), "m", "p", "f", "label")
    report.write_csv(tmp_path / "ours.csv", [row])
    header = next(csv.reader(open(tmp_path / "ours.csv")))
    assert header == report.HEADER and header[:5] == ["", "arch", "pretrained", "family", "aro"]
    (back,) = report.read_csv(tmp_path / "ours.csv")
    for key, value in row.items():
        if isinstance(value, float):
            assert back[key] == value, key  # repr round-trips exactly
        else:
            assert back[key] == (value if key in report.ID_COLUMNS else None), key


def write_published(path, rows):
    """A few rows in the layout of vl_compo's results.csv (values made up here)."""
    columns = ["", "arch", "pretrained", "family", *report.COMPOSITIONALITY, "imagenet", "21_tasks_avg", "comp_avg"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for k, (family, imagenet, values) in enumerate(rows):
            writer.writerow([k, f"arch{k}", "tag", family, *values, imagenet, "", sum(values) / len(values)])


def test_compare_figure_places_ours_among_the_published(tmp_path):
    rng = np.random.default_rng(0)
    published = [("OpenCLIP", 60 + k, list(rng.uniform(20, 80, 12))) for k in range(5)]
    published.append(("StructuredCLIP", 55.0, list(rng.uniform(20, 80, 12))))
    write_published(tmp_path / "results.csv", published)
    r = fake_results(1)
    row, _ = report.vl_compo_row(r, "C2LIP", "ep5.pt", "ours", "c2lip-run")
    ours = [{k: (None if v == "" else v) for k, v in row.items()}]
    figure = report.compare_figure(report.read_csv(tmp_path / "results.csv"), ours, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 1000
    points = {c.get_gid(): c.get_offsets() for c in figure.axes[0].collections}
    assert points["ours"].tolist() == [[row["imagenet"], row["comp_avg"]]]
    openclip = [(x, sum(v) / 12) for f, x, v in published if f == "OpenCLIP"]
    assert np.allclose(points["published:OpenCLIP"], openclip)
    assert "12 compositional tasks" in figure.axes[0].get_ylabel()
    # a user row with only 3 benchmarks: every point is the mean over those 3
    partial = dict(ours[0], **{c: None for c in report.COMPOSITIONALITY if c not in ("crepe", "svo_probes", "valse")})
    figure = report.compare_figure(report.read_csv(tmp_path / "results.csv"), [partial], tmp_path / "fig2.png")
    points = {c.get_gid(): c.get_offsets() for c in figure.axes[0].collections}
    index = [report.COMPOSITIONALITY.index(c) for c in ("crepe", "svo_probes", "valse")]
    assert np.allclose(points["published:StructuredCLIP"], [[55.0, np.mean([published[5][2][i] for i in index])]])
    assert points["ours"][0][1] == pytest.approx((row["crepe"] + row["svo_probes"] + row["valse"]) / 3)
    assert "over 3 of 12 tasks" in figure.axes[0].get_ylabel()
    with pytest.raises(ValueError, match="no 'imagenet' value"):
        report.compare_figure(report.read_csv(tmp_path / "results.csv"), [dict(partial, imagenet=None)],
                              tmp_path / "x.png")


def test_report_cli(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_published(tmp_path / "results.csv", [("OpenCLIP", 60.0, list(rng.uniform(20, 80, 12)))])
    row, _ = report.vl_compo_row(fake_results(2), "C2LIP", "", "ours", "a")
    report.write_csv(tmp_path / "a.csv", [row])
    report.main(["--ours", str(tmp_path / "a.csv"), "--compare", str(tmp_path / "results.csv"), "--figure",
                 str(tmp_path / "out" / "fig.png")])
    assert (tmp_path / "out" / "fig.png").is_file() and "comparison figure written" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a vl_compo-format CSV"):
        report.read_csv(tmp_path / "bad.csv")


def test_report_arguments_are_checked_before_evaluating(tmp_path):
    import argparse
    write_published(tmp_path / "results.csv", [("OpenCLIP", 60.0, [40.0] * 12)])
    args = argparse.Namespace(compare=tmp_path / "results.csv", figure=None)
    with pytest.raises(ValueError, match="--compare and --figure go together"):
        report.check_report_args(args, ["imagenet1k"])
    args.figure = tmp_path / "fig.png"
    with pytest.raises(ValueError, match="add --clip-benchmark-root DIR with imagenet1k"):
        report.check_report_args(args, ["mscoco_captions"])
    report.check_report_args(args, ["imagenet1k-unverified"])
    args.compare = tmp_path / "absent.csv"
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        report.check_report_args(args, ["imagenet1k"])


def test_damaged_comparison_csvs_are_named_errors(tmp_path):
    """A cell that is not a number in a column the figure plots failed inside the plot (TypeError);
    a latin-1 file gave a UnicodeDecodeError naming no file; a BOM (spreadsheet export) and extra
    columns are fine; a non-finite value is a missing one."""
    write_published(tmp_path / "results.csv", [("OpenCLIP", 60.0, [40.0] * 12), ("SLIP", 30.0, [35.0] * 12)])
    text = (tmp_path / "results.csv").read_text()
    lines = text.splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines[:2] + [lines[2].replace("35.0", "n/a", 1)]) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}:3: column 'aro' must be a number .* got 'n/a'"):
        report.read_csv(bad)
    bad.write_bytes(text.replace("SLIP", "SL\u00cfP").encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{re.escape(str(bad))}: not UTF-8 text"):
        report.read_csv(bad)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + "\n".join([lines[0] + ",notes"] + [line + ",see paper" for line in lines[1:]])
                    .replace("60.0", "nan").encode())
    rows = report.read_csv(bom)
    assert rows[0][""] == "0" and rows[0]["imagenet"] is None and rows[1]["imagenet"] == 30.0
    assert rows[0]["notes"] == "see paper"


def test_published_rows_without_the_axes_fail_before_evaluating(tmp_path):
    import argparse
    write_published(tmp_path / "results.csv", [("OpenCLIP", 60.0, [40.0] * 12)])
    rows = report.read_csv(tmp_path / "results.csv")
    no_imagenet = [{k: v for k, v in r.items() if k != "imagenet"} for r in rows]
    with pytest.raises(ValueError, match=r"results.csv: no 'imagenet' column .*individual_results.csv does not"):
        report.check_published(no_imagenet, tmp_path / "results.csv")
    with pytest.raises(ValueError, match="none of the benchmark columns"):
        report.check_published([{"arch": "a", "imagenet": 50.0}], "x.csv")
    with pytest.raises(ValueError, match="no row has both 'imagenet' and a benchmark value"):
        report.check_published([dict(rows[0], imagenet=None)], "x.csv")
    # the eval CLI's check: the ImageNet folder must be there, not only named
    args = argparse.Namespace(compare=tmp_path / "results.csv", figure=tmp_path / "f.png",
                              clip_benchmark_root=tmp_path / "cb")
    with pytest.raises(FileNotFoundError, match=r"imagenet1k-unverified is not under .*cb \(missing .*val\)"):
        report.check_report_args(args, ["imagenet1k-unverified", "flickr30k"])
    (tmp_path / "cb" / "imagenet1k-unverified" / "val").mkdir(parents=True)
    report.check_report_args(args, ["imagenet1k-unverified", "flickr30k"])


def test_figure_path_and_columns_the_published_rows_lack(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        report.check_figure_path(tmp_path)
    with pytest.raises(ValueError, match=r"name the file with a type suffix, one of .*\.png"):
        report.check_figure_path(tmp_path / "figure")  # savefig would write figure.png
    report.check_figure_path(tmp_path / "figure.PDF")
    write_published(tmp_path / "results.csv", [("OpenCLIP", 60.0 + k, [40.0 + k + j for j in range(12)])
                                               for k in range(3)])
    published = [{k: v for k, v in r.items() if k != "colorswap"} for r in report.read_csv(tmp_path / "results.csv")]
    ours = [{"arch": "me", "imagenet": 10.0, "colorswap": 5.0, "crepe": 20.0, "valse": 30.0}]
    figure = report.compare_figure(published, ours, tmp_path / "fig.png")
    points = {c.get_gid(): c.get_offsets() for c in figure.axes[0].collections}
    assert points["ours"].tolist() == [[10.0, 25.0]]  # colorswap left out: the published rows lack it
    crepe, valse = report.COMPOSITIONALITY.index("crepe"), report.COMPOSITIONALITY.index("valse")
    assert np.allclose(points["published:OpenCLIP"], [[60.0 + k, 40.0 + k + (crepe + valse) / 2] for k in range(3)])
    many = dict(ours[0], **{c: 50.0 for c in report.COMPOSITIONALITY if c not in ("colorswap", "comp_avg")})
    many.pop("eqben")
    label = report.compare_figure(published, [many], tmp_path / "fig2.png").axes[0].get_ylabel()
    assert label.count("\n") >= 2 and max(len(line) for line in label.split("\n")) <= 62  # wrapped, not cut off


def test_report_command_line_runs_without_a_runpy_warning(tmp_path):
    """``python -m open_clip_c2lip.eval.report``: the package must not have imported ``report``
    already (runpy then warns of "unpredictable behaviour"), and an error is one line."""
    import os
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "open_clip_c2lip.eval.report",
                             "--ours", str(tmp_path / "a.csv"), "--compare", str(tmp_path / "b.csv"), "--figure",
                             str(tmp_path / "f.png")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and "Warning" not in result.stderr
    assert result.stderr.strip() == f"error: CSV not found (or not a file): {tmp_path / 'b.csv'}"
