"""A run folder as a DVC pipeline of its own: `make train-real` writes it (`dbdgan steps --dvc --root DIR`) and
reproduces it (`dvc repro` there).

`dbdgan steps --dvc --root runs/real ...` writes three files there: `dvc.yaml` (the step table, as for the
repository's default pipeline), `params.yaml` (params.yaml with the profile and `--set` overrides merged in: the
one snapshot of every knob, which DVC tracks stage by stage) and `inputs.yaml` (the CLI, the raw data folder, the
MLflow store, experiment and model names). Rerunning with the same arguments reruns nothing; changing a knob
reruns the stages downstream of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from dbdgan import dvc_pipeline, graph
from dbdgan.config import Params
from dbdgan.evaluation.extra import ExtraDataset
from dbdgan.io_utils import atomic_write_text
from dbdgan.tracking import LOCAL_STORE, ModelNames


def cli_path() -> Path:
    """The `dbdgan` script of this environment (beside the running interpreter), else the one on PATH."""
    found = shutil.which("dbdgan", path=str(Path(sys.executable).parent)) or shutil.which("dbdgan")
    if not found:
        raise FileNotFoundError(f"no `dbdgan` script beside {sys.executable} or on PATH: install the project")
    return Path(found).absolute()


def stage_tracking_uri(uri: str | None) -> str:
    """The store the stages log to. Never one with credentials in it: those come from the environment
    (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), not from files that end up in dvc.lock.

    None: $MLFLOW_TRACKING_URI when the stages run (written as ""), else this folder's local store, made
    absolute because stages run inside the run folder.
    """
    if uri:
        parts = urlsplit(uri)
        if parts.username or parts.password:
            raise ValueError("--tracking-uri must not hold credentials: set MLFLOW_TRACKING_USERNAME and "
                             "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead")
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return ""
    return "sqlite:///" + str(Path(LOCAL_STORE.removeprefix("sqlite:///")).absolute())


def write_run_pipeline(root: Path, params: Params, *, raw: Path | None = None, tracking_uri: str | None = None,
                       experiment: str = dvc_pipeline.DVC_VARS["experiment"], names: ModelNames = ModelNames(),
                       until: str | None = None, init_from: Path | None = None,
                       extra: Sequence[ExtraDataset] = ()) -> Path:
    """Write dvc.yaml, params.yaml and inputs.yaml into `root`; returns the dvc.yaml path.

    The run folder is its own DVC project, so what lies outside it is named by absolute path (DVC external
    dependencies): the installed library, `init_from` (a pre-training run folder) and the `extra` datasets
    that evaluate scores beside the main split (`make train-real EXTRA_EVAL=szu=PATH`).
    """
    extra = [replace(dataset, path=Path(os.path.abspath(dataset.path))) for dataset in extra]
    missing = [dataset.spec() for dataset in extra if not dataset.path.is_dir()]
    if missing:
        raise FileNotFoundError(f"extra dataset folder(s) not found: {', '.join(missing)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    code = str(Path(graph.__file__).resolve().parent)
    init = str(Path(init_from).absolute()) if init_from else None
    variables = {**dvc_pipeline.DVC_VARS, dvc_pipeline.DVC_RAW_VAR: str(Path(raw).absolute()) if raw else "",
                 "cli": str(cli_path()), "tracking_uri": stage_tracking_uri(tracking_uri), "experiment": experiment,
                 "teacher_name": names.teacher, "student_name": names.student}
    header = "# Written by `dbdgan steps --dvc --root ...`; rerun that command rather than editing this file.\n"
    atomic_write_text(root / "params.yaml",
                      header + yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, width=120))
    atomic_write_text(root / dvc_pipeline.DVC_INPUTS_FILE,
                      header + yaml.safe_dump(variables, sort_keys=False, width=120))
    dvc_yaml = root / "dvc.yaml"
    atomic_write_text(dvc_yaml, header + dvc_pipeline.dvc_yaml_text(
        dvc_pipeline.dvc_file(code, until=until, init_from=init, extra=extra)))
    return dvc_yaml
