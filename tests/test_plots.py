"""Each figure function returns a Figure with the expected axes, fits JupyterLab's width with fonts
of 10 pt or more, names metrics in words; save_figure writes atomically."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from mmt_lib.experiments import results  # noqa: E402
from mmt_lib.figures.plot_style import (  # noqa: E402
    MAX_WIDTH_IN,
    MIN_FONT_PT,
    metric_label,
    task_label,
)
from mmt_lib.figures.plots import (  # noqa: E402
    image_grid,
    plot_embedding,
    plot_results,
    plot_run_curves,
    plot_training_curves,
    run_figures,
    save_figure,
)

HISTORY = [{"epoch": e, "loss_ce": 2.0 / e, "loss_tri": 1.0 / e, "mAP": 0.1 * e} for e in range(1, 5)]


def test_plot_embedding_has_two_panels_and_marks_noisy_points():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    truth = np.repeat(np.arange(3), 10)
    pseudo = truth.copy()
    pseudo[[0, 1, 2]] = 1
    pseudo[5] = -1
    noisy = np.zeros(30, dtype=bool)
    noisy[[0, 1, 2, 5]] = True
    fig = plot_embedding(points, truth, pseudo, noisy, "target features")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        base, marks = ax.collections
        assert base.get_offsets().shape == (30, 2)
        np.testing.assert_allclose(marks.get_offsets(), points[noisy])
    assert "2 clusters" not in fig.axes[1].get_title() and "3 clusters, 1 outliers" in fig.axes[1].get_title()
    assert fig._suptitle.get_text() == "target features"


def test_plot_embedding_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="pseudo must have shape"):
        plot_embedding(np.zeros((4, 2)), np.zeros(4), np.zeros(3), np.zeros(4, dtype=bool), "x")


def test_figures_are_not_left_open_in_pyplot():
    plt.close("all")
    plot_training_curves(HISTORY, ["mAP"], "run")
    assert plt.get_fignums() == []


@pytest.mark.parametrize("keys", [["mAP"], ["loss_ce", "loss_tri"], ["loss_ce", "loss_tri", "mAP", "loss_ce"]])
def test_plot_training_curves_one_axis_per_key(keys):
    fig = plot_training_curves(HISTORY, keys, "stage II")
    assert len(fig.axes) == len(keys)
    first = fig.axes[0].lines[0]
    np.testing.assert_allclose(first.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(first.get_ydata(), [entry[keys[0]] * (100 if keys[0] == "mAP" else 1)
                                                    for entry in HISTORY])


def test_plot_training_curves_name_metrics_in_words_with_units():
    history = [{"epoch": e, "net1.mAP": 0.3, "pseudo_labels.wrong_majority_fraction": 0.25, "loss_soft_ce": 1.0}
               for e in range(3)]
    fig = plot_training_curves(history, ["net1.mAP", "pseudo_labels.wrong_majority_fraction", "loss_soft_ce"], "t")
    assert [ax.get_title() for ax in fig.axes] == ["network 1 mAP", "pseudo-label impurity", "soft cross-entropy loss"]
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "network 1 mAP (%)", "pseudo-label impurity (% of images)", "soft cross-entropy loss"]
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [25.0, 25.0, 25.0])
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)


@pytest.mark.parametrize(("key", "words"), [
    ("pseudo_labels.pairwise_precision", "pseudo-label pairwise precision"),
    ("pseudo_labels.num_clusters", "pseudo-label clusters (count)"),
    ("target.top1", "target rank-1 accuracy (%)"),
    ("seconds_train", "training time (s)"),
    ("lr", "learning rate"),
    ("some_new_key", "some new key"),
])
def test_metric_labels_are_words(key, words):
    assert metric_label(key) == words


def test_task_labels_name_source_and_target():
    assert task_label("duke2market") == "Duke → Market"
    assert task_label("market2msmt") == "Market → MSMT"
    assert task_label("synth-a2synth-b") == "synth-a2synth-b"


def test_plot_training_curves_uses_position_without_epoch_and_names_missing_keys():
    fig = plot_training_curves([{"loss": 3.0}, {"loss": 2.0}], ["loss"], "t")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [0, 1])
    with pytest.raises(ValueError, match=r"\['nmi'\].*available keys"):
        plot_training_curves(HISTORY, ["nmi"], "t")


def test_plot_run_curves_one_line_per_run():
    histories = {
        "baseline": [{"epoch": e, "nmi": 0.5 + 0.01 * e} for e in range(3)],
        "mmt-kmeans": [{"epoch": e, "nmi": 0.5 + 0.05 * e} for e in range(3)],
    }
    fig = plot_run_curves(histories, "nmi", task="duke2market")
    assert len(fig.axes) == 1
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["baseline (hard labels)", "MMT, k-means"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.5, 0.55, 0.6])
    assert fig.get_suptitle() == "Duke → Market: NMI per epoch"
    assert fig.axes[0].get_ylabel() == "NMI"
    with pytest.raises(ValueError, match="'baseline' has no 'ari'"):
        plot_run_curves(histories, "ari")


def _histories(variants, key="net1.mAP"):
    return {v: [{"epoch": e, key: 0.1 * i + 0.01 * e} for e in range(4)] for i, v in enumerate(variants)}


def test_table_2_curves_put_at_most_five_lines_in_a_panel_and_keep_reference_colours():
    variants = ["baseline", "mmt-kmeans", "mmt-dbscan", *results.ABLATION_VARIANTS]
    fig = plot_run_curves(_histories(variants), "net1.mAP", groups=results.CURVE_PANELS)
    assert [ax.get_title() for ax in fig.axes] == list(results.CURVE_PANELS)
    assert all(1 <= len(ax.lines) <= 5 for ax in fig.axes)
    drawn = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert len(drawn) == len(variants)  # every variant is drawn somewhere
    colours = {}
    for ax in fig.axes:
        panel = [tuple(line.get_color()) for line in ax.lines]
        assert len(set(panel)) == len(panel)  # lines of one panel never share a colour
        for line in ax.lines:
            colours.setdefault(line.get_label(), set()).add(tuple(line.get_color()))
    assert len(colours["baseline (hard labels)"]) == 1 and len(colours["MMT, k-means"]) == 1
    legend_boxes = [ax.get_legend().get_window_extent() for ax in fig.axes]
    fig.canvas.draw()
    for ax, box in zip(fig.axes, legend_boxes):  # legends sit below their panel, never over the lines
        assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0


def test_curves_of_a_task_without_ablations_leave_out_panels_that_would_only_repeat():
    fig = plot_run_curves(_histories(["baseline", "mmt-kmeans", "mmt-dbscan"]), "net1.mAP",
                          groups=results.CURVE_PANELS)
    assert [ax.get_title() for ax in fig.axes] == ["baseline and MMT"]
    assert all(line.get_linestyle() == "-" for line in fig.axes[0].lines)


def test_run_curves_refuse_a_crowded_panel_and_split_many_runs_without_groups():
    many = _histories([f"run{i}" for i in range(7)])
    with pytest.raises(ValueError, match="more than 5 runs"):
        plot_run_curves(many, "net1.mAP", groups={"all": list(many)})
    fig = plot_run_curves(many, "net1.mAP")
    assert [len(ax.lines) for ax in fig.axes] == [5, 2]


def runs_table() -> pd.DataFrame:
    rows = []
    for task, variants in (("duke2market", ["direct", "baseline", "mmt-kmeans", "mmt-dbscan", "mmt-no-soft-ce"]),
                           ("market2msmt", ["direct", "baseline", "mmt-kmeans", "mmt-dbscan"])):
        for i, variant in enumerate(variants):
            for seed, delta in ((1, -1.0), (2, 0.0), (3, 4.0)):
                rows.append({"task": task, "variant": variant, "seed": seed, "mAP": 30.0 + 5 * i + delta})
    return pd.DataFrame(rows)


def test_results_figure_has_one_panel_per_task_with_spread_references_and_paper_marks():
    runs = runs_table()
    fig = results.results_figure(runs, "mAP")
    assert len(fig.axes) == 2  # no empty panel
    d2m, m2msmt = fig.axes
    assert d2m.get_title() == "Duke → Market (3 seeds)"
    assert [t.get_text() for t in d2m.get_yticklabels()] == [
        "direct transfer", "baseline (hard labels)", "MMT, k-means", "MMT, DBSCAN", "w/o soft CE"]
    assert len(m2msmt.get_yticklabels()) == 4  # a task with four variants keeps no empty slot
    assert m2msmt.get_ylim() == d2m.get_ylim()  # side by side, its bars are as thick as its neighbour's
    bars = [c for c in d2m.containers if isinstance(c, BarContainer)][0]
    np.testing.assert_allclose([b.get_width() for b in bars], [31.0, 36.0, 41.0, 46.0, 51.0])
    whiskers = d2m.containers[1].lines[2][0].get_segments()
    np.testing.assert_allclose([(s[0][0], s[1][0]) for s in whiskers][0], (29.0, 34.0))  # min–max over seeds
    verticals = sorted(line.get_xdata()[0] for line in d2m.lines if line.get_linestyle() in (":", "--"))
    assert verticals == [31.0, 36.0]  # direct transfer and baseline levels
    marks = [line for line in d2m.lines if line.get_marker() == "D"][0]
    np.testing.assert_allclose(marks.get_xdata(), [31.8, 71.2])  # the paper's Duke→Market direct and MMT
    np.testing.assert_allclose(marks.get_ydata(), [0, 2])
    assert d2m.get_xlabel() == "mAP (%)"
    assert "mean over seeds" in fig.get_suptitle() and "min–max" in fig.get_suptitle()
    colours = {tuple(b.get_facecolor()) for b in bars}
    assert len(colours) == 3  # reference rows, MMT, Table 2 ablation


def test_plot_results_names_missing_columns_and_duplicate_runs():
    runs = runs_table()
    with pytest.raises(ValueError, match=r"lacks columns \['top1'\]"):
        plot_results(runs, value="top1")
    with pytest.raises(ValueError, match="several rows for one"):
        plot_results(pd.concat([runs, runs.iloc[:1]]))


def test_image_grid_has_every_cell_and_accepts_pil_and_arrays():
    images = [np.zeros((16, 8, 3), dtype=np.uint8), Image.new("RGB", (8, 16)), np.ones((16, 8)), None]
    fig = image_grid(images, nrows=2, ncols=2, titles=["a", "b", "c", ""])
    assert len(fig.axes) == 4
    assert [len(ax.images) for ax in fig.axes] == [1, 1, 1, 0]
    assert fig.axes[2].get_title() == "c"
    with pytest.raises(ValueError, match="do not fit a 1 x 2 grid"):
        image_grid(images, nrows=1, ncols=2)
    with pytest.raises(ValueError, match=r"image 0 has shape \(3, 16, 8\)"):
        image_grid([np.zeros((3, 16, 8))], nrows=1, ncols=1)


def test_image_grid_wraps_fifteen_cameras_onto_two_lines_per_identity():
    images = [np.zeros((64, 32, 3), dtype=np.uint8)] * 45
    fig = image_grid(images, nrows=3, ncols=15, titles=[f"cam {c + 1}" for c in range(15)] * 3,
                     row_labels=["id 1", "id 2", "id 3"])
    grid = np.array(fig.axes).reshape(6, 8)
    assert [len(ax.images) for ax in grid[0]] == [1] * 8 and [len(ax.images) for ax in grid[1]] == [1] * 7 + [0]
    assert grid[1, 0].get_title() == "cam 9" and grid[2, 0].get_title() == "cam 1"
    assert [grid[r, 0].get_ylabel() for r in range(6)] == ["id 1", "", "id 2", "", "id 3", ""]
    fig.canvas.draw()
    image_px = grid[0, 0].get_window_extent().width
    assert image_px >= 55  # 15 cameras on one line of a 10 in figure would leave about 45 px
    assert fig.get_size_inches()[0] <= MAX_WIDTH_IN


def test_save_figure_writes_png_atomically(tmp_path):
    fig = plot_training_curves(HISTORY, ["mAP"], "run")
    target = tmp_path / "figs" / "curves.png"
    assert save_figure(fig, target) == target
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 1000
    save_figure(fig, target)  # overwriting works too
    assert [p.name for p in target.parent.iterdir()] == ["curves.png"]


def test_save_figure_rejects_unknown_suffix_and_leaves_nothing(tmp_path):
    fig = plot_training_curves(HISTORY, ["mAP"], "run")
    with pytest.raises(ValueError, match="suffix must be one of"):
        save_figure(fig, tmp_path / "curves.xyz")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    fig = plot_training_curves(HISTORY, ["mAP"], "run")
    target = tmp_path / "curves.png"
    save_figure(fig, target)
    before = target.read_bytes()

    def half_written(path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def _all_figures():
    history = [{"epoch": e, "loss_ce": 1.0 / (e + 1), "target.mAP": 0.1 * e,
                "pseudo_labels.nmi": 0.8, "pseudo_labels.wrong_majority_fraction": 0.2} for e in range(3)]
    rng = np.random.default_rng(0)
    yield plot_embedding(rng.normal(size=(20, 2)), np.arange(20) % 4, np.arange(20) % 5, np.zeros(20, bool), "t")
    yield from run_figures(history, "mmt-kmeans on duke2market")
    yield plot_run_curves(_histories(["baseline", "mmt-kmeans", *results.ABLATION_VARIANTS]), "net1.mAP",
                          groups=results.CURVE_PANELS)
    yield results.results_figure(runs_table())
    yield image_grid([np.zeros((64, 32, 3), dtype=np.uint8)] * 30, nrows=2, ncols=15,
                     titles=["cam 15"] * 30, row_labels=["id 1234 (15 cams)"] * 2)


def test_every_figure_fits_jupyterlab_and_no_text_is_below_ten_points():
    for fig in _all_figures():
        assert fig.get_size_inches()[0] <= MAX_WIDTH_IN and fig.dpi == 100
        fig.canvas.draw()
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert texts
        small = {t.get_text(): t.get_fontsize() for t in texts if t.get_fontsize() < MIN_FONT_PT}
        assert not small, small
        width_px = fig.get_tightbbox().width * fig.dpi
        assert width_px <= MAX_WIDTH_IN * fig.dpi + 20
