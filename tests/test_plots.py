"""Plotting set-up: figures must survive a headless kernel (MPLBACKEND=Agg)."""

import matplotlib

matplotlib.use("Agg")

import IPython  # noqa: E402

from cxrlib import plots  # noqa: E402


class FakeKernelShell:
    kernel = object()  # what tells a Jupyter kernel from a terminal IPython

    def __init__(self):
        self.magics = []

    def run_line_magic(self, name, line):
        self.magics.append((name, line))


def test_agg_in_a_kernel_switches_to_inline(monkeypatch):
    shell = FakeKernelShell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert plots.use_inline_backend()
    assert shell.magics == [("matplotlib", "inline")]


def test_outside_a_kernel_or_with_an_interactive_backend_nothing_changes(monkeypatch):
    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    assert not plots.use_inline_backend()
    shell = FakeKernelShell()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://ipympl.backend_nbagg")
    assert not plots.use_inline_backend() and shell.magics == []
