"""Print the requirements of the project and the given extras, one per line, from pyproject.toml.

The image build installs these before copying the source, so that a source change reuses the dependency layer.
Self-references such as "dbdgan[validate]" inside an extra are expanded. Usage: requirements.py [EXTRA,...]
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(project: dict, extras: list[str]) -> list[str]:
    """Dependencies plus each extra's, with the project's own extras expanded (each once)."""
    name, groups = project["name"], project.get("optional-dependencies", {})
    found, seen, todo = list(project.get("dependencies", [])), set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in groups:
            raise SystemExit(f"pyproject.toml: no optional-dependencies group {extra!r}; have {', '.join(groups)}")
        seen.add(extra)
        for requirement in groups[extra]:
            own = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", requirement.replace(" ", ""))
            if own:
                todo.extend(own.group(1).split(","))
            elif requirement not in found:
                found.append(requirement)
    return found


def main(argv: list[str]) -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extras = [item for arg in argv for item in arg.split(",") if item]
    print("\n".join(requirements(pyproject["project"], extras)))


if __name__ == "__main__":
    main(sys.argv[1:])
