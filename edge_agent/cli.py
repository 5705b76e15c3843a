"""`edge-agent`: the device-side command line.

Exit codes: 0 success, 1 a check or command failed, 2 bad usage or a broken config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
edge-agent runs on the device: it receives signed deployments over MQTT, verifies module
images, runs them with Podman, queues telemetry and answers attestation requests.

Typical use:
  systemctl status edge-agent          is it running?
  edge-agent check                     is this device set up right? (one line per check)
  edge-agent status                    what is it doing now?
  edge-agent config check              is my edited config valid? (before systemctl reload)
  edge-agent plan --dry-run            what would the agent change now, and why?
  edge-agent logs pilot -f             a module's output
  edge-agent support-bundle            one tar.gz with everything support needs (secrets redacted)
  edge-agent restart pilot             restart one module
  journalctl -u edge-agent MODULE=pilot   logs about one module
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"config file (default {DEFAULT_CONFIG_PATH})",
    )
    # --config is accepted before or after the command (edge-agent run --config X).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help="config file")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_parser = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    run = sub.add_parser(
        "run",
        help="run the agent in the foreground (what systemd starts)",
        description="Run the agent in the foreground until SIGTERM or Ctrl-C. "
        "SIGHUP re-reads the config file; a broken file is refused and the old config keeps running.",
    )
    run.add_argument("--state-dir", type=Path, help="override state.dir from the config (e.g. a local folder)")

    check = sub.add_parser(
        "check",
        help="check config, state dir, disk, clock, broker, podman; non-zero on failure",
        description="Run every check and print one line each: PASS, WARN or FAIL, with a hint. "
        "Exits 1 if any check fails.",
    )
    check.add_argument("--json", action="store_true", help="print the results as JSON")
    check.add_argument("--state-dir", type=Path, help="override state.dir from the config")

    status = sub.add_parser(
        "status",
        help="show what the running agent is doing",
        description="Ask the running agent (over its control socket) for its state.",
    )
    status.add_argument("--json", action="store_true", help="print the full status document as JSON")
    status.add_argument("--state-dir", type=Path, help="override state.dir from the config")

    plan = sub.add_parser(
        "plan",
        help="show what the agent would change now, and why (--dry-run)",
        description="Ask the running agent to plan against the current containers without acting: "
        "one line per action (pull, create, start, stop, remove) with its reason, and modules waiting "
        "for a restart backoff.",
    )
    plan.add_argument("--dry-run", action="store_true", required=True, help="only show the plan (required)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--state-dir", type=Path, help="override state.dir from the config")

    logs = sub.add_parser(
        "logs",
        help="print a module's container logs",
        description="Print the logs of a module's container: its stdout on stdout, its stderr on stderr "
        "(read from podman; works while the agent is down).",
    )
    logs.add_argument("module", help="module name as in the deployment")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the container stops")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")

    restart = sub.add_parser(
        "restart",
        help="restart a module's container now",
        description="Stop and start a module's container through the running agent "
        "(not counted towards its restart backoff).",
    )
    restart.add_argument("module", help="module name as in the deployment")
    restart.add_argument("--state-dir", type=Path, help="override state.dir from the config")

    config = sub.add_parser("config", help="config file commands")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_check = config_sub.add_parser(
        "check",
        help="check a config file the way `run` uses it (default: --config)",
        description="Check a config file the way `run` uses it, short of the network: strict types, "
        "directories created and written to, secrets read, TLS files loaded, the log sink opened. "
        "Prints every problem as FILE:LINE: KEY: PROBLEM; expected ... and exits 2; warnings (the "
        "agent runs, but not as written) are printed and exit 0. A file that passes starts.",
    )
    config_check.add_argument("file", nargs="?", type=Path, help="file to check (default: the --config file)")
    config_check.add_argument("--json", action="store_true", help="print the problems as JSON")

    bundle = sub.add_parser(
        "support-bundle",
        help="write a support bundle (tar.gz) for a technician or the vendor; secrets redacted",
        description="Collect check and status output, the config with every secret redacted, the agent's journal, "
        "each module's recent logs, versions, the state database's summary, health and podman info into one "
        "tar.gz (works while the agent is down; the bundle says what it could not collect).",
    )
    bundle.add_argument("-o", "--output", type=Path, help="file to write (default ./support-DEVICE-TIME.tar.gz)")
    bundle.add_argument("--state-dir", type=Path, help="override state.dir from the config")

    version = sub.add_parser("version", help="print the agent version")
    version.add_argument("--json", action="store_true", help="print version information as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        from edge_agent.signals import catch_early_signals

        catch_early_signals()  # SIGHUP/SIGTERM from now on are acted on once the agent is ready
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handler = {
        "run": cmd_run,
        "check": cmd_check,
        "status": cmd_status,
        "config": cmd_config,
        "plan": cmd_plan,
        "logs": cmd_logs,
        "restart": cmd_restart,
        "support-bundle": cmd_support_bundle,
        "version": cmd_version,
    }[args.command]
    return handler(args)


def _load(path: Path, state_dir: Path | None = None) -> AgentConfig | None:
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    if state_dir is not None:
        from edge_agent.config_check import apply_overrides

        try:
            config = apply_overrides(config, {"state_dir": state_dir.resolve()})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return None
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from edge_agent.config_check import check_config

    overrides: dict[str, Any] = {"state_dir": args.state_dir.resolve()} if args.state_dir else {}
    try:
        # What `config check` checks, so a file that passes it starts; its warnings (a missing
        # journald) are logged by the agent itself once logging is set up.
        config = check_config(args.config, overrides, for_run=True).config
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    from edge_agent.daemon import run_agent

    # Not resolved: a reload opens the path again, so a swapped symlink is followed to its new file.
    return run_agent(config, args.config.absolute(), overrides)


def cmd_check(args: argparse.Namespace) -> int:
    from edge_agent.check_result import CheckResult
    from edge_agent.config_check import check_config
    from edge_agent.diagnostics.health_check import run_all_checks

    overrides = {"state_dir": args.state_dir.resolve()} if args.state_dir is not None else {}
    try:
        checked = check_config(args.config, overrides)
    except ConfigError as exc:
        if any(p.file == "--state-dir" for p in exc.problems):  # the command line, not the file
            print(exc, file=sys.stderr)
            return EXIT_USAGE
        results = [CheckResult("config valid", "fail", str(exc), "edge-agent config check shows every problem")]
    else:
        valid = CheckResult("config valid", "pass", str(args.config))
        if checked.warnings:
            valid = CheckResult("config valid", "warn", "; ".join(str(w) for w in checked.warnings))
        results = [valid, *run_all_checks(checked.config)]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        for r in results:
            line = f"{r.outcome.upper():<4}  {r.name:<24} {r.detail}"
            if r.hint and r.outcome != "pass":
                line += f"\n      hint: {r.hint}"
            print(line)
        failed = sum(r.outcome == "fail" for r in results)
        warned = sum(r.outcome == "warn" for r in results)
        print(f"\n{len(results)} checks: {len(results) - failed - warned} passed, {warned} warnings, {failed} failed")
    return EXIT_FAILED if any(r.outcome == "fail" for r in results) else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from edge_agent.control import CONTROL_SOCKET_NAME, AgentNotRunning, CommandError, call

    config = _load(args.config, args.state_dir)
    if config is None:
        return EXIT_USAGE
    try:
        status = call(config.state.dir / CONTROL_SOCKET_NAME, "status")
    except (AgentNotRunning, CommandError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    from edge_shared.status_view import render_status

    print(render_status(status))
    return EXIT_OK


def _agent_call(args: argparse.Namespace, cmd: str, payload: dict[str, Any] | None = None) -> Any:
    from edge_agent.control import CONTROL_SOCKET_NAME, AgentNotRunning, CommandError, call

    config = _load(args.config, getattr(args, "state_dir", None))
    if config is None:
        raise SystemExit(EXIT_USAGE)
    try:
        return call(config.state.dir / CONTROL_SOCKET_NAME, cmd, payload, timeout=60)
    except (AgentNotRunning, CommandError) as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None


def cmd_plan(args: argparse.Namespace) -> int:
    result = _agent_call(args, "plan")
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"deployment {result['deployment']}" + (f" (pending {result['pending']})" if result.get("pending") else ""))
    if not result["actions"] and not result["waits"]:
        print("nothing to change: the containers match the deployment")
    for a in result["actions"]:
        print(f"  {a['module']:<16} {a['what']}  -- {a['reason']}")
    for w in result["waits"]:
        print(f"  {w['module']:<16} waits {w['in_s']} s  -- {w['reason']}")
    return EXIT_OK


def cmd_restart(args: argparse.Namespace) -> int:
    result = _agent_call(args, "restart", {"module": args.module})
    print(f"restarted {result['module']} (container {result['container']})")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_USAGE
    from edge_agent.runtime.module_logs import LogsError, copy_module_logs

    try:
        copy_module_logs(
            config.podman.socket,
            config.device.id,
            args.module,
            follow=args.follow,
            tail=args.tail,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr.buffer,
        )
    except LogsError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return EXIT_OK


def cmd_support_bundle(args: argparse.Namespace) -> int:
    from edge_agent.diagnostics.bundle_cli import write_support_bundle

    return write_support_bundle(args.config, args.state_dir, args.output)


def cmd_config(args: argparse.Namespace) -> int:
    if args.config_command != "check":
        print("usage: edge-agent config check [FILE]", file=sys.stderr)
        return EXIT_USAGE
    from edge_agent.config_check import check_config

    path = args.file or args.config
    try:
        checked = check_config(path)
    except ConfigError as exc:
        if args.json:
            print(json.dumps([{**p.__dict__, "severity": "error"} for p in exc.problems], indent=2))
        else:
            print(exc, file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps([{**w.__dict__, "severity": "warning"} for w in checked.warnings], indent=2))
        return EXIT_OK
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    count = len(checked.warnings)
    print(f"{path}: OK" + (f" ({count} warning{'s' if count > 1 else ''})" if count else ""))
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    if args.json:
        import platform

        print(json.dumps({"version": __version__, "python": platform.python_version(), "arch": platform.machine()}))
    else:
        print(f"edge-agent {__version__}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
