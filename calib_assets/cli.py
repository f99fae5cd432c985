"""calib-assets: run a study end to end, or print its findings."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from calib_assets.study import STUDY_ENV, StudyError, load_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calib-assets", description=__doc__)
    parser.add_argument("--study", help=f"study name or YAML path (default: ${STUDY_ENV} or 'default')")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="materialize every partition of the study, then print its findings")
    commands.add_parser("findings", help="print the study's findings from the DuckDB warehouse")
    args = parser.parse_args(argv)

    try:
        study = load_study(args.study)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.study:
        os.environ[STUDY_ENV] = args.study
    warnings.filterwarnings("ignore", module="dagster")
    return {"run": _run, "findings": _findings}[args.command](study)


def _run(study) -> int:
    import dagster as dg

    from calib_assets.defs import build_definitions
    from calib_assets.runner import StudyRunFailed, run_study

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the runner prints one progress line per step instead
    transformers_logging.set_verbosity_error()
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    defs = build_definitions(study)
    with dg.DagsterInstance.get() as instance:
        try:
            run_study(defs, study, instance)
        except StudyRunFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return _findings(study)


def _findings(study) -> int:
    from calib_assets.artifacts import artifact_root
    from calib_assets.runner import print_findings
    from calib_assets.steps import warehouse_path

    path = warehouse_path(artifact_root())
    if not path.is_file():
        print(f"error: no warehouse at {path}: run `calib-assets run` first", file=sys.stderr)
        return 1
    print_findings(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
