"""Command-line entry point: ``python -m cmt <verb> ...`` (one verb per stage; thin wrappers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmt.config import ConfigError, load_config


def _demo(args: argparse.Namespace) -> int:
    from cmt.stages import teacher

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path("results") / cfg["name"] / "teacher"
    meta = teacher.run(cfg, out, work_dir=Path(args.work) if args.work else Path("work") / cfg["name"] / "teacher")
    print(json.dumps({"out": str(out), **meta["train"], "parameters": meta["parameters"]}, indent=2))
    print(f"sample grid: {out / 'samples.png'}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    for path in args.configs:
        load_config(path)
        print(f"{path}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmt", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)
    demo = sub.add_parser("demo", help="train the teacher on the configured data and write a sample grid")
    demo.add_argument("--config", default="config/config.yaml")
    demo.add_argument("--out", help="output folder (default: results/<name>/teacher)")
    demo.add_argument("--work", help="resume-checkpoint folder (default: work/<name>/teacher)")
    demo.set_defaults(func=_demo)
    check = sub.add_parser("check-config", help="validate config files against the schema")
    check.add_argument("configs", nargs="+")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"config error:\n{err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
