"""python -m bench [reads] [startup]: run the benchmarks and print the figures."""

import sys

from bench import (
    bench_detector,
    bench_healing,
    bench_logger,
    bench_queue,
    bench_reads,
    bench_sardana,
    bench_scale,
    bench_scaler,
    bench_scans,
    bench_startup,
)

BENCHMARKS = {
    "reads": bench_reads.run,
    "startup": bench_startup.run,
    "detector": bench_detector.run,
    "scaler": bench_scaler.run,
    "healing": bench_healing.run,
    "logger": bench_logger.run,
    "sardana": bench_sardana.run,
    "queue": bench_queue.run,
    "scale": bench_scale.run,
    "scans": bench_scans.run,
}


def main() -> int:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name}")
        BENCHMARKS[name]()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
