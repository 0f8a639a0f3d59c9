"""A spock profile for the beamline's Door, made without questions.

spock asks for a Door on first start; `beamline spock` makes the IPython
profile itself (with Sardana's own template) in the run directory and starts
spock on it, so an operator types one command.
"""

from __future__ import annotations

from pathlib import Path

from beamline.config import BeamlineConfig


class SpockError(Exception):
    pass


def default_door(config: BeamlineConfig) -> str:
    doors = sorted(d.name for d in config.devices.values() if d.device_class == "Door")
    if not doors:
        raise SpockError("no Door in the configuration (db_config/sardana/*.yaml)")
    return doors[0]


def ensure_profile(ipython_dir: Path, profile: str, door: str) -> Path:
    """Create ``profile_<profile>`` for ``door`` under ``ipython_dir`` unless it exists.

    Needs TANGO_HOST (the Door's MacroServer is looked up in the database)."""
    import contextlib
    import io

    from IPython.core.profiledir import ProfileDir, ProfileDirError
    from sardana.spock.ipython_01_00 import genutils

    ipython_dir.mkdir(parents=True, exist_ok=True)
    try:
        existing = ProfileDir.find_profile_dir_by_name(str(ipython_dir), profile)
        if (Path(existing.location) / "ipython_config.py").exists():
            return ipython_dir
    except ProfileDirError:
        pass
    location = ProfileDir.create_profile_dir_by_name(str(ipython_dir), profile).location
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            # (create_spock_profile would ask for the door: it drops door_name)
            genutils._create_config_file(location, door)
    except Exception as exc:
        raise SpockError(f"could not make spock profile {profile!r} for {door}: {exc}") from None
    return ipython_dir
