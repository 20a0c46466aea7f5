"""The ``cxrlib`` command: ``synth``, ``prepare``, ``run``, ``train``, ``ablate``, ``bench``, ``bench-data``, ``bench-reuse``,
``tables``, ``executed``.

A user error (a bad parameter, missing data, a busy run folder, a corrupt checkpoint, a failing
notebook) prints its message, not a traceback, and exits 2 for usage errors (a parameter) or 1
for data and run errors; ``--debug`` or ``CXRLIB_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from cxrlib.config.stage_table import CHAIN  # torch-free


def _synth(args) -> int:
    if args.format == "reflacx":
        from cxrlib.synthetic.reflacx import make_reflacx_like

        difficulty = {} if args.difficulty is None else {"difficulty": args.difficulty}
        try:
            out = make_reflacx_like(args.out_dir, n_images=args.n_images, seed=args.seed, overwrite=args.overwrite,
                                    **difficulty)
        except (ValueError, FileExistsError) as err:
            print(f"cxrlib synth: {err}", file=sys.stderr)
            return 2
        print(f"synthetic REFLACX-format data set in {out} (reflacx_root = reflacx_image_root = this folder)")
        return 0
    from cxrlib.synthetic.egd import make_egd_like

    difficulty = {} if args.difficulty is None else {"difficulty": args.difficulty}
    try:
        out = make_egd_like(args.out_dir, n_images=args.n_images, seed=args.seed, overwrite=args.overwrite,
                            native_shape=args.native_size, transfer_syntax=args.transfer_syntax, **difficulty)
    except (ValueError, RuntimeError, FileExistsError) as err:
        print(f"cxrlib synth: {err}", file=sys.stderr)
        return 2
    print(f"synthetic EGD-format data set in {out} (egd_root = image_root = this folder)")
    return 0


def _prepare(args) -> int:
    """The sample cache of every stage of a profile (each image size once), built in parallel."""
    from cxrlib.training import stages
    from cxrlib.config import make_config
    from cxrlib.run import check_profile_parameter, parse_value

    params = {name: parse_value(value) for name, value in (args.param or [])}
    check_profile_parameter(args.profile, params)
    params.pop("profile", None)
    if args.workers is not None:
        params["num_workers"] = args.workers
    done = set()
    for stage in args.stages:
        config = make_config(stage, args.profile, **params)  # a wrong parameter fails before any work
        kwargs = stages.dataset_kwargs(config)
        if repr(kwargs) in done:
            continue
        done.add(repr(kwargs))
        data = stages.prepare_data(config, progress=not args.no_progress)
        r = data.prepared
        print(f"{stage} ({config.image_size[0]}x{config.image_size[1]}): {r['images']} images, "
              f"{r['cached_before']} already cached, {r['built']} built in {r['seconds']:.1f} s "
              f"with {r['workers']} worker(s); cache {kwargs['cache_dir']}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {value}")
    return value


def _run(args) -> int:
    from cxrlib.run import check_profile_parameter, parse_value, run_pipeline

    params = {name: parse_value(value) for name, value in (args.param or [])}
    check_profile_parameter(args.profile, params)
    run_pipeline(args.profile, run_dir=args.run_dir, egd_root=args.egd_root, image_root=args.image_root,
                 params=params, only=args.notebooks)
    return 0


def _train(args) -> int:
    """One stage, as its notebook trains it; under ``torchrun`` on every GPU (cxrlib.training.distributed)."""
    from cxrlib import runfolder
    from cxrlib.training import distributed, stages
    from cxrlib.config import make_config
    from cxrlib.run import check_profile_parameter, parse_value

    params = {name: parse_value(value) for name, value in (args.param or [])}
    check_profile_parameter(args.profile, params)
    config = make_config(args.stage, args.profile, **{k: v for k, v in params.items() if k != "profile"})
    check_init_from(config)  # a wrong parameter or init_from fails before any work
    distributed.setup()
    try:
        # one command per run folder; under torchrun rank 0 holds it for every rank
        with runfolder.run_folder_lock(config.run_dir) if distributed.is_main() else contextlib.nullcontext():
            data = stages.prepare_data(config, progress=not args.no_progress)
            result = stages.run_stage(config, data, progress=not args.no_progress)
        if distributed.is_main():
            print(f"{config.stage} ({config.profile}, {distributed.world_size()} process(es)): {result.init}")
            print(result.history.to_string(index=False))
            print(f"best checkpoint: {stages.checkpoint_path(config)}")
    finally:
        distributed.cleanup()
    return 0


def _ablate(args) -> int:
    """Notebook 07's variants x seeds in one process, then the results table."""
    from pathlib import Path

    import pandas as pd

    from cxrlib import runfolder
    from cxrlib.evaluation import ablation, results
    from cxrlib.config import make_config
    from cxrlib.run import check_profile_parameter, parse_value

    params = {name: parse_value(value) for name, value in (args.param or [])}
    check_profile_parameter(args.profile, params)
    params.pop("profile", None)
    for name in ("variants", "seeds", "run_dir"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    config = make_config("results", args.profile, train_missing=not args.no_train, **params)
    if args.plan:
        plan = ablation.plan(config)
        print(plan.to_string(index=False))
        print(ablation.budget_text(plan))
        return 0
    if config.train_missing:  # one writer of the variants' folders (a stale one is removed before retraining)
        with runfolder.run_folder_lock(Path(config.run_dir) / "ablation", what="the ablation folder"):
            ablation.run_ablation(config, progress=not args.no_progress)
    per_seed, per_image = results.collect(config.run_dir, config.variants, config.seeds)
    summary = results.compare_variants(per_seed, per_image, reference=config.reference, n_boot=config.n_boot)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 60):
        print(results.results_table(summary).to_string())
        print(results.timing_table(config.run_dir, config.variants).round(1).to_string(index=False))
    return 0


def _bench_data(args) -> int:
    from cxrlib.bench.pipeline import benchmark_loader

    benchmark_loader(n_images=args.n_images, image_size=tuple(args.image_size), egd_root=args.egd_root,
                     image_root=args.image_root, native_shape=args.native_size, transfer_syntax=args.transfer_syntax,
                     workers=tuple(args.workers), rounds=args.rounds)
    return 0


def _bench_reuse(args) -> int:
    from cxrlib.bench.pipeline import benchmark_reuse

    benchmark_reuse(profile=args.profile, epochs=args.epochs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cxrlib.config.variants import VARIANTS  # torch-free

    from cxrlib.training.stages import TRAINABLE_STAGES  # the stage registry

    parser = argparse.ArgumentParser(prog="cxrlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: CXRLIB_DEBUG=1); allowed anywhere")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic data set (EGD-CXR or REFLACX format)")
    p.add_argument("out_dir")
    p.add_argument("--n-images", type=_positive_int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a set this command wrote before: only the files listed in its .cxrlib-synthetic.json "
                        "are removed, every other file in OUT_DIR is kept; a folder with a data set it did not write "
                        "(EGD-CXR, MIMIC-CXR) is refused")
    p.add_argument("--native-size", type=_positive_int, nargs=2, metavar=("H", "W"),
                   help="every image exactly H x W pixels, e.g. 3000 2500 as MIMIC-CXR (default: heights 320-448)")
    p.add_argument("--transfer-syntax", choices=("explicit", "jpeg2000", "jpegls"), default="explicit",
                   help="pixel data uncompressed (explicit little endian) or lossless JPEG 2000 / JPEG-LS")
    p.add_argument("--format", choices=("egd", "reflacx"), default="egd",
                   help="egd: EGD-CXR layout (default); reflacx: REFLACX layout, several readers per image")
    p.add_argument("--difficulty", type=_unit_float, default=None,
                   help="0 to 1: how faint and overlapping the class signatures are (default: 0.75 for egd, "
                        "the demo's calibration; 0 for reflacx)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("prepare", help="build the sample cache in parallel before training (resumable)")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("--stages", nargs="+", choices=CHAIN, default=list(CHAIN),
                   help="whose image sizes to cache (default: all)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per CPU core, at most 8)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a config field, e.g. -p egd_root /data/egd-cxr/1.0.0 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("--egd-root", help="EGD-CXR folder (default: the synthetic data set)")
    p.add_argument("--image-root", help="MIMIC-CXR(-JPG) root (default: --egd-root)")
    p.add_argument("--run-dir", help="run folder (default: runs/<profile>)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p epochs 3 (repeatable)")
    p.add_argument("--notebooks", nargs="+", help="only these notebooks, by number (e.g. 01 02)")
    p.set_defaults(func=_run)

    p = sub.add_parser("train", help="train one stage (also under torchrun --nproc_per_node N -m cxrlib train)")
    p.add_argument("--stage", choices=TRAINABLE_STAGES, required=True,
                   help="joint: a one-stage baseline (-p model dual|mtunet|resse_unet)")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a config field, e.g. -p epochs 3 -p run_dir runs/x (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)

    p = sub.add_parser("ablate", help="train and evaluate the ablation variants over seeds (notebook 07)")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("--variants", nargs="+", help="default: all (" + " ".join(VARIANTS) + ")")
    p.add_argument("--seeds", nargs="+", type=int, help="model seeds (default: the profile's, demo 0 1 2)")
    p.add_argument("--run-dir", help="main run folder whose data and split every variant shares "
                                     "(default: runs/<profile>); variants go to <run-dir>/ablation/")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a common config field for every stage of every variant, e.g. -p epochs 2")
    p.add_argument("--plan", action="store_true", help="only print what would be trained or linked, and the estimate")
    p.add_argument("--no-train", action="store_true", help="only read and tabulate existing results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_ablate)

    sub.add_parser("bench", help="network or per-stage throughput and memory (cxrlib bench --help for its options)")

    p = sub.add_parser("bench-data", help="loader samples/s, cold (decode, per worker count) and warm (cache)")
    p.add_argument("--n-images", type=int, default=60)
    p.add_argument("--image-size", type=int, nargs=2, default=(320, 256))
    p.add_argument("--egd-root")
    p.add_argument("--image-root")
    p.add_argument("--native-size", type=_positive_int, nargs=2, metavar=("H", "W"),
                   help="synthetic images exactly H x W, e.g. 3000 2500 (default: the small synthetic ones)")
    p.add_argument("--transfer-syntax", choices=("explicit", "jpeg2000", "jpegls"), default="explicit")
    p.add_argument("--workers", type=_positive_int, nargs="+", default=[1, 2], help="decoding processes to compare")
    p.add_argument("--rounds", type=_positive_int, default=2, help="cold passes per worker count, alternated")
    p.set_defaults(func=_bench_data)

    p = sub.add_parser("bench-reuse", help="epoch time with and without frozen-feature reuse")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("--epochs", type=int, default=2)
    p.set_defaults(func=_bench_reuse)

    p = sub.add_parser("tables", help="check the defaults tables of README.md and docs/ against the code")
    p.add_argument("--write", action="store_true", help="rewrite the tables from the code")
    p.set_defaults(func=_tables)

    p = sub.add_parser("executed", help="copy a run's executed notebooks (synthetic data only) to docs/executed/")
    p.add_argument("--run-dir", help="the finished run (default: runs/demo)")
    p.add_argument("--dest", help="default: docs/executed in the repository")
    p.set_defaults(func=_executed)
    return parser


def _tables(args) -> int:
    """The defaults tables of the docs, checked against the code or (``--write``) rewritten."""
    from cxrlib.config.tables import DOCUMENTS, stale_documents
    from cxrlib.paths import repository_root

    stale = stale_documents(repository_root(), write=args.write)
    if not stale:
        print(f"tables up to date in {', '.join(DOCUMENTS)}")
        return 0
    if args.write:
        print("rewrote the tables of " + ", ".join(stale))
        return 0
    print("tables differ from the code in " + ", ".join(stale) + "; run `make tables` (cxrlib tables --write)",
          file=sys.stderr)
    return 1


def _executed(args) -> int:
    """Copy a finished run's executed notebooks (synthetic data only) into docs/executed/."""
    from cxrlib.run import publish_executed

    copied = publish_executed(args.run_dir, args.dest)
    size = sum(p.stat().st_size for p in copied) / 2**20
    print(f"copied {len(copied)} executed notebooks ({size:.1f} MiB) to {copied[0].parent}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("CXRLIB_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv and not argv[0].startswith("-") else ""
    try:
        if argv[:1] == ["bench"]:  # its own parser (cxrlib.bench.network.build_parser): hand over every option
            from cxrlib.bench import network as bench_network, stages as bench_stages

            bench_args = bench_network.build_parser().parse_args(argv[1:])
            check_bench_counts(bench_args)
            if bench_args.suite:
                from cxrlib.bench.suite import run_suite_cli

                return run_suite_cli(bench_args)
            return (bench_stages.run_stages if bench_args.stage else bench_network.run_models)(bench_args)
        args = build_parser().parse_args(argv)  # a usage error exits 2 with argparse's message
        return args.func(args)
    except KeyboardInterrupt:
        print(f"cxrlib {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the message is the report; --debug gives the traceback
        if debug:
            raise
        return report_error(err, f"cxrlib {command}".strip())


def check_bench_counts(args) -> None:
    """``--steps 0`` would time nothing and print 0 img/s as if it were a measurement."""
    from cxrlib.config.validation import ParameterError

    for name, least in (("steps", 1), ("warmup", 0)):
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise ParameterError(f"--{name} must be an integer >= {least}, got {value}")


def check_init_from(config) -> None:
    """An ``init_from`` given explicitly (not the stage's default) must resolve now, not after the
    data preparation (`cxrlib.training.checkpoints.resolve_init` raises, naming it)."""
    import dataclasses

    from cxrlib.training.checkpoints import resolve_init

    if not hasattr(config, "init_from"):
        return
    default = next((f.default for f in dataclasses.fields(config) if f.name == "init_from"), None)
    if config.init_from != default:
        resolve_init(config)


def report_error(err: Exception, prefix: str = "cxrlib") -> int:
    """Print ``err`` as one clear message; return the exit code (2: a parameter, 1: anything else)."""
    from cxrlib.config.validation import ParameterError

    message = str(err).strip() or type(err).__name__
    expected = (ValueError, TypeError, OSError, RuntimeError, KeyError, ImportError)
    if not isinstance(err, expected) or isinstance(err, (NotImplementedError, RecursionError)):
        message = f"{type(err).__name__}: {message}"  # not a user error: keep the type for the report
    print(f"{prefix}: error: {message}", file=sys.stderr)
    print("(run again with --debug, or CXRLIB_DEBUG=1, for the traceback)", file=sys.stderr)
    return 2 if isinstance(err, ParameterError) else 1


if __name__ == "__main__":
    raise SystemExit(main())
