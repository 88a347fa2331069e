"""The ``effedge`` group and the console entry point: user errors become one line, exit code 2."""
from __future__ import annotations

import sys

import click

import effedge
from effedge.errors import EffedgeError, RunError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(effedge.__version__, prog_name="effedge")
@click.option("--debug", is_flag=True, help="Show the full traceback of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """effedge — compile EfficientNet / EfficientDet for Jetson and NVIDIA GPUs.

    \b
    Examples:
      effedge models                 the model zoo: φ, input size, params, MACs
      effedge info d0                the full scaled architecture of D0
      effedge info --phi 1.5         a custom compound coefficient
    """
    ctx.obj = {"debug": debug}


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(prog_name="effedge", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # one line, as every other refusal; --help has the usage
        command = exc.ctx.command_path if exc.ctx else "effedge"
        click.echo(f"error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EffedgeError as exc:  # 2: bad usage or input (as click's usage errors); 1: a failure at run time
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1 if isinstance(exc, RunError) else 2)
    except KeyboardInterrupt:
        sys.exit(130)
