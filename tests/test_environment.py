"""environment.yml (conda, for GPU users) lists the same packages as pyproject.toml (pip)."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# pip name -> conda name where they differ; faiss is faiss-cpu on PyPI and faiss-gpu in the conda file.
CONDA_NAMES = {"torch": "pytorch", "faiss-cpu": "faiss-gpu", "open_clip_torch": "open-clip-torch"}
CONDA_ONLY = {"python", "pytorch-cuda", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def pip_packages() -> set:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra}
    return {CONDA_NAMES.get(n, n) for n in names}


def conda_packages() -> set:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(r) for r in dep["pip"] if not r.startswith("-e")}
        else:
            names.add(_name(dep.split("=")[0] if "==" not in dep else dep))
    return names - CONDA_ONLY


def test_environment_yml_matches_pyproject():
    assert pip_packages() == conda_packages()


def test_environment_yml_installs_the_package_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    assert "-e ." in pip_section
