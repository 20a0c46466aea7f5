"""Progress in a headless kernel is whole text lines (readable in the saved notebook); a widget bar
only where someone's front end draws it."""

import io

from cxrlib.training import batches


def test_text_progress_prints_quarters_with_the_postfix():
    out = io.StringIO()
    bar = batches.TextProgress(iter(range(8)), total=8, desc="stage2 epoch 1/3", stream=out)
    for i in bar:
        bar.set_postfix(loss=f"{i / 10:.4f}")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"stage2 epoch 1/3: {n}/8 ({p}%)" for n, p in
                                                      ((2, 25), (4, 50), (6, 75), (8, 100))]
    assert lines[-1].endswith("loss=0.7000") and "\r" not in out.getvalue()


def test_headless_kernel_gets_text_and_an_interactive_one_a_widget(monkeypatch):
    monkeypatch.setattr(batches, "in_kernel", lambda: True)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setenv("CXRLIB_HEADLESS", "1")
    assert isinstance(batches.progress_bar(range(3), total=3, desc="x", enabled=True), batches.TextProgress)
    monkeypatch.delenv("CXRLIB_HEADLESS")
    bar = batches.progress_bar(range(3), total=3, desc="x", enabled=True)
    assert type(bar).__module__.startswith("tqdm")  # tqdm.auto: the widget bar in a notebook
    assert list(bar) == [0, 1, 2]
    assert batches.progress_bar(range(3), total=3, desc="x", enabled=False) == range(3)
