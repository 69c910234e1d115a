"""The `baton` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from streams.settings import InsecureSettings, Settings, get_settings, require_secure

cli = typer.Typer(help="Baton: event-sourced orchestration for AI-agent products.", no_args_is_help=True)
deadletter_cli = typer.Typer(help="Inspect the dead-letter topic.", no_args_is_help=True)
cli.add_typer(deadletter_cli, name="deadletter")
console = Console()
err_console = Console(stderr=True)


def connected_settings(database: bool = True, serving: bool = False) -> Settings:
    """Settings naming a broker (and database): the environment's, else those of a running `baton dev`."""
    settings = get_settings()
    runtime_file = settings.data_dir / "runtime.json"
    if not settings.kafka_bootstrap_servers and runtime_file.exists():
        for key, value in json.loads(runtime_file.read_text()).items():
            os.environ.setdefault(key, value)
        get_settings.cache_clear()
        settings = get_settings()
    if not settings.kafka_bootstrap_servers or (database and not settings.database_url):
        needed = "KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL" if database else "KAFKA_BOOTSTRAP_SERVERS"
        err_console.print(f"[red]Set {needed}, or start `baton dev` first.[/red]")
        raise typer.Exit(2)
    if serving:
        try:
            require_secure(settings)
        except InsecureSettings as exc:
            err_console.print(str(exc), style="red", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return settings


@cli.command()
def dev(
    port: Annotated[int, typer.Option(help="API port (0: any free port).")] = 8080,
    demo: Annotated[bool, typer.Option(help="Push signed example WhatsApp conversations through the webhook.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes; one consumer group splits the partitions.")] = 1,
    broker: Annotated[str, typer.Option(
        help="Broker to start where KAFKA_BOOTSTRAP_SERVERS names none: embedded (in memory, only Python needed) or"
             " kafka (local Apache Kafka, needs java and mvn; its log is kept in the data directory).")] = "embedded",
) -> None:
    """Run broker, PostgreSQL, workers, projector and API on this machine (embedded unless configured), supervised."""
    from streams.auth import issue_token
    from streams.local_kafka import LocalKafkaError
    from streams.runtime import BROKERS, Runtime, RuntimeFailure

    if broker not in BROKERS:
        err_console.print(f"--broker {broker!r}: expected one of {', '.join(BROKERS)}", style="red", markup=False)
        raise typer.Exit(2)
    runtime = Runtime(get_settings().model_copy(update={"api_port": port}), workers=workers, local_broker=broker)
    # SIGTERM stops like Ctrl-C, also while starting; children die with this process in any case.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with console.status(f"Starting broker ({broker}), PostgreSQL, worker, projector and API…"):
            runtime.start()
        settings = runtime.settings
        tenants = _tenants(settings)
        tenant = next(iter(tenants.by_id))
        token = issue_token(settings, tenant)
        table = Table(title="Baton is running", show_header=False)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("API", runtime.api_url)
        table.add_row("OpenAPI", f"{runtime.api_url}/docs")
        table.add_row("Console", f"{runtime.api_url}/console")
        table.add_row("Webhook", f"{runtime.api_url}/v1/webhooks/whatsapp")
        table.add_row("Kafka", f"{settings.kafka_bootstrap_servers} ({settings.broker_profile})")
        table.add_row("PostgreSQL", str(settings.database_url))
        table.add_row("Workers", ", ".join(r for r in runtime.roles if r.startswith("worker")))
        table.add_row("Logs", str(runtime.log_dir))
        table.add_row("Processes", str(settings.data_dir / "pids.json"))
        table.add_row(f"Dev token ({tenant})", token)
        console.print(table)
        if settings.insecure_secrets():
            console.print("Running with development secrets (public in the repository): fine on this machine, "
                          "refused by every process outside development.", style="yellow")
        console.print(f'curl -H "Authorization: Bearer {token}" {runtime.api_url}/v1/conversations', soft_wrap=True)
        if demo:
            from streams.domains.conversations.demo import run_demo

            contacts = run_demo(runtime.api_url, settings, tenants.by_id[tenant], token)
            console.print(f"Demo conversations sent for {', '.join(contacts)}; see {runtime.api_url}/v1/conversations")
        console.print("Press Ctrl-C to stop.")
        while True:
            for restart in runtime.supervise():
                console.print(str(restart), style="yellow", markup=False, soft_wrap=True)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except (RuntimeFailure, LocalKafkaError) as exc:
        err_console.print(f"{exc}; stopping.", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the stop itself is bounded (< 10 s): let it finish
            signal.signal(sig, signal.SIG_IGN)
        with console.status("Stopping…"):
            runtime.stop()
        console.print("Stopped.")


@cli.command()
def worker() -> None:
    """Run the Faust worker (folds and effects) against KAFKA_BOOTSTRAP_SERVERS."""
    from streams.worker import run_worker

    run_worker(connected_settings(database=False, serving=True))


@cli.command()
def projector() -> None:
    """Run the projector: log → PostgreSQL read models."""
    from projections.projector import main as run_projector

    run_projector(connected_settings(serving=True))


@cli.command()
def api(port: Annotated[int | None, typer.Option(help="Port (default BATON_API_PORT).")] = None) -> None:
    """Serve ingest, webhook and query API."""
    from streams.server import run_api

    run_api(connected_settings(serving=True), port)


@cli.command()
def token(
    tenant: Annotated[str, typer.Option(help="Tenant id the token grants access to.")],
    ttl_days: Annotated[int, typer.Option(min=1, help="Days until the token expires.")] = 30,
    subject: Annotated[str | None, typer.Option(help="The user the token speaks for (e.g. a learner).")] = None,
    service: Annotated[bool, typer.Option(help="A service token (may act for a user with X-User-ID).")] = False,
) -> None:
    """Print a bearer JWT for a tenant (and subject), signed with the first of BATON_JWT_SECRETS / BATON_JWT_SECRET."""
    from streams.auth import issue_token

    settings = get_settings()
    tenants = _tenants(settings)
    if tenants.get(tenant) is None:
        err_console.print(f"[red]Unknown tenant {tenant!r}; known: {', '.join(tenants.by_id)}[/red]")
        raise typer.Exit(2)
    print(issue_token(settings, tenant, ttl_days * 24 * 3600, subject=subject, service=service))


@cli.command()
def asyncapi() -> None:
    """Print the AsyncAPI 3.0 document of the domain topics (JSON), as GET /v1/asyncapi.json serves it."""
    from streams.asyncapi import asyncapi_document

    print(json.dumps(asyncapi_document(get_settings()), indent=2))


@cli.command()
def replay(verify: Annotated[bool, typer.Option(help="Diff the rebuild against the live read models.")] = False) -> None:
    """Rebuild every read model from the log into a shadow schema (and diff it with --verify)."""
    from projections.replay import replay as run_replay

    settings = connected_settings()
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("replay", total=None)
        report = asyncio.run(run_replay(settings, verify=verify, progress=lambda done, total: bar.update(task, completed=done, total=total)))
    console.print(report.render())
    if verify and not report.clean:
        raise typer.Exit(1)


@cli.command()
def status(
    watch: Annotated[bool, typer.Option(help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes with --watch.")] = 2.0,
    max_lag: Annotated[int, typer.Option(min=0, help="Lag (records) above which the exit code is 1.")] = 1000,
) -> None:
    """Each role's health, lag per domain, dead letters and the last event per domain; exit 1 when unhealthy."""
    from rich.live import Live

    from streams.status import collect_status

    settings = connected_settings()

    def render():
        found = asyncio.run(collect_status(settings))
        roles = Table("role", "state", "restarts", "last exit (UTC)", "detail", title="Roles")
        colour = {"up": "green", "restarting": "yellow"}
        for role in found.roles:
            last = "-" if role.last_exit_at is None else \
                f"{role.last_exit_code} at {role.last_exit_at.strftime('%Y-%m-%d %H:%M:%S')}"
            roles.add_row(role.role, f"[{colour.get(role.state, 'red')}]{role.state}[/]", str(role.restarts), last,
                          role.detail)
        domains = Table("domain", "records", "worker lag", "projector lag", "last event (UTC)", title="Domains")
        for d in found.domains:
            domains.add_row(d.domain, str(d.records), _lag(d.worker_lag, max_lag), _lag(d.projector_lag, max_lag),
                            d.last_event_at.strftime("%Y-%m-%d %H:%M:%S") if d.last_event_at else "-")
        grid = Table.grid()
        grid.add_row(roles)
        grid.add_row(domains)
        grid.add_row(f"Dead letters: {found.dead_letters}" + ("  (baton deadletter list)" if found.dead_letters else ""))
        problems = found.problems(max_lag)
        grid.add_row("[green]healthy[/green]" if not problems else "[red]" + "; ".join(problems) + "[/red]")
        return grid, problems

    if not watch:
        view, problems = render()
        console.print(view)
        raise typer.Exit(1 if problems else 0)
    try:
        with Live(render()[0], console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(render()[0], refresh=True)
    except KeyboardInterrupt:
        pass


def _lag(lag: int, max_lag: int) -> str:
    return f"[red]{lag}[/red]" if lag > max_lag else str(lag)


@cli.command()
def trace(
    ident: Annotated[str, typer.Argument(metavar="ID", help="Event id, correlation id, WhatsApp message id, task code, execution id, ...")],
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most events shown.")] = 500,
) -> None:
    """Show the causal chain around an id across every domain, each hop with its time and the gap to the previous."""
    import psycopg

    from projections.trace.views import trace as find_trace

    settings = connected_settings()

    async def run():
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            return await find_trace(conn, tenant, ident, limit)

    found = asyncio.run(run())
    if not found.hops:
        err_console.print(f"No event names {ident!r}.", style="red", markup=False)
        raise typer.Exit(1)
    table = Table("time (UTC)", "+gap", "event", "stream", "actor", "detail", title=f"Trace of {ident}")
    for hop in found.hops:
        gap = "" if hop.gap_ms is None else _duration(hop.gap_ms)
        table.add_row(hop.occurred_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], gap, "  " * hop.depth + hop.type,
                      hop.stream_id, hop.actor, hop.summary or "")
    console.print(table)
    if found.truncated:
        console.print(f"Only the first {limit} events are shown (--limit).", style="yellow")


def _duration(ms: float) -> str:
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:.1f} min"
    return f"{ms / 3_600_000:.1f} h"


@deadletter_cli.command("list")
def deadletter_list(limit: Annotated[int, typer.Option(min=1, help="Most recent N.")] = 50) -> None:
    """Show dead-lettered records with their reasons."""
    from streams.deadletter import list_dead_letters

    letters = asyncio.run(list_dead_letters(connected_settings(database=False), limit))
    table = Table("source", "offset", "stage", "reason", "failed at")
    for letter in letters:
        table.add_row(f"{letter.source_topic}[{letter.partition}]", str(letter.offset), letter.stage, letter.reason, str(letter.failed_at))
    console.print(table if letters else "No dead letters.")


@deadletter_cli.command("redrive")
def deadletter_redrive(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Letters as `topic[partition]:offset` (see list).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Every listed letter (up to --limit per partition).")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Most recent N per partition considered.")] = 1000,
) -> None:
    """Publish dead-lettered records again to their source topic, once they hold a valid event; others stay."""
    from streams.deadletter import letter_id, list_dead_letters
    from streams.operations import redrive

    if not ids and not every:
        err_console.print("Name the letters to re-drive (topic[partition]:offset), or pass --all.", style="red")
        raise typer.Exit(2)
    settings = connected_settings(database=False)
    letters = asyncio.run(list_dead_letters(settings, limit))
    wanted = {letter_id(letter): letter for letter in letters}
    if unknown := [i for i in ids or () if i not in wanted]:
        err_console.print(f"No dead letter {', '.join(unknown)}.", style="red", markup=False)
        raise typer.Exit(2)
    chosen = list(wanted.values()) if every else [wanted[i] for i in dict.fromkeys(ids or ())]
    report = asyncio.run(redrive(settings, chosen))
    for redriven in report.redriven:
        console.print(f"re-driven {redriven}", markup=False)
    for refused, why in report.refused:
        err_console.print(f"refused {refused}: {why}", style="yellow", markup=False)
    raise typer.Exit(1 if report.refused else 0)


def _tenants(settings: Settings):
    from agents.tenants import load_tenants

    return load_tenants(settings.tenants_file)


def _add_domain_commands() -> None:
    from streams.registry import load_domains

    for domain in load_domains():
        if domain.commands is not None:
            domain.commands(cli)


_add_domain_commands()


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    main()
