"""`modelhost batch ...`: score files with a model here, or as jobs on a running modelhost."""

from __future__ import annotations

import click

from modelhost.batch.jobs_cli import cancel, list_jobs, status, submit


class _RunByDefault(click.Group):
    """`modelhost batch MODEL_URI ...` is `modelhost batch run MODEL_URI ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault)
def batch() -> None:
    """Score files with a model: here (`modelhost batch MODEL_URI --input ... --output ...`),
    or as jobs on a running modelhost (`submit`, `list`, `status`, `cancel`)."""


@batch.command()
@click.argument("model_uri")
def run(model_uri: str) -> None:
    """Score the input files with MODEL_URI and write them with their predictions."""
    raise click.ClickException("not built yet")


for command in (submit, list_jobs, status, cancel):
    batch.add_command(command)
