"""Equal stages: what determines a stage's weights, whether a stage folder is complete, and
where under a run folder an equal one already is (notebook 07, ``cxrlib ablate``).

Two stages are *equal* when their configs agree on every field that changes the weights and their
upstream stages are equal (:func:`signature`). An equal, complete stage is reused (copied) instead of
trained again: "no fusion" is the full method's stage 1b + 2, "DenseNet201 alone" is the
no-contrastive variant's stage 1b, and the main run's stages 1a-3 (notebooks 02-05) are the full
method at the main run's seed when the settings agree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cxrlib.training.checkpoints import init_path
from cxrlib.config import NOT_WEIGHT_FIELDS as _NOT_WEIGHTS  # equal stages may differ in these
from cxrlib.training.checkpoints import BEST
from cxrlib.config.stage_table import has_finetune
from cxrlib.training.history import ended
from cxrlib.training.stage_folder import FINISHED, in_progress


def _upstream(config_dict: dict) -> Path | None:
    path = init_path(config_dict.get("init_from"), config_dict["run_dir"])
    return None if path is None else path.parent


def signature(config, *, upstream: dict | None = None, drop=()) -> dict:
    """What determines a stage's weights: its config minus ``_NOT_WEIGHTS`` (and ``drop``), with
    ``init_from`` replaced by the upstream stage's signature (``upstream``, else read from the
    upstream folder's ``config.json``)."""
    d = json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config, default=str))
    up = _upstream(d)
    out = {k: v for k, v in d.items() if k not in _NOT_WEIGHTS and k not in drop}
    if "init_from" in drop:
        pass
    elif up is None:
        out["init_from"] = None
    elif upstream is not None:
        out["init_from"] = upstream
    elif (up / "config.json").is_file():
        out["init_from"] = signature(json.loads((up / "config.json").read_text()), drop=drop)
    else:
        out["init_from"] = f"missing {up}"
    return out


def chain_signatures(configs, *, drop=()) -> list[dict]:
    """Signatures of a variant's stages before any is trained: a stage whose ``init_from`` names
    the previous stage of the chain takes that stage's signature."""
    sigs = []
    for i, config in enumerate(configs):
        previous = sigs[-1] if i and config.init_from == configs[i - 1].stage else None
        sigs.append(signature(config, upstream=previous, drop=drop))
    return sigs


def folder_fingerprint(folder: Path, *, drop=()) -> str:
    """The fingerprint of the stage saved in ``folder`` (its ``config.json``)."""
    return fingerprint(signature(json.loads((Path(folder) / "config.json").read_text()), drop=drop))


def fingerprint(sig: dict) -> str:
    return hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]


def read_history(folder: Path) -> list:
    """The per-epoch rows a stage folder's trainer recorded (``history.json``), or []."""
    path = folder / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def stage_complete(folder: Path) -> bool:
    """``best.pt`` exists, no run is in progress there (the trainer's marker, removed last) and
    the trainer recorded the end of the stage (all epochs or an early stop) in its history;
    stage 3 with ``mode="finetune"``: of its fine-tuning too."""
    folder = Path(folder)
    if not ((folder / BEST).is_file() and (folder / "config.json").is_file()):
        return False
    if in_progress(folder) or in_progress(folder / "finetune"):  # a run started there has not finished
        return False
    cfg = json.loads((folder / "config.json").read_text())
    done = ended(read_history(folder))
    if has_finetune(cfg):
        done = done and ended(read_history(folder / "finetune"))
    return done


def _candidates(run_root: Path, stage: str) -> list[Path]:
    return [p for p in [run_root / stage, *sorted((run_root / "ablation").glob(f"*/seed*/{stage}"))] if p.is_dir()]


def is_done(folder: Path, fp: str) -> bool:
    """``folder`` holds a complete stage of fingerprint ``fp``."""
    return stage_complete(folder) and folder_fingerprint(folder) == fp


def find_equal(stage: str, fp: str, run_root, *, exclude=None) -> Path | None:
    """A complete ``stage`` folder under ``run_root`` with fingerprint ``fp`` (not ``exclude``)."""
    for folder in _candidates(Path(run_root), stage):
        if folder != exclude and is_done(folder, fp):
            return Path(os.path.realpath(folder))
    return None


def observed_seconds(config, run_root) -> float | None:
    """Training seconds (history) of a complete stage under ``run_root`` with the same settings
    up to the seed and the upstream weights (which do not change the cost)."""
    drop = ("seed", "init_from")
    want = fingerprint(signature(config, drop=drop))
    for folder in _candidates(Path(run_root), config.stage):
        if stage_complete(folder) and folder_fingerprint(folder, drop=drop) == want:
            return float(sum(r.get("seconds", 0.0) for r in read_history(folder) + read_history(folder / "finetune")))
    return None


def finished_with(config) -> bool:
    """``config.stage_dir`` holds a finished run whose weights these settings would give again.

    The finished run's settings are those the trainer recorded when it ended (``finished.json``),
    not the folder's ``config.json``, which a notebook's set-up cell rewrites before training, nor
    ``best.pt``'s, which a resume with other settings may leave older. Stage 3 with a fine-tuning
    phase and a ``resume`` are never taken as finished here: they train."""
    folder = Path(config.stage_dir)
    record = folder / FINISHED
    if getattr(config, "resume", False) or has_finetune(config) or not record.is_file() or not stage_complete(folder):
        return False
    saved = json.loads(record.read_text())
    return fingerprint(signature(saved)) == fingerprint(signature(config))
