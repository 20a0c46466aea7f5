"""Root conftest: notebooks collected by nbmake run their chain in a fresh run folder.

The notebooks read ``CXRLIB_RUN_DIR`` when ``run_dir`` is None, so the test suite never reuses
(or disturbs) a user's ``runs/``. Set it yourself to keep the executed chain's outputs.
"""

import os
import tempfile

# Nobody is there to use a notebook's interactive widgets (cxrlib.viewer builds them undrawn).
os.environ.setdefault("CXRLIB_HEADLESS", "1")

if "CXRLIB_RUN_DIR" not in os.environ:
    os.environ["CXRLIB_RUN_DIR"] = tempfile.mkdtemp(prefix="cxrlib-nbmake-")
