"""Kubeflow Pipelines v2 components: one per pipeline step, each a thin call into `dbdgan.steps`.

Every component runs in the project image (`DBDGAN_IMAGE`, see `components.factory`) and receives the
params.yaml text plus a list of `dotted.key=value` overrides, so a KFP run, `dvc repro` and the CLI share
one configuration schema. Import the components from `components.ops` (which imports kfp); this package
itself stays free of kfp so that the helpers in `components._runtime` load fast inside a container.
"""
