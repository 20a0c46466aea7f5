"""Checkpoints: atomic and checksummed on write, verified on read; a stage's initial weights.

Every checkpoint cxrlib writes is a dict (model, optimiser, ..., config) with one more entry,
``integrity``: the SHA-256 of everything else in it (each tensor's dtype, shape and bytes, every
plain value), computed before saving. :func:`load_checkpoint` recomputes it after loading, so a
flipped block on disk or a bad copy is reported instead of training on corrupt weights; a
truncated or garbage file is reported with its path and what to do. Files are always read with
``weights_only=True``: cxrlib never unpickles arbitrary objects.

:func:`resolve_init` turns a config's ``init_from`` (a stage name, a checkpoint path or
``"none"``) into the checkpoint to start from; :func:`load_init` loads the named parts of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from cxrlib.config import NOT_WEIGHT_FIELDS
from cxrlib.config.stage_table import TRAINING_STAGES
from cxrlib.diskspace import disk_full_error
from cxrlib.runfolder import unique_tmp

BEST, LAST = "best.pt", "last.pt"
INTEGRITY = "integrity"
# Stages that train and write best.pt / last.pt (init_from may name them).
CHECKPOINT_STAGES = TRAINING_STAGES  # the stages that write <stage>/best.pt (the stage table)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or does not fit: the message says which and what to do."""


def _feed(h, obj) -> None:
    if torch.is_tensor(obj):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):  # the same after a save/load round trip either way
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:
        text = repr(obj)
        h.update(f"S{type(obj).__name__}:{len(text)}:{text}".encode())


def state_digest(state) -> str:
    """SHA-256 over a checkpoint's content (tensors by dtype, shape and bytes; plain values by repr)."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def atomic_save(obj, path) -> Path:
    """torch.save with a checksum, to a unique temporary file, then rename: a crash never leaves
    half a checkpoint, and two writers never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != INTEGRITY}
        obj[INTEGRITY] = {"algorithm": "sha256", "digest": state_digest(obj)}
    tmp = unique_tmp(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err, path, _tensor_bytes(obj), what="the checkpoint")
        if full is None:
            raise
        raise full from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists): about what torch.save writes."""
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _advice(path: Path) -> str:
    if path.name == LAST:
        return (f"delete it and rerun the stage from its start (resume=False); {path.parent / BEST} keeps the "
                f"best weights so far")
    if path.name == BEST:
        return (f"rerun the stage to rewrite it (an interrupted stage continues from {path.parent / LAST} "
                f"with resume=True)")
    return "copy the file again, or point init_from at another checkpoint"


def _reason(err: Exception) -> str:
    """PyTorch's own reason, without its advice to load with weights_only=False."""
    import re

    text = str(err)
    unsupported = re.search(r"unsupported (global: GLOBAL \S+|GLOBAL \S+|operand \S+|[^.\n]*)", text, re.IGNORECASE)
    if unsupported:
        return f"{type(err).__name__}: {unsupported.group(0)}"
    first = (text.strip().splitlines() or [""])[0]
    if not first or "weights_only" in first or "Weights only" in first:
        return type(err).__name__
    return f"{type(err).__name__}: {first[:200]}"


def is_pickled_payload(err: Exception) -> bool:
    """torch's weights-only unpickler refused a global, the mark of a pickled object (its wording
    changed across versions: "Unsupported global: GLOBAL x", "unsupported GLOBAL x" in 2.14).
    Garbage bytes fail otherwise ("unsupported operand", a bad zip) and count as unreadable."""
    return "unsupported global" in str(err).lower()


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``) and verify its checksum.

    Raises FileNotFoundError (no file) or :class:`CheckpointError` naming the file and what to
    do (truncated, not a checkpoint, or changed since it was written). A file without a
    checksum (an older cxrlib, or another program's state_dict) loads with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage, wrong format: assorted errors deep in torch
        if isinstance(err, pickle.UnpicklingError) and is_pickled_payload(err):
            raise CheckpointError(
                f"{path}: holds a pickled payload (Python objects other than tensors and plain values), which "
                f"cxrlib refuses to unpickle, so nothing in it ran ({_reason(err)}); the file itself is intact. "
                f"Save the weights alone (torch.save(model.state_dict(), path)), or {_advice(path)}") from None
        raise CheckpointError(
            f"{path}: cannot read this checkpoint ({size} bytes; truncated, or not a PyTorch file: "
            f"{_reason(err)}); {_advice(path)}") from None
    if not isinstance(state, dict) or INTEGRITY not in state:
        warnings.warn(f"{path}: no checksum (written by an older cxrlib or another program); loaded unverified",
                      stacklevel=2)
        return state
    record = state.pop(INTEGRITY)
    if not isinstance(record, dict) or record.get("digest") != state_digest(state):
        raise CheckpointError(
            f"{path}: checksum mismatch: the file changed after it was written (a damaged disk block or "
            f"an incomplete copy), so its weights cannot be trusted; {_advice(path)}")
    return state


def _current_keys(model: nn.Module, weights: dict) -> dict:
    """``weights`` with the keys of parts renamed since the checkpoint was written put under their
    current names (the networks' ``current_keys``; e.g. stage 1b's ``classifier.*`` ->
    ``linear_head.*``), so the checks below compare names the model knows."""
    rename = getattr(model, "current_keys", None)
    return rename(weights) if rename is not None else weights


def load_weights(model: nn.Module, state: dict, source, *, key: str = "model") -> None:
    """``model.load_state_dict(state[key])``, with an error naming ``source`` and the settings
    the checkpoint was written with when the shapes or names do not fit."""
    weights = _current_keys(model, state.get(key, state))
    own = model.state_dict()
    wrong = [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
             for k, v in weights.items() if k in own and torch.is_tensor(v) and v.shape != own[k].shape]
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if wrong or missing or unexpected:
        saved = state.get("config") or {}
        settings = ", ".join(f"{n}={saved[n]!r}" for n in ("stage", "model", "base_width", "densenet_arch")
                             if n in saved)
        detail = "; ".join(wrong[:2] + [f"{len(missing)} weights missing (e.g. {missing[0]})"] * bool(missing)
                           + [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] * bool(unexpected))
        raise CheckpointError(
            f"{source}: the weights do not fit this model ({detail}). The checkpoint was written with "
            f"{settings or 'unknown settings'}: use the same settings (e.g. base_width) or rerun that stage")
    model.load_state_dict(weights)


def load_init(model: nn.Module, source, *, parts=None) -> list[str]:
    """Initialise ``parts`` of ``model`` (default: every part) from a checkpoint.

    Only keys of the named parts are read, and each must match in name and shape; a part whose
    weights are absent from the checkpoint is an error, never a silent partial load.
    Returns the parts loaded.
    """
    state = load_checkpoint(source) if not isinstance(source, dict) else source
    weights = _current_keys(model, state.get("model", state))
    parts = tuple(parts) if parts is not None else tuple(model.parts())
    own = model.state_dict()
    loaded = {}
    for part in parts:
        keys = [k for k in own if k.startswith(part + ".")]
        missing = [k for k in keys if k not in weights]
        if missing:
            raise CheckpointError(f"{source}: no weights for part {part!r} (e.g. {missing[0]}); is it the "
                                  f"checkpoint of another model? {_advice(Path(str(source)))}")
        for k in keys:
            if weights[k].shape != own[k].shape:
                saved = state.get("config") or {}
                raise CheckpointError(
                    f"{source}: {k} has shape {tuple(weights[k].shape)}, the model expects {tuple(own[k].shape)} "
                    f"(the checkpoint was written with base_width={saved.get('base_width', '?')}); use the "
                    f"same settings or rerun that stage")
            loaded[k] = weights[k]
    model.load_state_dict(loaded, strict=False)
    return list(parts)


def warn_missing_init(stage: str, path: Path, profile: str) -> None:
    """Smoke runs may start a stage alone: warn and keep the random init. Other profiles fail."""
    message = (f"{stage}: no upstream checkpoint at {path}; run the previous notebook first, or set "
               f"init_from='none' to start from random weights")
    if profile != "smoke":
        raise FileNotFoundError(message)
    warnings.warn(message + " (smoke profile: continuing from random weights)", stacklevel=3)


def _is_path(text: str) -> bool:
    return text.endswith((".pt", ".pth")) or "/" in text or os.sep in text


def init_path(init_from, run_dir) -> Path | None:
    """Where ``init_from`` points, without checking that it is there: None for ``"none"``/None;
    a path (``*.pt``, or anything with a ``/``; a stage folder: its ``best.pt``) as given; a
    stage name: that stage's ``best.pt`` in ``run_dir``. :func:`resolve_init` checks on top."""
    if init_from is None or str(init_from).strip().lower() == "none":
        return None
    text = str(init_from).strip()
    if _is_path(text):
        path = Path(text).expanduser()
        return path / BEST if path.is_dir() and (path / BEST).is_file() else path
    return Path(run_dir) / text / BEST


def resolve_init(config) -> Path | None:
    """The checkpoint ``config.init_from`` names: None for ``"none"``/None, else a path.

    A path (``*.pt``, or anything with a ``/``) must exist; a stage name must be a stage
    (``CHECKPOINT_STAGES``) whose ``best.pt`` exists in the run folder. The one tolerated gap:
    the stage's *default* upstream stage missing in the smoke profile (a notebook run alone)
    warns and returns the missing path, so the caller keeps random weights.
    """
    path = init_path(config.init_from, config.run_dir)
    if path is None:
        return None
    text = str(config.init_from).strip()
    if _is_path(text):
        if not path.is_file():
            raise FileNotFoundError(
                f"{config.stage}: init_from={text!r}: no checkpoint at {path}; give an existing .pt file, a "
                f"stage name of the run folder ({', '.join(CHECKPOINT_STAGES)}) or 'none' for random weights")
        return path
    if text not in CHECKPOINT_STAGES:
        raise ValueError(
            f"{config.stage}: init_from={text!r} is neither a stage ({', '.join(CHECKPOINT_STAGES)}) nor a "
            f"checkpoint path (*.pt); use one of those or 'none' for random weights")
    if path.is_file():
        return path
    default = next((f.default for f in dataclasses.fields(config) if f.name == "init_from"), None)
    if text == default:
        warn_missing_init(config.stage, path, config.profile)  # raises outside the smoke profile
        return path
    raise FileNotFoundError(
        f"{config.stage}: init_from={text!r} names {path}, which does not exist; train {text} first (its "
        f"notebook, or cxrlib train --stage {text}) in run folder {config.run_dir}, or set init_from='none'")


def check_resumable(saved: dict, config, path) -> None:
    """Refuse to resume ``path`` when a setting that changes the weights differs from the saved run.

    Only ``epochs`` (to extend a run) and the fields of ``NOT_WEIGHT_FIELDS`` may change;
    anything else would train the rest of the stage under other settings than ``config.json``
    records.
    """
    import json

    def plain(value):
        return json.loads(json.dumps(value, default=str))

    current = config.to_dict()
    allowed = NOT_WEIGHT_FIELDS | {"epochs"}
    differ = [f"{k}: {saved[k]!r} in the checkpoint, {current[k]!r} now" for k in current
              if k in saved and k not in allowed and plain(saved[k]) != plain(current[k])]
    if differ:
        raise ValueError(
            f"{config.stage}: cannot resume from {path}: {len(differ)} setting(s) that change the weights "
            f"differ from the interrupted run ({'; '.join(differ)}). Resume with the saved values, or train "
            f"afresh: resume=False (overwrites this stage) or a new run folder (run_dir)")
