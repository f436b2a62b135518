"""`python -m hub.brokerauth --port P --operators hub,admin [--bind 127.0.0.1]`: run the service until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from hub.brokerauth.server import AuthService, serve


async def run(bind: str, port: int, operators: list[str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("hub.brokerauth").info(
        "event=listening address=%s:%d operators=%s", bind, port, ",".join(operators)
    )
    await serve(bind, port, AuthService(operators), stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hub.brokerauth", description=__doc__)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--operators", required=True, help="accounts that are not devices, comma-separated")
    parser.add_argument("--home", help="the stack folder this service belongs to (lets the stack recognise it)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(run(args.bind, args.port, [name for name in args.operators.split(",") if name]))


if __name__ == "__main__":
    main()
