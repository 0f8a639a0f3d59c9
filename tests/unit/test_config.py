"""db_config loading and validation: every error names the file and the key."""

import json
import shutil
from pathlib import Path

import pytest

from beamline import config as cfg

PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "db_config"


@pytest.fixture
def cfgdir(tmp_path):
    dest = tmp_path / "db_config"
    shutil.copytree(PROJECT_CONFIG, dest)
    return dest


def edit(path: Path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def problems(cfgdir) -> list[str]:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.load(cfgdir)
    return [str(p) for p in info.value.problems]


def motor(data, name):
    return data["servers"]["Motor"][name]["Motor"][f"bl01/mot/{name}"]


def test_project_config_is_valid():
    c = cfg.load(PROJECT_CONFIG)
    assert {s.name for s in c.servers.values()} >= {
        f"Motor/{m}" for m in ("slit_h", "slit_v", "sample_x", "sample_y", "det_z")
    }
    assert c.devices["bl01/mot/sample_x"].server == "Motor/sample_x"
    assert c.warnings == []
    levels = c.servers_by_level()
    assert [s.name for s in levels[2]] == sorted(s.name for s in levels[2])


def test_property_not_a_list_names_file_and_key(cfgdir):
    edit(cfgdir / "tango/motors.json", lambda d: motor(d, "slit_h")["properties"].update(Axis=1))
    assert problems(cfgdir) == [
        "tango/motors.json: servers.Motor.slit_h.Motor.bl01/mot/slit_h.properties.Axis: "
        '1 must be a list of strings, e.g. ["1"]'
    ]


def test_missing_mandatory_property(cfgdir):
    edit(cfgdir / "tango/motors.json", lambda d: motor(d, "det_z")["properties"].pop("Port"))
    (p,) = problems(cfgdir)
    assert p.startswith(
        "tango/motors.json: servers.Motor.det_z.Motor.bl01/mot/det_z.properties.Port: missing"
    )


def test_property_of_wrong_type(cfgdir):
    edit(
        cfgdir / "tango/motors.json",
        lambda d: motor(d, "det_z")["properties"].update(Axis=["five"]),
    )
    (p,) = problems(cfgdir)
    assert "properties.Axis: 'five' is not a valid int" in p


def test_unknown_property_is_a_warning(cfgdir):
    edit(
        cfgdir / "tango/motors.json",
        lambda d: motor(d, "det_z")["properties"].update(Colour=["red"]),
    )
    c = cfg.load(cfgdir)
    assert [str(w) for w in c.warnings] == [
        "tango/motors.json: servers.Motor.det_z.Motor.bl01/mot/det_z.properties.Colour: "
        "class Motor has no property Colour; it will be ignored"
    ]


def test_device_in_two_servers(cfgdir):
    edit(
        cfgdir / "tango/motors.json",
        lambda d: d["servers"]["Motor"]["slit_v"]["Motor"].update({"bl01/mot/slit_h": {}}),
    )
    (p,) = problems(cfgdir)
    assert "device bl01/mot/slit_h is already defined in server Motor/slit_h" in p


def test_server_defined_in_two_files(cfgdir):
    (cfgdir / "tango/more.json").write_text(
        json.dumps({"servers": {"Motor": {"slit_h": {"Motor": {"bl01/mot/other": {}}}}}})
    )
    assert any(
        p.startswith(
            "tango/motors.json: servers.Motor.slit_h: "
            "server Motor/slit_h is also defined in tango/more.json"
        )
        for p in problems(cfgdir)
    )


def test_invalid_json_names_line(cfgdir):
    (cfgdir / "starter.json").write_text('{"servers": {,}}')
    (p,) = problems(cfgdir)
    assert p.startswith("starter.json: line 1 column 14: invalid JSON")


def test_starter_entries(cfgdir):
    def change(d):
        d["servers"]["Motor/sample_x"]["level"] = 9
        d["servers"]["Motor/slit_v"]["controlled"] = "yes"
        d["servers"]["Motor/ghost"] = {"host": "@local", "level": 2}
        del d["servers"]["Motor/det_z"]

    edit(cfgdir / "starter.json", change)
    assert sorted(problems(cfgdir)) == sorted(
        [
            "starter.json: servers.Motor/sample_x.level: must be an integer from 1 to 5, not 9",
            "starter.json: servers.Motor/slit_v.controlled: must be true or false",
            "starter.json: servers.Motor/ghost: no such server in tango/*.json or "
            "sardana/*.yaml; remove the entry or define the server",
            "starter.json: servers: server Motor/det_z (defined in tango/motors.json) "
            'has no entry; add {"host": "@local", "level": 2, "controlled": true}',
        ]
    )


def test_simulation_override_unknown_controller(cfgdir):
    edit(
        cfgdir / "simulation.json",
        lambda d: d["overrides"]["bl01/mot/slit_h"].update(Port="socket://{listen}:{nope.port}"),
    )
    (p,) = problems(cfgdir)
    assert p.startswith(
        "simulation.json: overrides.bl01/mot/slit_h.Port: {nope.port} names no controller"
    )


def test_render_applies_simulation_overrides():
    c = cfg.load(PROJECT_CONFIG)
    plain = c.render(None)
    ports = {"smc1": 45678, "plc1": 45679, "scaler1": 45680, "cam1": 45681, "ioc1": 45682}
    ports["tg1"] = 45683
    sim = c.render(
        {"listen": "127.0.0.1", "controllers": {n: {"port": p} for n, p in ports.items()}}
    )
    path = ["servers", "Motor", "sample_x", "Motor", "bl01/mot/sample_x", "properties", "Port"]

    def get(d):
        for k in path:
            d = d[k]
        return d

    assert get(plain) == ["socket://smc1.bl01.lan:4001"]
    assert get(sim) == ["socket://127.0.0.1:45678"]
    shutter = sim["servers"]["Shutter"]["fe"]["Shutter"]["bl01/shutter/fe"]["properties"]
    assert shutter["Port"] == ["socket://127.0.0.1:45679"]
    gauge = sim["servers"]["VacuumGauge"]["gauge1"]["VacuumGauge"]["bl01/vac/gauge1"]
    assert gauge["properties"]["EpicsAddrList"] == ["127.0.0.1:45682"]
    timing = sim["servers"]["TimingUnit"]["tg1"]["TimingUnit"]["bl01/tim/tg1"]["properties"]
    assert timing["Port"] == ["socket://127.0.0.1:45683"]
    # rendering never mutates the loaded configuration
    assert get(c.tango) == ["socket://smc1.bl01.lan:4001"]


def test_every_registered_server_is_an_installed_console_script():
    """setup.py takes its console scripts from the registry: what is installed
    (the Starter starts a server by executable name) is what the registry says."""
    from importlib.metadata import distribution

    from tango_devices.registry import SERVERS

    scripts = {
        ep.name: ep.value
        for ep in distribution("beamline-suite").entry_points
        if ep.group == "console_scripts"
    }
    for server in SERVERS:
        assert scripts.get(server) == f"tango_devices.common.forkserver:{server}", server
    assert scripts["beamline-forkserver"] == "tango_devices.common.forkserver:main"


# ------------------------------------------------------------ sardana/*.yaml
def test_sardana_yaml_becomes_a_server_with_its_environment(tmp_path):
    c = cfg.load(PROJECT_CONFIG, run_dir=tmp_path)
    server = c.servers["sardana/bl01"]
    assert server.level > max(s.level for s in c.servers.values() if s.executable == "Motor")
    door = c.devices["bl01/sardana/door"]
    assert door.server == "Sardana/bl01" and door.origin == "sardana"
    assert c.devices["bl01/mot/slit_h"].origin == "tango"
    (env,) = c.sardana_env
    assert env.macro_server == "bl01/sardana/macroserver"
    assert env.variables["ScanDir"] == str(tmp_path / "scans")
    assert env.env_db.startswith(str(tmp_path))
    pool = c.tango["servers"]["Sardana"]["bl01"]["Pool"]["bl01/sardana/pool"]
    (pool_path,) = pool["properties"]["PoolPath"]
    assert Path(pool_path, "BeamlineMotorCtrl.py").exists()


def _edit_yaml(cfgdir, old, new):
    path = cfgdir / "sardana/bl01.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_sardana_controller_naming_an_unknown_device(cfgdir):
    _edit_yaml(cfgdir, "Device: bl01/ct/scaler", "Device: bl01/ct/scalr")
    assert problems(cfgdir) == [
        "sardana/bl01.yaml: pools.pool_bl01.controllers.ctctrl.properties.Device: "
        "bl01/ct/scalr is not a device of tango/*.json; name a beamline device"
    ]


def test_sardana_invalid_yaml_names_the_line(cfgdir):
    _edit_yaml(cfgdir, "        type: Motor\n", "        type: [Motor\n")
    (p,) = problems(cfgdir)
    assert p.startswith("sardana/bl01.yaml: line ") and "invalid YAML" in p


def test_sardana_unknown_placeholder(cfgdir):
    _edit_yaml(cfgdir, "${RUN_DIR}/scans", "${RUNDIR}/scans")
    assert problems(cfgdir) == [
        "sardana/bl01.yaml: unknown placeholder ${RUNDIR}; use ${PROJECT} or ${RUN_DIR}"
    ]


def test_sardana_model_error_names_the_key(cfgdir):
    _edit_yaml(cfgdir, "        type: Motor\n", "        type: Motr\n")
    found = problems(cfgdir)
    assert found and all(p.startswith("sardana/bl01.yaml: ") for p in found)
    assert any(
        p.startswith("sardana/bl01.yaml: pools.pool_bl01.controllers.motctrl: ") and "Motr" in p
        for p in found
    ), found


def test_sardana_measurement_group_with_unknown_channel(cfgdir):
    _edit_yaml(
        cfgdir,
        "          - diode\n          - roi_sum\n",
        "          - diod\n          - roi_sum\n",
    )
    found = problems(cfgdir)
    assert found and all(p.startswith("sardana/bl01.yaml: ") for p in found)
    assert any("mg_bl01" in p and "diod" in p for p in found), found


def test_sardana_server_needs_a_starter_entry(cfgdir):
    edit(cfgdir / "starter.json", lambda d: d["servers"].pop("Sardana/bl01"))
    (p,) = problems(cfgdir)
    assert p.startswith("starter.json: servers: server Sardana/bl01 (defined in sardana/bl01.yaml)")


def test_local_and_named_hosts_cannot_mix(cfgdir):
    def two_hosts(data):
        data["servers"]["Motor/det_z"]["host"] = "hostb"

    edit(cfgdir / "starter.json", two_hosts)
    found = [p for p in problems(cfgdir) if "@local" in p]
    assert found and "Motor/det_z" in found[0] and "name the host of every server" in found[0]


def test_servers_of_a_host(cfgdir):
    config = cfg.load(cfgdir)
    every = {s.name for lvl in config.servers_by_level("anyname").values() for s in lvl}
    assert "Motor/sample_x" in every  # "@local": the host that asks

    def named(data):
        for name, info in data["servers"].items():
            info["host"] = "hostb" if name == "Motor/det_z" else "hosta"

    edit(cfgdir / "starter.json", named)
    config = cfg.load(cfgdir)
    b = {s.name for lvl in config.servers_by_level("hostb").values() for s in lvl}
    assert b == {"Motor/det_z"}
    assert config.servers_by_level("nosuchhost") == {}


# ------------------------------------------ issue 18: refusals of bad input
# The four inputs `config check` used to accept: a class the server does not
# have, a key twice in one JSON object, a float property "nan", a YAML alias
# bomb. Each is refused naming the file and the key (or line); all at once.
CLASS_PROBLEM = (
    "tango/motors.json: servers.Motor.{server}.Motorr: unknown device class Motorr "
    "(did you mean Motor?); the suite's classes: DataLogger, Detector, EventRelay, "
    "ExperimentQueue, Motor, Scaler, Shutter, Supervisor, TimingUnit, VacuumGauge, Valve"
)
DUPLICATE_PROBLEM = (
    "tango/motors.json: servers.Motor.sample_x.Motor.bl01/mot/sample_x: defined twice in one "
    "object (JSON would silently keep only the last one); keep one"
)
NAN_PROBLEM = (
    "tango/motors.json: servers.Motor.det_z.Motor.bl01/mot/det_z.properties.StepsPerUnit: "
    "'nan' is not a finite number (nan and inf are refused)"
)


def rename_class(cfgdir, server="sample_x", new="Motorr"):
    def change(d):
        classes = d["servers"]["Motor"][server]
        classes[new] = classes.pop("Motor")

    edit(cfgdir / "tango/motors.json", change)


def duplicate_device_key(cfgdir):
    """bl01/mot/sample_x twice in one object, the second with sample_y's axis
    (what apply used to write: the motor then ran on axis 4)."""
    path = cfgdir / "tango/motors.json"
    data = json.loads(path.read_text())
    x = motor(data, "sample_x")
    y = json.loads(json.dumps(x))
    y["properties"]["Axis"] = ["4"]
    data["servers"]["Motor"]["sample_x"]["Motor"] = {"bl01/mot/sample_x": x, "DUPLICATE": y}
    path.write_text(json.dumps(data, indent=2).replace('"DUPLICATE"', '"bl01/mot/sample_x"'))


def set_steps_per_unit(cfgdir, value, name="det_z"):
    edit(
        cfgdir / "tango/motors.json",
        lambda d: motor(d, name)["properties"].update(StepsPerUnit=[value]),
    )


def alias_bomb(cfgdir, levels=9) -> tuple[int, int]:
    """A billion laughs (9 levels of 9 aliases) in MacroServer environment
    variables, where any value is allowed; returns the line and column of the
    first alias over the budget (that of *a3 in L4: 90 + 819 + 7380 + 7381)."""
    laughs = ["        L0: &a0 [" + ", ".join(["lol"] * 9) + "]\n"]
    for i in range(1, levels):
        laughs.append(f"        L{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n")
    _edit_yaml(cfgdir, "      variables:\n", "      variables:\n" + "".join(laughs))
    lines = (cfgdir / "sardana/bl01.yaml").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("        L4: "))
    return row + 1, lines[row].index("*a3") + 1


def test_unknown_device_class_is_refused_with_a_suggestion(cfgdir):
    rename_class(cfgdir)
    assert problems(cfgdir) == [CLASS_PROBLEM.format(server="sample_x")]


def test_unknown_class_in_class_properties(cfgdir):
    edit(cfgdir / "tango/motors.json", lambda d: d.update(classes={"motor": {}}))
    (p,) = problems(cfgdir)
    assert p.startswith("tango/motors.json: classes.motor: unknown device class motor (did ")
    assert "(did you mean Motor?)" in p


def test_class_under_a_server_that_does_not_run_it(cfgdir):
    rename_class(cfgdir, "det_z", "Shutter")
    found = problems(cfgdir)
    assert (
        "tango/motors.json: servers.Motor.det_z.Shutter: server Motor runs class Motor only, "
        "not Shutter; put these devices under servers.Shutter.<instance>.Shutter"
    ) in found


def test_unknown_server_executable_and_servers_from_elsewhere(cfgdir):
    (cfgdir / "tango/other.json").write_text(
        json.dumps({"servers": {"Motorr": {"x": {"Motor": {"bl01/test/x": {}}}}}})
    )
    edit(
        cfgdir / "starter.json",
        lambda d: d["servers"].update({"Motorr/x": {"host": "@local", "level": 2}}),
    )
    p = problems(cfgdir)[0]  # then the properties class Motor lacks: Port, Axis
    assert p.startswith(
        "tango/other.json: servers.Motorr: unknown server Motorr (did you mean Motor?); "
        "the suite's servers: DataLogger, Detector, EventRelay, ExperimentQueue, "
    )
    assert p.endswith('a server from elsewhere needs "external": true in its starter.json entry')

    # a server from elsewhere (its own classes, not checked) says so in starter.json
    (cfgdir / "tango/other.json").write_text(
        json.dumps({"servers": {"Vendor": {"x": {"VendorCam": {"bl01/test/x": {}}}}}})
    )

    def external(d):
        d["servers"].pop("Motorr/x")
        d["servers"]["Vendor/x"] = {"host": "@local", "level": 2, "external": True}

    edit(cfgdir / "starter.json", external)
    c = cfg.load(cfgdir)
    assert c.devices["bl01/test/x"].origin == "external"
    assert c.servers["vendor/x"].external

    # ... but a server of the suite cannot be declared external
    edit(cfgdir / "starter.json", lambda d: d["servers"]["Motor/det_z"].update(external=True))
    assert problems(cfgdir) == [
        "starter.json: servers.Motor/det_z.external: Motor is the suite's server, not a "
        'server from elsewhere; remove "external"'
    ]


def test_sardana_servers_belong_in_the_yaml(cfgdir):
    (cfgdir / "tango/pool.json").write_text(
        json.dumps({"servers": {"Pool": {"p2": {"Pool": {"bl01/sardana/pool2": {}}}}}})
    )
    edit(
        cfgdir / "starter.json",
        lambda d: d["servers"].update({"Pool/p2": {"host": "@local", "level": 3}}),
    )
    assert problems(cfgdir) == [
        "tango/pool.json: servers.Pool: Pool is Sardana's server: configure Sardana in "
        "sardana/*.yaml (sardana-config), not in tango/*.json"
    ]


def test_dserver_is_the_admin_device_of_its_server(cfgdir):
    def admin(d, name):
        d["servers"]["Motor"]["det_z"]["DServer"] = {name: {"properties": {}}}

    edit(cfgdir / "tango/motors.json", lambda d: admin(d, "dserver/Motor/det_z"))
    cfg.load(cfgdir)
    edit(cfgdir / "tango/motors.json", lambda d: admin(d, "dserver/Motor/slit_h"))
    assert problems(cfgdir) == [
        "tango/motors.json: servers.Motor.det_z.DServer.dserver/Motor/slit_h: DServer is "
        "Tango's admin class: the one device of server Motor/det_z is dserver/Motor/det_z"
    ]


def test_duplicate_key_in_a_json_object_is_refused(cfgdir):
    duplicate_device_key(cfgdir)
    assert problems(cfgdir) == [DUPLICATE_PROBLEM]


def test_duplicate_keys_in_every_json_file(cfgdir):
    def twice(path, old, new):
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))

    # Tango names ignore case: "Axis" and "axis" are one property
    twice(cfgdir / "tango/motors.json", '"Axis": ["5"]', '"Axis": ["5"], "axis": ["2"]')
    twice(cfgdir / "starter.json", '"servers": {', '"servers": {"motor/det_z": {"level": 2},')
    twice(cfgdir / "simulation.json", '"controllers": {', '"controllers": {"smc1": {},')
    twice(cfgdir / "access.json", '"default": "read",', '"default": "read", "default": "write",')
    assert sorted(problems(cfgdir)) == [
        "access.json: default: defined twice in one object (JSON would silently keep only "
        "the last one); keep one",
        "simulation.json: controllers.smc1: defined twice in one object (JSON would silently "
        "keep only the last one); keep one",
        "starter.json: servers.Motor/det_z: the same Tango name as 'motor/det_z' in this "
        "object (Tango names ignore case): defined twice; keep one",
        "tango/motors.json: servers.Motor.det_z.Motor.bl01/mot/det_z.properties.axis: the "
        "same Tango name as 'Axis' in this object (Tango names ignore case): defined twice; "
        "keep one",
    ]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_float_property_must_be_finite(cfgdir, value):
    set_steps_per_unit(cfgdir, value)
    (p,) = problems(cfgdir)
    assert p.startswith(NAN_PROBLEM.replace("'nan'", repr(value)))


def test_alias_bomb_is_refused_before_the_document_is_built(cfgdir, monkeypatch):
    from ruamel.yaml import YAML

    line, column = alias_bomb(cfgdir)

    def build(*args, **kwargs):
        raise AssertionError("the alias bomb was built")

    monkeypatch.setattr(YAML, "load", build)  # the old loader built it, then walked it
    assert problems(cfgdir) == [
        f"sardana/bl01.yaml: line {line} column {column}: alias *a3 (7381 nodes) makes the "
        "aliases add more than 10000 nodes to the document (a YAML alias bomb?); write the "
        "values out, or share fewer and smaller blocks"
    ]


def test_modest_yaml_aliases_are_fine(cfgdir):
    groups = sum(d.device_class == "MeasurementGroup" for d in cfg.load(cfgdir).devices.values())
    _edit_yaml(
        cfgdir,
        "      mg_counters:\n        channels:\n",
        "      mg_counters:\n        channels: &counters\n",
    )
    _edit_yaml(
        cfgdir,
        "      mg_cam:\n",
        "      mg_counters2:\n        channels: *counters\n      mg_cam:\n",
    )
    c = cfg.load(cfgdir)
    # the aliased group is one more, with the channels it shares
    assert sum(d.device_class == "MeasurementGroup" for d in c.devices.values()) == groups + 1


def _yaml_variable(cfgdir, text: str) -> tuple[int, str]:
    """Add ``text`` as a MacroServer environment variable (5 levels deep in
    the document); its line number and line."""
    _edit_yaml(cfgdir, "      variables:\n", f"      variables:\n        {text}\n")
    lines = (cfgdir / "sardana/bl01.yaml").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line == f"        {text}")
    return row + 1, lines[row]


def test_recursive_yaml_alias_is_refused(cfgdir):
    row, line = _yaml_variable(cfgdir, "Loop: &loop [1, *loop]")
    column = line.index("*loop") + 1
    assert problems(cfgdir) == [
        f"sardana/bl01.yaml: line {row} column {column}: alias *loop inside the node &loop "
        "it names (a recursive structure); write the value out"
    ]


def test_deeply_nested_yaml_is_refused(cfgdir):
    row, line = _yaml_variable(cfgdir, "Deep: " + "[" * 200 + "]" * 200)
    column = line.index("[") + 95 + 1  # the 96th "[" opens level 101
    assert problems(cfgdir) == [
        f"sardana/bl01.yaml: line {row} column {column}: nested deeper than 100 levels; flatten it"
    ]


def test_yaml_with_too_many_nodes_is_refused(cfgdir, monkeypatch):
    from beamline import sardana_yaml

    monkeypatch.setattr(sardana_yaml, "MAX_YAML_NODES", 1000)  # 50,000: a slow test
    row, _ = _yaml_variable(cfgdir, "Many: [" + ", ".join(["0"] * 1000) + "]")
    (p,) = problems(cfgdir)
    assert p.startswith(f"sardana/bl01.yaml: line {row} column ")
    assert p.endswith(
        ": more than 1000 values, lists and mappings (aliases expanded) by here, more than a "
        "beamline needs; split it into several sardana/*.yaml files"
    )


def test_long_yaml_lists_are_copied_once_per_copy(cfgdir, monkeypatch):
    """ruamel's CommentedSeq deep copy (sardana-config copies the document)
    copies the list's line/column records once per item: 5 s for 1,000 values,
    9 min for 10,000. Counted, not timed: the records of a list of 500 values
    are copied a few times, not 500 times per copy."""
    from ruamel.yaml.comments import CommentedBase

    copied = []
    copy_attributes = CommentedBase.copy_attributes

    def counting(self, target, memo=None):
        copied.append(len(self) if isinstance(self, list) else None)
        return copy_attributes(self, target, memo)

    monkeypatch.setattr(CommentedBase, "copy_attributes", counting)
    _yaml_variable(cfgdir, "Positions: [" + ", ".join(str(i) for i in range(500)) + "]")
    c = cfg.load(cfgdir)
    (env,) = c.sardana_env
    assert env.variables["Positions"] == list(range(500))
    assert 1 <= copied.count(500) <= 5


def test_oversized_and_deeply_nested_files_are_refused(cfgdir):
    with (cfgdir / "sardana/bl01.yaml").open("a") as f:
        f.write(("# " + "x" * 98 + "\n") * 11000)
    (cfgdir / "simulation.json").write_text("[" * 100000 + "]" * 100000)
    assert sorted(problems(cfgdir)) == [
        "sardana/bl01.yaml: larger than 1 MiB: not a sardana-config file; split it into "
        "several sardana/*.yaml files",
        "simulation.json: invalid JSON: nested too deeply",
    ]


def test_every_problem_at_once_through_the_cli_and_apply_writes_nothing(cfgdir, tmp_path):
    """The real `beamline` command: exit 2, every problem named, no traceback;
    `config apply` refuses before it looks for a database (the port given has
    none: reaching it would say "no Tango database answers")."""
    from tests.helpers import BeamlineRun, free_port

    rename_class(cfgdir, "slit_v")
    set_steps_per_unit(cfgdir, "nan")
    alias_bomb(cfgdir)
    duplicate_device_key(cfgdir)  # last: the edits above would merge the duplicate away
    run = BeamlineRun(tmp_path / "run", cfgdir)
    check = run.cli("config", "check", check=False)
    assert check.returncode == 2, check.stdout + check.stderr
    out = check.stdout + check.stderr
    assert "Traceback" not in out
    class_problem = CLASS_PROBLEM.format(server="slit_v")
    for expected in (class_problem, DUPLICATE_PROBLEM, NAN_PROBLEM, "alias *a3 (7381 nodes)"):
        assert expected in out, out
    assert "4 problem(s)" in check.stderr

    apply = run.cli("config", "apply", "--tango-host", f"127.0.0.1:{free_port()}", check=False)
    assert apply.returncode == 2, apply.stdout + apply.stderr
    assert "configuration problems (run `beamline config check`)" in apply.stderr
    assert class_problem in apply.stderr and "Traceback" not in apply.stderr
    assert "no Tango database answers" not in apply.stderr


def test_up_refuses_a_bad_configuration_before_starting_anything(cfgdir, tmp_path, monkeypatch):
    from beamline import orchestrator as orch
    from beamline.runtime import RunContext

    rename_class(cfgdir)

    def started(*args, **kwargs):
        raise AssertionError("`up` went past its configuration check")

    monkeypatch.setattr(orch, "_database", started)
    with pytest.raises(cfg.ConfigError) as info:
        orch.up(RunContext.create(tmp_path / "run", cfgdir), orch.UpOptions())
    assert [str(p) for p in info.value.problems] == [CLASS_PROBLEM.format(server="sample_x")]
    assert not (tmp_path / "run").exists()


def test_up_waits_for_a_server_the_supervisor_restarts(cfgdir, tmp_path, monkeypatch, clock):
    """A server seen without a process once (crashed while starting, about to
    be restarted) is not reported dead; only one gone DEATH_GRACE in a row."""
    from beamline import orchestrator as orch
    from beamline.runtime import RunContext

    config = cfg.load(cfgdir)
    running: dict[str, int] = {}
    monkeypatch.setattr(orch.time, "monotonic", clock)
    monkeypatch.setattr(orch.procs, "server_pids", lambda run_dir, names: dict(running))
    ctx = RunContext.create(tmp_path / "run", cfgdir)
    dead = orch._dead_servers_check(ctx, config, ["Valve/valve1"])
    pending = ["bl01/vac/valve1"]

    running["valve/valve1"] = 10
    assert dead(pending) == {}
    clock.advance(orch.DEATH_GRACE + 0.5)
    assert dead(pending) == {}
    running.clear()  # crashed, well after its start ...
    assert dead(pending) == {}
    clock.advance(orch.DEATH_GRACE - 0.6)
    assert dead(pending) == {}, "gone for less than the grace: waited for"
    running["valve/valve1"] = 11  # ... restarted by the supervisor
    clock.advance(1.0)
    assert dead(pending) == {}
    running.clear()
    clock.advance(orch.DEATH_GRACE)
    assert "server Valve/valve1 is not running" in dead(pending)["bl01/vac/valve1"]


# ------------------------------------------------------------------ the cache
def test_a_valid_configuration_is_kept_for_the_next_load(cfgdir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    first = cfg.load(cfgdir, run)
    assert (run / cfg.CACHE_FILE).is_file()

    def no_second_load(*_args):
        raise AssertionError("loaded again although nothing changed")

    monkeypatch.setattr(cfg, "_load", no_second_load)
    again = cfg.load(cfgdir, run)
    assert sorted(again.devices) == sorted(first.devices)
    assert again.servers.keys() == first.servers.keys()


def test_an_edit_is_seen_and_an_invalid_configuration_is_never_kept(cfgdir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg.load(cfgdir, run)
    tango = cfgdir / "tango" / "motors.json"
    edit(tango, lambda d: motor(d, "sample_x")["properties"].update(Velocity=["7.5"]))
    changed = cfg.load(cfgdir, run)
    assert changed.devices["bl01/mot/sample_x"].properties["Velocity"] == ["7.5"]
    edit(tango, lambda d: motor(d, "sample_x")["properties"].update(Velocity="7.5"))
    with pytest.raises(cfg.ConfigError):
        cfg.load(cfgdir, run)
    with pytest.raises(cfg.ConfigError):  # the earlier valid one is not taken instead
        cfg.load(cfgdir, run)


def test_a_damaged_cache_is_loaded_again(cfgdir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / cfg.CACHE_FILE).write_bytes(b"not a pickle")
    assert "bl01/mot/sample_x" in cfg.load(cfgdir, run).devices


def test_another_database_is_another_configuration(cfgdir, tmp_path, monkeypatch):
    """Full device names in it (a measurement group's synchronizer) carry the
    database: a configuration read for one is never used for another (a
    cached one made before `up` knew its database gave a group a synchronizer
    on the wrong host, which Sardana took for software synchronization)."""
    run = tmp_path / "run"
    run.mkdir()
    loads = []
    real = cfg._load
    monkeypatch.setattr(cfg, "_load", lambda *a: loads.append(a) or real(*a))
    monkeypatch.setenv("TANGO_HOST", "127.0.0.1:10000")
    cfg.load(cfgdir, run)
    cfg.load(cfgdir, run)
    monkeypatch.setenv("TANGO_HOST", "127.0.0.1:20000")
    cfg.load(cfgdir, run)
    assert len(loads) == 2


def test_configurations_for_several_databases_are_kept_side_by_side(cfgdir, tmp_path, monkeypatch):
    """`up` reads its configuration before and after it knows its database,
    `status` without one: each finds its own (the first `status` after `up`
    validated everything again, 2.5 s)."""
    run = tmp_path / "run"
    run.mkdir()
    loads = []
    real = cfg._load
    monkeypatch.setattr(cfg, "_load", lambda *a: loads.append(a) or real(*a))
    monkeypatch.delenv("TANGO_HOST", raising=False)
    cfg.load(cfgdir, run)  # up, before its database
    monkeypatch.setenv("TANGO_HOST", "127.0.0.1:10000")
    cfg.load(cfgdir, run)  # up, with it
    monkeypatch.delenv("TANGO_HOST")
    cfg.load(cfgdir, run)  # status
    monkeypatch.setenv("TANGO_HOST", "127.0.0.1:10000")
    cfg.load(cfgdir, run)
    assert len(loads) == 2
    for port in range(20000, 20000 + cfg.CACHE_ENTRIES):  # a few more: the oldest go
        monkeypatch.setenv("TANGO_HOST", f"127.0.0.1:{port}")
        cfg.load(cfgdir, run)
    monkeypatch.delenv("TANGO_HOST")
    cfg.load(cfgdir, run)
    assert len(loads) == 3 + cfg.CACHE_ENTRIES


def fake_checks(monkeypatch, answering: set[str]) -> list[list[str]]:
    """check_devices replaced: the devices in ``answering`` answer ON; every
    call's devices are recorded (one list per call)."""
    from beamline import orchestrator as orch

    calls: list[list[str]] = []

    def check(tango_host, devices, timeout=1.0):
        calls.append(list(devices))
        return [
            orch.DeviceCheck(d, "ON" if d in answering else None, "" if d in answering else "no")
            for d in devices
        ]

    monkeypatch.setattr(orch, "check_devices", check)
    monkeypatch.setattr(orch.time, "sleep", lambda s: None)
    return calls


def test_up_asks_a_server_that_does_not_answer_yet_through_its_first_device(monkeypatch):
    """A Sardana server's hundreds of elements are not each asked through a new
    client every round while it starts; once its first device answers, the
    others are asked in the same round."""
    from beamline import orchestrator as orch

    sardana = ["bl01/sardana/pool"] + [f"motor/ctrl/{i}" for i in range(1, 50)]
    answering = {"bl01/mot/x"}
    calls = fake_checks(monkeypatch, answering)
    rounds = iter(range(100))

    def progress(n):
        if next(rounds) == 2:  # the server has started
            answering.update(sardana)

    checks = orch._wait_devices("h:1", [sardana, ["bl01/mot/x"]], 60.0, progress)
    assert all(c.state == "ON" for c in checks) and len(checks) == 51
    calls = [c for c in calls if c]
    assert calls[0] == sardana + ["bl01/mot/x"], "the first round asks every device"
    assert calls[1:4] == [["bl01/sardana/pool"]] * 3, "then only its first, while it starts"
    assert calls[4:] == [sardana[1:]], "its first answers: the others in the same round"


def test_up_waits_longer_for_servers_still_starting_on_a_busy_machine(monkeypatch, clock):
    from beamline import orchestrator as orch

    monkeypatch.setattr(orch.time, "monotonic", clock)
    fake_checks(monkeypatch, set())
    monkeypatch.setattr(orch.time, "sleep", clock.advance)
    warnings: list[str] = []

    def wait(busy):
        t0 = clock()
        checks = orch._wait_devices(
            "h:1",
            [["bl01/sardana/pool"]],
            60.0,
            lambda n: None,
            busy=lambda pending: ["Sardana/bl01"] if busy else [],
            busy_timeout=180.0,
            warn=warnings.append,
        )
        assert [c.state for c in checks] == [None]
        return clock() - t0

    assert 60.0 <= wait(busy=False) < 61.0 and not warnings  # idle: not starting, stuck
    assert 180.0 <= wait(busy=True) < 181.0
    assert warnings == [
        "Sardana/bl01 still starting after 60 s (using CPU: a busy machine); waiting up to 180 s"
    ]


def test_a_busy_server_is_one_whose_cpu_time_grew_lately(cfgdir, tmp_path, monkeypatch, clock):
    from beamline import orchestrator as orch
    from beamline.runtime import RunContext

    config = cfg.load(cfgdir)
    cpu = {10: 1.0}
    monkeypatch.setattr(orch.time, "monotonic", clock)
    monkeypatch.setattr(orch.procs, "server_pids", lambda run_dir, names: {"valve/valve1": [10]})
    monkeypatch.setattr(orch.procs, "cpu_seconds", lambda pid: cpu.get(pid))
    busy = orch._busy_servers_check(
        RunContext.create(tmp_path / "run", cfgdir), config, ["Valve/valve1"]
    )
    pending = ["bl01/vac/valve1"]
    assert busy(pending) == [], "one look: no growth seen yet"
    clock.advance(1.0)
    cpu[10] = 1.2
    assert busy(pending) == ["Valve/valve1"], "its CPU time grew between two looks"
    clock.advance(0.5)
    cpu[10] = 5.0
    assert busy(pending) == ["Valve/valve1"]  # within the second: not looked again
    clock.advance(1.0)
    assert busy(pending) == ["Valve/valve1"]  # the growth seen at this look
    clock.advance(orch.BUSY_WINDOW + 0.1)
    assert busy(pending) == [], "no CPU used since: stuck, not starting"
    clock.advance(1.0)
    cpu[10] = 5.5
    assert busy(pending) == ["Valve/valve1"]
    cpu.clear()  # gone
    clock.advance(orch.BUSY_WINDOW + 0.1)
    assert busy(pending) == []


def test_status_reads_the_configuration_keyed_by_the_run_s_database(cfgdir, tmp_path, monkeypatch):
    """The configuration cache is keyed by TANGO_HOST, which `up` sets: a
    `status` without it in the environment read everything again (2.7 s
    instead of 0.6 at 200 servers) unless it takes the run's first."""
    import os

    from beamline import orchestrator as orch
    from beamline.runtime import RunContext

    class Loaded(Exception):
        pass

    seen = []

    def load(*args, **kwargs):
        seen.append(os.environ.get("TANGO_HOST"))
        raise Loaded

    monkeypatch.delenv("TANGO_HOST", raising=False)
    monkeypatch.setattr(orch.tangodb, "answers", lambda *a, **k: False)
    monkeypatch.setattr(orch.cfg, "load", load)
    ctx = RunContext.create(tmp_path / "run", cfgdir)
    ctx.update_state(tango_host="127.0.0.1:12345")
    with pytest.raises(Loaded):
        orch.status(ctx)
    assert seen == ["127.0.0.1:12345"]
