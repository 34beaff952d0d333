"""`modelhost batch submit|list|status|cancel`: batch jobs on a running modelhost."""

from __future__ import annotations

import click


@click.command()
def submit() -> None:
    """Start a batch job on a running modelhost."""
    raise click.ClickException("not built yet")


@click.command("list")
def list_jobs() -> None:
    """List the batch jobs."""
    raise click.ClickException("not built yet")


@click.command()
def status() -> None:
    """Show one batch job."""
    raise click.ClickException("not built yet")


@click.command()
def cancel() -> None:
    """Cancel a batch job."""
    raise click.ClickException("not built yet")
