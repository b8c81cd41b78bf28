"""The ``d3r`` command. Thin: parses arguments and calls library functions.

Every command that reads a config takes ``--config PATH`` plus overrides ``--section.field VALUE``
(the same syntax as the jobs). A bad config exits with status 2 and names the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import ConfigError, D3RConfig, config_to_yaml, load_config, split_config_args
from d3r.entry import exit_code_for, setup_logging


def _config(rest: Sequence[str]) -> D3RConfig:
    path, overrides = split_config_args(rest)
    return load_config(path, overrides)


def _cmd_config_show(args: argparse.Namespace, rest: list[str]) -> int:
    print(config_to_yaml(_config(rest)), end="")
    return 0


def _cmd_synth(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.synthetic import export_scenes

    if rest:
        raise ConfigError(f"d3r synth: unexpected arguments {rest}")
    width, height = _parse_size(args.size)
    paths = export_scenes(args.out, args.scenes, args.views, (width, height), args.seed, args.camera_path)
    print(f"wrote {len(paths)} scenes ({args.views} views each, {width}x{height}) to {args.out}")
    return 0


def _cmd_scenes_list(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.catalog import format_scene_list

    print(format_scene_list(_config(rest)))
    return 0


def _cmd_scenes_show(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.catalog import format_scene

    print(format_scene(_config(rest), args.scene))
    return 0


def _cmd_cache_run(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.cache.pipeline import run_cache_job

    summary = run_cache_job(_config(rest))
    print(summary.format())
    return 0


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.eval.job import run_eval

    report = run_eval(_config(rest))
    print(report.format())
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size: expected WxH (e.g. 512x384), got {text!r}") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"--size: both sides must be positive, got {text!r}")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3r", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    config.add_parser("show", help="print the resolved config").set_defaults(func=_cmd_config_show)

    synth = sub.add_parser("synth", help="render synthetic rooms to COLMAP-layout folders")
    synth.add_argument("--out", required=True)
    synth.add_argument("--scenes", type=int, default=4)
    synth.add_argument("--views", type=int, default=12)
    synth.add_argument("--size", default="320x240", help="WxH")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--camera-path", default="mixed", choices=["orbit", "walkthrough", "lookat", "mixed"])
    synth.set_defaults(func=_cmd_synth)

    scenes = sub.add_parser("scenes", help="inspect scene sources").add_subparsers(dest="action", required=True)
    scenes.add_parser("list", help="scenes, views and samples of the configured source").set_defaults(
        func=_cmd_scenes_list
    )
    show = scenes.add_parser("show", help="one scene's views")
    show.add_argument("--scene", required=True)
    show.set_defaults(func=_cmd_scenes_show)

    cache = sub.add_parser("cache", help="the teacher cache job").add_subparsers(dest="action", required=True)
    cache.add_parser("run", help="run the teacher and write the Lance cache").set_defaults(func=_cmd_cache_run)

    sub.add_parser("eval", help="evaluate teachers/students against ground truth").set_defaults(func=_cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    return exit_code_for("d3r", lambda: args.func(args, rest))


if __name__ == "__main__":
    sys.exit(main())
