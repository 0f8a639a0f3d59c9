"""``beamline-sim``: run the virtual hardware described by a JSON file.

    beamline-sim --config FILE --state-file FILE [--listen 127.0.0.1] [--auto-ports]

Exit codes: 0 clean exit (SIGTERM, SIGINT or a ``shutdown`` request),
1 a port cannot be opened, 2 bad command line or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tango_devices.simulators.server import ConfigError, load_config, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beamline-sim",
        description="Virtual hardware: simulated controllers served on TCP ports, "
        "with a JSON control port for fault injection.",
    )
    parser.add_argument("--config", required=True, type=Path, help="simulation config (JSON)")
    parser.add_argument(
        "--state-file",
        required=True,
        type=Path,
        help="written (atomically) once every port listens: pid, ports; removed on exit",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--auto-ports",
        action="store_true",
        help="ignore the configured ports and let the OS choose free ones",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config, auto_ports=args.auto_ports)
    except ConfigError as exc:
        print(f"beamline-sim: error: {exc}", file=sys.stderr)
        return 2
    return run(config, listen=args.listen, state_file=args.state_file)


if __name__ == "__main__":
    sys.exit(main())
