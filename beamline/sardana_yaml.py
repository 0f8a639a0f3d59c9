"""Sardana's part of db_config/: sardana-config YAML files in ``sardana/``.

Each ``sardana/*.yaml`` file is a sardana-config document (Pools, MacroServer,
Doors, controllers, elements, measurement groups, MacroServer environment).
It may use two placeholders, replaced when the configuration is loaded:

    ${PROJECT}   the directory holding ``sardana_macros/`` (controllers, macros)
    ${RUN_DIR}   the beamline's run directory (scan files, environment file)

The file is checked with sardana-config's own model and consistency checks,
turned into dsconfig servers with sardana-config's ``build_dsconfig`` (so
``config diff`` / ``apply`` treat Sardana like every other server), and its
``environment`` section becomes MacroServer environment variables written at
apply time (live through the MacroServer when it runs, else into its
environment file with sardana-config's ``sync_env_db``).
"""

from __future__ import annotations

import pickle
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamline.problems import Problem, key_path

SARDANA_DIR = "sardana"


@dataclass(frozen=True)
class SardanaEnv:
    """The configured environment of one MacroServer."""

    file: str  # "sardana/bl01.yaml"
    macro_server: str  # Tango device name of the MacroServer
    env_db: str | None  # its environment file (EnvironmentDb property)
    variables: dict[str, Any]


@dataclass
class SardanaDoc:
    file: str
    dsconfig: dict[str, Any]  # {"servers": {...}}
    environments: list[SardanaEnv]
    controller_devices: dict[str, list[str]]  # "pools.p.controllers.c.properties.Device" -> names


def project_dir() -> Path:
    """The directory holding the ``sardana_macros`` package."""
    import sardana_macros

    return Path(sardana_macros.__file__).resolve().parent.parent


def load_file(path: Path, rel: str, run_dir: Path, problems: list) -> SardanaDoc | None:
    """Parse, substitute, validate and convert one YAML file; problems are appended."""
    try:
        text = path.read_text()
    except OSError as exc:
        problems.append(Problem(rel, "", f"cannot read: {exc.strerror}"))
        return None
    try:
        text = string.Template(text).substitute(PROJECT=str(project_dir()), RUN_DIR=str(run_dir))
    except KeyError as exc:
        name = exc.args[0]
        problems.append(
            Problem(rel, "", f"unknown placeholder ${{{name}}}; use ${{PROJECT}} or ${{RUN_DIR}}")
        )
        return None
    except ValueError as exc:
        problems.append(Problem(rel, "", f"{exc}; write a literal $ as $$"))
        return None

    from ruamel.yaml import YAMLError
    from sardana_config.yaml_utils import get_yaml

    try:
        doc = get_yaml(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problems.append(Problem(rel, where, f"invalid YAML: {getattr(exc, 'problem', exc)}"))
        return None
    if not isinstance(doc, dict):
        problems.append(Problem(rel, "", "must be a sardana-config mapping (pools, macro_servers)"))
        return None

    import pydantic
    from sardana_config.check import check_config
    from sardana_config.model import Configuration

    try:
        Configuration(**doc)
    except pydantic.ValidationError as exc:
        for e in exc.errors():
            problems.append(Problem(rel, key_path(e.get("loc", ())), e.get("msg", str(e))))
        return None
    errors = list(check_config(doc, False))
    for where, message in errors:
        problems.append(Problem(rel, key_path(where), str(message)))
    if errors:
        return None

    from sardana_config.common import remove_defaults
    from sardana_config.environment import (
        get_env_vars_from_config,
        remove_environment_from_config,
    )
    from sardana_config.yaml2dsconfig import build_dsconfig, get_device_name

    config = remove_defaults(doc)
    environments = []
    for ms_name, ms_info in config.get("macro_servers", {}).items():
        variables = get_env_vars_from_config(ms_info)
        if variables:
            environments.append(
                SardanaEnv(
                    rel,
                    get_device_name("MacroServer/{name}/1", ms_name, ms_info),
                    ms_info.get("environment_db"),
                    _plain(dict(variables)),
                )
            )
    controller_devices: dict[str, list[str]] = {}
    for pool_name, pool in config.get("pools", {}).items():
        for ctrl_name, ctrl in (pool.get("controllers") or {}).items():
            for prop, value in (ctrl.get("properties") or {}).items():
                if prop.lower() in ("device", "devices"):
                    names = value if isinstance(value, list) else str(value).split(",")
                    key = f"pools.{pool_name}.controllers.{ctrl_name}.properties.{prop}"
                    controller_devices[key] = [n.strip() for n in names if n.strip()]
    dsconfig = build_dsconfig(remove_environment_from_config(config))
    return SardanaDoc(rel, _plain(dsconfig), environments, controller_devices)


def _plain(value: Any) -> Any:
    """ruamel's round-trip types as plain dicts, lists and strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# ----------------------------------------------------------- environment
def read_live_environment(macro_server: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """The MacroServer's environment, or None when it does not answer."""
    import tango

    try:
        proxy = tango.DeviceProxy(macro_server)
        proxy.set_timeout_millis(int(timeout * 1000))
        fmt, data = proxy.read_attribute("Environment").value
    except tango.DevFailed:
        return None
    return _decode_env(fmt, data)


def _decode_env(fmt: str, data: Any) -> dict[str, Any]:
    if not fmt.startswith("pickle"):
        raise ValueError(f"unexpected Environment encoding {fmt!r}")
    value = pickle.loads(bytes(data))
    if isinstance(value, dict) and "new" in value:
        value = value["new"]
    return dict(value)


def write_live_environment(macro_server: str, updates: dict[str, Any]) -> None:
    import tango

    proxy = tango.DeviceProxy(macro_server)
    proxy.write_attribute("Environment", ("pickle", pickle.dumps({"new": updates})))


def read_file_environment(env: SardanaEnv) -> dict[str, Any]:
    """The environment stored in the MacroServer's file (MacroServer not running)."""
    if not env.env_db or not _env_file_exists(env.env_db):
        return {}
    from sardana_config.environment import read_env_db

    _quiet_sardana()
    return read_env_db(env.env_db, env.macro_server)


def _env_file_exists(path: str) -> bool:
    p = Path(path)
    return p.exists() or any(p.parent.glob(p.name + ".*")) if p.parent.is_dir() else False


def _quiet_sardana() -> None:
    """Sardana's objects made in this process log INFO lines to the console."""
    import taurus

    taurus.setLogLevel(taurus.Warning)


def write_file_environment(env: SardanaEnv, updates: dict[str, Any]) -> None:
    from sardana_config.environment import sync_env_db

    _quiet_sardana()
    if not env.env_db:
        raise ValueError(f"{env.file}: MacroServer {env.macro_server} has no environment_db")
    Path(env.env_db).parent.mkdir(parents=True, exist_ok=True)
    sync_env_db(env.env_db, updates, (), env.macro_server)


def environment_updates(env: SardanaEnv, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Variables whose configured value differs from ``current``: name -> (old, new)."""
    return {
        name: (current.get(name), value)
        for name, value in env.variables.items()
        if name not in current or current[name] != value
    }


def ensure_directories(env: SardanaEnv) -> None:
    """Create the directories the environment names (scan directory, env file's)."""
    scan_dir = env.variables.get("ScanDir")
    if isinstance(scan_dir, str) and scan_dir:
        Path(scan_dir).mkdir(parents=True, exist_ok=True)
    if env.env_db:
        Path(env.env_db).parent.mkdir(parents=True, exist_ok=True)
