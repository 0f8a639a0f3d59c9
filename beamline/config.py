"""The beamline configuration in db_config/: load, validate, render, diff, apply.

Layout of a configuration directory::

    tango/*.json       dsconfig JSON (servers, devices, properties, attribute
                       properties, class properties); merged, a server or a
                       device may be defined only once
    starter.json       per server: Starter host, startup level, controlled flag,
                       external (a server from elsewhere: classes not checked)
    simulation.json    virtual hardware: controllers, and the device properties
                       they override when the beamline runs simulated

Every error names the file and the key (a dotted path) and says how to fix it.
Nothing here starts processes; :mod:`beamline.tangodb` applies to a database.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import socket
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from beamline import sardana_yaml
from beamline.problems import ConfigError, Problem, key_path

LOCAL_HOST = "@local"
SARDANA_EXECUTABLES = ("sardana", "pool", "macroserver")  # lower case
MAX_LEVEL = 5  # the Starter's default NbStartupLevels
ACCESS_FILE = "access.json"  # Tango Access Control rules (beamline.proddb)
DEVICE_NAME = re.compile(r"^[\w.@-]+/[\w.@-]+/[\w.@-]+$")


@dataclass(frozen=True)
class ServerInfo:
    """How the Starter runs one server."""

    name: str  # "Motor/slit_h"
    host: str  # a host name, or "@local" for the host running `beamline up`
    level: int
    controlled: bool = True
    external: bool = False  # not one of the suite's servers: its classes are not checked

    @property
    def executable(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def instance(self) -> str:
        return self.name.split("/", 1)[1]

    def resolved_host(self, local: str | None = None) -> str:
        return (local or short_hostname()) if self.host == LOCAL_HOST else self.host


@dataclass(frozen=True)
class DeviceEntry:
    server: str  # "Motor/slit_h"
    device_class: str
    name: str
    properties: dict[str, list[str]]
    file: str
    # "tango" (tango/*.json), "sardana" (sardana/*.yaml) or "external" (tango/*.json,
    # a server marked external in starter.json: its classes are not the suite's)
    origin: str = "tango"


@dataclass
class BeamlineConfig:
    root: Path
    tango: dict[str, Any]
    servers: dict[str, ServerInfo]
    devices: dict[str, DeviceEntry]
    simulation: dict[str, Any] | None
    warnings: list[Problem] = field(default_factory=list)
    sardana_env: list[Any] = field(default_factory=list)  # sardana_yaml.SardanaEnv
    run_dir: Path | None = None

    # ------------------------------------------------------------- queries
    def servers_by_level(self, host: str | None = None) -> dict[int, list[ServerInfo]]:
        """Controlled servers of ``host`` (default: this host) grouped by level;
        ``@local`` servers belong to whichever host asks (one host only: the
        configuration cannot mix ``@local`` with host names)."""
        local = host or short_hostname()
        levels: dict[int, list[ServerInfo]] = {}
        for info in sorted(self.servers.values(), key=lambda s: (s.level, s.name)):
            if not info.controlled:
                continue
            if info.resolved_host(local) != (host or local):
                continue
            levels.setdefault(info.level, []).append(info)
        return dict(sorted(levels.items()))

    def devices_of(self, server: str) -> list[str]:
        # indexed once (a call per server went through every device: at 200
        # servers and 460 devices, a quarter of a second of `status`)
        index = self.__dict__.get("_devices_by_server")
        if index is None or index[0] != len(self.devices):
            by_server: dict[str, list[str]] = {}
            for d in self.devices.values():
                by_server.setdefault(d.server.lower(), []).append(d.name)
            index = (len(self.devices), {k: sorted(v) for k, v in by_server.items()})
            self.__dict__["_devices_by_server"] = index
        return list(index[1].get(server.lower(), []))

    # ------------------------------------------------------------ rendering
    def render(self, sim_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dsconfig dict to write, with simulation overrides applied when
        ``sim_state`` (the virtual hardware's state file) is given."""
        data = copy.deepcopy(self.tango)
        self._add_external_polling(data)
        if sim_state is None or not self.simulation:
            return data
        values = {"listen": sim_state.get("listen", "127.0.0.1")}
        for name, ctrl in sim_state.get("controllers", {}).items():
            values[name] = SimpleNamespace(**ctrl)
        for device, props in self.simulation.get("overrides", {}).items():
            entry = self.devices[device.lower()]
            server, instance = entry.server.split("/", 1)
            dev = data["servers"][server][instance][entry.device_class][entry.name]
            for prop, template in props.items():
                templates = template if isinstance(template, list) else [template]
                dev.setdefault("properties", {})[prop] = [t.format(**values) for t in templates]
        return data

    def _add_external_polling(self, data: dict[str, Any]) -> None:
        """Devices of our classes serve some attributes from Tango's polling
        cache, refreshed by the device (externally triggered polling, period 0):
        that needs ``polled_attr`` in the database before the server starts."""
        classes = known_device_classes()
        for entry in self.devices.values():
            if entry.origin != "tango":
                continue
            cls = classes.get(entry.device_class)
            attrs = getattr(cls, "EXTERNALLY_POLLED", ()) if cls else ()
            if not attrs:
                continue
            server, instance = entry.server.split("/", 1)
            dev = data["servers"][server][instance][entry.device_class][entry.name]
            props = dev.setdefault("properties", {})
            if not any(k.lower() == "polled_attr" for k in props):
                props["polled_attr"] = [x for a in attrs for x in (a.lower(), "0")]


HOST_ENV = "BEAMLINE_HOST"


def short_hostname() -> str:
    """The Starter's instance name: the host name without its domain, or the
    host `beamline up --host NAME` acts as (BEAMLINE_HOST)."""
    return os.environ.get(HOST_ENV) or socket.gethostname().split(".")[0]


def default_config_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "db_config"


# ---------------------------------------------------------------- loading
#: A dsconfig file of a whole beamline is well under 1 MiB.
MAX_JSON_CHARS = 16 * 2**20


def read_json(path: Path, problems: list[Problem], rel: str, tango_names: bool = False) -> Any:
    """The JSON document in ``path``, or None with the problems appended: a key
    twice in one object is refused (json would keep the last one silently),
    also when the two differ only in case if the keys are Tango names
    (``tango_names``: servers, classes, devices, properties ignore case)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_JSON_CHARS + 1)
    except OSError as exc:
        problems.append(Problem(rel, "", f"cannot read: {exc.strerror}"))
        return None
    except ValueError as exc:  # UnicodeDecodeError
        problems.append(Problem(rel, "", f"not UTF-8 text: {exc}"))
        return None
    if len(text) > MAX_JSON_CHARS:
        problems.append(
            Problem(rel, "", f"larger than {MAX_JSON_CHARS // 2**20} MiB; split it into files")
        )
        return None
    duplicates = _Duplicates(tango_names)
    try:
        data = json.loads(text, object_pairs_hook=duplicates.hook)
    except json.JSONDecodeError as exc:
        problems.append(
            Problem(rel, f"line {exc.lineno} column {exc.colno}", f"invalid JSON: {exc.msg}")
        )
        return None
    except RecursionError:
        problems.append(Problem(rel, "", "invalid JSON: nested too deeply"))
        return None
    # the document (the last of each duplicate) goes on to the other checks, so
    # that one duplicate does not hide the rest of the file behind it
    problems.extend(duplicates.problems(data, rel))
    return data


class _Duplicates:
    """``object_pairs_hook`` for json: builds the dicts and remembers which of
    them had a key twice; :meth:`problems` then names each by its key path."""

    def __init__(self, fold_case: bool) -> None:
        self.fold_case = fold_case
        self.found: dict[int, list[tuple[str, str]]] = {}  # id(dict) -> [(first, again)]
        self.keep: list[dict] = []  # holds the dicts so their ids stay theirs

    def hook(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        seen: dict[str, str] = {}
        twice = []
        for key, value in pairs:
            norm = key.lower() if self.fold_case else key
            if norm in seen:
                twice.append((seen[norm], key))
            else:
                seen[norm] = key
            obj[key] = value
        if twice:
            self.found[id(obj)] = twice
            self.keep.append(obj)
        return obj

    def problems(self, data: Any, rel: str) -> list[Problem]:
        if not self.found:
            return []
        out = []
        todo: list[tuple[Any, list]] = [(data, [])]
        while todo:  # no recursion: the document may nest as deep as json allows
            node, path = todo.pop()
            if isinstance(node, dict):
                for first, again in self.found.get(id(node), ()):
                    if first == again:
                        message = (
                            "defined twice in one object (JSON would silently keep only the "
                            "last one); keep one"
                        )
                    else:
                        message = (
                            f"the same Tango name as {first!r} in this object (Tango names "
                            "ignore case): defined twice; keep one"
                        )
                    out.append(Problem(rel, key_path([*path, again]), message))
                todo.extend((v, [*path, k]) for k, v in node.items())
            elif isinstance(node, list):
                todo.extend((v, [*path, i]) for i, v in enumerate(node))
        return sorted(set(out), key=lambda p: p.key)


def _dsconfig_schema() -> dict:
    from dsconfig.formatting import SCHEMA_FILENAME

    with open(SCHEMA_FILENAME) as f:
        return json.load(f)


def default_run_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "var"


CACHE_FILE = ".config-cache.pickle"  # in the run directory: the last valid configuration
#: the code that decides what a configuration means: a change to it is a new configuration
_CODE = ("config.py", "sardana_yaml.py", "problems.py", "../tango_devices/registry.py")


def load(config_dir: Path | str | None = None, run_dir: Path | str | None = None) -> BeamlineConfig:
    """Load and validate a configuration directory; raise ConfigError listing every problem.

    ``run_dir`` is the run directory that ``${RUN_DIR}`` in sardana/*.yaml
    stands for (default: var/ next to db_config/).

    The last valid configuration is kept in the run directory, keyed by the
    content of every file of the directory and of the code that reads it:
    validating sardana/*.yaml needs Sardana and Taurus imported (1.5-3 s),
    which ``beamline status`` and every other command paid each time."""
    root = Path(config_dir or default_config_dir()).resolve()
    run_path = Path(run_dir).resolve() if run_dir else default_run_dir()
    key = _cache_key(root, run_path)
    cache = run_path / CACHE_FILE
    if key is not None:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    config = _load(root, run_path)
    if key is not None:
        _write_cache(cache, key, config)
    return config


def _cache_key(root: Path, run_path: Path) -> str | None:
    """A digest of everything the configuration is made of; None if a file
    cannot be read (then nothing is cached: the load says what is wrong)."""
    import hashlib
    import sys

    digest = hashlib.sha256()
    for part in (str(root), str(run_path), sys.version, _database_name()):
        digest.update(part.encode() + b"\0")
    here = Path(__file__).resolve().parent
    try:
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in [*paths, *(here / c for c in _CODE)]:
            digest.update(str(path).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    except OSError:
        return None
    return digest.hexdigest()


def _database_name() -> str:
    """The database full device names are made with (a measurement group's
    synchronizer is ``tango://HOST:PORT/...``): TANGO_HOST, which Taurus's
    default follows (``sardana_yaml.use_tango_host`` sets both)."""
    return os.environ.get("TANGO_HOST") or ""


#: configurations kept (one per database name and directory: `up` reads its
#: own before and after it knows its database, `status` without one)
CACHE_ENTRIES = 4


def _read_entries(cache: Path) -> list[tuple[str, BeamlineConfig]]:
    import pickle

    try:
        entries = pickle.loads(cache.read_bytes())
    except Exception:  # noqa: BLE001 - missing, damaged or from other code: load it again
        return []
    if not isinstance(entries, list):
        return []
    return [
        (k, c)
        for k, c in (e for e in entries if isinstance(e, tuple) and len(e) == 2)
        if isinstance(k, str) and isinstance(c, BeamlineConfig)
    ]


def _read_cache(cache: Path, key: str) -> BeamlineConfig | None:
    return next((c for k, c in _read_entries(cache) if k == key), None)


def _write_cache(cache: Path, key: str, config: BeamlineConfig) -> None:
    """Keep ``config`` under ``key``, newest first, with the last few others."""
    import pickle

    if not cache.parent.is_dir():
        return
    entries = [(key, config), *((k, c) for k, c in _read_entries(cache) if k != key)]
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}")
    try:
        tmp.write_bytes(pickle.dumps(entries[:CACHE_ENTRIES]))
        tmp.replace(cache)
    except Exception:  # noqa: BLE001 - a cache that cannot be written is only slower
        with contextlib.suppress(OSError):
            tmp.unlink()


def _load(root: Path, run_path: Path) -> BeamlineConfig:
    import jsonschema
    from dsconfig.formatting import expand_config

    problems: list[Problem] = []
    warnings: list[Problem] = []
    if not root.is_dir():
        raise ConfigError([Problem(str(root), "", "configuration directory does not exist")])

    # -- dsconfig files
    tango_dir = root / "tango"
    files = sorted(tango_dir.glob("*.json")) if tango_dir.is_dir() else []
    if not files:
        problems.append(Problem("tango/", "", "no dsconfig *.json file found"))
    schema = _dsconfig_schema()
    validator = jsonschema.Draft4Validator(schema)
    merged: dict[str, Any] = {"servers": {}, "classes": {}}
    server_files: dict[str, str] = {}
    devices: dict[str, DeviceEntry] = {}
    tango_classes: list[_ClassUse] = []
    for path in files:
        rel = str(path.relative_to(root))
        data = read_json(path, problems, rel, tango_names=True)
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(
                Problem(rel, "", "must be a JSON object with 'servers' and/or 'classes'")
            )
            continue
        data = expand_config(data)
        for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
            problems.append(Problem(rel, key_path(err.absolute_path), _schema_message(err)))
        _merge_servers(data, rel, merged, server_files, devices, problems)
        tango_classes.extend(_classes_of(data, rel))
        for cls, cdata in data.get("classes", {}).items():
            if cls in merged["classes"]:
                problems.append(
                    Problem(rel, f"classes.{cls}", "class properties defined in two files")
                )
            merged["classes"][cls] = cdata

    # -- sardana/*.yaml (optional)
    before = len(problems)
    sardana_env = _load_sardana(root, run_path, merged, server_files, devices, problems)
    sardana_failed = len(problems) > before

    # -- starter.json
    servers: dict[str, ServerInfo] = {}
    starter = read_json(root / "starter.json", problems, "starter.json", tango_names=True)
    if isinstance(starter, dict):
        entries = starter.get("servers")
        if not isinstance(entries, dict):
            problems.append(
                Problem("starter.json", "servers", "must be an object: server name -> settings")
            )
            entries = {}
        seen = set()
        for name, info in entries.items():
            key = f"servers.{name}"
            seen.add(name.lower())
            info_obj = _server_info(name, info, key, problems)
            if info_obj:
                servers[name.lower()] = info_obj
        named = sorted(i.name for i in servers.values() if i.host != LOCAL_HOST)
        local = sorted(i.name for i in servers.values() if i.host == LOCAL_HOST)
        if named and local:
            problems.append(
                Problem(
                    "starter.json",
                    "servers",
                    f"{', '.join(local[:4])}{' ...' if len(local) > 4 else ''} have host "
                    f'"@local" while {", ".join(named[:4])} name a host: on several hosts '
                    '"@local" would be every host; name the host of every server',
                )
            )
        for full, rel in server_files.items():
            if full not in seen:
                problems.append(
                    Problem(
                        "starter.json",
                        "servers",
                        f"server {_display(full, merged)} (defined in {rel}) has no entry; add "
                        '{"host": "@local", "level": 2, "controlled": true}',
                    )
                )
        for full in sorted(seen):
            if full not in server_files and not (
                sardana_failed and full.split("/")[0] in SARDANA_EXECUTABLES
            ):
                name = next(n for n in entries if n.lower() == full)
                problems.append(
                    Problem(
                        "starter.json",
                        f"servers.{name}",
                        "no such server in tango/*.json or sardana/*.yaml; remove the entry "
                        "or define the server",
                    )
                )
    elif starter is not None:
        problems.append(
            Problem("starter.json", "", "must be a JSON object with a 'servers' object")
        )

    # -- device classes and properties against the servers and classes we ship
    external = {name for name, info in servers.items() if info.external}
    for key, entry in devices.items():
        if entry.origin == "tango" and entry.server.lower() in external:
            devices[key] = replace(entry, origin="external")
    _check_device_classes(tango_classes, external, problems)
    _check_device_properties(devices, problems, warnings)

    # -- simulation.json (optional)
    simulation = None
    sim_path = root / "simulation.json"
    if sim_path.exists():
        simulation = read_json(sim_path, problems, "simulation.json")
        if simulation is not None:
            _check_simulation(simulation, devices, problems)

    # -- access.json (optional; its rules are applied by `beamline db`): JSON checks only
    if (root / ACCESS_FILE).exists():
        read_json(root / ACCESS_FILE, problems, ACCESS_FILE)

    if problems:
        raise ConfigError(problems)
    return BeamlineConfig(
        root, merged, servers, devices, simulation, warnings, sardana_env, run_path
    )


def _load_sardana(root, run_dir, merged, server_files, devices, problems) -> list[Any]:
    sardana_dir = root / sardana_yaml.SARDANA_DIR
    files = sorted(sardana_dir.glob("*.yaml")) if sardana_dir.is_dir() else []
    environments = []
    tango_devices = {k for k, d in devices.items() if d.origin == "tango"}
    for path in files:
        rel = str(path.relative_to(root))
        doc = sardana_yaml.load_file(path, rel, run_dir, problems)
        if doc is None:
            continue
        for key, names in doc.controller_devices.items():
            for name in names:
                if name.lower() not in tango_devices:
                    problems.append(
                        Problem(
                            rel,
                            key,
                            f"{name} is not a device of tango/*.json; name a beamline device",
                        )
                    )
        _merge_servers(doc.dsconfig, rel, merged, server_files, devices, problems, "sardana")
        environments.extend(doc.environments)
    return environments


def _merge_servers(
    data: dict[str, Any],
    rel: str,
    merged: dict[str, Any],
    server_files: dict[str, str],
    devices: dict[str, DeviceEntry],
    problems: list[Problem],
    origin: str = "tango",
) -> None:
    """Add the servers of one file to ``merged``; a server or device is defined once."""
    for server, instances in data.get("servers", {}).items():
        if not isinstance(instances, dict):
            continue
        for instance, classes in instances.items():
            full = f"{server}/{instance}"
            if full.lower() in server_files:
                problems.append(
                    Problem(
                        rel,
                        f"servers.{server}.{instance}",
                        f"server {full} is also defined in {server_files[full.lower()]}; "
                        "define each server in one file",
                    )
                )
                continue
            server_files[full.lower()] = rel
            merged["servers"].setdefault(server, {})[instance] = classes
            if not isinstance(classes, dict):
                continue
            for cls, devs in classes.items():
                if not isinstance(devs, dict):
                    continue
                for dev, devdata in devs.items():
                    key = f"servers.{server}.{instance}.{cls}.{dev}"
                    if not DEVICE_NAME.match(dev):
                        problems.append(
                            Problem(rel, key, "device names have three parts: domain/family/member")
                        )
                        continue
                    if dev.lower() in devices:
                        other = devices[dev.lower()]
                        problems.append(
                            Problem(
                                rel,
                                key,
                                f"device {dev} is already defined in server {other.server} "
                                f"({other.file}); a device belongs to one server",
                            )
                        )
                        continue
                    props = devdata.get("properties", {}) if isinstance(devdata, dict) else {}
                    devices[dev.lower()] = DeviceEntry(full, cls, dev, props, rel, origin)


def _display(full_lower: str, merged: dict) -> str:
    for server, instances in merged["servers"].items():
        for instance in instances:
            if f"{server}/{instance}".lower() == full_lower:
                return f"{server}/{instance}"
    return full_lower


def _schema_message(err) -> str:
    if err.validator == "type" and err.validator_value == "array":
        return f'{err.instance!r} must be a list of strings, e.g. ["{err.instance}"]'
    if err.validator == "additionalProperties":
        return f"{err.message}; check the nesting server -> instance -> class -> device"
    return err.message


def _server_info(name: str, info: Any, key: str, problems: list[Problem]) -> ServerInfo | None:
    if "/" not in name or name.count("/") != 1 or not all(name.split("/")):
        problems.append(Problem("starter.json", key, "server names look like Executable/instance"))
        return None
    if not isinstance(info, dict):
        problems.append(
            Problem("starter.json", key, "must be an object with host, level, controlled")
        )
        return None
    unknown = set(info) - {"host", "level", "controlled", "external"}
    if unknown:
        problems.append(
            Problem(
                "starter.json",
                key,
                f"unknown keys {sorted(unknown)}; allowed: host, level, controlled, external",
            )
        )
    host = info.get("host", LOCAL_HOST)
    level = info.get("level")
    controlled = info.get("controlled", True)
    external = info.get("external", False)
    ok = True
    if not isinstance(external, bool):
        problems.append(Problem("starter.json", f"{key}.external", "must be true or false"))
        ok = False
    elif external and _owner_of(name.split("/", 1)[0]):
        problems.append(
            Problem(
                "starter.json",
                f"{key}.external",
                f"{name.split('/', 1)[0]} is {_owner_of(name.split('/', 1)[0])}, not a server "
                'from elsewhere; remove "external"',
            )
        )
        ok = False
    if not isinstance(host, str) or not host:
        problems.append(Problem("starter.json", f"{key}.host", 'must be a host name or "@local"'))
        ok = False
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= MAX_LEVEL:
        problems.append(
            Problem(
                "starter.json",
                f"{key}.level",
                f"must be an integer from 1 to {MAX_LEVEL}, not {level!r}",
            )
        )
        ok = False
    if not isinstance(controlled, bool):
        problems.append(Problem("starter.json", f"{key}.controlled", "must be true or false"))
        ok = False
    return ServerInfo(name, host, level, controlled, external) if ok else None


def known_device_classes() -> dict[str, Any]:
    """Device classes shipped with the suite, by Tango class name (imported lazily)."""
    from tango_devices.registry import device_classes

    return device_classes()


def suite_servers() -> dict[str, str]:
    """The suite's server executables and the one Tango class each runs."""
    from tango_devices.registry import SERVERS

    return {server: target.rsplit(":", 1)[1] for server, (target, _entry) in SERVERS.items()}


def _owner_of(executable: str) -> str | None:
    """Who ships a server executable: the suite, Sardana, or nobody we know."""
    if executable in suite_servers():
        return "the suite's server"
    if executable.lower() in SARDANA_EXECUTABLES:
        return "Sardana's server (configured in sardana/*.yaml)"
    return None


@dataclass(frozen=True)
class _ClassUse:
    """A class key under a server instance of a tango/*.json file, or in its
    ``classes`` section (``server`` empty)."""

    file: str
    key: str  # "servers.Motor.slit_h.Motor"
    server: str  # "Motor/slit_h"
    device_class: str
    devices: tuple[str, ...]


def _classes_of(data: dict[str, Any], rel: str) -> list[_ClassUse]:
    uses = []
    for server, instances in (data.get("servers") or {}).items():
        for instance, classes in (instances if isinstance(instances, dict) else {}).items():
            for cls, devs in (classes if isinstance(classes, dict) else {}).items():
                names = tuple(devs) if isinstance(devs, dict) else ()
                key = f"servers.{server}.{instance}.{cls}"
                uses.append(_ClassUse(rel, key, f"{server}/{instance}", cls, names))
    for cls in data.get("classes") or {}:
        uses.append(_ClassUse(rel, f"classes.{cls}", "", cls, ()))
    return uses


def _suggest(name: str, known: list[str]) -> str:
    """' (did you mean X?)' for the closest known name, or ''."""
    import difflib

    same = [k for k in known if k.lower() == name.lower()]
    close = same or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_device_classes(uses: list[_ClassUse], external: set[str], problems) -> None:
    """Every server of tango/*.json is one of the suite's executables (or marked
    external in starter.json) and holds the one class that executable runs: a
    class the server does not have would be written to the database, and its
    devices would never be exported."""
    servers = suite_servers()
    classes = sorted(set(servers.values()))
    server_list = ", ".join(sorted(servers))
    reported: set[tuple[str, str]] = set()
    for use in uses:
        executable = use.server.split("/", 1)[0]
        if use.server and use.server.lower() in external:
            continue
        if use.server and executable not in servers:
            if (use.file, executable) in reported:
                continue
            reported.add((use.file, executable))
            if executable.lower() in SARDANA_EXECUTABLES:
                message = (
                    f"{executable} is Sardana's server: configure Sardana in sardana/*.yaml "
                    "(sardana-config), not in tango/*.json"
                )
            else:
                message = (
                    f"unknown server {executable}{_suggest(executable, list(servers))}; "
                    f"the suite's servers: {server_list}; a server from elsewhere needs "
                    '"external": true in its starter.json entry'
                )
            problems.append(Problem(use.file, f"servers.{executable}", message))
            continue
        if use.device_class == "DServer":  # every server's admin device
            admin = f"dserver/{use.server}".lower()
            for dev in use.devices:
                if dev.lower() != admin:
                    problems.append(
                        Problem(
                            use.file,
                            f"{use.key}.{dev}",
                            f"DServer is Tango's admin class: the one device of server "
                            f"{use.server} is dserver/{use.server}",
                        )
                    )
            continue
        if use.device_class not in classes:
            problems.append(
                Problem(
                    use.file,
                    use.key,
                    f"unknown device class {use.device_class}"
                    f"{_suggest(use.device_class, classes)}; the suite's classes: "
                    f"{', '.join(classes)}",
                )
            )
        elif use.server and servers[executable] != use.device_class:
            problems.append(
                Problem(
                    use.file,
                    use.key,
                    f"server {executable} runs class {servers[executable]} only, not "
                    f"{use.device_class}; put these devices under "
                    f"{_server_of_class(servers, use.device_class)}",
                )
            )


def _server_of_class(servers: dict[str, str], cls: str) -> str:
    return next(f"servers.{s}.<instance>.{c}" for s, c in servers.items() if c == cls)


def _check_device_properties(devices, problems, warnings) -> None:
    try:
        classes = known_device_classes()
    except ImportError as exc:  # pragma: no cover - broken install
        warnings.append(Problem("tango/", "", f"cannot check device properties: {exc}"))
        return
    for entry in devices.values():
        cls = classes.get(entry.device_class) if entry.origin == "tango" else None
        if cls is None:
            continue  # a class from elsewhere (Sardana, TangoTest, ...)
        server, instance = entry.server.split("/", 1)
        base = f"servers.{server}.{instance}.{entry.device_class}.{entry.name}.properties"
        declared = cls.class_properties_spec()
        lower = {k.lower(): (k, v) for k, v in entry.properties.items()}
        for prop, spec in declared.items():
            present = lower.get(prop.lower())
            if present is None:
                if spec["mandatory"]:
                    problems.append(
                        Problem(entry.file, f"{base}.{prop}", f"missing; {spec['doc']}")
                    )
                continue
            _, value = present
            if not isinstance(value, list) or len(value) != 1:
                continue  # schema errors are reported already; arrays are not used by our classes
            conv = spec["type"]
            try:
                parsed = conv(value[0])
            except ValueError:
                problems.append(
                    Problem(
                        entry.file,
                        f"{base}.{prop}",
                        f"{value[0]!r} is not a valid {conv.__name__}; {spec['doc']}",
                    )
                )
                continue
            if isinstance(parsed, float) and not math.isfinite(parsed):
                problems.append(
                    Problem(
                        entry.file,
                        f"{base}.{prop}",
                        f"{value[0]!r} is not a finite number (nan and inf are refused); "
                        f"{spec['doc']}",
                    )
                )
        for name, (orig, _) in lower.items():
            if name not in {p.lower() for p in declared} and not name.startswith("_"):
                warnings.append(
                    Problem(
                        entry.file,
                        f"{base}.{orig}",
                        f"class {entry.device_class} has no property {orig}; it will be ignored",
                    )
                )


def _check_simulation(sim: Any, devices, problems) -> None:
    rel = "simulation.json"
    if not isinstance(sim, dict):
        problems.append(Problem(rel, "", "must be a JSON object"))
        return
    controllers = sim.get("controllers", {})
    if not isinstance(controllers, dict) or not controllers:
        problems.append(Problem(rel, "controllers", "must be a non-empty object"))
        controllers = {}
    names = set(controllers)
    for device, props in (sim.get("overrides") or {}).items():
        key = f"overrides.{device}"
        if device.lower() not in devices:
            problems.append(Problem(rel, key, "no such device in tango/*.json"))
            continue
        if not isinstance(props, dict):
            problems.append(Problem(rel, key, "must be an object: property -> value template"))
            continue
        for prop, template in props.items():
            for text in template if isinstance(template, list) else [template]:
                if not isinstance(text, str):
                    problems.append(Problem(rel, f"{key}.{prop}", "templates are strings"))
                    continue
                for _, field_name, _, _ in string.Formatter().parse(text):
                    if field_name is None:
                        continue
                    head = field_name.split(".")[0]
                    if head != "listen" and head not in names:
                        problems.append(
                            Problem(
                                rel,
                                f"{key}.{prop}",
                                f"{{{field_name}}} names no controller; known: "
                                f"{', '.join(sorted(names)) or 'none'} (and {{listen}})",
                            )
                        )
