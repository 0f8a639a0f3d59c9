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

import os
import pickle
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamline.problems import Problem, key_path

SARDANA_DIR = "sardana"

# Bounds on one sardana/*.yaml file, checked before anything is built from it
# (the demo's is 3 kB, 207 nodes; a beamline of 300 elements some 100 kB).
#: characters in the file
MAX_YAML_CHARS = 2**20
#: nodes (scalars, lists, mappings) in the document, aliases expanded
MAX_YAML_NODES = 50_000
#: nodes that aliases (``*name``, ``<<: *name``) may add to the document once
#: expanded: sharing a few blocks is fine, a "billion laughs" is refused
MAX_ALIAS_NODES = 10_000
#: nesting depth (sardana-config needs under 10; the parser recurses per level)
MAX_YAML_DEPTH = 100


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


def use_tango_host(tango_host: str) -> None:
    """Full device names (a measurement group's synchronizer, ...) are made by
    Taurus's name validators with a default database, which they keep, and
    cache per name, from the first name they saw: use ``tango_host`` from now
    on (``beamline up`` reads db_config before it knows the database)."""
    from taurus import Factory
    from taurus.core.tango.tangovalidator import (
        TangoAttributeNameValidator,
        TangoDeviceNameValidator,
    )

    os.environ["TANGO_HOST"] = tango_host  # what the configuration cache is keyed by
    Factory(scheme="tango").set_default_tango_host(tango_host)
    for validator in (TangoDeviceNameValidator, TangoAttributeNameValidator):
        cache = getattr(validator(), "names_cache", None)
        if isinstance(cache, dict):
            cache.clear()


def load_file(path: Path, rel: str, run_dir: Path, problems: list) -> SardanaDoc | None:
    """Parse, substitute, validate and convert one YAML file; problems are appended."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_YAML_CHARS + 1)
    except OSError as exc:
        problems.append(Problem(rel, "", f"cannot read: {exc.strerror}"))
        return None
    except ValueError as exc:  # UnicodeDecodeError
        problems.append(Problem(rel, "", f"not UTF-8 text: {exc}"))
        return None
    if len(text) > MAX_YAML_CHARS:
        problems.append(
            Problem(
                rel,
                "",
                f"larger than {MAX_YAML_CHARS // 2**20} MiB: not a sardana-config file; "
                "split it into several sardana/*.yaml files",
            )
        )
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
        # Aliases share what they name when parsed, but everything after the
        # parser (the model, the checks, build_dsconfig) walks them expanded:
        # measure the expansion on the event stream before building anything.
        problem = expansion_problem(get_yaml(typ="rt").parse(text), rel)
        if problem is not None:
            problems.append(problem)
            return None
        doc = _linear_copies(get_yaml(typ="rt").load(text))
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
    dsconfig = _plain(build_dsconfig(remove_environment_from_config(config)))
    _dedupe_group_elements(dsconfig)
    return SardanaDoc(rel, dsconfig, environments, controller_devices)


def _dedupe_group_elements(dsconfig: dict[str, Any]) -> None:
    """A measurement group's ``elements`` once each, as the Pool writes them
    back: sardana-config lists a synchronizer once per channel it gates, and
    `config diff` then always differed from a running beamline."""
    for instances in dsconfig.get("servers", {}).values():
        for classes in instances.values():
            for device in classes.get("MeasurementGroup", {}).values():
                props = device.get("properties", {})
                if isinstance(props.get("elements"), list):
                    props["elements"] = list(dict.fromkeys(props["elements"]))


def expansion_problem(events: Iterable[Any], rel: str) -> Problem | None:
    """A Problem if the YAML events describe a document that nests deeper than
    MAX_YAML_DEPTH, has an alias inside the collection it names (a recursive
    structure), whose aliases add more than MAX_ALIAS_NODES nodes once
    expanded, or that has more than MAX_YAML_NODES nodes in all; None
    otherwise. One pass that stops at the first problem, constant work per
    event: each anchor's expanded size is computed once, when its node ends."""
    from ruamel.yaml.events import (
        AliasEvent,
        CollectionEndEvent,
        CollectionStartEvent,
        DocumentStartEvent,
        ScalarEvent,
    )

    def where(event) -> str:
        mark = event.start_mark
        return f"line {mark.line + 1} column {mark.column + 1}"

    # anchor -> nodes once expanded, or the open collection it names
    sizes: dict[str, int | list] = {}
    stack: list[list] = []  # open collections: [nodes so far, anchor]
    added = total = 0
    for event in events:
        size = 0  # nodes this event adds to the expanded document
        if isinstance(event, DocumentStartEvent):
            sizes.clear()
        elif isinstance(event, CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                return Problem(
                    rel, where(event), f"nested deeper than {MAX_YAML_DEPTH} levels; flatten it"
                )
            size = 1
            entry = [1, event.anchor]
            stack.append(entry)
            if event.anchor is not None:
                sizes[event.anchor] = entry
        elif isinstance(event, CollectionEndEvent):
            entry = stack.pop()
            if entry[1] is not None and sizes.get(entry[1]) is entry:
                sizes[entry[1]] = entry[0]
            if stack:
                stack[-1][0] += entry[0]
        elif isinstance(event, ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
            if stack:
                stack[-1][0] += 1
        elif isinstance(event, AliasEvent):
            named = sizes.get(event.anchor, 1)  # an undefined alias: the composer says so
            if isinstance(named, list):
                return Problem(
                    rel,
                    where(event),
                    f"alias *{event.anchor} inside the node &{event.anchor} it names "
                    "(a recursive structure); write the value out",
                )
            size = named
            added += size
            if added > MAX_ALIAS_NODES:
                return Problem(
                    rel,
                    where(event),
                    f"alias *{event.anchor} ({size} nodes) makes the aliases add more than "
                    f"{MAX_ALIAS_NODES} nodes to the document (a YAML alias bomb?); "
                    "write the values out, or share fewer and smaller blocks",
                )
            if stack:
                stack[-1][0] += size
        total += size
        if total > MAX_YAML_NODES:
            return Problem(
                rel,
                where(event),
                f"more than {MAX_YAML_NODES} values, lists and mappings (aliases expanded) "
                "by here, more than a beamline needs; split it into several sardana/*.yaml files",
            )
    return None


def _linear_copies(doc: Any) -> Any:
    """``doc`` with every ruamel CommentedSeq made a _LinearSeq, in place.

    sardana-config deep-copies the document (``remove_defaults``), and
    ruamel's ``CommentedSeq.__deepcopy__`` copies the list's line/column
    records once per item: quadratic, 5 s for a list of 1,000 values, 9 min
    for 10,000 (ruamel.yaml 0.19.1). The subclass copies them once; it is
    still a CommentedSeq (build_dsconfig reads its flow style)."""
    from ruamel.yaml.comments import CommentedSeq

    seen: set[int] = set()
    todo = [doc]
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, CommentedSeq):
            value.__class__ = _linear_seq_class()
            todo.extend(value)
        elif isinstance(value, dict):
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return doc


_LINEAR_SEQ: list[type] = []


def _linear_seq_class() -> type:
    if not _LINEAR_SEQ:
        import copy

        from ruamel.yaml.comments import CommentedSeq

        class _LinearSeq(CommentedSeq):
            __slots__ = ()

            def __deepcopy__(self, memo: Any) -> Any:
                res = self.__class__()
                memo[id(self)] = res
                for item in self:
                    res.append(copy.deepcopy(item, memo))
                self.copy_attributes(res, memo=memo)
                return res

        _LINEAR_SEQ.append(_LinearSeq)
    return _LINEAR_SEQ[0]


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


#: Sardana's general hooks: a list of (macro line, [hook places]) that users
#: extend with ``defgh``; the configured hooks are added to it, never replace it
GENERAL_HOOKS = "_GeneralHooks"


def environment_updates(env: SardanaEnv, current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Variables whose configured value differs from ``current``: name -> (old, new).
    ``_GeneralHooks`` only when a configured hook is missing: the hooks users
    defined stay, after them the missing ones."""
    updates = {}
    for name, value in env.variables.items():
        if name == GENERAL_HOOKS:
            merged = merge_general_hooks(current.get(name), value)
            if merged is not None:
                updates[name] = (current.get(name), merged)
        elif name not in current or current[name] != value:
            updates[name] = (current.get(name), value)
    return updates


def merge_general_hooks(current: Any, configured: Any) -> list | None:
    """``current`` general hooks with every ``configured`` one in it (a hook
    is [macro line, [places]]), in their order; None when none is missing."""

    def key(hook: Any) -> tuple[str, tuple[str, ...]]:
        name, places = hook
        if isinstance(places, str):
            places = [places]
        return str(name), tuple(str(p) for p in places)

    have = list(current) if isinstance(current, list | tuple) else []
    known = set()
    for hook in have:
        try:
            known.add(key(hook))
        except (TypeError, ValueError):
            continue  # a malformed entry: Sardana's to report, kept as it is
    configured = configured if isinstance(configured, list | tuple) else []
    missing = [[str(h[0]), list(key(h)[1])] for h in configured if key(h) not in known]
    return have + missing if missing else None


def ensure_directories(env: SardanaEnv) -> None:
    """Create the directories the environment names (scan directory, env file's)."""
    scan_dir = env.variables.get("ScanDir")
    if isinstance(scan_dir, str) and scan_dir:
        Path(scan_dir).mkdir(parents=True, exist_ok=True)
    if env.env_db:
        Path(env.env_db).parent.mkdir(parents=True, exist_ok=True)
