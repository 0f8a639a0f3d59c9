"""Problems found in configuration files, each naming its file and key.

Shared by the loaders of db_config/ (``beamline.config`` for the Tango JSON
files, ``beamline.sardana_yaml`` for the Sardana YAML files), so neither
imports the other for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in the configuration files."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def key_path(path: Iterable) -> str:
    """A key path (from jsonschema or pydantic) as ``a.b.0.c``."""
    return ".".join(str(p) for p in path) or "(top level)"
