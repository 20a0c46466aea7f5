"""Progress that reads right wherever it is shown: a widget bar in a notebook someone is looking at,
whole text lines in a headless kernel (papermill, nbmake: a widget or carriage-return bar is saved
there as "0%"), tqdm's bar in a terminal. Used by every loop with a bar (training, the data cache,
the synthetic writers, the CAM scoreboard). Torch-free, bottom layer."""

from __future__ import annotations

import os
import sys
import time


def in_kernel() -> bool:
    """Whether this runs in a Jupyter (IPython) kernel, not a terminal."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def widget_front_end() -> bool:
    """Whether someone's notebook front end will draw a widget bar: a kernel, ipywidgets, and no sign
    of a headless run (``CXRLIB_HEADLESS``, which ``cxrlib run`` sets for papermill's kernels, or
    pytest's environment, which nbmake's kernels inherit). A headless run saves a widget as "0%"."""
    if os.environ.get("CXRLIB_HEADLESS") or os.environ.get("PYTEST_CURRENT_TEST") or not in_kernel():
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class TextProgress:
    """Progress as whole lines at every quarter of ``total`` (and the last item): text that reads the
    same in a saved notebook as it did live. Iterate over it, or call ``update`` (as on a tqdm bar)."""

    def __init__(self, iterable=None, *, total: int, desc: str, stream=None):
        self.iterable, self.total, self.desc = iterable, max(int(total or 0), 0), desc
        self.stream, self.postfix, self.count = stream or sys.stdout, "", 0
        self.marks = {max(1, round(self.total * q / 4)) for q in (1, 2, 3, 4)} if self.total else set()
        self.started = time.perf_counter()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        for _ in range(n):
            self.count += 1
            if self.count in self.marks:
                extra = f", {self.postfix}" if self.postfix else ""
                print(f"{self.desc}: {self.count}/{self.total} ({100 * self.count // self.total}%), "
                      f"{time.perf_counter() - self.started:.1f} s{extra}", file=self.stream, flush=True)

    def __iter__(self):
        self.started = time.perf_counter()
        for item in self.iterable:
            yield item
            self.update(1)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(iterable, *, total, desc, enabled):
    """A bar over ``iterable`` (its iterator: see below), or ``iterable`` itself when not ``enabled``."""
    if not enabled:
        return iterable
    if in_kernel() and not widget_front_end():
        return TextProgress(iter(iterable), total=total, desc=desc)
    from tqdm.auto import tqdm

    # An iterator, not the DataLoader: tqdm.auto's bar calls iter() on what it gets once more,
    # and every DataLoader iterator draws a seed from the loader's generator, so the bar alone
    # changed the shuffled order (a notebook, with bars, trained otherwise than --no-progress).
    return tqdm(iter(iterable), total=total, desc=desc, leave=False)


def progress_counter(*, total: int, desc: str, enabled: bool):
    """A bar advanced by hand (``update(n)``, ``close()``, or as a context manager)."""
    if not enabled:
        return _NoProgress()
    if in_kernel() and not widget_front_end():
        return TextProgress(total=total, desc=desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)
