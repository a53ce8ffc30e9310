"""The `toau` command. Each subcommand is a thin layer over a library function."""

import argparse
import json
import logging
import sys

from toau.config import data_root, load_params


def _prepare(args: argparse.Namespace) -> int:
    from toau.data.prepare import format_summary, prepare_bandai

    params = load_params(args.params, "data")
    source = args.source or params.get("source", "bandai")
    max_clips = args.max_clips if args.max_clips is not None else params.get("max_clips")
    if source == "bandai":
        summary = prepare_bandai(
            data_root(params.get("root")) / "bandai", args.out,
            fps=params["fps"],
            split_seed=params["split_seed"],
            split_fractions=params["split_fractions"],
            max_clips=max_clips,
            workers=args.workers,
        )
    elif source == "humanml3d":
        from toau.data.humanml3d import prepare_humanml3d

        summary = prepare_humanml3d(args.source_dir or params["humanml3d_dir"], args.out, max_clips=max_clips)
    elif source == "amass":
        from toau.data.amass import prepare_amass

        summary = prepare_amass(
            args.source_dir or params["amass_dir"], args.smpl_model_dir or params["smpl_model_dir"], args.out,
            gender=args.gender or params.get("smpl_gender"),
            split_seed=params["split_seed"], split_fractions=params["split_fractions"], max_clips=max_clips,
        )
    else:
        raise ValueError(f"unknown data source {source!r}; use bandai, humanml3d or amass")
    print(format_summary(summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toau", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="turn raw motion capture into joints, features, splits and statistics")
    prepare.add_argument("--params", default=None, help="parameter file (default: params.yaml in the project)")
    prepare.add_argument("--out", default="build/data", help="output folder (default: build/data)")
    prepare.add_argument("--source", choices=["bandai", "humanml3d", "amass"], default=None,
                         help="data source (default: data.source in params.yaml)")
    prepare.add_argument("--source-dir", default=None,
                         help="folder of a humanml3d or amass source (default: data.humanml3d_dir / data.amass_dir)")
    prepare.add_argument("--smpl-model-dir", default=None,
                         help="folder holding SMPL_{NEUTRAL,MALE,FEMALE}.pkl for amass (default: data.smpl_model_dir)")
    prepare.add_argument("--gender", choices=["neutral", "male", "female"], default=None,
                         help="SMPL model gender for amass (default: each clip's own)")
    prepare.add_argument("--max-clips", type=int, default=None, help="keep an evenly spaced subset of this many clips")
    prepare.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count, at most 4)")
    prepare.add_argument("--json", action="store_true", help="also print the summary as JSON")
    prepare.set_defaults(handler=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"toau {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
