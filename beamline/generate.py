"""A beamline of any size from the demo's building blocks (``beamline config
generate``): the demo beamline bl01 stays as it is, and as many more motors
(on simulated SMC controllers of 8 axes each), EPICS motor records, scalers,
cameras, vacuum gauges and valves (on the one simulated EPICS IOC) as asked,
each its own server under the Starter, each a Sardana element where Sardana
has a place for it (motors, counter channels, images, valves), all archived
by the data logger and watched by both supervisors.

The counts are totals, the demo's objects included. Everything is checked
before anything is written; the result passes ``beamline config check``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: an SMC controller has this many axes (docs/protocol-motion.md)
SMC_AXES = 8
#: the demo's objects of each kind: a generated beamline has at least these
DEMO = {"motors": 5, "motor_records": 1, "scalers": 1, "cameras": 1, "gauges": 1, "valves": 1}
KINDS = tuple(DEMO)
MAX_TOTAL = 2000  # servers: a sanity bound (one host runs a few hundred)
PORT_BASE = 9200  # simulated controllers' configured ports (--sim-auto-ports replaces them)
#: with --hosts: on the first host, the supervisors and Sardana; on the last,
#: the servers that subscribe to everything (so Sardana and they do not share
#: a host's CPU); the hardware servers in turn on every host
FIRST_HOST = ("Supervisor/supervisor", "Supervisor/standby", "Sardana/bl01")
LAST_HOST = ("DataLogger/logger", "EventRelay/relay", "ExperimentQueue/queue")
#: a host name as the Starter names its host (tango/admin/<short host name>)
HOST_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,62}")


class GenerateError(ValueError):
    """The request cannot make a beamline; the message says what to change."""


@dataclass(frozen=True)
class Spec:
    motors: int = DEMO["motors"]
    motor_records: int = DEMO["motor_records"]
    scalers: int = DEMO["scalers"]
    cameras: int = DEMO["cameras"]
    gauges: int = DEMO["gauges"]
    valves: int = DEMO["valves"]
    axes_per_controller: int = SMC_AXES
    hosts: tuple[str, ...] = ()  # none: every server on the host running `up` (@local)

    def check(self) -> None:
        problems = []
        for kind in KINDS:
            value = getattr(self, kind)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"--{kind.replace('_', '-')} must be a whole number")
            elif value < DEMO[kind]:
                problems.append(
                    f"--{kind.replace('_', '-')} {value}: a generated beamline keeps the demo's "
                    f"{DEMO[kind]} (the count is a total); give {DEMO[kind]} or more"
                )
        axes = self.axes_per_controller
        if not isinstance(axes, int) or not 1 <= axes <= SMC_AXES:
            problems.append(
                f"--axes-per-controller {axes}: an SMC controller has 1 to {SMC_AXES} axes"
            )
        problems += _host_problems(self.hosts)
        if not problems and self.servers() > MAX_TOTAL:
            problems.append(f"{self.servers()} servers: at most {MAX_TOTAL}")
        if problems:
            raise GenerateError("; ".join(problems))

    def servers(self) -> int:
        """Servers of the generated beamline (one per object, plus the system's)."""
        system = 6  # two supervisors, the logger, the event relay, Sardana, the queue
        shutter = 1
        timing = 1  # the timing unit tg1
        system += max(0, len(self.hosts) - 1)  # a supervisor for each further host
        return system + shutter + timing + sum(getattr(self, kind) for kind in KINDS)

    @classmethod
    def for_servers(cls, total: int, hosts: tuple[str, ...] = ()) -> Spec:
        """A beamline of ``total`` servers, in a real beamline's proportions:
        mostly motors, then gauges, valves, scalers and cameras."""
        base = cls(hosts=hosts)
        extra = total - base.servers()
        if extra < 0:
            raise GenerateError(f"{total} servers: the demo alone has {base.servers()}")
        shares = {"motors": 0.72, "gauges": 0.1, "valves": 0.08, "scalers": 0.05, "cameras": 0.03}
        counts = {k: int(extra * f) for k, f in shares.items()}
        counts["motor_records"] = extra - sum(counts.values())
        return cls(**{k: DEMO[k] + counts.get(k, 0) for k in KINDS}, hosts=hosts)


def _host_problems(hosts: tuple[str, ...]) -> list[str]:
    problems = []
    bad = [h for h in hosts if not isinstance(h, str) or not HOST_NAME.fullmatch(h)]
    if bad:
        problems.append(
            f"--hosts {','.join(map(str, bad))}: give short host names (a letter, then letters, "
            "digits or '-'), as the Starter names its host: tango/admin/<host>"
        )
    lower = [str(h).lower() for h in hosts]
    doubles = sorted({h for h in lower if lower.count(h) > 1})
    if doubles:
        problems.append(f"--hosts names {', '.join(doubles)} more than once")
    taken = sorted(set(lower[1:]) & {"supervisor", "standby"})
    if taken:
        problems.append(
            f"--hosts {', '.join(taken)}: the supervisor of a host after the first is "
            "Supervisor/<host>, and the demo already has Supervisor/supervisor and "
            "Supervisor/standby; name the host otherwise"
        )
    return problems


def generate(spec: Spec, demo_dir: Path) -> dict[str, Any]:
    """The files of the generated configuration: relative path -> JSON data
    (or text for the Sardana YAML and anything copied)."""
    spec.check()
    files: dict[str, Any] = {}
    for path in sorted(demo_dir.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(demo_dir))
            files[rel] = (
                json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()
            )
    sim = files["simulation.json"]
    starter = files["starter.json"]
    ioc = sim["controllers"]["ioc1"]
    sardana: list[str] = []  # YAML lines of the extra Sardana controllers

    # motors on SMC controllers of axes_per_controller axes
    motors = files["tango/motors.json"]["servers"]["Motor"]
    template = copy.deepcopy(motors["sample_x"]["Motor"]["bl01/mot/sample_x"])
    axis_template = sim["controllers"]["smc1"]["axes"]["3"]
    extra = [f"m{n:03d}" for n in range(1, spec.motors - DEMO["motors"] + 1)]
    per = spec.axes_per_controller
    for c, start in enumerate(range(0, len(extra), per), start=2):
        controller = f"smc{c}"
        names = extra[start : start + per]
        sim["controllers"][controller] = {
            "kind": "smc",
            "port": PORT_BASE + c,
            "axes": {str(a): {**axis_template, "label": n} for a, n in enumerate(names, 1)},
        }
        devices = []
        for axis, name in enumerate(names, 1):
            device = f"bl01/mot/{name}"
            entry = copy.deepcopy(template)
            entry["properties"]["Port"] = [f"socket://{controller}.bl01.lan:4001"]
            entry["properties"]["Axis"] = [str(axis)]
            entry["attribute_properties"]["Position"]["label"] = [f"Motor {name}"]
            motors[name] = {"Motor": {device: entry}}
            sim["overrides"][device] = {"Port": f"socket://{{listen}}:{{{controller}.port}}"}
            starter["servers"][f"Motor/{name}"] = _level(2)
            devices.append(device)
        sardana += _controller(
            f"mot_{controller}",
            "Motor",
            "BeamlineMotorCtrl.py",
            "BeamlineMotorController",
            {"Devices": ",".join(devices)},
            names,
        )

    # EPICS motor records on the IOC
    record = files["tango/motors.json"]["servers"]["Motor"]["mirror_pitch"]["Motor"]
    record_entry = next(iter(record.values()))
    ioc_motor = ioc["motors"]["mirror_pitch"]
    records = [f"r{n:03d}" for n in range(1, spec.motor_records - DEMO["motor_records"] + 1)]
    for name in records:
        device = f"bl01/mot/{name}"
        entry = copy.deepcopy(record_entry)
        pv = f"OPT:REC:{name.upper()}"
        entry["properties"]["Port"] = [f"ca://BL01:{pv}"]
        entry["attribute_properties"]["Position"]["label"] = [f"Motor record {name}"]
        motors[name] = {"Motor": {device: entry}}
        ioc["motors"][name] = {**ioc_motor, "pv": pv}
        sim["overrides"][device] = {"EpicsAddrList": "{listen}:{ioc1.port}"}
        starter["servers"][f"Motor/{name}"] = _level(2)
    if records:
        sardana += _controller(
            "mot_records",
            "Motor",
            "BeamlineMotorCtrl.py",
            "BeamlineMotorController",
            {"Devices": ",".join(f"bl01/mot/{n}" for n in records)},
            records,
        )

    # scalers: the same two physics signals on each
    scalers = files["tango/scaler.json"]["servers"]["Scaler"]
    scaler_entry = scalers["scaler"]["Scaler"]["bl01/ct/scaler"]
    for n in range(2, spec.scalers + 1):
        name, controller = f"scaler{n}", f"scaler{n}"
        device = f"bl01/ct/{name}"
        entry = copy.deepcopy(scaler_entry)
        entry["properties"]["Port"] = [f"socket://{controller}.bl01.lan:9103"]
        scalers[name] = {"Scaler": {device: entry}}
        sim["controllers"][controller] = {
            **sim["controllers"]["scaler1"],
            "port": PORT_BASE + 100 + n,
        }
        sim["overrides"][device] = {"Port": f"socket://{{listen}}:{{{controller}.port}}"}
        starter["servers"][f"Scaler/{name}"] = _level(2)
        sardana += _controller(
            f"ct_{name}",
            "CTExpChannel",
            "BeamlineCounterTimerCtrl.py",
            "BeamlineCounterTimerController",
            {"Device": device},
            [f"{name}_time", f"{name}_i0", f"{name}_diode"],
        )

    # cameras: each an image and its ROI statistics
    cameras = files["tango/detector.json"]["servers"]["Detector"]
    camera_entry = cameras["cam1"]["Detector"]["bl01/det/cam1"]
    for n in range(2, spec.cameras + 1):
        name = f"cam{n}"
        device = f"bl01/det/{name}"
        entry = copy.deepcopy(camera_entry)
        entry["properties"]["Port"] = [f"socket://{name}.bl01.lan:9104"]
        cameras[name] = {"Detector": {device: entry}}
        sim["controllers"][name] = {**sim["controllers"]["cam1"], "port": PORT_BASE + 200 + n}
        sim["overrides"][device] = {"Port": f"socket://{{listen}}:{{{name}.port}}"}
        starter["servers"][f"Detector/{name}"] = _level(2)
        sardana += _controller(
            f"twod_{name}",
            "TwoDExpChannel",
            "BeamlineTwoDCtrl.py",
            "BeamlineTwoDController",
            {"Device": device},
            [f"{name}_image"],
        )
        sardana += _controller(
            f"roi_{name}",
            "CTExpChannel",
            "BeamlineRoiCtrl.py",
            "BeamlineRoiController",
            {"Device": device},
            [f"{name}_roi_sum", f"{name}_roi_cx", f"{name}_roi_cy"],
        )

    # vacuum: gauges and valves on the IOC
    vacuum = files["tango/vacuum.json"]["servers"]
    gauge_entry = vacuum["VacuumGauge"]["gauge1"]["VacuumGauge"]["bl01/vac/gauge1"]
    for n in range(2, spec.gauges + 1):
        name = f"gauge{n}"
        device = f"bl01/vac/{name}"
        pv = f"VAC:GAUGE{n}"
        entry = copy.deepcopy(gauge_entry)
        entry["properties"]["PV"] = [f"BL01:{pv}"]
        entry["attribute_properties"]["Pressure"]["label"] = [f"Pressure {name}"]
        vacuum["VacuumGauge"][name] = {"VacuumGauge": {device: entry}}
        ioc["gauges"][name] = {**ioc["gauges"]["gauge1"], "pv": pv}
        sim["overrides"][device] = {"EpicsAddrList": "{listen}:{ioc1.port}"}
        starter["servers"][f"VacuumGauge/{name}"] = _level(2)
    valve_entry = vacuum["Valve"]["valve1"]["Valve"]["bl01/vac/valve1"]
    valves = [f"valve{n}" for n in range(2, spec.valves + 1)]
    for name in valves:
        device = f"bl01/vac/{name}"
        pv = f"VAC:{name.upper()}"
        entry = copy.deepcopy(valve_entry)
        entry["properties"]["PV"] = [f"BL01:{pv}"]
        vacuum["Valve"][name] = {"Valve": {device: entry}}
        ioc["valves"][name] = {**ioc["valves"]["valve1"], "pv": pv}
        sim["overrides"][device] = {"EpicsAddrList": "{listen}:{ioc1.port}"}
        starter["servers"][f"Valve/{name}"] = _level(2)
    if valves:
        sardana += _controller(
            "io_valves",
            "IORegister",
            "BeamlineIORegisterCtrl.py",
            "BeamlineIORegisterController",
            {"Devices": ",".join(f"bl01/vac/{n}" for n in valves)},
            valves,
        )

    files["sardana/bl01.yaml"] = _with_controllers(files["sardana/bl01.yaml"], sardana)
    if spec.hosts:
        _place(files, spec.hosts)
    sim["_comment"] = (
        f"Generated by `beamline config generate` ({_describe(spec)}) from the demo's "
        "simulation.json. " + sim.get("_comment", "")
    )
    return files


def _place(files: dict[str, Any], hosts: tuple[str, ...]) -> None:
    """Name every server's host (see FIRST_HOST, LAST_HOST), and give each
    host after the first a supervisor of its own (a supervisor heals the
    servers of its host; the standby watches the first host's)."""
    servers = files["starter.json"]["servers"]
    missing = [n for n in FIRST_HOST + LAST_HOST if n not in servers]
    if missing:
        raise GenerateError(f"the demo's starter.json has no {', '.join(missing)} to place")
    hardware = [n for n in servers if n not in FIRST_HOST + LAST_HOST]
    for name in FIRST_HOST:
        servers[name]["host"] = hosts[0]
    for name in LAST_HOST:
        servers[name]["host"] = hosts[-1]
    for i, name in enumerate(hardware):
        servers[name]["host"] = hosts[i % len(hosts)]
    supervisors = files["tango/system.json"]["servers"]["Supervisor"]
    main = supervisors["supervisor"]["Supervisor"]["bl01/sys/supervisor"]
    for host in hosts[1:]:
        servers[f"Supervisor/{host}"] = {"host": host, "level": 1, "controlled": True}
        supervisors[host] = {
            "Supervisor": {f"bl01/sys/supervisor-{host.lower()}": copy.deepcopy(main)}
        }


def _level(level: int) -> dict[str, Any]:
    return {"host": "@local", "level": level, "controlled": True}


def _controller(
    name: str, kind: str, module: str, cls: str, properties: dict[str, str], elements: list[str]
) -> list[str]:
    """YAML lines of one Sardana controller of the pool, with its elements."""
    lines = [
        f"      {name}:",
        f"        type: {kind}",
        f"        python_module: {module}",
        f"        python_class: {cls}",
        "        properties:",
        *(f"          {k}: {v}" for k, v in properties.items()),
        "        elements:",
        *(f"          {e}: {{axis: {a}}}" for a, e in enumerate(elements, 1)),
    ]
    return lines


def _with_controllers(text: str, lines: list[str]) -> str:
    """The demo's Sardana YAML with more controllers in its pool (inserted
    before its measurement groups)."""
    if not lines:
        return text
    marker = "    measurement_groups:\n"
    if marker not in text:
        raise GenerateError(
            "the demo's sardana/bl01.yaml has no measurement_groups to insert before"
        )
    head, tail = text.split(marker, 1)
    return head + "\n".join(lines) + "\n" + marker + tail


def _describe(spec: Spec) -> str:
    counts = ", ".join(f"{getattr(spec, k)} {k.replace('_', ' ')}" for k in KINDS)
    hosts = f"; on hosts {', '.join(spec.hosts)}" if spec.hosts else ""
    return f"{spec.servers()} servers: {counts}{hosts}"


def write(spec: Spec, demo_dir: Path, out: Path, force: bool = False) -> dict[str, Any]:
    """Generate and write ``out`` (refused if it exists, unless ``force``);
    nothing is written when the request or the result is refused."""
    files = generate(spec, demo_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise GenerateError(f"{out} exists and is not empty: choose another --out, or --force")
    staging = out.with_name(out.name + ".generating")
    if staging.exists():
        shutil.rmtree(staging)
    for rel, content in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(content, indent=2) + "\n" if isinstance(content, dict) else content
        path.write_text(text)
    _check_loads(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return {"out": str(out), "servers": spec.servers(), "spec": spec.__dict__}


def _check_loads(config_dir: Path) -> None:
    from beamline import config as cfg

    try:
        cfg.load(config_dir)
    except cfg.ConfigError as exc:
        shutil.rmtree(config_dir)
        raise GenerateError(f"the generated configuration does not load: {exc}") from None
