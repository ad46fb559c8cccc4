"""`pip install dbdgan` (no extras) is enough to predict and serve: the heavy runners' dependencies are extras.

The prediction and serving paths run in a fresh interpreter in which DVC, Great Expectations, kfp and the
full MLflow (its server's SQLAlchemy, Flask) cannot be imported, as in an install without [pipeline] or [kfp].
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXTRA_ONLY = ("dvc", "great_expectations", "kfp", "sqlalchemy", "alembic", "flask")

SCRIPT = textwrap.dedent("""
    import sys

    for name in {blocked}:  # None in sys.modules: `import` fails and find_spec() says absent, as uninstalled
        sys.modules[name] = None
    from dbdgan.checkpoint import save_model_file
    from dbdgan.models.registry import create_model
    import dbdgan.serving  # the MLflow pyfunc behind `mlflow models serve`
    from dbdgan.cli import main

    save_model_file(sys.argv[1], "mobile_tiny", {{}}, create_model("mobile_tiny"))
    sys.exit(main(["predict", "--model", sys.argv[1], sys.argv[2], "-o", sys.argv[3]]))
""").format(blocked=repr(set(EXTRA_ONLY)))


def test_predict_and_serving_need_no_extra(tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photo)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "m.pt"), str(photo),
                             str(tmp_path / "maps")], capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "maps" / "photo_blur.png").size == (56, 40)


def test_the_extras_hold_the_runners_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for name in ("dvc", "great-expectations", "kfp", "mlflow>"):
        assert name not in core, f"{name} is a core dependency: predict/serve would install it"
    extras = project["optional-dependencies"]
    assert "great-expectations>=1.3" in extras["validate"] and "kfp>=2.9" in extras["kfp"]
    assert {"dbdgan[pipeline,kfp]"} == set(extras["all"])
    makefile = (REPO / "Makefile").read_text()
    assert "-e '.[all]'" in makefile and "-e '.[all,test]'" in makefile  # make run/test get everything
