"""The set-up every notebook runs first, on a laptop, in CI and on Google Colab.

``config = start("stage2", globals())`` is the first code cell after the parameters cell of every
notebook. It resolves the profile, puts the run folder on Google Drive when the notebook runs on
Colab, reports the GPU and its autocast precision, builds and saves the stage's config, prints the
environment and the paths, and checks that the upstream stage's checkpoint is there, naming the
notebook to run first when it is not.

Colab gives each notebook its own runtime, whose local disk is gone when the runtime ends. So on
Colab the run folder (and with it the sample cache, ``<run_dir>/cache``) defaults to
``<Drive>/MyDrive/cxrlib/runs/<profile>``: notebook 04 then finds the checkpoint notebook 03 wrote,
even in a new runtime or a new day.

The install cell comes before ``cxrlib`` exists in the runtime, so it cannot call this module;
:func:`install_cell_source` writes its text from the one repository URL (``pyproject.toml``'s
``[project.urls] Repository``) and a test checks that every notebook holds exactly that text.

Rerunning in the same kernel: later cells leave names (``config``, ``data``, ...) in the
notebook's globals, which the first run would read as misspelt parameters. So ``start`` keeps a
note in the namespace (``_cxrlib_start``) of IPython's input count and the values it wrote back; on
the next call it reads the stage's parameters, and the names the last literals-only cell run since
assigns (the parameters cell, edited) so that a misspelt parameter still fails at once; it ignores
the rest (even a misspelt name of an earlier, since corrected, parameters cell). ``profile`` and
``run_dir`` that it resolved itself are resolved again, so changing ``profile`` never reuses the
earlier profile's run folder.

Tests fake Colab: ``CXRLIB_COLAB=1`` stands for the ``google.colab`` module, ``CXRLIB_DRIVE_ROOT``
for the mount point and ``mount=`` for ``google.colab.drive.mount``.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

from cxrlib.config import PROFILES, repository_root
from cxrlib.run import NOTEBOOK_STAGES
from cxrlib.training.equal_stages import stage_complete
from cxrlib.training.checkpoints import BEST, init_path, resolve_init  # where init_from points: training's rule
from cxrlib.training.stages import TRAINABLE_STAGES  # stages that write <stage>/best.pt and last.pt

# stage -> the notebook that trains or writes it. The one place start() learns notebook names
# (derived from cxrlib run's list, so a new notebook such as 08 joins both at once).
STAGE_NOTEBOOKS = {stage: notebook for notebook, stage in NOTEBOOK_STAGES.items()}

# Parameters of the notebooks that are no config field: they say what start() does, not how a
# stage trains. train_upstream: train the missing upstream stages first (see train_missing_upstream).
# variant: write this run to <run_dir>/variants/<name>/ (see variant_config).
NOTEBOOK_PARAMETERS = ("train_upstream", "variant")
VARIANTS_FOLDER = "variants"
# The fields an upstream stage trained by train_upstream takes from this notebook: the same data.
_SHARED_WITH_UPSTREAM = ("run_dir", "egd_root", "image_root", "image_size", "synthetic_images", "data_seed",
                         "device", "num_workers")

DEFAULT_MOUNT_POINT = "/content/drive"
CHECKPOINT = BEST  # the best-validation checkpoint of a stage folder


def in_colab() -> bool:
    """True inside a Colab runtime (its ``google.colab`` module is loaded), or when
    ``CXRLIB_COLAB=1`` says to behave as there (tests)."""
    return "google.colab" in sys.modules or os.environ.get("CXRLIB_COLAB") == "1"


def drive_mount_point() -> Path:
    """Where Google Drive is mounted: ``/content/drive`` on Colab, ``$CXRLIB_DRIVE_ROOT`` in tests."""
    return Path(os.environ.get("CXRLIB_DRIVE_ROOT") or DEFAULT_MOUNT_POINT)


def _colab_mount(mount_point: str) -> None:
    from google.colab import drive  # only importable on Colab

    drive.mount(mount_point)


def mount_drive(mount: Callable[[str], None] | None = None) -> Path:
    """Mount Google Drive (once per runtime) and return its ``MyDrive`` folder."""
    point = drive_mount_point()
    my_drive = point / "MyDrive"
    if not my_drive.is_dir():
        try:
            (mount or _colab_mount)(str(point))
        except ImportError:
            raise RuntimeError(f"Google Drive is not mounted at {point} and google.colab is not available "
                               f"to mount it; outside Colab unset CXRLIB_COLAB, or set run_dir") from None
    if not my_drive.is_dir():
        raise RuntimeError(f"Google Drive did not mount at {point} (no {my_drive}); rerun this cell and "
                           f"accept the access request, or set run_dir to a folder of this runtime")
    return my_drive


def drive_run_dir(profile: str, my_drive: Path) -> Path:
    """The run folder a Colab notebook uses by default: one per profile, on Drive."""
    return my_drive / "cxrlib" / "runs" / profile


def _gpu_name() -> str | None:
    """The first CUDA card's name, or None without one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def choose_profile(profile: str | None, *, colab: bool, gpu: bool, egd_root) -> tuple[str, str]:
    """The profile of a run and why: an explicit one wins; ``None`` means smoke outside Colab (CI
    runs the notebooks with their defaults), and on Colab paper with a GPU and ``egd_root``,
    else demo."""
    if profile is not None:
        return profile, "set in the parameters cell"
    if not colab:
        return "smoke", "profile = None outside Colab"
    if gpu and egd_root is not None:
        return "paper", "Colab with a GPU and egd_root"
    why = "no GPU" if not gpu else "no egd_root (synthetic data)"
    return "demo", f"Colab, {why}; set profile = \"paper\" with a GPU and EGD-CXR"


def upstream_checkpoint(config) -> Path | None:
    """The checkpoint the stage starts from (``init_from``), by the rule training uses
    (:func:`cxrlib.training.checkpoints.init_path`); None when the stage starts from scratch."""
    return init_path(getattr(config, "init_from", None), config.run_dir)


def missing_upstream_message(config, path: Path) -> str:
    """What to do when the upstream checkpoint is missing: which notebook writes it, and where."""
    source = str(config.init_from)
    notebook = STAGE_NOTEBOOKS.get(source)
    if notebook is None:
        return (f"{config.stage}: init_from={source!r} points at {path}, which does not exist; give the path "
                f"of an existing checkpoint, or init_from='none' to start from random weights")
    return (f"{config.stage} starts from the {source} checkpoint {path}, which does not exist. Run notebook "
            f"{notebook} first with the same profile ({config.profile!r}) and run_dir ({config.run_dir}); "
            f"on Colab both notebooks then keep the run folder on Google Drive. Or set train_upstream = True "
            f"to train the missing stages here first, or init_from = 'none' to start from random weights.")


def check_upstream(config) -> Path | None:
    """Fail before any work when the upstream checkpoint is missing (smoke: warn, random weights)."""
    path = upstream_checkpoint(config)
    if path is None or path.is_file():
        return path
    message = missing_upstream_message(config, path)
    try:  # refuse what training would refuse (checkpoints.resolve_init), with this message
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            resolve_init(config)
    except FileNotFoundError:
        raise FileNotFoundError(message) from None
    warnings.warn(message + " (smoke profile: continuing from random weights)", stacklevel=3)
    return path


def variant_config(config, name: str):
    """``config`` for a "Try it" run named ``name``: it writes to ``<run_dir>/variants/<name>/``
    (its own data, split and cache, the same for the same ``data_seed``) and starts from the main
    run's upstream checkpoint, so ``<run_dir>/<stage>/``, which the next notebook reads, is left alone."""
    import dataclasses

    from cxrlib.training.stages import STAGES

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"parameter 'variant' must be None or a folder name (letters, digits, '-', '_', '.'), "
                         f"got {name!r}")
    changes = {"run_dir": str(Path(config.run_dir) / VARIANTS_FOLDER / name)}
    source = getattr(config, "init_from", None)
    if source in STAGES:
        changes["init_from"] = str(Path(config.run_dir) / source / CHECKPOINT)
    return dataclasses.replace(config, **changes)


def missing_upstream_chain(config) -> list[str]:
    """The upstream stages to train before ``config``'s, oldest first: following each stage's
    default ``init_from`` in the stage registry while its folder holds no finished stage."""
    from cxrlib.training.stages import STAGES

    chain, source = [], getattr(config, "init_from", None)
    while source in STAGES and not stage_complete(Path(config.run_dir) / source):
        chain.insert(0, source)
        source = STAGES[source].upstream
    return chain


def train_missing_upstream(config, params: dict, *, progress: bool = True, log=print) -> list[str]:
    """Train the missing upstream stages of ``config`` in its profile and run folder, each with
    its profile's settings and this notebook's data parameters; a line per stage. Returns them."""
    import time

    from cxrlib.config import make_config, parameter_names
    from cxrlib.training.stages import prepare_data, run_stage

    chain = missing_upstream_chain(config)
    for i, stage in enumerate(chain, 1):
        shared = {k: params[k] for k in _SHARED_WITH_UPSTREAM
                  if params.get(k) is not None and k in parameter_names(stage)}
        upstream = make_config(stage, config.profile, **{**shared, "run_dir": config.run_dir})
        log(f"train_upstream {i}/{len(chain)}: {stage} (notebook {STAGE_NOTEBOOKS[stage]}), "
            f"{upstream.epochs} epochs, profile {config.profile!r} -> {upstream.stage_dir}")
        started = time.perf_counter()
        run_stage(upstream, prepare_data(upstream, progress=progress), progress=progress)
        log(f"train_upstream {i}/{len(chain)}: {stage} done in {(time.perf_counter() - started) / 60:.1f} min")
    return chain


def _gpu_lines(config, gpu: str | None) -> list[str]:
    import torch

    from cxrlib.training.precision import autocast_settings, bf16_native

    if gpu is None:
        hint = " (on Colab: Runtime > Change runtime type > T4 GPU)" if in_colab() else ""
        return [f"GPU:          none, training runs on the CPU{hint}"]
    device = torch.device("cuda")
    autocast = autocast_settings(device, config.amp, getattr(config, "amp_dtype", "auto"))
    scaler = " with a gradient scaler" if autocast.scaler else ""
    native = "yes" if bf16_native(device) else "no (compute capability below 8.0)"
    return [f"GPU:          {gpu}", f"bf16 native:  {native}; training autocasts to {autocast.name}{scaler}"]


def _path_lines(config, upstream: Path | None) -> list[str]:
    stage_dir = Path(config.run_dir) / config.stage
    data = (f"{config.egd_root} (images: {config.image_root})" if config.egd_root is not None
            else f"synthetic EGD-format set in {Path(config.run_dir) / 'synthetic'} (written on first use)")
    lines = [f"run_dir:      {config.run_dir}", f"data:         {data}",
             f"cache:        {Path(config.run_dir) / 'cache'}"]
    if upstream is not None:
        state = "" if upstream.is_file() else "  (MISSING)"
        lines.append(f"reads:        {upstream}{state}")
    writes = stage_dir / CHECKPOINT if config.stage in TRAINABLE_STAGES else stage_dir
    lines.append(f"writes:       {writes}")
    if config.stage in TRAINABLE_STAGES and not config.resume and (stage_dir / "last.pt").is_file() \
            and not stage_complete(stage_dir):
        lines.append(f"note:         {stage_dir / 'last.pt'} is left from an interrupted run: set resume = True "
                     f"to continue it, or leave resume = False to train again from the start")
    return lines


_STATE = "_cxrlib_start"  # start's note in the notebook's namespace (a leading _: never a parameter)


def _literal_assignments(source: str) -> set[str]:
    """The names a literals-only cell assigns (``epochs = 3``: a parameters cell or papermill's
    injected one); empty for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return set()
    names = set()
    for node in body:
        if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
            return set()
        try:
            ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return set()
        names.update(t.id for t in node.targets)
    return names


def parameter_namespace(stage: str, namespace: dict) -> dict:
    """The part of ``namespace`` that :func:`start` reads as parameters (see the module docstring).

    The first call reads every public name (papermill's injected names included). A later call (a
    rerun in the same kernel) reads the stage's parameters and the names of the last literals-only
    cell run since the previous call that assigns a parameter (the parameters cell, edited): a
    misspelt name there fails; names later cells created (``config``, ``data``) are not read.
    """
    from cxrlib.config import parameter_names

    state = namespace.get(_STATE)
    history = list(namespace.get("In") or [])
    if not isinstance(state, dict):
        namespace[_STATE] = {"n_in": len(history), "written": {}}
        return dict(namespace)
    valid = set(parameter_names(stage)) | {"profile", *NOTEBOOK_PARAMETERS}
    typed = set()
    for source in history[state["n_in"]:]:
        names = _literal_assignments(str(source))
        if names & valid:  # a parameters cell, not a later cell's `n_show = 8`
            typed = names
    state["n_in"] = len(history)
    for name, value in state["written"].items():  # resolved by start, not typed: resolve again
        if name not in typed and namespace.get(name) == value:
            namespace[name] = None
    return {k: v for k, v in namespace.items() if k in valid or k in typed}


def start(stage: str, namespace: dict, *, mount: Callable[[str], None] | None = None):
    """Set up a notebook run and return its config (see the module docstring).

    ``namespace`` is the notebook's ``globals()``: the parameters cell's names. ``train_upstream``
    (a notebook parameter, no config field) trains the missing upstream stages first. When ``profile`` or
    ``run_dir`` is None, the resolved value is written back into it, so later cells see the values
    the run uses. ``mount`` replaces ``google.colab.drive.mount`` (tests).
    """
    if stage not in STAGE_NOTEBOOKS:
        raise ValueError(f"unknown stage {stage!r} for start(); the notebook stages are "
                         f"{', '.join(STAGE_NOTEBOOKS)}")
    colab = in_colab()
    gpu = _gpu_name()
    params = parameter_namespace(stage, namespace)
    written = {k: None for k in ("profile", "run_dir") if namespace.get(k) is None}
    profile, why = choose_profile(namespace.get("profile"), colab=colab, gpu=gpu is not None,
                                  egd_root=namespace.get("egd_root"))
    if profile not in PROFILES:
        raise ValueError(f"parameter 'profile' must be one of {PROFILES} or None, got {profile!r}")
    namespace["profile"] = profile
    drive_note = None
    if colab and namespace.get("run_dir") is None and not os.environ.get("CXRLIB_RUN_DIR"):
        namespace["run_dir"] = str(drive_run_dir(profile, mount_drive(mount)))
        drive_note = "on Google Drive, so it outlives this runtime (set run_dir to choose another folder)"
    elif colab and any(str(namespace.get(k) or "").startswith(str(drive_mount_point()))
                       for k in ("run_dir", "egd_root", "image_root")):
        mount_drive(mount)
    if profile == "paper" and gpu is None:
        warnings.warn("the paper profile without a CUDA GPU: 640x512 training on a CPU takes days "
                      "(about 0.1 images/s); on Colab choose a GPU runtime, or use profile = 'demo'", stacklevel=2)

    from cxrlib.config import config_from_namespace  # after the namespace holds the resolved values

    params.update({k: namespace.get(k) for k in ("profile", "run_dir")})
    train_upstream = bool(params.pop("train_upstream", False))
    variant = params.pop("variant", None)
    main = config_from_namespace(stage, params)
    if namespace.get("run_dir") is None:
        namespace["run_dir"] = main.run_dir
    namespace[_STATE]["written"] = {k: namespace[k] for k in written}
    config = main if variant is None else variant_config(main, variant)
    config.save()
    upstream = upstream_checkpoint(config)
    _print_report(config, profile, why, gpu, drive_note, upstream)
    if variant is not None:
        print(f"variant:      {variant!r}: this run writes {config.stage_dir}; {main.stage_dir}, which the next "
              f"notebook reads, is left alone (variant = None writes there)")
    if train_upstream and missing_upstream_chain(main):
        train_missing_upstream(main, {**params, "run_dir": main.run_dir})
    check_upstream(config)
    return config


def _print_report(config, profile, why, gpu, drive_note, upstream) -> None:
    from cxrlib.runtime import environment_report

    notebook = STAGE_NOTEBOOKS[config.stage]
    print(f"{notebook}: stage {config.stage!r}, profile {profile!r} ({why})")
    if drive_note:
        print(f"run folder {drive_note}")
    for line in _gpu_lines(config, gpu) + _path_lines(config, upstream):
        print(line)
    print("environment:  " + ", ".join(f"{k} {v}" for k, v in environment_report(config.seed).items()))


# --- the install cell -------------------------------------------------------------------------

_URL_LINE = re.compile(r'^\s*Repository\s*=\s*"([^"]+)"', re.MULTILINE)


def repository_url(pyproject: Path | None = None) -> str:
    """The repository URL: ``[project.urls] Repository`` of ``pyproject.toml`` (the one place to
    change it, e.g. for a fork), else the installed package's metadata."""
    path = pyproject or repository_root() / "pyproject.toml"
    if path.is_file():
        found = _URL_LINE.search(path.read_text())  # a regex: tomllib is Python 3.11+, we support 3.10
        if found:
            return found.group(1)
    from importlib.metadata import metadata

    for entry in metadata("cxrlib").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip()
    raise RuntimeError("no repository URL: pyproject.toml needs [project.urls] Repository")


_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"', re.MULTILINE)


def package_version(pyproject: Path | None = None) -> str:
    """The library's version: ``pyproject.toml``'s ``[project] version``, else the installed one."""
    path = pyproject or repository_root() / "pyproject.toml"
    if path.is_file():
        found = _VERSION_LINE.search(path.read_text())
        if found:
            return found.group(1)
    from importlib.metadata import version

    return version("cxrlib")


def install_ref(pyproject: Path | None = None) -> str:
    """The git tag the install cell pins: ``v<version>`` (tag each release so)."""
    return f"v{package_version(pyproject)}"


def install_cell_source(url: str | None = None, ref: str | None = None) -> str:
    """The text of every notebook's install cell (the first code cell).

    It installs ``cxrlib`` at the tag of the version the notebook was written for (``ref``, default
    :func:`install_ref`) from the repository on Colab, and does nothing elsewhere. Packages the
    runtime already has stay where they satisfy the library; when pip changed one, the cell shows
    pip's output and says to restart the runtime. Its names start with ``_`` (or are in config's
    non-parameter list) so that :func:`start` does not read them as parameters. If pip fails, the
    cell prints pip's last lines and stops with what to check.
    """
    url = url or repository_url()
    ref = ref or install_ref()
    return f'''# Colab only: install cxrlib {ref}, the version this notebook was written for. Outside Colab this cell does nothing.
# Today's main instead: set _ref = "main". The URL is pyproject.toml's [project.urls] Repository
# (a fork: change it there, then `make colab-urls`).
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    from importlib import metadata as _metadata

    _ref = "{ref}"
    _source = f"git+{url}@{{_ref}}"
    _before = {{(_d.metadata["Name"] or "").lower(): _d.version for _d in _metadata.distributions()}}
    _pip = subprocess.run([sys.executable, "-m", "pip", "install", _source], capture_output=True, text=True)
    if _pip.returncode != 0:
        print(_pip.stdout[-2000:] + _pip.stderr[-2000:])
        raise RuntimeError(f"pip could not install cxrlib from {{_source}} (pip's message is above). Check that "
                           "the URL is right, the repository public and the tag there (or set _ref = 'main'), "
                           "and that this runtime is online; then run this cell again.")
    _after = {{(_d.metadata["Name"] or "").lower(): _d.version for _d in _metadata.distributions()}}
    _changed = sorted(_n for _n in _before if _n and _after.get(_n) != _before[_n])
    if _changed:
        print(_pip.stdout[-3000:])
        print(f"pip changed packages this runtime had loaded or may load: {{', '.join(_changed)}}. "
              "Restart the runtime now (Runtime > Restart session), then run the notebook from the top.")
    print(f"installed cxrlib from {{_source}}")'''


def check_install_cell(source: str, url: str | None = None) -> list[str]:
    """What is wrong with a notebook's install cell (an empty list: nothing)."""
    wanted = install_cell_source(url)
    if source.strip() == wanted.strip():
        return []
    problems = ["the install cell differs from cxrlib.colab.install_cell_source()"]
    if f"git+{url or repository_url()}@" not in source:
        problems.append("it does not install from pyproject.toml's repository URL")
    if "returncode" not in source:
        problems.append("it does not report a failed pip install")
    if f'_ref = "{install_ref()}"' not in source:
        problems.append(f"it does not pin {install_ref()} (pyproject.toml's version): run `make colab-urls`")
    return problems


_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)]+/[^/\s)]+/blob/")


def sync_notebooks(paths=None, url: str | None = None) -> list[Path]:
    """Rewrite every notebook's install cell and Colab badge from the repository URL (after a
    fork changed it in ``pyproject.toml``); return the notebooks changed. The JSON keeps
    nbformat's layout, so the diff is only the changed lines."""
    import json

    url = url or repository_url()
    if not url.startswith("https://github.com/"):
        raise ValueError(f"Colab badges open GitHub repositories; {url!r} is not https://github.com/OWNER/NAME")
    badge = f"https://colab.research.google.com/github/{url.removeprefix('https://github.com/').strip('/')}/blob/"
    changed = []
    for path in paths or sorted((repository_root() / "notebooks").glob("*.ipynb")):
        raw = Path(path).read_text()
        nb = json.loads(raw)
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        if code:
            code[0]["source"] = install_cell_source(url).splitlines(keepends=True)
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = [_BADGE.sub(badge, line) for line in cell["source"]]
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        if text != raw:
            Path(path).write_text(text)
            changed.append(Path(path))
    return changed
