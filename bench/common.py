"""A throw-away beamline for benchmarks: own run directory, free ports, 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, run_dir: Path, port: int) -> None:
        self.run_dir = run_dir
        self.port = port
        self.tango_host = f"127.0.0.1:{port}"

    def cli(
        self, *args: str, check: bool = True, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if k not in ("TANGO_HOST", "BEAMLINE_RUN_DIR")}
        env = {**base, **(env or {})}
        proc = subprocess.run(
            [str(BIN / "beamline"), "--run-dir", str(self.run_dir), *args],
            env=env,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"beamline {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self, **env: str) -> dict:
        args = ["up", "--port", str(self.port), "--db-bind", "127.0.0.1", "--sim-auto-ports"]
        return json.loads(self.cli(*args, "--json", env=env).stdout)

    def proxy(self, device: str):
        import tango

        p = tango.DeviceProxy(f"tango://{self.tango_host}/{device}")
        p.set_timeout_millis(3000)
        return p


@contextlib.contextmanager
def beamline(**env: str) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        bench = Bench(Path(tmp), free_port())
        try:
            bench.up(**env)
            os.environ["TANGO_HOST"] = bench.tango_host
            yield bench
        finally:
            bench.cli("down", check=False)


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.perf_counter()
        if now >= end:
            return n / (now - t0)


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"
    )
