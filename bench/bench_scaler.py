"""Scaler acquisitions per second for short preset times: Start, wait for the
end of the count, read the counts, through Tango, against the same cycle with
the bare driver on the same simulated scaler (the hardware's own limit as seen
from one client), in the same run."""

from __future__ import annotations

import statistics
import time

from bench.common import beamline

PRESETS = (0.001, 0.01, 0.1)
SECONDS = 3.0


def tango_cycle(scaler):
    import tango

    scaler.Start()
    while scaler.state() == tango.DevState.RUNNING:
        pass
    return scaler.Counts


def driver_cycle(client):
    client.clear()
    client.start()
    while client.status().counting:
        pass
    return client.counts()


def rate(fn, seconds=SECONDS) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def run() -> dict:
    from tango_devices.drivers.scaler import ScalerClient

    results = {}
    with beamline() as bench:
        scaler = bench.proxy("bl01/ct/scaler")
        sim = json_state(bench)
        client = ScalerClient(f"socket://127.0.0.1:{sim['controllers']['scaler1']['port']}")
        client.connect()
        print("Scaler acquisitions per second (Start, wait for the end, read the counts)")
        print(f"  {'preset':>8}  {'Tango':>8}  {'driver':>8}  {'ideal':>8}  Tango/driver")
        for preset in PRESETS:
            scaler.PresetTime = preset
            client.set_preset(preset)
            ours = statistics.median(rate(lambda: tango_cycle(scaler), 1.0) for _ in range(3))
            ref = statistics.median(rate(lambda: driver_cycle(client), 1.0) for _ in range(3))
            results[preset] = (ours, ref)
            print(f"  {preset:8.3f}  {ours:8.1f}  {ref:8.1f}  {1 / preset:8.1f}  {ours / ref:.2f}")
        client.close()
    return results


def json_state(bench):
    import json

    return json.loads((bench.run_dir / "sim.json").read_text())


if __name__ == "__main__":
    run()
