"""The logger's engine against fake events: what the event callback does, the
write cycle, error rows, a full backlog, a failing store, statistics and the
state that follows them; and the DataLogger transition table pair by pair."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import h5py
import pytest

from tango_devices.common.statemachine import State, StateMachine
from tango_devices.logger import states
from tango_devices.logger.logger_logic import LoggerConfig, LoggerLogic
from tango_devices.logger.model import VALID, WARNING, AttrMeta
from tango_devices.logger.store import ArchiveWriter, StoreError, WriterPolicy, list_files

DEV = "bl01/mot/x"
POS = AttrMeta(DEV, "Position", "float")
STATUS = AttrMeta(DEV, "Status", "json")


@dataclass
class Ev:
    """Stands for a Tango EventData."""

    t: float
    value: object = None
    quality: int = VALID
    error: tuple[str, str] | None = None


def decode(ev: Ev):
    if ev.value == "boom":
        raise ValueError("cannot decode")
    return ev.t, ev.value, ev.quality, ev.error


@pytest.fixture
def core(tmp_path):
    made = []

    def make(**config) -> LoggerLogic:
        writer = ArchiveWriter(tmp_path, WriterPolicy(schema_delay=0.0))
        c = LoggerLogic(writer, decode, LoggerConfig(**config))
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def started(c: LoggerLogic) -> LoggerLogic:
    c.writer.open()
    c.machine.fire(states.ARCHIVING, "test")
    for meta in (POS, STATUS):
        c.register(meta)
    return c


def history(c: LoggerLogic, name: str = f"{DEV}/Position"):
    return c.reader.history(name, 0, 1e12, 0)


def test_the_callback_only_queues_and_a_cycle_writes_everything(core):
    c = started(core())
    sink = c.sink(POS.key)
    for i in range(100):
        sink(Ev(1000.0 + i, float(i)))
    assert len(c.events) == 100 and c.stats.events_written == 0
    c.cycle()
    assert len(c.events) == 0
    st = c.stats
    assert (st.events_received, st.events_written, st.backlog) == (100, 100, 0)
    assert st.current_file and st.current_file_size > 0 and st.last_flush > 0
    assert history(c)["values"] == [float(i) for i in range(100)]
    assert c.machine.state is State.ON
    assert "Archiving 2 attributes" in c.machine.status


def test_polled_rows_and_events_share_the_queue(core):
    c = started(core())
    c.put(STATUS.key, 1000.0, "Ready", VALID)
    c.sink(STATUS.key)(Ev(1001.0, "Moving", WARNING))
    c.cycle()
    out = history(c, f"{DEV}/Status")
    assert out["values"] == ["Ready", "Moving"]
    assert out["qualities"] == ["VALID", "WARNING"]


def test_an_error_is_archived_once_until_a_value_ends_it(core):
    c = started(core())
    sink = c.sink(POS.key)
    sink(Ev(1000.0, 1.0))
    for t in (1001.0, 1002.0, 1003.0):
        sink(Ev(t, error=("API_EventTimeout", "no heartbeat")))
    sink(Ev(1004.0, error=("API_CantConnectToDevice", "down")))
    sink(Ev(1005.0, 2.0))
    sink(Ev(1006.0, error=("API_EventTimeout", "again")))
    c.cycle()
    out = history(c)
    assert out["times"] == [1000.0, 1001.0, 1004.0, 1005.0, 1006.0]
    assert out["qualities"] == ["VALID", "ERROR", "ERROR", "VALID", "ERROR"]
    assert [e["reason"] for e in out["errors"]] == [
        "API_EventTimeout",
        "API_CantConnectToDevice",
        "API_EventTimeout",
    ]


def test_an_event_that_cannot_be_decoded_is_counted_not_fatal(core):
    c = started(core())
    sink = c.sink(POS.key)
    sink(Ev(1000.0, 1.0))
    sink(Ev(1001.0, "boom"))
    sink(Ev(1002.0, 3.0))
    c.cycle()
    assert history(c)["values"] == [1.0, 3.0]
    assert c.stats.errors == 1 and "cannot decode" in c.stats.last_error


def test_a_full_backlog_drops_counts_journals_a_gap_and_raises_alarm(core):
    c = started(core(max_backlog=5))
    sink = c.sink(POS.key)
    for i in range(8):
        sink(Ev(1000.0 + i, float(i)))
    c.cycle()
    assert c.stats.events_dropped == 3 and c.stats.events_received == 8
    assert history(c)["count"] == 5
    gaps = c.reader.gaps(0, time.time() + 1)
    assert len(gaps) == 1 and gaps[0]["cause"].startswith("3 events dropped")
    assert c.machine.state is State.ALARM
    assert "Dropping events" in c.machine.status


def test_a_failing_store_gives_fault_and_the_next_cycle_recovers(core, monkeypatch):
    c = started(core())
    c.sink(POS.key)(Ev(1000.0, 1.0))
    c.cycle()
    real = c.writer.cycle

    def broken(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(c.writer, "cycle", broken)
    c.sink(POS.key)(Ev(1001.0, 2.0))
    c.cycle()
    assert c.machine.state is State.FAULT
    assert "Input/output error" in c.machine.status
    assert c.stats.errors == 1 and c.stats.rows_lost == 1
    monkeypatch.setattr(c.writer, "cycle", real)
    c.sink(POS.key)(Ev(1002.0, 3.0))
    c.cycle()
    assert c.machine.state is State.ON
    assert history(c)["values"] == [1.0, 3.0]  # the failed batch is lost, the file is not
    assert len(list_files(c.directory)) == 2  # a new file after the failure


def test_start_on_an_unusable_directory_is_a_fault_with_the_reason(tmp_path):
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the directory should be")
    c = LoggerLogic(ArchiveWriter(blocker), decode)
    with pytest.raises(StoreError):
        c.start()
    assert c.machine.state is State.FAULT
    assert str(blocker) in c.machine.status


def test_flush_now_writes_at_once_and_stop_closes_the_file(core):
    c = core(flush_period=30.0)
    c.start()
    for meta in (POS, STATUS):
        c.register(meta)
    c.sink(POS.key)(Ev(1000.0, 1.0))
    t0 = time.monotonic()
    flushed = c.flush_now(timeout=10)
    assert time.monotonic() - t0 < 5 and flushed > 0
    assert history(c)["values"] == [1.0]
    c.sink(POS.key)(Ev(1001.0, 2.0))
    c.stop()
    (path,) = list_files(c.directory)
    with h5py.File(path) as f:  # closed cleanly: a plain open works
        assert f["values/bl01/mot/x/position/time"][:].tolist() == [1000.0, 1001.0]


def test_statistics_listeners_get_every_cycle(core):
    c = started(core())
    seen = []
    c.on_stats(lambda st: seen.append((st.cycles, st.events_written)))
    c.sink(POS.key)(Ev(1000.0, 1.0))
    c.cycle()
    c.cycle()
    assert seen == [(1, 1), (2, 1)]


# --------------------------------------------------------- the table
EXPECTED_TRIGGERS = {
    states.ARCHIVING: State.ON,
    states.DEGRADED: State.ALARM,
    states.DISK_FULL: State.ALARM,
    states.STORE_FAILED: State.FAULT,
    states.REINIT: State.INIT,
}
ALLOWED = {
    "GetHistory": set(states.LOGGER_STATES),
    "GetConfigurationAt": set(states.LOGGER_STATES),
    "ListArchived": set(states.LOGGER_STATES),
    "Flush": {State.ON, State.ALARM},
    "Rescan": {State.ON, State.ALARM, State.FAULT},
}


@pytest.mark.parametrize(
    ("source", "trigger"), list(itertools.product(states.LOGGER_STATES, EXPECTED_TRIGGERS))
)
def test_every_state_and_trigger(source, trigger):
    machine = StateMachine(states.LOGGER_TABLE)
    machine._state = source
    assert machine.fire(trigger) is EXPECTED_TRIGGERS[trigger]


@pytest.mark.parametrize(
    ("state", "command"), list(itertools.product(states.LOGGER_STATES, ALLOWED))
)
def test_every_state_and_command(state, command):
    machine = StateMachine(states.LOGGER_TABLE)
    machine._state = state
    assert machine.is_allowed(command) is (state in ALLOWED[command])
