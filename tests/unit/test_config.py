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
    for server, (_cls, entry) in SERVERS.items():
        assert scripts.get(server) == entry, server


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
