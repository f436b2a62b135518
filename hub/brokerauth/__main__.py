"""`python -m hub.brokerauth --port P --operators hub,admin [--bind 127.0.0.1]`: run the service until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from hub.brokerauth.server import AuthServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub.brokerauth", description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--operators", required=True, help="accounts that are not devices, comma-separated")
    parser.add_argument("--home", help="the stack folder this service belongs to (lets the stack recognise it)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    operators = [name for name in args.operators.split(",") if name]
    server = AuthServer((args.bind, args.port), operators)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("hub.brokerauth").info(
        "event=listening address=%s:%d operators=%s", args.bind, args.port, ",".join(operators)
    )
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
