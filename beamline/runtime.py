"""The run directory: where a running beamline keeps its database file,
logs and the record of what `beamline up` started (state.json)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from beamline.config import default_config_dir

STATE_FILE = "state.json"


def default_run_dir() -> Path:
    env = os.environ.get("BEAMLINE_RUN_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var"


def venv_bin() -> Path:
    """The directory holding this Python and the server executables (StartDsPath)."""
    return Path(sys.executable).parent


@dataclass
class RunContext:
    run_dir: Path
    config_dir: Path

    @classmethod
    def create(cls, run_dir: str | Path | None, config_dir: str | Path | None) -> RunContext:
        run = Path(run_dir) if run_dir else default_run_dir()
        cfg = Path(config_dir) if config_dir else default_config_dir()
        return cls(run.resolve(), cfg.resolve())

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def server_log_dir(self) -> Path:
        """Where the Starter writes each server's output (LogFileHome/ds.log)."""
        return self.log_dir / "ds.log"

    @property
    def db_file(self) -> Path:
        return self.run_dir / "tango_database.db"

    @property
    def sim_state_file(self) -> Path:
        return self.run_dir / "sim.json"

    def server_log(self, server: str) -> Path:
        return self.server_log_dir / (server.replace("/", "_") + ".log")

    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = self.load_state()
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        self.save_state(state)
        return state

    def load_sim_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.sim_state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None
