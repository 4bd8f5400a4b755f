"""Plot helpers: deterministic files and readable log axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lmrepro.analysis import plots  # noqa: E402


def test_log_ticks_label_exactly_the_data_values_in_plain_numbers():
    fig, ax = plt.subplots()
    ax.plot([2, 16, 256], [1, 2, 3])
    ax.set(xscale="log")
    plots.log_ticks(ax, [16, 2, 256, 16])
    assert list(ax.get_xticks()) == [2.0, 16.0, 256.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "16", "256"]
    assert len(ax.xaxis.get_minorticklocs()) == 0
    plt.close(fig)


def test_saved_figures_are_byte_identical_across_saves(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    a, b = plots.save(fig, tmp_path / "a.png"), plots.save(fig, tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes()
    plt.close(fig)
