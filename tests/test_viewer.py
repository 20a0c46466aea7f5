"""The interactive viewer of notebook 06: drawn for a person, built undrawn in headless runs."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from cxrlib.explain import viewer  # noqa: E402

DATA = [{"label": k % 3} for k in range(6)]


@pytest.fixture
def drawn(monkeypatch):
    calls = []

    def fake_show(data, index, model, **kwargs):
        calls.append((index, kwargs["method"]))
        return plt.figure()

    monkeypatch.setattr(viewer, "show_comparison", fake_show)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    return calls


def test_a_person_gets_the_first_view_drawn(monkeypatch, drawn):
    monkeypatch.delenv("CXRLIB_HEADLESS", raising=False)
    box = viewer.interactive_comparison(DATA, model := object(), encoder_model=None)
    assert drawn and drawn[-1][1] == "final_gradcam" and model is not None
    method = box.children[0].children[2]
    method.value = "centre_bias"  # a control change redraws
    assert drawn[-1] == (drawn[-1][0], "centre_bias")


def test_a_headless_run_builds_the_controls_without_drawing(monkeypatch, drawn):
    monkeypatch.setenv("CXRLIB_HEADLESS", "1")
    box = viewer.interactive_comparison(DATA, object())
    assert not drawn and len(box.children) == 3  # two rows of controls and the (empty) output
