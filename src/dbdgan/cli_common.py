"""What every command line of the package shares (dbdgan.cli and the model commands of dbdgan.cli_models)."""

from __future__ import annotations

import argparse

from dbdgan.tracking import LOCAL_STORE, Tracking


def add_tracking_args(parser: argparse.ArgumentParser, experiment: bool = True) -> None:
    parser.add_argument("--tracking-uri",
                        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {LOCAL_STORE})")
    if experiment:
        parser.add_argument("--experiment", default=Tracking.experiment,
                            help="MLflow experiment (default: %(default)s)")


def tracking_from(args: argparse.Namespace) -> Tracking:
    return Tracking(uri=getattr(args, "tracking_uri", None) or None,
                    experiment=getattr(args, "experiment", None) or Tracking.experiment)
