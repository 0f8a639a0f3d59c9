"""Packaging for the beamline control suite.

Each Tango device server is a console script named after its Tango server
name (``Motor``), because the Tango Starter recognises a server's process by
the executable name in its command line.
"""

import importlib.util
from pathlib import Path

from setuptools import Extension, find_packages, setup


def _servers() -> dict[str, tuple[str, str]]:
    """The server list of tango_devices/registry.py (the one place it is kept),
    read without importing the package or its dependencies."""
    path = Path(__file__).resolve().parent / "tango_devices" / "registry.py"
    spec = importlib.util.spec_from_file_location("_beamline_registry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SERVERS


setup(
    name="beamline-suite",
    version="0.1.0",
    description="Tango-native beamline control suite that keeps working when a piece fails",
    python_requires=">=3.11,<3.12",
    packages=find_packages(
        include=["beamline*", "tango_devices*", "sardana_macros*", "taurus_gui*"]
    ),
    package_data={"beamline": ["schema/*.json"]},
    # the event relay's bind() shim (LD_PRELOAD, no Python in it); optional:
    # without a C compiler the suite runs, its events without the relay
    ext_modules=[
        Extension(
            "tango_devices.relay._portmap",
            ["tango_devices/relay/portmap.c"],
            libraries=["dl"],
            optional=True,
        )
    ],
    install_requires=[
        "pytango==10.3.*",
        "pytango-db==0.9.*",
        "numpy>=1.26",
        "pyserial==3.5",
        "dsconfig==1.9.*",
        "jsonschema>=4.20",
        "click>=8.1",
        "rich>=13",
        "psutil>=5.9",
        "pyepics>=3.5,<3.6",
        "caproto>=1.1,<1.4",
        "h5py>=3.10",
        "pyzmq>=26,<28",  # the event relay (the same libzmq 4.3.5 as pytango's)
        "sardana[spock]==3.7.*",
        "sardana-config==3.7.*",
        # the operator GUI (taurus comes with sardana)
        "PyQt5==5.15.*",
        "pyqtgraph>=0.13",
        "taurus-pyqtgraph>=0.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "pytest-qt>=4.4",
            "ruff>=0.6",
            "import-linter>=2.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "beamline=beamline.cli:main",
            "beamline-sim=tango_devices.simulators.__main__:main",
            "beamline-forkserver=tango_devices.common.forkserver:main",
            # each server executable is a stub that hands its start to the
            # fork server, or runs the registry's entry point itself
            *(f"{name}=tango_devices.common.forkserver:{name}" for name in _servers()),
        ],
    },
)
