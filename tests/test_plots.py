"""Figures people read: nothing hides the data, labels do not collide, each grid says what it shows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from vlalign.data.people import ACTIVITIES, STEREOTYPE  # noqa: E402
from vlalign.models.heads import HeadedCLIP, LinearHead  # noqa: E402
from vlalign.reporting import bias_plots  # noqa: E402


@pytest.fixture
def captured(monkeypatch):
    """Replace a module's save function with one that keeps the figure (drawn) for inspection."""
    figures = {}

    def keep(fig, path, dpi=120):
        fig.canvas.draw()
        figures[str(path).rsplit("/", 1)[-1]] = fig
        return path

    def patch(module, name):
        monkeypatch.setattr(module, name, keep)
        return figures

    return patch


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_table1_legend_hides_no_bar(captured, tmp_path, tiny_mini_clip):
    from vlalign.experiments import typographic_report as typographic

    figures = captured(typographic, "save_figure")
    methods = {m: {"clean": 0.93, "typographic": 0.2 + 0.05 * i, "clean_heldout": 0.9, "typographic_heldout": 0.15,
                   "nonreading": 0.45} for i, m in enumerate(typographic.ROW_ORDER)}
    control = {"t": [0.0, 1.0], "clean": [0.9, 0.9], "typographic": [0.2, 0.3], "written_label_rate": [0.7, 0.6]}
    beta = {"beta": [0.1, 1.0], "kl_clean": [0.2, 0.1]}
    typographic.write_plots(methods, control, beta, HeadedCLIP(tiny_mini_clip, LinearHead(16)), tmp_path)
    fig = figures["table1.png"]
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, Rectangle) and p.get_height() > 0]
    assert len(bars) == 5 * len(typographic.ROW_ORDER)  # clean, typographic, non-reading; clean and typo held-out
    assert not any(overlaps(legend, bar) for bar in bars)


def test_fig4_activity_labels_do_not_overlap(captured, tmp_path):
    figures = captured(bias_plots, "_save")
    shares = {name: [0.5] * len(ACTIVITIES) for name in ("original (t = 0)", "flipped (t = 1)", "neutralized (t* = 0.50)")}
    bias_plots.retrieval_mix_figure(ACTIVITIES, shares, tmp_path / "fig4_retrieval_mix.png", STEREOTYPE, 10)
    fig = figures["fig4_retrieval_mix.png"]
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in fig.axes[0].get_xticklabels()]
    assert len(boxes) == len(ACTIVITIES)
    for left, right in zip(boxes, boxes[1:]):
        assert left.x1 < right.x0, "x tick labels overlap"


def test_the_demo_grids_say_which_model_they_show(monkeypatch, tmp_path, tiny_mini_clip, world):
    from vlalign.experiments import demo

    titles = []

    def keep(images, titles_, path, colours=None, columns=8, suptitle=None):
        titles.append(suptitle)
        return path

    monkeypatch.setattr(demo, "prediction_grid", keep)
    demo.typographic_grid(tiny_mini_clip, world, tmp_path / "a.png", n=4, model_name="Pretrained MiniCLIP")
    demo.typographic_grid(tiny_mini_clip, world, tmp_path / "b.png", n=4, model_name="After the DPO fix (3 steps)")
    assert titles[0].startswith("Pretrained MiniCLIP: ") and titles[1].startswith("After the DPO fix (3 steps): ")
    assert "/4 clean and " in titles[0]


def test_figures_are_written_atomically_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from vlalign.reporting.figures import prediction_grid

    old = os.umask(0o022)
    try:
        path = prediction_grid(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), ["a", "b"], tmp_path / "g.png")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]
