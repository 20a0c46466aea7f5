"""The ``cxrlib`` command: ``synth``, ``run``, ``bench``, ``bench-data``."""

from __future__ import annotations

import argparse
import sys


def _synth(args) -> int:
    from cxrlib.synthetic import make_egd_like

    out = make_egd_like(args.out_dir, n_images=args.n_images, seed=args.seed, overwrite=args.overwrite)
    print(f"synthetic EGD-format data set in {out} (egd_root = image_root = this folder)")
    return 0


def _run(args) -> int:
    from cxrlib.run import PipelineError, parse_value, run_pipeline

    params = {name: parse_value(value) for name, value in (args.param or [])}
    try:
        run_pipeline(args.profile, run_dir=args.run_dir, egd_root=args.egd_root, image_root=args.image_root,
                     params=params, only=args.notebooks)
    except PipelineError as err:
        print(f"cxrlib run: {err}", file=sys.stderr)
        return 1
    return 0


def _bench(args) -> int:
    from cxrlib import bench

    return bench.main(args.rest) or 0


def _bench_data(args) -> int:
    from cxrlib.bench import benchmark_loader

    benchmark_loader(n_images=args.n_images, image_size=tuple(args.image_size), egd_root=args.egd_root,
                     image_root=args.image_root)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxrlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic EGD-format data set")
    p.add_argument("out_dir")
    p.add_argument("--n-images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_synth)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill")
    p.add_argument("--profile", choices=("smoke", "demo", "paper"), default="demo")
    p.add_argument("--egd-root", help="EGD-CXR folder (default: the synthetic data set)")
    p.add_argument("--image-root", help="MIMIC-CXR(-JPG) root (default: --egd-root)")
    p.add_argument("--run-dir", help="run folder (default: runs/<profile>)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a notebook parameter, e.g. -p epochs 3 (repeatable)")
    p.add_argument("--notebooks", nargs="+", help="only these notebooks, by number (e.g. 01 02)")
    p.set_defaults(func=_run)

    p = sub.add_parser("bench", help="model throughput and memory", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)

    p = sub.add_parser("bench-data", help="loader samples/s, cold (decode) and warm (cache)")
    p.add_argument("--n-images", type=int, default=60)
    p.add_argument("--image-size", type=int, nargs=2, default=(320, 256))
    p.add_argument("--egd-root")
    p.add_argument("--image-root")
    p.set_defaults(func=_bench_data)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
