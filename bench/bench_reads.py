"""Position reads per second from one client, against the C++ TangoTest's
double_scalar measured in the same run (target: ratio >= 0.9).

Both devices run on the same embedded database, on loopback; the runs
alternate (motor, TangoTest, motor, ...) so drifting machine load hits both.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

from bench.common import beamline, rate, summary

TANGOTEST = "/usr/lib/tango/TangoTest"
ROUNDS = 7
SECONDS = 2.0


def start_tangotest(bench):
    import tango

    db = tango.Database(*bench.tango_host.split(":"))
    info = tango.DbDevInfo()
    info.name, info._class, info.server = "sys/tg_test/bench", "TangoTest", "TangoTest/bench"
    db.add_device(info)
    env = dict(os.environ, TANGO_HOST=bench.tango_host, ORBendPoint="giop:tcp:127.0.0.1:")
    with open(bench.run_dir / "tangotest.log", "wb") as log:
        proc = subprocess.Popen([TANGOTEST, "bench"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            p = bench.proxy("sys/tg_test/bench")
            p.read_attribute("double_scalar")
            return proc, p
        except tango.DevFailed as exc:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                log = bench.run_dir / "tangotest.log"
                raise RuntimeError(f"TangoTest did not start; see {log}") from exc
            time.sleep(0.1)


def run() -> dict:
    with beamline() as bench:
        motor = bench.proxy("bl01/mot/sample_x")
        proc, tt = start_tangotest(bench)
        try:
            motor.read_attribute("Position")
            ours, ref = [], []
            for _ in range(ROUNDS):
                ours.append(rate(lambda: motor.read_attribute("Position"), SECONDS))
                ref.append(rate(lambda: tt.read_attribute("double_scalar"), SECONDS))
        finally:
            proc.terminate()
            proc.wait(10)
    ratio = statistics.median(ours) / statistics.median(ref)
    print("Position reads per second, one client, loopback")
    print(f"  Motor.Position (PyTango, polling cache):   {summary(ours)}")
    print(f"  TangoTest.double_scalar (C++ reference):   {summary(ref)}")
    print(f"  ratio (median/median): {ratio:.2f}   target >= 0.90")
    return {"motor_reads_per_s": ours, "tangotest_reads_per_s": ref, "ratio": ratio}


if __name__ == "__main__":
    run()
