"""`tandem serve`: the answer API as a process of its own (uvicorn); see ``tandem.serve.server``."""

from __future__ import annotations

from tandem import config


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the answer API (POST /api/ask, GET /health) with uvicorn")
    p.add_argument("--host", help="address to bind (default TANDEM_BIND_HOST)")
    p.add_argument("--port", type=int, help="port (default TANDEM_SERVE_PORT)")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from tandem.serve import server

    logging.getLogger("tandem").setLevel(logging.INFO)
    server.run(config.load(), host=args.host, port=args.port)
    return 0
