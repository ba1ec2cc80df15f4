"""Turn a params override file (e.g. ``params.thesis.yaml``) into ``dvc exp run -S`` arguments.

The override file has the key structure of ``params.yaml`` and holds only the keys it changes; keys absent
from ``params.yaml`` are added (hydra's ``+key=value``). Lists and mappings are written as JSON, which is
valid in hydra's override grammar. Usage: ``dvc exp run $(advreid profile params.thesis.yaml)``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from advreid.params import ParamsError, load_params


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaf values of a nested mapping keyed by dotted paths (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def override_args(overrides: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """``-S`` arguments that apply ``overrides`` on top of ``base`` (both nested mappings)."""
    known = flatten(base)
    prefixes = {k.rsplit(".", i)[0] for k in known for i in range(k.count(".") + 1)}
    args = []
    for key, value in flatten(overrides).items():
        text = value if isinstance(value, str) else json.dumps(value)
        sign = "" if key in known or key in prefixes else "+"
        args += ["-S", f"{sign}{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="advreid profile", description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path, help="override file with the key structure of params.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    if not args.file.is_file():
        raise ParamsError(f"{args.file}: override file not found")
    overrides = yaml.safe_load(args.file.read_text()) or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"{args.file}: expected a mapping at the top level")
    print(shlex.join(override_args(overrides, load_params(None, args.params))))
    return 0
