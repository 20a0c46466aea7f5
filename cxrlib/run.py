"""``cxrlib run``: every notebook in order, headless, with papermill.

Executed copies go to ``<run_dir>/notebooks/``; the first failure stops the run with the failing
cell's error and the executed notebook's path; the end is a summary read from ``metrics.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from cxrlib import runfolder
from cxrlib.config import STAGE_CONFIGS, make_config, parameter_names, repository_root
from cxrlib.evaluation.evaluate import SALIENCY_KEYS
from cxrlib.training.stages import NOTEBOOK_STAGES  # notebook -> the stage config its parameters cell feeds


class PipelineError(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return repository_root() / "notebooks"


def pipeline_notebooks(only=None) -> list[Path]:
    """The numbered notebooks present, in order (``only``: a subset by number or name)."""
    found = [p for name in NOTEBOOK_STAGES if (p := notebooks_dir() / name).is_file()]
    if only:
        wanted = [str(o) for o in only]
        found = [p for p in found if any(p.name.startswith(w) or p.name == w for w in wanted)]
        if not found:
            raise PipelineError(f"no notebook matches {wanted}; available: {list(NOTEBOOK_STAGES)}")
    return found


def parse_value(text: str):
    """``-p NAME VALUE`` values: Python literals where they parse (5, 0.1, True, None, (64, 64))."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_value(value):
    """A parameter as papermill can write it into a notebook: papermill turns a tuple into the
    string "(96, 96)", so tuples go as lists (the configs take either), also inside lists/dicts."""
    if isinstance(value, (tuple, list)):
        return [notebook_value(v) for v in value]
    if isinstance(value, dict):
        return {k: notebook_value(v) for k, v in value.items()}
    return value


def check_profile_parameter(profile: str, params: dict) -> None:
    """``-p profile X`` must not contradict ``--profile Y`` (one of them would be dropped)."""
    given = params.get("profile")
    if given is not None and given != profile:
        from cxrlib.config import ParameterError

        raise ParameterError(f"parameter 'profile' is {given!r} but --profile (profile=) is {profile!r}; "
                             f"give the profile once, with --profile")


def check_parameters(params: dict) -> None:
    """Fail before anything runs (no kernel, no folder) if a parameter belongs to no stage, has a
    wrong type or is out of range, or if ``egd_root`` / ``image_root`` do not exist: every stage's
    config is built and checked here."""
    known = {name for stage in STAGE_CONFIGS for name in parameter_names(stage)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise PipelineError(f"unknown parameter(s) {unknown}; valid parameters: {', '.join(sorted(known))}")
    for stage in STAGE_CONFIGS:
        accepted = {k: v for k, v in params.items() if k in parameter_names(stage) and k != "profile"}
        make_config(stage, params.get("profile", "smoke"), **accepted)  # raises on wrong types
    check_inputs_early(params)


def check_inputs_early(params: dict) -> None:
    """What a notebook would otherwise find late: the images of the master sheet under
    ``image_root`` (counted over the whole sheet, every split) and an ``init_from`` path."""
    from cxrlib.data.egd import check_image_files

    if params.get("egd_root") is not None:
        check_image_files(params["egd_root"], params.get("image_root"))
    init_from = params.get("init_from")
    if isinstance(init_from, str) and (init_from.endswith((".pt", ".pth")) or "/" in init_from):
        if not Path(init_from).expanduser().exists():
            raise FileNotFoundError(f"parameter 'init_from': no checkpoint at {init_from}; give an existing .pt "
                                    f"file, a stage name or 'none'")


def run_pipeline(profile: str = "demo", *, run_dir=None, egd_root=None, image_root=None,
                 params: dict | None = None, only=None, kernel_name: str = "python3",
                 progress: bool = True, cell_timeout: float | None = None) -> dict:
    """Execute the notebooks; return the final ``metrics.json`` (empty dict if none).

    Everything is checked before the first kernel starts; the run folder is locked while the
    notebooks run, so a second ``cxrlib run`` on it is refused at once. ``cell_timeout``: seconds
    one cell may run before the run fails (None: no limit; the test suite sets one, so that a
    kernel that stops answering fails the run instead of hanging it). The kernels run with
    ``CXRLIB_HEADLESS=1``: nobody is there to use an interactive widget.
    """
    params = dict(params or {})
    params.update({k: v for k, v in {"run_dir": run_dir, "egd_root": egd_root, "image_root": image_root}.items()
                   if v is not None})
    check_profile_parameter(profile, params)
    params["profile"] = profile
    check_parameters(params)
    notebooks = pipeline_notebooks(only)
    run_dir = Path(make_config("data", profile, run_dir=params.get("run_dir")).run_dir)
    params["run_dir"] = str(run_dir)
    with runfolder.run_folder_lock(run_dir, what=f"run folder {run_dir}"):  # one `cxrlib run` per folder
        timings = _execute(notebooks, params, run_dir, kernel_name, progress, cell_timeout)
    metrics_path = run_dir / "stage3" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    print(summary_table(metrics, timings, run_dir))
    return metrics


def _execute(notebooks, params: dict, run_dir: Path, kernel_name: str, progress: bool,
             cell_timeout: float | None = None) -> list:
    import os

    import papermill as pm

    os.environ["CXRLIB_HEADLESS"] = "1"  # inherited by the kernels papermill starts

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for notebook in notebooks:
        stage = NOTEBOOK_STAGES[notebook.name]
        names = set(parameter_names(stage)) if stage in STAGE_CONFIGS else {"profile", "run_dir"}
        given = {k: notebook_value(v) for k, v in params.items() if k in names}
        output = out_dir / notebook.name
        print(f"== {notebook.name} ({stage}) -> {output}", flush=True)
        started = time.perf_counter()
        try:
            pm.execute_notebook(str(notebook), str(output), parameters=given, cwd=str(notebook.parent),
                                kernel_name=kernel_name, progress_bar=progress, execution_timeout=cell_timeout)
        except pm.PapermillExecutionError as err:
            raise PipelineError(
                f"{notebook.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                f"executed notebook with the traceback: {output}"
            ) from None
        timings.append((notebook.name, time.perf_counter() - started))
        print(f"   done in {timings[-1][1]:.0f} s", flush=True)
    return timings


def summary_table(metrics: dict, timings, run_dir) -> str:
    lines = ["", f"run folder: {run_dir}", "notebook                                 seconds"]
    lines += [f"{name:<40} {seconds:>7.0f}" for name, seconds in timings]
    lines.append(f"{'total':<40} {sum(s for _, s in timings):>7.0f}")
    if metrics:
        scored = {"val": "validation split", "train": "training split"}.get(metrics.get("eval_split"), "test split")
        lines += ["", f"{scored + ' (metrics.json)':<32} value   95% CI"]
        if metrics.get("eval_split") == "val":  # the paper code's protocol (fidelity="code")
            lines.append("(optimistic: the same split chose the checkpoint)")
        for group, keys in (("classification", ("auc_macro", "auc_micro", "accuracy", "f1_macro")),
                            ("saliency", SALIENCY_KEYS), ("baseline_centre", SALIENCY_KEYS)):
            for key in keys:
                value = metrics.get(group, {}).get(key)
                if value is None:
                    continue
                ci = metrics.get(group, {}).get(f"{key}_ci")
                ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                lines.append(f"{group + '.' + key:<30} {value:>7.3f}   {ci_text}")
    return "\n".join(lines)


# -- executed copies for reading before running (make executed) ---------------------------------
EXECUTED_DIR = "docs/executed"


def _code_sources(path) -> list[str]:
    import nbformat

    # papermill adds a cell with the run's parameters (tagged): the executed copy's one addition of code
    return [c.source for c in nbformat.read(path, as_version=4).cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


def publish_executed(run_dir=None, dest=None) -> list[Path]:
    """Copy the executed notebooks of a finished run into ``docs/executed/`` (``make executed``),
    so that a reader sees every figure and number before running anything; return the copies.

    Only a demo or smoke run on the synthetic data is copied: a notebook whose stage config names
    an ``egd_root`` or ``reflacx_root`` (real, credentialed data) is refused, and so is one whose
    code differs from the source notebook (an old run: rerun it first).
    """
    import shutil

    run_dir = Path(run_dir) if run_dir is not None else repository_root() / "runs" / "demo"
    dest = Path(dest) if dest is not None else repository_root() / EXECUTED_DIR
    executed = sorted((run_dir / "notebooks").glob("*.ipynb"))
    if not executed:
        raise FileNotFoundError(f"no executed notebooks in {run_dir / 'notebooks'}; run `cxrlib run --profile demo` first")
    copied = []
    for path in executed:
        stage = NOTEBOOK_STAGES.get(path.name)
        record = run_dir / str(stage) / "config.json"
        if stage is None or not record.is_file():
            raise FileNotFoundError(f"{path.name}: no {record} saying which data it ran on; rerun the notebook")
        config = json.loads(record.read_text())
        if config.get("egd_root") or config.get("reflacx_root") or config.get("profile") not in ("demo", "smoke"):
            raise ValueError(f"{path.name} ran on {config.get('egd_root') or config.get('reflacx_root') or 'the synthetic data'} "
                             f"with profile {config.get('profile')!r}: only demo or smoke runs on the synthetic data "
                             "may enter the repository (PhysioNet data must never be committed)")
        if _code_sources(path) != _code_sources(notebooks_dir() / path.name):
            raise ValueError(f"{path} was run from other code than notebooks/{path.name}; rerun it first")
        dest.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copyfile(path, dest / path.name)))
    return copied


def executed_mismatches(root=None) -> list[str]:
    """The executed copies under ``root/docs/executed`` whose code cells differ from the source
    notebooks' (or that have no source notebook): those must be rebuilt (``make executed``)."""
    root = Path(root) if root is not None else repository_root()
    stale = []
    for path in sorted((root / EXECUTED_DIR).glob("*.ipynb")):
        source = root / "notebooks" / path.name
        if not source.is_file() or _code_sources(path) != _code_sources(source):
            stale.append(path.name)
    return stale
