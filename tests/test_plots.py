"""Each figure function returns a Figure with the expected axes; save_figure writes atomically."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from mmt_lib.plots import (  # noqa: E402
    image_grid,
    plot_embedding,
    plot_label_quality,
    plot_results_bars,
    plot_training_curves,
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
    np.testing.assert_allclose(first.get_ydata(), [entry[keys[0]] for entry in HISTORY])


def test_plot_training_curves_uses_position_without_epoch_and_names_missing_keys():
    fig = plot_training_curves([{"loss": 3.0}, {"loss": 2.0}], ["loss"], "t")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [0, 1])
    with pytest.raises(ValueError, match=r"\['nmi'\].*available keys"):
        plot_training_curves(HISTORY, ["nmi"], "t")


def test_plot_label_quality_one_line_per_run():
    histories = {
        "baseline": [{"epoch": e, "nmi": 0.5 + 0.01 * e} for e in range(3)],
        "mmt": [{"epoch": e, "nmi": 0.5 + 0.05 * e} for e in range(3)],
    }
    fig = plot_label_quality(histories, "nmi")
    assert len(fig.axes) == 1
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["baseline", "mmt"]
    np.testing.assert_allclose(lines[1].get_ydata(), [0.5, 0.55, 0.6])
    with pytest.raises(ValueError, match="'baseline' has no 'ari'"):
        plot_label_quality(histories, "ari")


def test_plot_results_bars_groups_by_task_with_error_bars():
    df = pd.DataFrame({
        "task": ["D->M", "D->M", "M->D", "M->D"],
        "variant": ["baseline", "mmt", "baseline", "mmt"],
        "mAP_mean": [40.0, 60.0, 35.0, 55.0],
        "mAP_std": [1.0, 2.0, np.nan, 1.5],
    })
    fig = plot_results_bars(df)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["baseline", "mmt"]
    assert [bar.get_height() for bar in bars[1]] == [60.0, 55.0]
    segments = bars[1].errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([(s[0][1], s[1][1]) for s in segments], [(58.0, 62.0), (53.5, 56.5)])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["D->M", "M->D"]
    assert ax.get_ylabel() == "mAP"
    with pytest.raises(ValueError, match=r"lacks columns \['top1_mean', 'top1_std'\]"):
        plot_results_bars(df, value="top1")


def test_image_grid_has_every_cell_and_accepts_pil_and_arrays():
    images = [np.zeros((16, 8, 3), dtype=np.uint8), Image.new("RGB", (8, 16)), np.ones((16, 8))]
    fig = image_grid(images, nrows=2, ncols=2, titles=["a", "b", "c"])
    assert len(fig.axes) == 4
    assert [len(ax.images) for ax in fig.axes] == [1, 1, 1, 0]
    assert fig.axes[2].get_title() == "c"
    with pytest.raises(ValueError, match="do not fit a 1 x 2 grid"):
        image_grid(images, nrows=1, ncols=2)
    with pytest.raises(ValueError, match=r"image 0 has shape \(3, 16, 8\)"):
        image_grid([np.zeros((3, 16, 8))], nrows=1, ncols=1)


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
