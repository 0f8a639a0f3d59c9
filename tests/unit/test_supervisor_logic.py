"""The supervisor's rules against a fake world and a fake clock."""

from __future__ import annotations

import pytest

from tango_devices.supervisor.model import Policy, ServerSpec, ServerState, cause_from_log
from tango_devices.supervisor.supervisor_logic import SupervisorLogic

S = ServerState
MOTOR = ServerSpec("Motor/sample_x", ("bl01/mot/sample_x",))
GAUGE = ServerSpec("VacuumGauge/gauge1", ("bl01/vac/gauge1",))


class World:
    """Processes, device answers, and everything the supervisor asks for."""

    def __init__(self):
        self.now = 1000.0
        self.pids: dict[str, int] = {}
        self.answers: dict[str, float] = {}
        self.next_pid = 100
        self.launched: list[str] = []
        self.killed: list[str] = []
        self.stopped: list[str] = []
        self.dumped: list[str] = []
        self.clean: set[int] = set()
        self.logs: dict[str, str] = {}
        self.reconnects: list[tuple[str, ...]] = []
        self.cpu: dict[int, float] = {}  # pid -> CPU seconds used (absent: unknown)
        self.queued: dict[int, float] = {}  # pid -> s its threads waited for a CPU
        self.no_evidence: set[str] = set()  # devices the prober cannot reach (database down)
        self.db_up = True

    # ProcessTable
    def scan(self):
        return {name.lower(): [pid] for name, pid in self.pids.items()}

    def cpu_seconds(self, pid):
        return self.cpu.get(pid)

    def wait_seconds(self, pid):
        return self.queued.get(pid)

    # Prober
    def watch(self, devices):
        self.watched = list(devices)

    def last_answer(self, device):
        return self.answers.get(device)

    def silent_since(self, device):
        """Silent since its last answer (a real prober confirms it with a long read)."""
        return None if device in self.no_evidence else self.answers.get(device)

    def reconnect(self, devices):
        self.reconnects.append(tuple(devices))

    # Launcher
    def launch(self, spec):
        self.next_pid += 1
        self.pids[spec.name] = self.next_pid
        self.launched.append(spec.name)
        return self.next_pid

    def exit_code(self, pid):
        return None

    def clean_exit(self, spec, pid):
        return pid in self.clean

    def log_tail(self, spec):
        return self.logs.get(spec.name, "")

    def database_ready(self):
        return self.db_up

    def dump_stacks(self, spec, pid):
        self.dumped.append(spec.name)
        return f"stacks of pid {pid} written to its log"

    def kill(self, spec, pid):
        self.killed.append(spec.name)

    def stop(self, spec, pid):
        self.stopped.append(spec.name)

    # helpers
    def start(self, spec):
        self.next_pid += 1
        self.pids[spec.name] = self.next_pid

    def die(self, spec):
        return self.pids.pop(spec.name)

    def answer(self, spec):
        for d in spec.devices:
            self.answers[d] = self.now

    def tick(self, seconds=0.1):
        self.now += seconds


@pytest.fixture
def world():
    return World()


def make(world, specs=(MOTOR, GAUGE), expected=(), policy=None):
    sup = SupervisorLogic(
        world, world, world, policy or Policy(), clock=lambda: world.now, wall=lambda: world.now
    )
    sup.set_servers(specs, expected)
    return sup


def running(world, sup, spec):
    world.start(spec)
    sup.step()
    world.tick()
    world.answer(spec)
    sup.step()
    assert sup.record(spec.name).state is S.RUNNING


def test_servers_never_started_are_left_alone(world):
    sup = make(world)
    for _ in range(5):
        sup.step()
        world.tick()
    assert world.launched == []
    assert sup.record("Motor/sample_x").state is S.NOT_STARTED
    assert sup.expected == set()


def test_a_server_seen_running_is_adopted_and_expected(world):
    sup = make(world)
    persisted = []
    sup.on_expected_change(lambda e: persisted.append(sorted(e)))
    world.start(MOTOR)
    sup.step()
    assert sup.record(MOTOR.name).state is S.STARTING
    world.tick()
    world.answer(MOTOR)
    sup.step()
    assert sup.record(MOTOR.name).state is S.RUNNING
    assert persisted[-1] == ["Motor/sample_x"]


def test_crash_restarts_at_once_and_announces_recovery(world):
    sup = make(world)
    running(world, sup, MOTOR)
    announced = []
    sup.on_restart(lambda r: announced.append((r.name, r.last_recovery)))
    world.die(MOTOR)
    world.logs[MOTOR.name] = "...\nFatal Python error: Segmentation fault\n"
    world.tick()
    sup.step()
    rec = sup.record(MOTOR.name)
    assert world.launched == [MOTOR.name]
    assert rec.state is S.RESTARTING and rec.restarts == 1
    assert rec.last_cause == "segmentation fault (SIGSEGV)"
    assert world.reconnects[-1] == MOTOR.devices  # fresh client connections for the new process
    # an answer from before the restart does not count
    sup.step()
    assert rec.state is S.RESTARTING and announced == []
    world.tick(0.4)
    world.answer(MOTOR)
    sup.step()
    assert rec.state is S.RUNNING
    assert announced == [(MOTOR.name, pytest.approx(0.4))]


def test_clean_exit_is_a_stop_on_purpose(world):
    sup = make(world)
    running(world, sup, MOTOR)
    world.clean.add(world.die(MOTOR))
    world.tick()
    sup.step()
    rec = sup.record(MOTOR.name)
    assert rec.state is S.STOPPED and not rec.expected
    assert world.launched == []
    for _ in range(10):
        world.tick()
        sup.step()
    assert world.launched == []


def test_hang_dumps_stacks_kills_and_restarts(world):
    policy = Policy(hang_timeout=3.0)
    sup = make(world, policy=policy)
    running(world, sup, MOTOR)
    for _ in range(25):  # 2.5 s of silence: not yet
        world.tick()
        sup.step()
    assert world.killed == []
    for _ in range(6):
        world.tick()
        sup.step()
    rec = sup.record(MOTOR.name)
    assert world.dumped == [MOTOR.name] and world.killed == [MOTOR.name]
    assert rec.state is S.HUNG
    assert rec.last_cause.startswith("hang: no device answered for 3.")
    assert "stacks of pid" in rec.last_cause
    world.die(MOTOR)
    world.tick()
    sup.step()
    assert world.launched == [MOTOR.name] and rec.state is S.RESTARTING


def test_a_process_that_does_not_die_is_killed_again(world):
    sup = make(world, policy=Policy(hang_timeout=1.0))
    running(world, sup, MOTOR)
    for _ in range(15):
        world.tick()
        sup.step()
    assert world.killed == [MOTOR.name]
    for _ in range(11):
        world.tick()
        sup.step()
    assert world.killed == [MOTOR.name, MOTOR.name]


def test_crash_loop_backs_off_then_gives_up(world):
    policy = Policy(max_failures=5, window=60, backoff_base=0.5, backoff_max=8)
    sup = make(world, policy=policy)
    running(world, sup, MOTOR)
    rec = sup.record(MOTOR.name)
    world.logs[MOTOR.name] = "Exiting: Server exited with tango.DevFailed:\n  bad things\n"
    launch_times = []
    for _ in range(200):  # 20 s: the server dies as soon as it is started
        if MOTOR.name in world.pids:
            world.die(MOTOR)
        before = len(world.launched)
        sup.step()
        if len(world.launched) > before:
            launch_times.append(world.now)
        world.tick()
    gaps = [round(b - a, 1) for a, b in zip(launch_times, launch_times[1:], strict=False)]
    # first restart at once, then 0.5, 1, 2 s backoff (plus a step), then given up
    assert len(launch_times) == 4, launch_times
    assert gaps == [
        pytest.approx(0.6, abs=0.11),
        pytest.approx(1.1, abs=0.11),
        pytest.approx(2.1, abs=0.11),
    ]
    assert rec.state is S.FAILED
    assert rec.last_cause.startswith(
        "gave up after 5 failures in 60 s; last: exited during start-up"
    )
    assert "Motor/sample_x" in sup.summary() and "gave up" in sup.summary()


def test_stop_and_start_on_request(world):
    sup = make(world)
    running(world, sup, MOTOR)
    sup.stop_server(MOTOR.name)
    assert world.stopped == [MOTOR.name]
    world.die(MOTOR)  # exits without a clean marker: still not restarted
    for _ in range(10):
        world.tick()
        sup.step()
    assert world.launched == [] and sup.record(MOTOR.name).state is S.STOPPED
    sup.start_server(MOTOR.name)
    assert world.launched == [MOTOR.name]
    assert MOTOR.name in sup.expected


def test_a_server_slow_to_exit_after_a_stop_is_not_restarted(world):
    """Sardana takes a fraction of a second to shut down: while its devices
    still answer it stays STOPPED, and its exit is no failure."""
    sup = make(world)
    running(world, sup, MOTOR)
    sup.stop_server(MOTOR.name)
    for _ in range(5):  # still alive and answering for 0.5 s
        world.tick()
        sup.step()
        assert sup.record(MOTOR.name).state is S.STOPPED
    world.die(MOTOR)
    for _ in range(10):
        world.tick()
        sup.step()
    assert world.launched == [] and sup.record(MOTOR.name).state is S.STOPPED


def test_a_start_while_the_stopped_server_still_exits_starts_it_once_gone(world):
    """An operator who clicks Stop then Start at once: the old process is
    still shutting down, so the start happens as soon as it is gone."""
    sup = make(world)
    running(world, sup, MOTOR)
    sup.stop_server(MOTOR.name)
    world.tick()
    sup.step()
    sup.start_server(MOTOR.name)  # the stopped process has not exited yet
    assert world.launched == []
    world.tick()
    sup.step()
    assert world.launched == []  # not twice: it is still there
    world.die(MOTOR)
    world.tick()
    sup.step()
    assert world.launched == [MOTOR.name]
    assert sup.record(MOTOR.name).state is S.RESTARTING
    for _ in range(5):
        world.tick()
        sup.step()
    assert world.launched == [MOTOR.name]


def test_a_new_supervisor_restarts_what_died_meanwhile_once(world):
    world.start(GAUGE)  # still running
    sup = make(world, expected=[MOTOR.name, GAUGE.name])  # Motor died while no supervisor ran
    sup.step()
    assert world.launched == [MOTOR.name]
    assert sup.record(MOTOR.name).last_cause == "not running when the supervisor started"
    assert sup.record(GAUGE.name).state is S.STARTING  # adopted, not restarted
    for _ in range(5):
        world.tick()
        sup.step()
    assert world.launched == [MOTOR.name]


def test_start_timeout_kills_and_retries(world):
    sup = make(world, policy=Policy(start_timeout=2.0))
    running(world, sup, MOTOR)
    world.die(MOTOR)
    world.tick()
    sup.step()  # restarted, but its devices never answer
    for _ in range(25):
        world.tick()
        sup.step()
    rec = sup.record(MOTOR.name)
    assert world.killed == [MOTOR.name]
    assert "did not answer within 2 s of starting" in rec.last_cause


# ------------------------------------------------- the database and the load
def steps(world, sup, n, seconds=0.1):
    for _ in range(n):
        world.tick(seconds)
        sup.step()


def test_a_death_while_the_database_is_down_waits_for_it_without_counting(world):
    sup = make(world, policy=Policy(max_failures=2))
    running(world, sup, MOTOR)
    world.db_up = False
    for _ in range(4):  # dies again and again: still no crash loop
        world.pids.pop(MOTOR.name, None)
        steps(world, sup, 10)
    rec = sup.record(MOTOR.name)
    assert rec.state is S.WAITING and world.launched == [] and rec.pid is None
    assert len(rec.failures) == 0 and rec.restarts == 0
    assert sup.summary().startswith(
        "Tango database down: 1 server(s) waiting to restart (Motor/sample_x)."
    )
    assert str(sup.machine.state) == "ALARM"
    world.db_up = True
    steps(world, sup, 1)
    assert world.launched == [MOTOR.name] and rec.state is S.RESTARTING and rec.restarts == 1
    world.answer(MOTOR)
    steps(world, sup, 1)
    assert rec.state is S.RUNNING and str(sup.machine.state) == "ON"


def test_a_log_that_cannot_be_read_does_not_stop_the_restart(world):
    sup = make(world)
    running(world, sup, MOTOR)

    def unreadable(spec):
        raise RuntimeError("StartDsPath: the database does not answer")

    world.log_tail = unreadable
    world.die(MOTOR)
    steps(world, sup, 1)
    assert world.launched == [MOTOR.name]
    assert sup.record(MOTOR.name).state is S.RESTARTING


def test_silence_without_evidence_is_not_a_hang(world):
    """The prober could not reach the device (e.g. building a client needs the
    database): however long that lasts, nothing is killed."""
    sup = make(world, policy=Policy(hang_timeout=1.0))
    running(world, sup, MOTOR)
    world.no_evidence.add(MOTOR.devices[0])
    steps(world, sup, 100)
    assert world.killed == [] and sup.record(MOTOR.name).state is S.RUNNING
    world.no_evidence.clear()  # the prober now sees it silent since its last answer
    steps(world, sup, 1)
    assert world.killed == [MOTOR.name]


def test_a_silent_server_starved_of_cpu_is_not_hung_until_the_starved_limit(world):
    """At 200 servers starting on two cores, Sardana (running, answering a
    moment before) went silent for 3 s while its threads waited for a CPU:
    it was killed as hung. Starved is not hung; a blocked one is killed as
    before (the test above), and a starved one past the limit too."""
    sup = make(world, policy=Policy(hang_timeout=3.0, starved_timeout=6.0))
    running(world, sup, MOTOR)
    pid = world.pids[MOTOR.name]
    world.queued[pid] = 0.0
    for _ in range(50):  # 5 s silent, its threads waiting for a CPU 80 % of the time
        world.queued[pid] += 0.08
        steps(world, sup, 1)
    assert world.killed == [] and sup.record(MOTOR.name).state is S.RUNNING
    for _ in range(11):
        world.queued[pid] += 0.08
        steps(world, sup, 1)
    assert world.killed == [MOTOR.name]
    assert "(starved of CPU all along)" in sup.record(MOTOR.name).last_cause


def test_a_silent_server_that_waits_for_no_cpu_is_hung_at_the_hang_timeout(world):
    sup = make(world, policy=Policy(hang_timeout=3.0, starved_timeout=6.0))
    running(world, sup, MOTOR)
    pid = world.pids[MOTOR.name]
    world.queued[pid] = 0.0
    for _ in range(32):  # a device thread blocked: it waits for a lock, not a CPU
        world.queued[pid] += 0.01
        steps(world, sup, 1)
    assert world.killed == [MOTOR.name]
    assert "starved" not in sup.record(MOTOR.name).last_cause


def restarted_silent(world, sup, policy_cpu):
    running(world, sup, MOTOR)
    world.die(MOTOR)
    steps(world, sup, 1)  # restarted; its devices do not answer yet
    pid = world.pids[MOTOR.name]
    if policy_cpu:
        world.cpu[pid] = 0.5
    return pid


def test_a_starting_server_that_uses_cpu_is_not_hung_until_the_busy_limit(world):
    sup = make(world, policy=Policy(start_timeout=2.0, start_timeout_busy=10.0))
    pid = restarted_silent(world, sup, policy_cpu=True)
    for _ in range(80):  # 8 s, importing and initialising on a loaded machine
        world.cpu[pid] += 0.05
        steps(world, sup, 1)
    assert world.killed == []
    for _ in range(25):
        world.cpu[pid] += 0.05
        steps(world, sup, 1)
    assert world.killed == [MOTOR.name]
    assert "did not answer within 10 s of starting" in sup.record(MOTOR.name).last_cause


def test_a_starting_server_that_stopped_using_cpu_is_hung_after_the_start_timeout(world):
    sup = make(world, policy=Policy(start_timeout=2.0, start_timeout_busy=10.0, hang_timeout=1.0))
    restarted_silent(world, sup, policy_cpu=True)  # CPU seen once, then no more
    steps(world, sup, 19)
    assert world.killed == []
    steps(world, sup, 3)
    assert world.killed == [MOTOR.name]
    assert "did not answer within 2 s of starting" in sup.record(MOTOR.name).last_cause


def test_a_starting_server_is_not_killed_while_the_database_is_down(world):
    sup = make(world, policy=Policy(start_timeout=2.0, start_timeout_busy=10.0))
    restarted_silent(world, sup, policy_cpu=False)
    world.db_up = False  # it waits for the database, as every server would
    steps(world, sup, 150)
    assert world.killed == []
    world.db_up = True
    steps(world, sup, 1)
    assert world.killed == [MOTOR.name]


def test_unknown_server_names_the_known_ones(world):
    sup = make(world)
    with pytest.raises(KeyError, match="known: Motor/sample_x, VacuumGauge/gauge1"):
        sup.stop_server("Motor/nope")


VANISHED = "process vanished without a message (SIGKILL, the OOM killer, or a crash outside Python)"


@pytest.mark.parametrize(
    "tail,code,cause",
    [
        # a supervisor's own log quotes other servers' causes: not its own death
        (
            "INFO Shutter/fe failed: exited during start-up (test hook: crash at init)",
            None,
            VANISHED,
        ),
        # only the last run's output counts
        (
            "Fatal Python error: Segmentation fault\n==== 2026 restarted by the supervisor\nok",
            None,
            VANISHED,
        ),
        (
            "x\nFatal Python error: Segmentation fault\n\nThread 0x1",
            None,
            "segmentation fault (SIGSEGV)",
        ),
        ("Fatal Python error: Aborted", None, "aborted (SIGABRT)"),
        ("", -9, "killed by SIGKILL"),
        ("", 3, "exited with code 3"),
        (
            "",
            None,
            VANISHED,
        ),
        (
            "Exiting: Server exited with tango.DevFailed:\n  desc = no db",
            None,
            "exited during start-up: Server exited with tango.DevFailed desc = no db",
        ),
    ],
)
def test_cause_from_log(tail, code, cause):
    assert cause_from_log(tail, code) == cause


def test_independent_failures_of_a_stable_server_are_not_a_crash_loop(world):
    sup = make(world, policy=Policy(max_failures=3, window=60, stable_after=5.0))
    running(world, sup, MOTOR)
    rec = sup.record(MOTOR.name)
    for _ in range(6):  # six kills within a minute, each after 6 s of good health
        for _ in range(60):
            world.tick()
            world.answer(MOTOR)
            sup.step()
        world.die(MOTOR)
        world.tick()
        sup.step()
        assert rec.state is S.RESTARTING, rec.last_cause
        world.tick()
        world.answer(MOTOR)
        sup.step()
    assert rec.restarts == 6 and rec.state is S.RUNNING
    assert world.launched == [MOTOR.name] * 6


def test_settled_only_while_every_server_runs_and_answers(world):
    """The loop steps slowly only when nothing is timed: every server running
    with no silent device, or at rest with no process."""
    sup = make(world)
    assert sup.settled()  # never started, no process: at rest
    running(world, sup, MOTOR)
    world.no_evidence |= set(MOTOR.devices)  # no device known silent
    assert sup.settled()
    world.no_evidence -= set(MOTOR.devices)
    assert not sup.settled()  # a device of a running server is silent
    world.no_evidence |= set(MOTOR.devices)
    world.die(MOTOR)
    world.tick()
    sup.step()
    assert sup.record(MOTOR.name).state is S.RESTARTING
    assert not sup.settled()  # a restart in flight is timed
    world.tick()
    world.answer(MOTOR)
    sup.step()
    assert sup.record(MOTOR.name).state is S.RUNNING and sup.settled()
    world.start(GAUGE)  # a process of a server not yet adopted
    sup.step()
    assert sup.record(GAUGE.name).state is S.STARTING and not sup.settled()


def test_device_states_feed_an_overview_with_why_a_device_has_none(world):
    sup = make(world)

    def states():
        return sup.device_states({d.lower(): "ON" for d in world.answers})

    assert states() == {
        d: ["", f"{spec.name} is NOT_STARTED"] for spec in (MOTOR, GAUGE) for d in spec.devices
    }
    running(world, sup, MOTOR)
    world.no_evidence |= set(MOTOR.devices)  # answering, none silent
    assert all(states()[d] == ["ON", ""] for d in MOTOR.devices)
    assert sup.device_states({})[MOTOR.devices[0]] == ["", "not asked yet"]
    world.no_evidence -= set(MOTOR.devices)  # the fake's answered devices read as silent
    assert all(states()[d] == ["", "not answering"] for d in MOTOR.devices)
    world.die(MOTOR)
    world.tick()
    sup.step()
    assert all(states()[d] == ["", f"{MOTOR.name} is RESTARTING"] for d in MOTOR.devices)


def test_a_process_adopted_a_moment_ago_may_hand_over_to_another(world):
    """A server started through the fork server is a stub first, which hands
    over to a forked child and exits: that is no failure; a process that stays
    gone past the grace is one."""
    from tango_devices.supervisor.supervisor_logic import ADOPT_GRACE

    sup = make(world)
    sup.step()
    world.start(MOTOR)  # the stub, started by `beamline up`
    sup.step()
    rec = sup.record(MOTOR.name)
    assert rec.state is S.STARTING
    world.die(MOTOR)  # the stub hands over and exits ...
    world.tick(0.01)
    sup.step()
    assert rec.state is S.STARTING and world.launched == []
    world.start(MOTOR)  # ... the child shows the same command line
    world.tick(0.01)
    sup.step()
    assert rec.state is S.STARTING and rec.pid == world.pids[MOTOR.name]
    assert world.launched == []
    world.die(MOTOR)  # a real crash at start: seen once the grace is over
    for _ in range(int(ADOPT_GRACE / 0.1) + 2):
        world.tick()
        sup.step()
    assert world.launched == [MOTOR.name]


def test_only_the_devices_of_servers_with_a_process_are_probed(world):
    """Probing a device whose server has no process tells nothing, and each
    attempt is a request to the database."""
    sup = make(world)
    assert world.watched == []  # neither has a process yet
    running(world, sup, MOTOR)
    assert world.watched == list(MOTOR.devices)
    world.start(GAUGE)  # started by someone else: adopted, probed
    sup.step()
    assert world.watched == sorted(MOTOR.devices + GAUGE.devices)
    world.tick(2.0)
    world.answer(GAUGE)
    world.answer(MOTOR)
    sup.step()
    pid = world.die(GAUGE)
    world.clean.add(pid)  # stopped on purpose: no process, not probed
    world.tick()
    sup.step()
    assert sup.record(GAUGE.name).state is S.STOPPED
    assert world.watched == list(MOTOR.devices)
    world.die(MOTOR)  # crashed: restarted at once, probed again as a new process
    world.tick()
    sup.step()
    assert world.launched == [MOTOR.name] and world.watched == list(MOTOR.devices)
