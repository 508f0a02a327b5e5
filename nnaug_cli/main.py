"""The ``nnaug`` command group. Every :class:`NnaugError` becomes one line on stderr and exit code 2."""
from __future__ import annotations

import sys

import click

from nnaug.errors import NnaugError


class NnaugGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except NnaugError as exc:
            click.echo(f"nnaug: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad option value, unknown option or command: one line, not a usage block
            sub = exc.ctx.info_name if exc.ctx is not None and exc.ctx.parent is not None else None
            click.echo(f"nnaug: error: {exc.format_message()} (see `nnaug {sub + ' ' if sub else ''}--help`)", err=True)
            sys.exit(2)


@click.group(cls=NnaugGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnaug")
def cli():
    """Diffusion-generated image-mask pairs for nnU-Net (datasets live under $nnUNet_raw, as for nnU-Net)."""


def _register() -> None:
    """Every command module lists its commands in ``COMMANDS``; the group is their union, in this order."""
    from nnaug_cli import (data_commands, generator_commands, pipeline_commands, report_command, sweep_command,
                           synthesize_command)

    for module in (data_commands, generator_commands, synthesize_command, pipeline_commands, report_command,
                   sweep_command):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()

if __name__ == "__main__":
    cli()
