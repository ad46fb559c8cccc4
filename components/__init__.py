"""Kubeflow Pipelines v2 components (installed as `dbdgan_kfp.components`): one per pipeline step, each a
thin call into `dbdgan.steps`.

Every component runs in the project image (`DBDGAN_IMAGE`, see `factory`) and receives the params.yaml text
plus a list of `dotted.key=value` overrides (hyperparameters only) and its inputs and outputs as KFP
artifacts, so a KFP run, `dvc repro` and the CLI share one configuration schema and one step contract.
Import the components from `dbdgan_kfp.components.ops` (which imports kfp); this package itself stays free
of kfp so that the helpers in `_runtime` load fast inside a container.
"""
