"""A stage's configuration from a profile and parameters, and the notebook parameter check.

Every notebook has a ``parameters`` cell whose names are exactly the fields of its stage's
config (the dataclasses of :mod:`cxrlib.config.stage_configs`, re-exported here). papermill, ``cxrlib
run -p NAME VALUE`` and a Colab user all set the same names; :func:`make_config` puts them on top
of the profile's defaults (:mod:`cxrlib.config.profiles`), and :func:`config_from_namespace` turns a
notebook's variables into a config. Both fail at once, listing the valid names, if a parameter
is unknown, does not apply to the stage, or has the wrong type or range.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import fields
from pathlib import Path

from cxrlib.paths import repository_root  # noqa: F401 (colab and plots import it from here)
from cxrlib.config.choices import FIELD_CHOICES
from cxrlib.config.profiles import PROFILE_DEFAULTS, PROFILES
# the dataclasses live one module down; importing them from here is the public way
from cxrlib.config.stage_configs import (DEFAULT_CAMS, NOT_WEIGHT_FIELDS, STAGE_CONFIGS, ContrastiveConfig,  # noqa: F401
                                  DataConfig, EncoderConfig, ExplainConfig, ExternalConfig, FusionConfig,
                                  JointConfig, ResultsConfig, SaliencyConfig, StageConfig)
from cxrlib.config.validation import ParameterError, check_data_roots, check_ranges
from cxrlib.config.fidelity import FIDELITY, derived_early_stopping, preset_values
from cxrlib.config.variants import check_results_config


def _check_type(name: str, value, annotation):
    """Coerce papermill/CLI values to the field's type or raise a clear TypeError."""
    hint = typing.get_type_hints(StageConfig).get(name, annotation) if isinstance(annotation, str) else annotation
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ParameterError(f"parameter {name!r} may not be None")
    for option in options:
        if option is type(None):
            continue
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
        if option is tuple and isinstance(value, (list, tuple)):
            return tuple(value)
    wanted = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ParameterError(f"parameter {name!r} must be {wanted}, got {value!r} ({type(value).__name__})")


def make_config(stage: str, profile: str = "smoke", **params):
    """The config of ``stage`` under ``profile``, with ``params`` (not None) on top."""
    if stage not in STAGE_CONFIGS:
        raise ParameterError(f"unknown stage {stage!r}; valid: {sorted(STAGE_CONFIGS)}")
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r}; valid: {PROFILES}")
    cls = STAGE_CONFIGS[stage]
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {unknown} for {cls.__name__} ({stage}); valid parameters: {', '.join(parameter_names(stage))}"
        )
    unused = sorted(set(params) & cls.inapplicable)
    if unused:
        raise ParameterError(f"parameter(s) {unused} do not apply to {cls.__name__} ({stage}), which does not read "
                        f"them; valid parameters: {', '.join(parameter_names(stage))}")
    merged = {}
    defaults = PROFILE_DEFAULTS[profile]
    for source in (defaults.get("common", {}), defaults.get(stage, {})):
        merged.update({k: v for k, v in source.items() if k in valid})
    _apply_fidelity(merged, params, cls, stage)
    merged.update({k: v for k, v in params.items() if v is not None})
    _explicit_sigma(merged, params)
    merged["profile"] = profile
    checked = {k: _check_type(k, v, hints[k]) for k, v in merged.items()}
    config = cls(**checked)
    return _finalise(config)


def _finalise(config):
    from cxrlib.config.validation import check_image_size

    try:
        config.image_size = check_image_size(config.image_size)
    except ValueError as err:
        raise ParameterError(f"parameter 'image_size': {err}") from None
    if config.run_dir is None:  # CXRLIB_RUN_DIR lets the test suite run notebooks in a fresh folder
        config.run_dir = os.environ.get("CXRLIB_RUN_DIR") or str(repository_root() / "runs" / config.profile)
    config.run_dir = str(Path(config.run_dir).expanduser().resolve())
    if config.egd_root is not None and config.image_root is None:
        config.image_root = config.egd_root
    check_data_roots(config)
    present = {f.name for f in fields(config)}
    choices = {name: allowed for name, allowed in FIELD_CHOICES.items() if name in present}
    if isinstance(config, ResultsConfig):
        check_results_config(config)
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ParameterError(f"parameter {name!r} must be one of {allowed}, got {getattr(config, name)!r}")
    check_ranges(config)
    if not 0 <= config.synthetic_difficulty <= 1:
        raise ParameterError(f"parameter 'synthetic_difficulty' must lie in [0, 1], got {config.synthetic_difficulty!r}")
    if config.kld_eps < 0:
        raise ParameterError(f"parameter 'kld_eps' must be >= 0, got {config.kld_eps!r}")
    if isinstance(config.activation_checkpointing, str) and not config.activation_checkpointing.strip():
        raise ParameterError("parameter 'activation_checkpointing' must be True, False, 'auto' or UNet level names "
                             "such as 'res_se.0,decoder.4', got ''")
    if not config.checkpoint_budget_gib > 0:
        raise ParameterError(f"parameter 'checkpoint_budget_gib' must be > 0 (GiB), got {config.checkpoint_budget_gib!r}")
    return config


def _apply_fidelity(merged: dict, params: dict, cls, stage: str) -> None:
    """The ``fidelity`` preset (cxrlib.config.fidelity) between the profile and the parameters:
    explicit parameters win; fields the stage does not read are left out."""
    fidelity = params.get("fidelity") or merged.get("fidelity") or "method"
    if fidelity not in FIDELITY:
        raise ParameterError(f"parameter 'fidelity' must be one of {FIDELITY}, got {fidelity!r}")
    names = {f.name for f in fields(cls)} - cls.inapplicable
    merged.update({k: v for k, v in preset_values(fidelity, stage).items() if k in names})
    if fidelity != "method" and "early_stopping" in names and params.get("early_stopping") is None:
        patience = params.get("plateau_patience")
        patience = merged.get("plateau_patience", cls.plateau_patience) if patience is None else patience
        merged["early_stopping"] = derived_early_stopping(patience)


def _explicit_sigma(merged: dict, params: dict) -> None:
    """A ``sigma`` (native pixels) the caller sets replaces the profile's ``sigma_frac``, unless the
    caller sets ``sigma_frac`` too (which then wins, as in EGDDataset): the way back to pixels."""
    if params.get("sigma") is not None and params.get("sigma_frac") is None:
        merged["sigma_frac"] = None


_NOT_PARAMETERS = {"In", "Out", "exit", "quit", "get_ipython", "display", "IN_COLAB"}


def config_from_namespace(stage: str, namespace: dict):
    """Build a stage config from a notebook's globals (its parameters cell, maybe papermill's).

    Every public, non-module, non-callable global is taken as a parameter, so a parameter
    injected by papermill under a wrong name is caught here instead of being silently ignored.
    """
    params = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in _NOT_PARAMETERS
        and not isinstance(v, types.ModuleType) and not callable(v)
    }
    profile = params.pop("profile", "smoke")
    return make_config(stage, profile, **params)


def load_config(path):
    """A config saved by :meth:`StageConfig.save` (checkpoints hold the same dict)."""
    data = json.loads(Path(path).read_text()) if not isinstance(path, dict) else dict(path)
    cls = STAGE_CONFIGS[data.pop("stage")]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def parameter_names(stage: str) -> list[str]:
    """The parameters a stage's notebook (and ``make_config``) accepts: its fields minus ``inapplicable``."""
    cls = STAGE_CONFIGS[stage]
    return [f.name for f in fields(cls) if f.name not in cls.inapplicable]


