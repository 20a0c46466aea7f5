"""plots.save_figure writes under the run folder; only publish_figures copies into figures/."""

import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from cxrlib.plots import publish_figures, save_figure  # noqa: E402


def run_config(run_dir, profile="demo", egd_root=None):
    return SimpleNamespace(run_dir=str(run_dir), profile=profile, egd_root=egd_root, stage="explain")


def figure():
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    return fig


def test_save_figure_writes_under_the_run_folder_only(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    monkeypatch.setattr("cxrlib.config.repository_root", lambda: repository)
    path = save_figure(figure(), "scoreboard.png", run_config(tmp_path / "run"))
    assert path == tmp_path / "run" / "figures" / "scoreboard.png" and path.stat().st_size > 0
    assert not repository.exists()
    provenance = json.loads((tmp_path / "run" / "figures" / "provenance.json").read_text())
    assert provenance == {"scoreboard.png": {"profile": "demo", "synthetic": True, "stage": "explain"}}


def test_publish_copies_demo_synthetic_figures_and_refuses_real_data(tmp_path, capsys):
    run = tmp_path / "run"
    save_figure(figure(), "scoreboard.png", run_config(run))
    save_figure(figure(), "real.png", run_config(run, profile="paper", egd_root="/data/egd"))
    save_figure(figure(), "smoke.png", run_config(run, profile="smoke"))
    copied = publish_figures(run, tmp_path / "figures")
    assert copied == [tmp_path / "figures" / "scoreboard.png"]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["scoreboard.png"]
    out = capsys.readouterr().out
    assert "not publishing real.png: made by a paper run on real data" in out
    assert "not publishing smoke.png" in out


def test_publish_without_a_demo_run_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="make demo"):
        publish_figures(tmp_path / "nothing", tmp_path / "figures")
