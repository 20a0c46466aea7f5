"""Progress in a headless kernel is whole text lines (readable in the saved notebook); a widget bar
only where someone's front end draws it."""

import io

from cxrlib import progress


def test_text_progress_prints_quarters_with_the_postfix():
    out = io.StringIO()
    bar = progress.TextProgress(iter(range(8)), total=8, desc="stage2 epoch 1/3", stream=out)
    for i in bar:
        bar.set_postfix(loss=f"{i / 10:.4f}")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"stage2 epoch 1/3: {n}/8 ({p}%)" for n, p in
                                                      ((2, 25), (4, 50), (6, 75), (8, 100))]
    assert lines[-1].endswith("loss=0.7000") and "\r" not in out.getvalue()


def test_headless_kernel_gets_text_and_an_interactive_one_a_widget(monkeypatch):
    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setenv("CXRLIB_HEADLESS", "1")
    assert isinstance(progress.progress_bar(range(3), total=3, desc="x", enabled=True), progress.TextProgress)
    monkeypatch.delenv("CXRLIB_HEADLESS")
    bar = progress.progress_bar(range(3), total=3, desc="x", enabled=True)
    assert type(bar).__module__.startswith("tqdm")  # tqdm.auto: the widget bar in a notebook
    assert list(bar) == [0, 1, 2]
    assert progress.progress_bar(range(3), total=3, desc="x", enabled=False) == range(3)


def test_a_counter_advanced_by_hand_prints_the_same_lines(monkeypatch):
    """The data cache and the CAM scoreboard advance their bar by hand: the same text headless."""
    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setenv("CXRLIB_HEADLESS", "1")
    out = io.StringIO()
    with progress.progress_counter(total=4, desc="scoreboard", enabled=True) as bar:
        assert isinstance(bar, progress.TextProgress)
        bar.stream = out
        bar.update(3)
        bar.update(1)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == [
        f"scoreboard: {n}/4 ({p}%)" for n, p in ((1, 25), (2, 50), (3, 75), (4, 100))]
    assert not hasattr(progress.progress_counter(total=4, desc="x", enabled=False), "stream")


def test_the_synthetic_writers_use_the_shared_bar():
    """No module keeps its own tqdm: a bar written headless would be saved as "0%"."""
    from pathlib import Path

    root = Path(progress.__file__).parent
    own = [str(p.relative_to(root)) for p in root.rglob("*.py")
           if "from tqdm" in p.read_text() and p.name != "progress.py"]
    assert own == []
