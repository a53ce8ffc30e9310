"""The `toau` command. Each subcommand is a thin layer over a library function."""

import argparse
import gzip
import importlib
import json
import logging
import os
import sys
import zlib
from pathlib import Path

from toau.config import data_root, load_params

DEFAULT_TOKENIZER = "build/tokenizer"

# Modules that add their own subcommands through `register(commands)`, beside those defined here.
COMMAND_MODULES: tuple[str, ...] = ("toau.edge.commands", "toau.cloud.commands")
EXIT_ERROR = 2
EXIT_CODEBOOK_MISMATCH = 3  # the packet was made with another tokenizer than the one loaded


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (threads, clips)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def check_output_file(option: str, path: str | os.PathLike) -> None:
    """Raise before any work if `path` cannot be written: its folder is missing or read-only, or it is a folder."""
    path = Path(path)
    folder = path.resolve().parent
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder; give a file name inside it")
    if not folder.is_dir():
        raise FileNotFoundError(f"{option}: folder {folder} for {path} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{option}: folder {folder} is not writable; choose another output path")


def check_input_file(option: str, path: str | os.PathLike) -> None:
    """Raise if `path` is missing or is a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option}: {path} is a folder; give a file")
    if not path.exists():
        raise FileNotFoundError(f"{option}: {path} not found")


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


def _encode(args: argparse.Namespace) -> int:
    from toau.channel.codec import encode_motion, load_motion, load_tokenizer

    check_input_file("input", args.input)
    check_output_file("-o", args.output)
    tokenizer = load_tokenizer(args.tokenizer, require_index_model=args.entropy)
    try:
        features = load_motion(args.input, joint_map=args.joint_map)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{args.input} is a damaged or truncated gzip file ({error}); fetch or compress it again"
        ) from None
    data = encode_motion(tokenizer, features, entropy=args.entropy)
    Path(args.output).write_bytes(data)
    frames = len(features) // tokenizer.frames_per_index * tokenizer.frames_per_index
    print(
        f"{args.output}: {len(features)} feature rows -> {frames // tokenizer.frames_per_index} indices, "
        f"{len(data)} bytes ({'range-coded' if args.entropy else 'fixed 9-bit'}), "
        f"{8 * len(data) / frames:.3f} bits per frame over {frames} frames (header included)"
    )
    return 0


def _decode(args: argparse.Namespace) -> int:
    import numpy as np

    from toau.channel.codec import decode_motion, load_tokenizer
    from toau.channel.packet import CodebookMismatchError

    check_input_file("packet", args.packet)
    check_output_file("-o", args.output)
    tokenizer = load_tokenizer(args.tokenizer)
    data = Path(args.packet).read_bytes()
    try:
        features, packet = decode_motion(tokenizer, data)
    except CodebookMismatchError as error:
        print(f"toau decode: error: {error} (tokenizer folder: {args.tokenizer})", file=sys.stderr)
        return EXIT_CODEBOOK_MISMATCH
    if packet.fps != tokenizer.fps:
        raise ValueError(
            f"packet fps is {packet.fps}, but the tokenizer decodes {tokenizer.fps} fps motion; "
            "the packet is damaged or was made by another encoder"
        )
    arrays = {"features": features, "indices": packet.indices, "fps": np.int64(packet.fps)}
    if args.joints:
        from toau.motion.humanml3d import features_to_joints

        arrays["joints"] = features_to_joints(features).astype(np.float32)
    # Through an open file, because np.savez appends .npz to a path that lacks it.
    with open(args.output, "wb") as file:
        np.savez(file, **arrays)
    print(
        f"{args.packet}: {len(data)} bytes, {packet.index_count} indices -> {args.output}: "
        f"features {features.shape}" + (f", joints {arrays['joints'].shape}" if args.joints else "")
        + (f", {8 * len(data) / len(features):.3f} bits per frame" if len(features) else "")
    )
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
    prepare.add_argument("--max-clips", type=positive_int, default=None, help="keep an evenly spaced subset of this many clips")
    prepare.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: CPU count, at most 4)")
    prepare.add_argument("--json", action="store_true", help="also print the summary as JSON")
    prepare.set_defaults(handler=_prepare)

    encode = commands.add_parser("encode", help="compress a motion clip into a packet of codebook indices")
    encode.add_argument("input", help="features .npy (T, 263), joints .npy (F, 22, 3) at 20 fps in metres, or .bvh[.gz]")
    encode.add_argument("-o", "--output", required=True, help="packet file to write, e.g. clip.toau")
    encode.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"tokenizer folder (default: {DEFAULT_TOKENIZER})")
    encode.add_argument("--entropy", action="store_true", help="range-code the indices instead of 9 bits each")
    encode.add_argument("--joint-map", default="bandai", help="joint map preset or YAML file for BVH input (default: bandai)")
    encode.set_defaults(handler=_encode)

    decode = commands.add_parser("decode", help="decode a packet into features (4N, 263)")
    decode.add_argument("packet", help="packet file written by `toau encode`")
    decode.add_argument("-o", "--output", required=True, help=".npz to write with features, indices and fps")
    decode.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help=f"tokenizer folder (default: {DEFAULT_TOKENIZER})")
    decode.add_argument("--joints", action="store_true", help="also store joints (4N, 22, 3) in metres")
    decode.set_defaults(handler=_decode)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, PermissionError, IsADirectoryError, NotADirectoryError) as error:
        print(f"toau {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
