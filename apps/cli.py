"""The ``fedsecure`` command: provision, server, keyholder, client, admin, demo.

This is the composition root (docs/design.md §3): it may import every side, and does so
lazily, one side per subcommand, through the ``DELEGATED`` table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsecure.config_file import ConfigFileError, ConfigSchema, apply_config
from fedsecure.errors import KitError, StateVersionError

# Subcommands whose work lives in one side's package: "module:function", imported only
# when that command runs (so `fedsecure client` never loads the server, and so on).
DELEGATED = {
    "server": "server.cli:main",
    "keyholder": "keyholder.cli:main",
    "keyholder-keygen": "keyholder.cli:keygen_main",
    "client": "client_sdk.cli:main",
    "bench": "benchmarks.cli:main",
    "experiment": "benchmarks.cli:experiment",
    "align": "server.align.engine.cli:align_main",
    "eval": "server.align.engine.cli:eval_main",
    "demo": "apps.demo:main",
    "backbone": "server.backbone.cli:main",
}


# Subcommands whose options a side defines: (help, "module:function adding them"). Only
# the command being run has its options built (issue 25: `fedsecure keyholder` and
# `fedsecure admin` must not load torch because the server's or a client's options do).
SIDE_OPTIONS = {
    "server": ("run the aggregation server", "server.cli:add_arguments"),
    "keyholder": ("run the key holder (decrypts only quorum aggregates)", "keyholder.cli:add_arguments"),
    "keyholder-keygen": ("make the key holder's CKKS key pair (before provisioning)",
                         "keyholder.cli:add_keygen_arguments"),
    "backbone": ("pretrain the federation's reward-model backbone on public data", "server.backbone.cli:add_arguments"),
    "client": ("run a federation client", "client_sdk.cli:add_arguments"),
    "align": ("align a policy VLM with GRPO (exact-match reward on the public pool)",
              "server.align.engine.cli:add_align_arguments"),
    "eval": ("accuracy of a policy checkpoint on the task's test split",
             "server.align.engine.cli:add_eval_arguments"),
    "demo": ("provision and run a whole federation on loopback", "apps.demo:add_arguments"),
}


# Commands that run on one task (issue 25): this layer picks it by name (``--task``; the
# server's TOML key ``server.task``) and hands the side its Task — no side imports a task.
TASKED = ("server", "align", "eval", "backbone")
DEFAULT_TASK = "easyvqa"


def _add_task_argument(p: argparse.ArgumentParser) -> None:
    from tasks import KNOWN

    p.add_argument("--task", default=DEFAULT_TASK,
                   help=f"what the federation aligns on: {', '.join(sorted(KNOWN))} (default {DEFAULT_TASK})")


def _task(args: argparse.Namespace) -> Any:
    """The Task named by ``--task``; ValueError (exit 2) naming the known tasks."""
    from tasks import get_task

    return get_task(args.task)


def _kit_task(args: argparse.Namespace) -> Any:
    """The Task a client's kit is sealed for (a client never chooses one: its kit says)."""
    from fedsecure.kit import load_kit
    from fedsecure.task import SealedTask
    from tasks import get_task

    if args.kit is None:
        raise ValueError("--kit is needed")
    return get_task(SealedTask.from_settings(load_kit(args.kit).settings).name)


def _function(path: str) -> Callable[..., Any]:
    module, _, function = path.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def _side_parser(sub: Any, name: str, built: bool) -> argparse.ArgumentParser:
    """The subparser of a side's command, its options built only if ``built``."""
    help_, adder = SIDE_OPTIONS[name]
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_)
    if built:
        _function(adder)(p)
        if name in TASKED:
            _add_task_argument(p)
    p.set_defaults(func=_delegate(name))
    return p


def _delegate(command: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if command in TASKED:
            return int(_function(DELEGATED[command])(args, task=_task(args)))
        if command == "client":
            return int(_function(DELEGATED[command])(args, task=_kit_task(args)))
        return int(_function(DELEGATED[command])(args))

    return run


def _provision(args: argparse.Namespace) -> int:
    from fedsecure.provision import provision

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    result = provision(out=args.out, clients=clients, keyholder_public_context=args.keyholder_context.read_bytes(),
                       server_address=args.server_address, keyholder_address=args.keyholder_address,
                       backbone=args.backbone, task=_task(args))
    print(f"provisioned {len(clients)} clients under {result.root}")
    print(f"CA fingerprint (pin it): {result.ca_fingerprint}")
    print(f"keep {result.root / 'ca' / 'ca_key.pem'} offline")
    return 0


def _admin(args: argparse.Namespace) -> int:
    from fedsecure.admin_client import AdminClient, KeyHolderAdminClient
    from fedsecure.kit import load_kit
    from fedsecure.types import PhaseConfig, Role, RunConfig, TaskKind

    kit = load_kit(args.kit, expected_role=Role.ADMIN)
    with AdminClient(kit=kit, address=args.address) as admin:
        if args.action == "status" and args.watch:
            return _watch_status(admin, interval_s=args.interval)
        if args.action == "status":
            print(json.dumps(_status_json(*admin.status()), indent=2))
        elif args.action == "clients":
            now_ms = time.time() * 1000
            for c in admin.clients():
                print(f"{c.name}\t{c.state}\t{','.join(m.name.lower() for m in c.capabilities.modalities)}"
                      f"\tledger seq {c.ledger_head.seq} eps {c.ledger_head.epsilon:.3f}"
                      f"\tlast seen {max(0.0, (now_ms - c.last_seen_ms) / 1000):.0f} s ago")
        elif args.action == "metrics":
            m = admin.metrics()
            print(json.dumps({"uptime_s": m.uptime_ms / 1000, "rss_mib": round(m.rss_bytes / 2**20, 1),
                              "open_fds": m.open_fds,
                              "rpcs": {r.method: {"calls": r.calls, "codes": dict(r.codes), "p50_ms": round(r.p50_ms, 2),
                                                  "p99_ms": round(r.p99_ms, 2), "max_ms": round(r.max_ms, 2)}
                                       for r in m.rpcs}}, indent=2))
        elif args.action == "revoke":
            if not args.name:
                raise ValueError("revoke needs a client NAME")
            newly = admin.revoke(args.name, args.reason)
            print(f"{args.name}: {'revoked' if newly else 'was already revoked'} at the server")
            # The key holder enforces its own, admin-signed list (it does not trust the server).
            with KeyHolderAdminClient(kit=kit, address=args.keyholder_address) as keyholder:
                fresh, total = keyholder.revoke([args.name], args.reason)
            print(f"{args.name}: {'revoked' if fresh else 'was already revoked'} at the key holder "
                  f"({total} revoked there)")
        elif args.action == "start":
            kinds = [TaskKind[k.strip().upper()] for k in args.phases.split(",")]
            config = RunConfig(rounds=args.rounds, quorum=args.quorum, min_clients=args.min_clients,
                               phases=tuple(PhaseConfig(k, args.phase_deadline) for k in kinds))
            print(admin.start_run(config).run_id)
        elif args.action == "personalise":
            # A run of its own for the newest finished run: TAP on its last published
            # aggregates, then the ledger heads (the server's PersonalisePlanner).
            config = RunConfig(rounds=1, quorum=args.quorum, min_clients=args.min_clients,
                               phases=(PhaseConfig(TaskKind.PERSONALISE, args.phase_deadline),
                                       PhaseConfig(TaskKind.REPORT_LEDGER, args.phase_deadline)))
            print(admin.start_run(config).run_id)
        elif args.action == "stop":
            print(admin.stop_run().state)
        elif args.action == "heads":
            from fedsecure.privacy.heads_export import heads_to_json

            text = heads_to_json(admin.ledger_heads())
            if args.out is None:
                print(text)
            else:
                args.out.write_text(text + "\n", encoding="utf-8")
                print(f"ledger heads written to {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from server.report import write_report

    summary = write_report(metrics=args.metrics, out=args.out, json_out=args.json, run_id=args.run)
    print(f"run {summary['run_id']}: {len(summary['rounds'])} rounds, {len(summary['clients'])} clients -> {args.out}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from fedsecure.data.local import DataError, check_pairs

    try:
        report = check_pairs(args.path, needs_images=args.kind != "text", answer_set=_task(args).answer_set)
    except DataError as exc:
        report = exc.report
    print(json.dumps(report.to_json(), indent=2) if args.json else report.describe())
    return 0 if report.ok else 1


def _status_json(run: Any, enrolled: int, revoked: int) -> dict[str, Any]:
    return {"run_id": run.run_id, "state": run.state, "round": run.round, "attempt": run.attempt,
            "phase": run.phase.name if run.phase else None, "rounds_closed": run.rounds_closed,
            "tasks_open": run.tasks_open, "tasks_done": run.tasks_done, "detail": run.detail,
            "clients_enrolled": enrolled, "clients_revoked": revoked}


def _watch_status(admin: Any, *, interval_s: float) -> int:
    """`fedsecure admin status --watch`: one line per change until the run ends (Ctrl-C
    stops watching, never the run); every call has its deadline."""
    if interval_s <= 0:
        raise ValueError("--interval must be positive")
    last = None
    try:
        while True:
            status = _status_json(*admin.status())
            if status != last:
                print(f"{time.strftime('%H:%M:%S')} {status['run_id'] or '-'} {status['state']}: round "
                      f"{status['round']} (attempt {status['attempt']}) phase {status['phase'] or '-'}, "
                      f"{status['rounds_closed']} rounds closed, tasks {status['tasks_done']} done / "
                      f"{status['tasks_open']} open, {status['clients_enrolled']} clients"
                      + (f" — {status['detail']}" if status["detail"] else ""), flush=True)
                last = status
            if status["state"] in ("finished", "stopped", "failed", "none"):
                return 0 if status["state"] == "finished" else 1
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 130


def _audit(args: argparse.Namespace) -> int:
    if args.membership:
        from client_sdk.cli import membership_main

        return membership_main(args, task=_kit_task(args))
    from fedsecure.crypto import pki
    from fedsecure.privacy.audit import audit_ledger
    from fedsecure.privacy.heads_export import load_heads
    from fedsecure.privacy.report import to_html, to_json, to_text

    if not args.ledgers:
        raise ValueError("name at least one LEDGER file (or use --membership)")
    if args.ca is None:
        raise ValueError("--ca is required: the consortium CA certificate the ledgers must chain to")
    ca = pki.load_certificate(args.ca.read_bytes())
    heads = load_heads(args.server_heads) if args.server_heads is not None else None
    audits = [audit_ledger(p, ca_cert=ca, server_heads=heads) for p in args.ledgers]
    print(to_json(audits) if args.json else to_text(audits))
    if args.html is not None:
        args.html.write_text(to_html(audits), encoding="utf-8")
    return 0 if all(a.ok for a in audits) else 1


def build_parser(*, command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every subcommand. With ``command`` (the one being run, or ""
    for none), only that command's options are built — a side's options are defined in
    its own package, which importing would load that side — the others are listed by
    name and help only."""
    def built(name: str) -> bool:
        return command is None or command == name

    parser = argparse.ArgumentParser(prog="fedsecure", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("provision", help="create the consortium CA and one kit per participant")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--clients", required=True, help="comma-separated client names")
    p.add_argument("--server-address", default="127.0.0.1:50051")
    p.add_argument("--keyholder-address", default="127.0.0.1:50052")
    p.add_argument("--keyholder-context", required=True, type=Path,
                   help="the key holder's public CKKS context (from `fedsecure keyholder-keygen`)")
    p.add_argument("--backbone", type=Path, action="append",
                   help="a pretrained reward-model backbone (`fedsecure backbone pretrain`): its digest is sealed; "
                        "repeat for one backbone per architecture")
    _add_task_argument(p)
    p.set_defaults(func=_provision)

    for name in ("server", "keyholder", "keyholder-keygen", "backbone"):
        _side_parser(sub, name, built(name))

    p = sub.add_parser("report", help="the run report (HTML with charts, and JSON) from a server's metrics log")
    p.add_argument("--metrics", required=True, type=Path, help="the server's STATE/metrics.jsonl")
    p.add_argument("--out", type=Path, default=Path("report.html"))
    p.add_argument("--json", type=Path, help="also write every number as JSON here")
    p.add_argument("--run", help="the run to report (default: the newest in the log)")
    p.set_defaults(func=_report)

    p = sub.add_parser("data", help="check a client's own preference data before it trains on it")
    p.add_argument("action", choices=["check"])
    p.add_argument("path", type=Path, help="JSONL file, Parquet file or Hugging Face `datasets` folder")
    p.add_argument("--kind", default="image_text", choices=["image_text", "image", "text"],
                   help="the reward model kind it is for (text needs no images)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    _add_task_argument(p)
    p.set_defaults(func=_data)

    _side_parser(sub, "client", built("client"))

    p = sub.add_parser("admin", help="operate the server")
    p.add_argument("--kit", required=True, type=Path)
    p.add_argument("--address", help="the server's host:port (default: the kit's)")
    p.add_argument("--keyholder-address", help="the key holder's host:port for revoke (default: the kit's)")
    p.add_argument("action", choices=["status", "clients", "revoke", "start", "stop", "heads", "personalise", "metrics"],
                   help="heads: export every ledger head clients reported, for `fedsecure audit --server-heads`; "
                        "metrics: server-side latency and status counts per RPC, memory, file descriptors; "
                        "personalise: TAP personalisation for the newest finished run")
    p.add_argument("name", nargs="?", help="client to revoke")
    p.add_argument("--reason", default="")
    p.add_argument("--out", type=Path, help="heads: write the export here (default: print it)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quorum", type=int, default=2)
    p.add_argument("--min-clients", type=int, default=2)
    p.add_argument("--phases", default="report_ledger")
    p.add_argument("--phase-deadline", type=int, default=60)
    p.add_argument("--watch", action="store_true", help="status: print a line at each change until the run ends")
    p.add_argument("--interval", type=float, default=2.0, help="status --watch: seconds between polls")
    p.set_defaults(func=_admin)

    p = sub.add_parser("audit", help="verify privacy ledgers and recompute ε independently")
    p.add_argument("ledgers", nargs="*", type=Path, metavar="LEDGER")
    p.add_argument("--ca", type=Path, help="consortium CA certificate (pins the ledgers' signers)")
    p.add_argument("--server-heads", type=Path,
                   help="the heads the server recorded (`fedsecure admin heads --out FILE`): catches rollback and forks")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--html", type=Path, help="write a human-readable report here")
    p.add_argument("--membership", action="store_true",
                   help="run a loss-threshold membership-inference attack on a client's reward model "
                        "(needs the client's --kit, --state and data options)")
    if built("audit"):
        _function("client_sdk.cli:add_data_arguments")(
            p.add_argument_group("--membership: the client whose model is attacked"), required=False)
    p.set_defaults(func=_audit)

    p = sub.add_parser("bench", help="benchmarks that print JSON")
    p.add_argument("what", choices=["dp", "dp-utility", "he", "grpo", "collaboration", "reward-sweep", "mor",
                                     "personalise", "load", "flood"],
                   help="dp: DP step time vs non-private; dp-utility: accuracy, membership AUC, audit ε; "
                        "he: CKKS secure aggregation costs and error; grpo: GRPO step, ours vs TRL; "
                        "collaboration: FedCola's module table on the public questions (JSON, Markdown, SVG); "
                        "reward-sweep: one client's reward-model recipe over a grid of schedules (JSON, Markdown); "
                        "mor: an ALIGN step's costs and the federation tax (remote scoring over mTLS vs in process); "
                        "personalise: TAP's stages per client kind (local-only, global, replaced, personalised; "
                        "ε per stage from the ledger); load: many mTLS clients against a real server and key holder "
                        "(server-side latency per RPC, memory, file descriptors); flood: another client's heartbeat "
                        "latency while one client floods its score session")
    p.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    p.add_argument("--steps", type=int, default=12, help="measured steps per variant")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions (medians reported)")
    p.add_argument("--kind", default="image_text", help="reward model kind (dp-utility: or 'all')")
    p.add_argument("--mode", default=None, choices=["hooks", "functorch", "ew"],
                   help="dp: Opacus per-sample gradient engine (default: the clients' default)")
    p.add_argument("--gate", action="store_true", help="dp: with FedCola's gates attached (image or text kinds)")
    p.add_argument("--trainable", default="all", choices=("all", "no_image_stack", "no_mlp", "head"),
                   help="dp, collaboration: what every model trains (the clients' [privacy] trainable)")
    p.add_argument("--params", type=int, default=1_000_000, help="he: values per client update")
    p.add_argument("--clients", type=int, default=None, help="he: contributions summed (8); load: clients (100)")
    p.add_argument("--seconds", type=float, default=30.0, help="load: how long the clients run; flood: each window")
    p.add_argument("--rss-at", type=float, default=30.0, help="load: memory growth is measured from here to the end")
    p.add_argument("--hidden", type=int, default=128, help="grpo: LM hidden size")
    p.add_argument("--layers", type=int, default=2, help="grpo: LM layers")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="grpo: where both engines run")
    p.add_argument("--threads", type=int, default=2, help="grpo, collaboration: torch CPU threads")
    p.add_argument("--seeds", default="0,1,2", help="collaboration: comma-separated seeds")
    p.add_argument("--rows", default=None, help="collaboration: comma-separated rows (default: all)")
    p.add_argument("--task", default="easyvqa", help="collaboration, reward-sweep: the task (easyvqa, scenes)")
    p.add_argument("--rounds", type=int, default=3, help="collaboration: federated rounds")
    p.add_argument("--local-steps", type=int, default=100, help="collaboration: DP steps per client per round")
    p.add_argument("--pairs", type=int, default=1500, help="collaboration: pairs per client")
    p.add_argument("--questions", type=int, default=300,
                   help="collaboration, reward-sweep: public questions measured per type; personalise: in all")
    p.add_argument("--central-steps", type=int, default=1000, help="collaboration: steps of the central references")
    p.add_argument("--backbone", type=Path, default=None,
                   help="collaboration: the federation's pretrained backbone folder (default: pretrain one)")
    p.add_argument("--backbone-steps", type=int, default=2000, help="collaboration: pretraining steps if no --backbone")
    p.add_argument("--out", type=Path, default=None,
                   help="collaboration, personalise: folder for the JSON, .md and .svg "
                        "(default: bench-collaboration, bench-personalise)")
    p.add_argument("--grid", default="default", help="reward-sweep: a named grid of recipes (default, quick)")
    p.add_argument("--point", action="append", metavar="KEY=VALUE,...",
                   help="reward-sweep: a recipe instead of the grid, e.g. objective=listwise,learning_rate=0.01,"
                        "steps=300,rounds=1,batch_size=128,max_grad_norm=0.1,trainable=all,private=1 (repeatable)")
    p.add_argument("--client", default=None, help="reward-sweep: whose share (default: the kind's first client)")
    p.add_argument("--distill-steps", type=int, default=30, help="personalise: DP distillation steps")
    p.add_argument("--margin", type=float, default=0.01, help="personalise: TAP's replacement margin")
    p.add_argument("--reserve", type=float, default=0.1, help="personalise: share of ε kept for personalisation")
    p.set_defaults(func=_delegate("bench"))

    p = sub.add_parser("experiment", help="experiments that write JSON, a Markdown table and a plot")
    p.add_argument("what", choices=["mor"], help="mor: routed mixture of client rewards vs its competitors")
    p.add_argument("--json", action="store_true", help="print JSON only (the default output is JSON too)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    # Unset scale options keep the experiment's own defaults (benchmarks.experiment_mor.
    # MorExperimentConfig, whose GRPO schedule is the shipped recipe's), written once there.
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per method")
    p.add_argument("--prompts-per-step", type=int, default=None, help="prompts per GRPO step (default: GRPO's recipe)")
    p.add_argument("--learning-rate", type=float, default=None, help="GRPO's learning rate (default: GRPO's recipe)")
    p.add_argument("--best-nll", type=float, default=None,
                   help="weight of the best completion's likelihood in GRPO's loss (0: plain GRPO; default: the recipe)")
    p.add_argument("--eval-questions", type=int, default=None, help="fixed test questions (paired)")
    p.add_argument("--quality-per-type", type=int, default=None,
                   help="held-out public questions per type for the reward quality")
    p.add_argument("--rounds", type=int, default=None, help="federated rounds of the reward models")
    p.add_argument("--local-steps", type=int, default=None, help="DP steps per client per round")
    p.add_argument("--seed-per-group", default=None, metavar="GROUP=N,...",
                   help="the warm start's questions for these groups instead of the default per type, e.g. yesno=400")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="threads in all (split among the seeds' processes)")
    p.add_argument("--jobs", type=int, default=None,
                   help="seeds run side by side, one process each, then merged (default: one process per seed; "
                        "1: the seeds in turn in this process)")
    p.add_argument("--backbone", type=Path, default=None, help="the federation's backbone (default: pretrain one)")
    p.add_argument("--backbone-steps", type=int, default=2000, help="pretraining steps if no --backbone")
    p.add_argument("--out", type=Path, default=Path("experiment-mor"), help="folder for mor.json, .md and .svg")
    p.add_argument("--merge", default=None, metavar="FILES",
                   help="comma-separated mor.json files of runs on other seeds (one process per seed): merge them "
                        "into one result under --out instead of running")
    p.set_defaults(func=_delegate("experiment"))

    for name in ("align", "eval", "demo"):
        _side_parser(sub, name, built(name))
    return parser


# The commands that take ``--config FILE``: where each file's schema is derived from the
# party's settings model (server.settings, client_sdk.settings, keyholder.settings).
CONFIG_SCHEMAS = {"server": "server.cli:CONFIG_SCHEMA", "client": "client_sdk.cli:CONFIG_SCHEMA",
                  "keyholder": "keyholder.cli:CONFIG_SCHEMA"}
# Keys this layer adds to a command's file: the task is picked here, never by a side.
TASK_KEYS = {"server": {"server": {"task": "task"}}}


def _schema(command: str) -> ConfigSchema:
    module, _, name = CONFIG_SCHEMAS[command].partition(":")
    schema: ConfigSchema = getattr(importlib.import_module(module), name)
    extra = TASK_KEYS.get(command, {})
    return {section: {**schema.get(section, {}), **extra.get(section, {})} for section in [*schema, *(s for s in extra if s not in schema)]}


def config_schemas() -> dict[str, ConfigSchema]:
    """The commands that take ``--config FILE``, with their files' schemas."""
    return {command: _schema(command) for command in CONFIG_SCHEMAS}


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (argparse keeps them in its subparsers action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    raise KeyError(name)


def _command(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ("" for none: ``fedsecure --help``)."""
    return next((a for a in argv if not a.startswith("-")), "")


def _apply_config_file(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Read ``--config FILE`` of a configurable command before the real parse, so the
    file's values become defaults that flags override."""
    command = _command(argv)
    if command not in CONFIG_SCHEMAS:
        return
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv[argv.index(command) + 1:])
    if known.config is not None:
        apply_config(subcommand_parser(parser, command), known.config, _schema(command))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsecure`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command=_command(argv))
    try:
        _apply_config_file(parser, argv)
    except ConfigFileError as exc:
        print(f"fedsecure: configuration refused: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    try:
        return int(args.func(args))
    except KitError as exc:
        print(f"fedsecure: kit refused: {exc}", file=sys.stderr)
        return 2
    except StateVersionError as exc:
        print(f"fedsecure: state refused: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"fedsecure: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
