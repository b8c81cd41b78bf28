"""The ``d3r`` command. Thin: parses arguments and calls library functions.

Every command that reads a config takes ``--config PATH`` plus overrides ``--section.field VALUE``
(the same syntax as the jobs); ``--help`` on a command lists the config fields it reads. A bad config
exits with status 2 and names the field.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from d3r.config import (
    JOB_SECTIONS,
    D3RConfig,
    add_config_arguments,
    config_to_yaml,
    load_config,
)
from d3r.entry import exit_code_for, setup_logging
from d3r.errors import ConfigError

DESCRIPTION = """\
d3r distils a multi-view 3D reconstruction model (the teacher, Fast3R) into a small student.
The cache job runs the teacher once over your scenes and stores its outputs in a Lance table; the
train job trains the student on that table (Ray Train, tracked in MLflow); the eval job scores
teachers and students and draws figures."""

EPILOG = """\
configuration:
  Commands that run a job take --config PATH (a YAML file such as conf/demo.yaml; without it,
  the built-in defaults) and overrides --section.field VALUE. Environment variables
  D3R_SECTION__FIELD=VALUE (two underscores) sit between the file and the command line.
  `d3r COMMAND --help` lists the fields a command reads; `d3r config show` prints them resolved.

first steps (the embedded demo: synthetic rooms, an oracle teacher, no weights, no GPU):
  d3r cache run --config conf/demo.yaml       # teacher outputs -> demo_out/cache.lance
  d3r cache show demo_out/cache.lance         # versions, rows, bytes, rejects of that table
  d3r train --config conf/demo.yaml           # the student, tracked in MLflow
  d3r eval --config conf/demo.yaml            # tables and figures -> demo_out/eval

exit status:
  0 done; 2 a bad configuration or argument (the message names it); 3 busy (another job holds
  the cache table); 130 or 143 interrupted (committed work is kept: run again to resume)."""


def _config(args: argparse.Namespace, rest: Sequence[str]) -> D3RConfig:
    return load_config(args.config, rest)


def _no_extra(command: str, rest: Sequence[str]) -> None:
    if rest:
        raise ConfigError(f"d3r {command}: unexpected arguments {list(rest)} (see d3r {command} --help)")


def _cmd_config_show(args: argparse.Namespace, rest: list[str]) -> int:
    print(config_to_yaml(_config(args, rest)), end="")
    return 0


def _cmd_synth(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.synthetic import export_scenes

    _no_extra("synth", rest)
    width, height = _parse_size(args.size)
    paths = export_scenes(args.out, args.scenes, args.views, (width, height), args.seed, args.camera_path)
    print(f"wrote {len(paths)} scenes ({args.views} views each, {width}x{height}) to {args.out}")
    return 0


def _cmd_scenes_list(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.catalog import format_scene_list

    print(format_scene_list(_config(args, rest)))
    return 0


def _cmd_scenes_show(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.scenes.catalog import format_scene

    print(format_scene(_config(args, rest), args.scene))
    return 0


def _cmd_cache_run(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.cache.pipeline import run_cache_job

    summary = run_cache_job(_config(args, rest))
    print(summary.format())
    return 0


def _cmd_cache_show(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.cache.inspect import cache_overview

    print(cache_overview(_cache_uri(args, rest, "cache show")).format())
    return 0


def _cmd_cache_rejects(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.cache.inspect import format_rejects

    print(format_rejects(_cache_uri(args, rest, "cache rejects")))
    return 0


def _cache_uri(args: argparse.Namespace, rest: list[str], command: str) -> str:
    """URI when given, else ``cache.uri`` of ``--config`` (and ``D3R_CACHE__URI``)."""
    _no_extra(command, rest)
    return args.uri if args.uri is not None else _config(args, []).cache.uri


def _cmd_eval(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.eval.job import run_eval

    report = run_eval(_config(args, rest))
    print(report.format())
    return 0


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from d3r.train.job import run_train

    print(run_train(_config(args, rest)).format())
    return 0


def _cmd_reconstruct(args: argparse.Namespace, rest: list[str]) -> int:
    from pathlib import Path

    from d3r.infer.reconstruct import ReconstructOptions, reconstruct_to_folder

    options = ReconstructOptions(
        conf_percentile=args.conf_percentile, conf_threshold=args.conf_threshold,
        max_views_per_pass=args.max_views_per_pass, depth_format=args.depth_format, html=args.html,
        device=args.device, long_side=args.long_side)
    rec = reconstruct_to_folder(Path(args.input), args.model, Path(args.out), _config(args, rest), options)
    kept = sum(int(view.keep.sum()) for view in rec.views)
    print(f"reconstructed {len(rec.views)} views with {rec.model} in {sum(rec.timings.values()):.1f} s: "
          f"{kept} points kept ({rec.confidence_rule}); wrote {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace, rest: list[str]) -> int:
    from pathlib import Path

    from d3r.infer.export import ExportMismatch, export_onnx

    width, height = _parse_size(args.size)
    try:
        report = export_onnx(args.model, _config(args, rest), args.views, height, width, Path(args.out))
    except ExportMismatch as exc:  # the graph is wrong, not the arguments: no file was written
        print(f"d3r export: {exc}", file=sys.stderr)
        return 1
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


def _command(sub: argparse._SubParsersAction, name: str, summary: str, description: str | None = None,
             sections: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """A subcommand with ``summary`` in the command list, ``description`` in its own --help, and, when it reads
    a config, ``--config PATH`` and the fields of ``sections`` (:func:`d3r.config.add_config_arguments`)."""
    parser = sub.add_parser(name, help=summary, description=description or summary,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser if sections is None else add_config_arguments(parser, sections)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d3r", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    every_section = list(D3RConfig.model_fields)

    config = _command(sub, "config", "configuration").add_subparsers(dest="action", required=True, metavar="ACTION")
    _command(config, "show", "print the resolved configuration as YAML (file < environment < command line)",
             sections=every_section).set_defaults(func=_cmd_config_show)

    synth = _command(sub, "synth", "render synthetic rooms (images, depth, cameras) as COLMAP-layout folders",
                     "Render procedural rooms with exact depth and cameras, one COLMAP text model per room, for "
                     "trying the pipeline on data with ground truth (scenes.source colmap).")
    synth.add_argument("--out", required=True, metavar="FOLDER", help="where the room folders go (created)")
    synth.add_argument("--scenes", type=int, default=4, help="number of rooms (default 4)")
    synth.add_argument("--views", type=int, default=12, help="views per room (default 12)")
    synth.add_argument("--size", default="320x240", help="image size WxH (default 320x240)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same rooms (default 0)")
    synth.add_argument("--camera-path", default="mixed", choices=["orbit", "walkthrough", "lookat", "mixed"],
                       help="how the camera moves (default mixed)")
    synth.set_defaults(func=_cmd_synth)

    scenes = _command(sub, "scenes", "look at the configured scene source before caching").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    _command(scenes, "list", "scenes, views and samples of the configured source, and what was left out",
             sections=["scenes"]).set_defaults(func=_cmd_scenes_list)
    show = _command(scenes, "show", "one scene's views (size, camera, ground truth)")
    show.add_argument("--scene", required=True, help="a scene id from `d3r scenes list`")
    add_config_arguments(show, ["scenes"]).set_defaults(func=_cmd_scenes_show)

    cache = _command(sub, "cache", "the teacher cache: run the job, inspect a table").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    _command(cache, "run", "run the teacher over the scenes and write its outputs to the Lance table cache.uri",
             "Run the teacher over the configured scenes and write its outputs to the Lance table at cache.uri. "
             "A rerun computes only what is missing.", JOB_SECTIONS["cache"]).set_defaults(func=_cmd_cache_run)
    for action, summary, func in (
        ("show", "what a cache table holds: versions, tags, rows, views, bytes per column, rejects by reason",
         _cmd_cache_show),
        ("rejects", "the inputs a cache job rejected, each with its reason", _cmd_cache_rejects),
    ):
        inspect = _command(cache, action, summary, f"{summary[0].upper()}{summary[1:]}. Reads only.")
        inspect.add_argument("uri", nargs="?", metavar="URI", help="the cache table (default: cache.uri of --config)")
        inspect.add_argument("--config", metavar="PATH", help="take the table from this config's cache.uri")
        inspect.set_defaults(func=func)

    _command(sub, "train", "train the student on the cache table (Ray Train, MLflow, model registry)",
             "Train the student on the cache table with Ray Train, track the run in MLflow and register the model. "
             "Rerunning with the same train.run_name resumes from its latest checkpoint.",
             JOB_SECTIONS["train"]).set_defaults(func=_cmd_train)
    _command(sub, "eval", "score teachers and students (vs ground truth and vs the teacher), draw figures",
             "Score each model in eval.models against ground truth and students against the teacher; write "
             "tables and figures to eval.out_dir and log them to MLflow.",
             JOB_SECTIONS["eval"]).set_defaults(func=_cmd_eval)
    recon = _command(sub, "reconstruct", "reconstruct photos or a video into points, cameras (COLMAP), depth maps",
                     "Reconstruct a folder of images, a video or a COLMAP scene folder with MODEL and write a "
                     "coloured point cloud (PLY), a GLB scene, a COLMAP model, cameras.json, depth and confidence "
                     "maps and timings into OUT_DIR (see README, Reconstruct your photos).")
    recon.add_argument("input", metavar="INPUT", help="a folder of images, a video file, or a COLMAP scene folder")
    recon.add_argument("--model", required=True, metavar="MODEL",
                       help="models:/NAME@ALIAS, a student checkpoint, or `teacher` (the configured teacher.*)")
    recon.add_argument("-o", "--out", required=True, metavar="OUT_DIR",
                       help="output folder: new, empty, or a previous reconstruct output")
    rule = recon.add_mutually_exclusive_group()
    rule.add_argument("--conf-percentile", type=float, metavar="P",
                      help="keep points at or above this percentile of the run's confidences (default 10)")
    rule.add_argument("--conf-threshold", type=float, metavar="C", help="or: keep points with confidence >= C")
    recon.add_argument("--max-views-per-pass", type=int, default=64, metavar="N",
                       help="most views the model sees at once; more run in passes sharing view 0 (default 64)")
    recon.add_argument("--depth-format", choices=["png16", "exr"], default="png16",
                       help="depth and confidence maps (default png16)")
    recon.add_argument("--html", action="store_true", help="also write viewer.html, a one-file viewer")
    recon.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where a student checkpoint runs (the teacher: teacher.device)")
    recon.add_argument("--long-side", type=int, metavar="PX", help="model input long side (default scenes.long_side)")
    add_config_arguments(recon, ["scenes", "teacher", "mlflow"]).set_defaults(func=_cmd_reconstruct)
    export = _command(sub, "export", "export a student to ONNX (fixed views and size, dynamic batch), verified",
                      "Export a student to ONNX for a fixed number of views and image size with a dynamic batch; "
                      "check it with onnx.checker and ONNX Runtime against PyTorch, print size and latency "
                      "(see README, Export to ONNX).")
    export.add_argument("--model", required=True, metavar="MODEL", help="models:/NAME@ALIAS or a student checkpoint")
    export.add_argument("--format", required=True, choices=["onnx"], help="export format")
    export.add_argument("-o", "--out", required=True, metavar="FILE", help="the file to write (must not exist)")
    export.add_argument("--views", required=True, type=int, metavar="N", help="number of views the graph takes")
    export.add_argument("--size", required=True, metavar="WxH", help="image size, multiples of the patch (504x378)")
    add_config_arguments(export, ["mlflow"]).set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    return exit_code_for("d3r", lambda: args.func(args, rest))


if __name__ == "__main__":
    sys.exit(main())
