"""open_clip_c2lip.demo.report and figures: tables of the study and what the figures draw."""
import json

import matplotlib
import pytest

matplotlib.use("Agg")

from open_clip_c2lip.demo import figures, report
from open_clip_c2lip.demo.analysis import run_name, summarize


def _worlds(n_worlds, seeds=(0,)):
    worlds = {}
    for w in range(n_worlds):
        runs = {}
        for t in seeds:
            for v, base in (("siglip", 0.5), ("c2lip", 0.7)):
                metrics = {"unseen_pairs/swap_att": base + 0.01 * w + 0.02 * t, "unseen_pairs/i2t_R@1": base / 2,
                           "unseen_pairs/chance_R@1": 0.02, "unseen_pairs/attn_top1": base / 3,
                           "unseen_pairs/attn_ratio": 1.1}
                runs[run_name(v, t)] = {"variant": v, "train_seed": t, "metrics": metrics, "train_s": 100.0,
                                        "curves": {"steps": [1, 2], "losses": {"contrastive_loss": [5.0, 4.0]}}}
        worlds[w] = {"runs": runs, "blind": {"unseen_pairs": {"swap_att": {"length": 0.5, "count": 0.5, "ngram": 0.5,
                                                                           "phrases": 0.5, "familiar": 0.5, "n": 10},
                                                              "add_obj": {"length": 1.0, "count": 0.5, "ngram": w / 10,
                                                                          "phrases": 0.0, "familiar": 0.5, "n": 12}}}}
    return worlds


def test_formats():
    assert report.format_metric("a/swap_att", 0.1234) == "12.3"
    assert report.format_metric("a/swap_att", 0.1234, signed=True) == "+12.3"
    assert report.format_metric("a/attn_ratio", 1.234) == "1.23×"
    assert report.format_metric("a/x", None) == "—" and report.format_metric("a/x", float("nan")) == "—"
    assert report.format_p(0.01234) == "0.012" and report.format_p(0.00012) == "0.00012" and report.format_p(None) == "—"


def test_tables_of_a_nested_study():
    worlds = _worlds(3, seeds=(0, 1))
    summary = summarize(worlds, ["siglip", "c2lip"], [0, 1])
    variants = report.variant_table(summary, ["siglip", "c2lip"], ["unseen_pairs/swap_att"])
    # siglip world means 0.51, 0.52, 0.53: mean 52.0, sd 1.0; seeds differ by 2 points: pooled within-sd 1.4
    assert "| unseen_pairs/swap_att | 52.0 ± 1.0 (1.4) | 72.0 ± 1.0 (1.4) |" in variants
    comparisons = report.comparison_table(summary, ["unseen_pairs/swap_att"])
    assert "| unseen_pairs/swap_att | c2lip − siglip | +20.0 | [+20.0, +20.0] | [+20.0, +20.0] | 3 / 0 of 3 | 0.0 |" in comparisons
    blind = report.blind_table(worlds)
    assert "| unseen_pairs/swap_att | 10 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in blind
    assert "| unseen_pairs/add_obj | 12 | 100.0 | 50.0 | 10.0 (0–20) | 0.0 | 50.0 |" in blind
    runs = report.run_table(worlds, ["siglip", "c2lip"], [0, 1], ["unseen_pairs/swap_att"])
    assert runs.count("\n") == 2 + 3 * 2 * 2 - 1 and "| 2 | 1 | c2lip | 74.0 | 4.00 | 100 |" in runs
    assert report.ordered_metrics(["b", "unseen_pairs/swap_att", "a"]) == ["unseen_pairs/swap_att", "b", "a"]


def _figure(path, worlds, variants=("siglip", "c2lip")):
    summary = summarize(worlds, list(variants), [0])
    metrics = ["unseen_pairs/swap_att", "unseen_pairs/i2t_R@1", "unseen_pairs/attn_top1", "unseen_pairs/attn_ratio"]
    captured = {}
    import matplotlib.pyplot as plt
    original = plt.close
    plt.close = lambda fig=None: captured.setdefault("fig", fig)
    try:
        figures.plot_study(path, worlds, summary, list(variants), metrics)
    finally:
        plt.close = original
    return captured["fig"], summary


def test_study_figure_draws_chance_lines_and_no_error_bars_for_one_world(tmp_path):
    from matplotlib.container import ErrorbarContainer
    fig, summary = _figure(tmp_path / "one.png", _worlds(1))
    _, values_ax, diff_ax = fig.axes
    assert not [c for ax in (values_ax, diff_ax) for c in ax.containers if isinstance(c, ErrorbarContainer)]
    chance = [c for c in values_ax.collections if c.get_label() == "chance" or c.get_linestyle()[0][1]]
    levels = sorted({round(float(seg[0][1]), 3) for c in chance for seg in c.get_segments()})
    assert levels == [2.0, 25.0, 50.0]  # R@1 (the set's random ranking), attn_top1, the pair choice
    matplotlib.pyplot.close(fig)
    fig, _ = _figure(tmp_path / "three.png", _worlds(3))
    bars = [c for ax in fig.axes[1:] for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars  # with 3 worlds: sd and t-interval bars where there is a spread
    lengths = [abs(seg[1][1] - seg[0][1]) for c in bars for seg in c.lines[2][0].get_segments()]
    assert lengths and min(lengths) > 0  # attn_ratio, i2t (no spread over worlds): no zero-length bar
    matplotlib.pyplot.close(fig)


def test_chance_levels():
    summary = summarize(_worlds(2), ["siglip", "c2lip"], [0])
    levels = figures.chance_levels(summary, ["unseen_pairs/swap_att", "unseen_pairs/i2t_R@1", "unseen_pairs/attn_top1",
                                             "unseen_pairs/familiarity_bias", "unseen_pairs/attn_ratio"])
    assert levels == {"unseen_pairs/swap_att": 0.5, "unseen_pairs/i2t_R@1": pytest.approx(0.02),
                      "unseen_pairs/attn_top1": 0.25, "unseen_pairs/familiarity_bias": 0.0}


def test_attention_example_follows_the_stated_rule():
    held = [["red", "bar"], ["blue", "ring"], ["red", "ring"], ["blue", "bar"]]
    item = lambda name, *objects: {"filename": name, "objects": [{"colour": c, "shape": s} for c, s in objects]}
    items = [item("3.jpg", ("red", "bar"), ("blue", "ring"), ("green", "pole")),
             item("1.jpg", ("red", "bar"), ("blue", "ring")),
             item("2.jpg", ("red", "bar"), ("green", "pole"), ("yellow", "square")),
             item("4.jpg", ("red", "ring"), ("blue", "bar"), ("green", "pole"))]
    assert figures.attention_example(items, held)["filename"] == "3.jpg"  # first (file order) with 2 held out + 3 objects
    assert figures.attention_example(items[1:3], held)["filename"] == "1.jpg"
    assert figures.attention_example(items[2:3], held)["filename"] == "2.jpg"
    assert figures.attention_example([item("5.jpg", ("green", "pole"))], held) is None


def test_write_results_is_atomic(tmp_path):
    report.write_results(tmp_path / "results.json", {"a": 1})
    assert json.loads((tmp_path / "results.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
