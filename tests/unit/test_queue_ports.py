"""The queue's MacroPort checking items against macro descriptions as Sardana
gives them, with a fake Tango database that counts what it is asked: a batch
reads the element names once and checks in memory (20,000 `mv` items asked
the database 20,000 times: 25 s)."""

from __future__ import annotations

import pytest

from tango_devices.queue import tango_ports
from tango_devices.queue.queue_logic import QueueError, QueueLogic
from tango_devices.queue.store import QueueStore

# what Sardana 3.7's MacroServer answers (GetMacroInfo), trimmed
MACROS = {
    "ct": {
        "parameters": [
            {"name": "integ_time", "type": "Float", "default_value": 1.0},
            {"name": "mnt_grp", "type": "MeasurementGroup", "default_value": "Optional"},
        ]
    },
    "mv": {
        "parameters": [
            {
                "name": "motor_pos_list",
                "type": [
                    {"name": "motor", "type": "Moveable", "default_value": None},
                    {"name": "pos", "type": "Float", "default_value": None},
                ],
                "min": 1,
                "default_value": None,
            }
        ]
    },
    "ascan": {
        "parameters": [
            {"name": "motor", "type": "Moveable", "default_value": None},
            {"name": "start_pos", "type": "Float", "default_value": None},
            {"name": "final_pos", "type": "Float", "default_value": None},
            {"name": "nr_interv", "type": "Integer", "default_value": None},
            {"name": "integ_time", "type": "Float", "default_value": None},
        ]
    },
}
ALIASES = ["sample_x", "sample_y", "det_z", "mntgrp01"]


class FakeDatabase:
    """tango.Database as far as MacroPort uses it; counts every question."""

    asked: list[str] = []

    def get_device_alias_list(self, pattern: str) -> list[str]:
        FakeDatabase.asked.append(f"alias list {pattern}")
        return list(ALIASES)

    def get_device_alias(self, alias: str) -> str:
        FakeDatabase.asked.append(f"alias {alias}")
        if alias not in ALIASES:
            raise tango_ports.tango.DevFailed()
        return f"pool/element/{alias}"


@pytest.fixture
def port(monkeypatch):
    FakeDatabase.asked = []
    monkeypatch.setattr(tango_ports.tango, "Database", FakeDatabase)
    p = tango_ports.MacroPort("ms/test/1", "door/test/1")
    p._info.update(MACROS)  # described once, as the MacroServer would
    return p


@pytest.mark.parametrize(
    "macro,args,words",
    [
        ("ct", ["nan"], ["integ_time must be a finite Float", "'nan'"]),
        ("ct", ["inf"], ["finite Float", "'inf'"]),
        ("mv", ["sample_x", "-Infinity"], ["pos must be a finite Float"]),
        ("ascan", ["sample_x", "0", "NaN", "10", "0.1"], ["final_pos must be a finite Float"]),
        ("ct", ["fast"], ["integ_time must be Float, not 'fast'"]),
        ("mv", ["nomotor", "1"], ["'nomotor' is none"]),
        ("mv", ["sample_x"], ["groups of (motor pos)"]),
        ("ascan", ["sample_x", "0", "1"], ["ascan needs 5 argument(s), missing nr_interv"]),
        ("ascan", ["sample_x", "0", "1", "ten", "0.1"], ["nr_interv must be Integer"]),
    ],
)
def test_bad_arguments_are_refused_saying_which_and_why(port, macro, args, words):
    with pytest.raises(QueueError) as refused:
        port.validate(macro, args)
    for word in words:
        assert word in str(refused.value), str(refused.value)


def test_good_arguments_pass(port):
    port.validate("ct", [])
    port.validate("ct", ["0.1", "mntgrp01"])
    port.validate("mv", ["sample_x", "0.5", "sample_y", "-1e3"])
    port.validate("ascan", ["sample_x", "0", "1", "10", "0.1"])


class NoDoor:
    def busy(self) -> bool:
        return False


class NoHealth:
    def down(self, devices):
        return []

    def interlocks(self):
        return []


def test_a_batch_asks_the_database_for_the_element_names_once(port, tmp_path):
    store = QueueStore(tmp_path / "queue.sqlite")
    logic = QueueLogic(store, port, NoDoor(), NoHealth())
    try:
        batch = [{"macro": "mv", "args": ["sample_x", n / 10]} for n in range(1000)]
        batch += [{"macro": "ascan", "args": ["det_z", 0, 1, 10, 0.1]}] * 100
        assert len(logic.add_batch(batch)) == 1100
        assert FakeDatabase.asked == ["alias list *"]
        FakeDatabase.asked = []
        with pytest.raises(QueueError, match=r"^item 500: mv: motor must name a Sardana element"):
            logic.add_batch(batch[:500] + [{"macro": "mv", "args": ["nomotor", 1]}])
        assert FakeDatabase.asked == ["alias list *"] and len(store.items) == 1100
        FakeDatabase.asked = []
        logic.add({"macro": "ct", "args": [0.1]})  # no element: no question at all
        assert FakeDatabase.asked == []
    finally:
        store.close()
