"""CLI: ``python -m sandbox.fake_sage --host 127.0.0.1 --port 8765 --seed 42 [--scale N]``.

Runs one uvicorn process (state is in memory, so never more than one worker).
"""

from __future__ import annotations

import argparse
import time

import uvicorn

from sandbox.fake_sage import seed
from sandbox.fake_sage.app import create_app
from sandbox.fake_sage.state import Config, FakeSage


def _volume(text: str) -> tuple[str, str, int]:
    """``greenleaf:purchase_invoices=1000000`` -> (business key, stream, count)."""
    try:
        business, rest = text.split(":", 1)
        stream, count = rest.split("=", 1)
        return business, stream, int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BUSINESS:STREAM=COUNT, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, build the seeded state and serve it."""
    parser = argparse.ArgumentParser(prog="python -m sandbox.fake_sage", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--token-ttl", type=int, default=300, help="access token expires_in, seconds")
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies default spend volumes")
    parser.add_argument(
        "--volume",
        type=_volume,
        action="append",
        default=[],
        help="exact count, e.g. greenleaf:purchase_invoices=1000000 (repeatable)",
    )
    parser.add_argument(
        "--consent",
        choices=("instant", "screen"),
        default="instant",
        help="instant: authorise at once; screen: a consent page with Allow / Deny, as Sage's",
    )
    parser.add_argument("--start", default="2026-11-27T06:00:00Z", help="fake clock start (ISO UTC)")
    args = parser.parse_args(argv)

    volumes: dict[str, dict[str, int]] = {}
    for business, stream, count in args.volume:
        volumes.setdefault(business, {})[stream] = count
    began = time.monotonic()
    state = FakeSage(
        Config(
            seed=args.seed,
            start=args.start,
            token_ttl=args.token_ttl,
            client_id=args.client_id,
            client_secret=args.client_secret,
            scale=args.scale,
            volumes=volumes,
            consent=args.consent,
        ),
        seed,
    )
    print(
        f"fake Sage: seeded {len(state.world.businesses)} businesses in {time.monotonic() - began:.1f}s; "
        f"listening on http://{args.host}:{args.port}",
        flush=True,
    )
    # date_header off: the app sends `Date` from the fake clock, the one its records are stamped by.
    uvicorn.run(
        create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False, date_header=False
    )


if __name__ == "__main__":
    main()
