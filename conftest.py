"""Root conftest: notebooks collected by nbmake run their chain in a fresh run folder.

The notebooks read ``CXRLIB_RUN_DIR`` when ``run_dir`` is None, so the test suite never reuses
(or disturbs) a user's ``runs/``. The folder made here (about 2 GB of smoke checkpoints) is removed
when the session ends. Set ``CXRLIB_RUN_DIR`` yourself to keep the executed chain's outputs.
"""

import os
import shutil
import tempfile

# Nobody is there to use a notebook's interactive widgets (cxrlib.explain.viewer builds them undrawn).
os.environ.setdefault("CXRLIB_HEADLESS", "1")

_MADE_HERE = None
if "CXRLIB_RUN_DIR" not in os.environ:
    _MADE_HERE = os.environ["CXRLIB_RUN_DIR"] = tempfile.mkdtemp(prefix="cxrlib-nbmake-")


def pytest_unconfigure(config):
    if _MADE_HERE is not None:
        shutil.rmtree(_MADE_HERE, ignore_errors=True)
