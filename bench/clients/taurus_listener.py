"""An unmodified Taurus attribute listener, for `bench healing`: prints one
line per event, "<unix time> ok" or "<unix time> err <what>", and Taurus's own
fall-back to polling ("<unix time> polling ...").

python -m bench.clients.taurus_listener tango://HOST:PORT/dom/fam/mem/attr
"""

from __future__ import annotations

import logging
import sys
import time


def main() -> None:
    import taurus
    from taurus.core import TaurusEventType

    class Capture(logging.Handler):
        def emit(self, record):
            message = record.getMessage().splitlines()[0] if record.getMessage() else ""
            if "polling" in message.lower():
                print(f"{time.time():.4f} polling {message[:100]}", flush=True)

    logging.getLogger("TaurusRootLogger").addHandler(Capture())

    class Listener:
        def eventReceived(self, _src, kind, value):
            if kind == TaurusEventType.Error:
                print(f"{time.time():.4f} err {type(value).__name__}", flush=True)
            elif value is not None and kind in (TaurusEventType.Change, TaurusEventType.Periodic):
                print(f"{time.time():.4f} ok {kind}", flush=True)

    attr = taurus.Attribute(sys.argv[1])
    listener = Listener()
    attr.addListener(listener)
    print(f"{time.time():.4f} subscribed", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
