"""report/plots.py: the labor-budget figure."""

import lesion_harvester.report.plots as plots


def test_the_budget_plot_writes_how_many_lesions_each_precision_rests_on(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(fig))
    curves = {"random": {0.0: [(0.1, 1.0, 2), (0.2, 0.5, 4)], 5.0: [(0.15, None, 0), (0.1, 0.8, 5)]},
              "uncertainty": {0.0: [(0.1, 1.0)], 5.0: [(0.2, 0.9)]}}  # counts are optional
    plots.plot_budget(curves, tmp_path / "budget.png")
    (fig,) = saved
    gain_axes, precision_axes = fig.axes
    assert sorted(t.get_text() for t in precision_axes.texts) == ["n=5", "n=6"]  # the seeds' sums
    assert not gain_axes.texts
    random_line = precision_axes.lines[0]
    assert list(random_line.get_ydata()) == [0.75, 0.8]  # the mean over the seeds that harvested
