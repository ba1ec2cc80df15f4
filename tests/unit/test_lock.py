"""requirements.lock pins every installed distribution of the working venv, and pyproject's dependencies."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"requirements.lock: {line!r} is not name==version"
        pins[_canonical(name)] = version
    return pins


def test_lock_pins_every_dependency_at_the_installed_version() -> None:
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for requirement in wanted:
        name = _canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        assert name in pins, f"requirements.lock does not pin {name} (pyproject.toml: {requirement!r})"
    assert "advreid" not in pins  # the project itself is installed from the checkout
    # The venv running the tests is the one the lock describes: regenerate with `make lock` after an upgrade.
    stale = {
        name: (version, importlib.metadata.version(name))
        for name, version in pins.items()
        if importlib.metadata.version(name) != version
    }
    assert not stale, f"requirements.lock disagrees with the venv (locked, installed): {stale}"


def test_pip_check_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
