"""Check a Ray cluster launcher config offline, against Ray's own schema, listing every problem.

    isic-cluster-check [cluster.yaml]

Ray's own check (`ray up`) stops at the first problem and needs the cloud's SDK; this one needs
neither: it reads the schema Ray ships (`ray/autoscaler/ray-schema.json`), reports every violation
with its place in the file, then runs Ray's offline semantic checks (node types, head type).
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from orchestrator.errors import UserError, command

DEFAULT = Path(__file__).resolve().parent.parent / "cluster.yaml"


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _place(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One readable sentence per violation."""
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        return f"unknown key {', '.join(hints)}; allowed: {', '.join(allowed)}"
    if error.validator == "required":
        return f"missing key: {error.message.split(' is a required')[0]}"
    if error.validator == "type":
        return f"{error.instance!r} should be of type {error.validator_value}"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(repr, error.validator_value))}"
    return error.message


def schema_errors(config: Any) -> list[str]:
    """Every violation of Ray's schema, as `place: problem`, in file order."""
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_place(error)}: {_describe(error)}" for error in errors]


def check(path: Path) -> list[str]:
    """All problems of the config at `path` (none: Ray's launcher will accept it)."""
    if not path.is_file():
        raise UserError(f"cluster config not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return [f"not valid YAML: {' '.join(str(err).split())}"]
    if not isinstance(config, dict):
        return ["the file should be a mapping of keys (cluster_name, provider, ...)"]
    problems = schema_errors(config)
    if problems:
        return problems
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:  # Ray's own checks beyond the schema: node types, the head type, worker counts
        validate_config(prepare_config(config))
    except (ValueError, KeyError, jsonschema.ValidationError) as err:
        return [f"(Ray's check) {' '.join(str(err).split())}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isic-cluster-check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config", nargs="?", type=Path, default=DEFAULT, help="default: the project's cluster.yaml"
    )
    path = parser.parse_args(argv).config
    problems = check(path)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''}")
        return 1
    print(f"{path}: valid for Ray's cluster launcher")
    return 0


cli = command(main)  # the console script (pyproject.toml)


if __name__ == "__main__":
    cli()
