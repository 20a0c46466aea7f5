"""Where the repository is: the one path every other default is resolved from.

It imports nothing of cxrlib, so any module (the configs, the figures) may ask it.
"""

from __future__ import annotations

from pathlib import Path


def repository_root() -> Path:
    """The checkout holding this package (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "pyproject.toml").is_file() and (parent / "cxrlib").is_dir():
            return parent
    return Path.cwd()
