"""The ``fedsecure`` command: provision, server, client, admin, demo.

This is the composition root: it dispatches to :mod:`server` and :mod:`client_sdk`
lazily, so those packages still never import each other.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedsecure.errors import KitError


def _provision(args: argparse.Namespace) -> int:
    from fedsecure.provision import provision

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    result = provision(out=args.out, clients=clients, server_address=args.server_address,
                       keyholder_address=args.keyholder_address)
    print(f"provisioned {len(clients)} clients under {result.root}")
    print(f"CA fingerprint (pin it): {result.ca_fingerprint}")
    print(f"keep {result.root / 'ca' / 'ca_key.pem'} offline")
    return 0


def _server(args: argparse.Namespace) -> int:
    from server.cli import main

    return main(args)


def _client(args: argparse.Namespace) -> int:
    from client_sdk.cli import main

    return main(args)


def _admin(args: argparse.Namespace) -> int:
    from fedsecure.admin_client import AdminClient
    from fedsecure.kit import load_kit
    from fedsecure.types import PhaseConfig, Role, RunConfig, TaskKind

    kit = load_kit(args.kit, expected_role=Role.ADMIN)
    with AdminClient(kit=kit, address=args.address) as admin:
        if args.action == "status":
            run, enrolled, revoked = admin.status()
            print(json.dumps({"run_id": run.run_id, "state": run.state, "round": run.round,
                              "attempt": run.attempt, "phase": run.phase.name if run.phase else None,
                              "rounds_closed": run.rounds_closed, "tasks_open": run.tasks_open,
                              "tasks_done": run.tasks_done, "detail": run.detail,
                              "clients_enrolled": enrolled, "clients_revoked": revoked}, indent=2))
        elif args.action == "clients":
            for c in admin.clients():
                print(f"{c.name}\t{c.state}\t{','.join(m.name.lower() for m in c.capabilities.modalities)}"
                      f"\tledger seq {c.ledger_head.seq} eps {c.ledger_head.epsilon:.3f}")
        elif args.action == "revoke":
            if not args.name:
                raise ValueError("revoke needs a client NAME")
            newly = admin.revoke(args.name, args.reason)
            print(f"{args.name}: {'revoked' if newly else 'was already revoked'}")
        elif args.action == "start":
            kinds = [TaskKind[k.strip().upper()] for k in args.phases.split(",")]
            config = RunConfig(rounds=args.rounds, quorum=args.quorum, min_clients=args.min_clients,
                               phases=tuple(PhaseConfig(k, args.phase_deadline) for k in kinds))
            print(admin.start_run(config).run_id)
        elif args.action == "stop":
            print(admin.stop_run().state)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fedsecure.demo import main

    return main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fedsecure", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("provision", help="create the consortium CA and one kit per participant")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--clients", required=True, help="comma-separated client names")
    p.add_argument("--server-address", default="127.0.0.1:50051")
    p.add_argument("--keyholder-address", default="127.0.0.1:50052")
    p.set_defaults(func=_provision)

    from client_sdk.cli import add_arguments as client_args
    from server.cli import add_arguments as server_args

    p = sub.add_parser("server", help="run the aggregation server")
    server_args(p)
    p.set_defaults(func=_server)

    p = sub.add_parser("client", help="run a federation client")
    client_args(p)
    p.set_defaults(func=_client)

    p = sub.add_parser("admin", help="operate the server")
    p.add_argument("--kit", required=True, type=Path)
    p.add_argument("--address")
    p.add_argument("action", choices=["status", "clients", "revoke", "start", "stop"])
    p.add_argument("name", nargs="?", help="client to revoke")
    p.add_argument("--reason", default="")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quorum", type=int, default=2)
    p.add_argument("--min-clients", type=int, default=2)
    p.add_argument("--phases", default="report_ledger")
    p.add_argument("--phase-deadline", type=int, default=60)
    p.set_defaults(func=_admin)

    from fedsecure.demo import add_arguments as demo_args

    p = sub.add_parser("demo", help="provision and run a whole federation on loopback")
    demo_args(p)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsecure`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except KitError as exc:
        print(f"fedsecure: kit refused: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError) as exc:
        print(f"fedsecure: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
