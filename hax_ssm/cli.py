"""The ``hax`` command. Each area owns its commands (``hax_ssm/<area>/commands.py``); this file
only assembles them and turns errors into one line and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # older typer depends on click
    from click import ClickException

from hax_ssm import __version__
from hax_ssm.data import commands as data_commands
from hax_ssm.errors import HaxError
from hax_ssm.eval import commands as eval_commands
from hax_ssm.lm.commands import app as lm_app
from hax_ssm.theory.commands import app as theory_app
from hax_ssm.train import commands as train_commands

app = typer.Typer(
    name="hax",
    help="Joint recall benchmarks and SSMs with sparse attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Joint recall benchmarks and SSMs with sparse attention."""


@app.command()
def version() -> None:
    """Print the package version."""
    print(__version__)


app.add_typer(data_commands.app, name="data")  # hax data joint-recall / mqar / info
train_commands.register(app)  # train, sweep, demo
eval_commands.register(app)  # eval, report
app.add_typer(lm_app)  # hax corpus / ruler / longbench
app.add_typer(theory_app)  # hax theory construct / bound / plot


@app.command()
def models(
    preset: Annotated[
        list[str] | None, typer.Option("--preset", help="Preset(s) to list; default: all under configs/.")
    ] = None,
) -> None:
    """Print the model variants (base x sparse branch) with their parameter counts, as markdown."""
    # Imported here: hax_ssm.models pulls in transformers, which would slow every hax command by seconds.
    from hax_ssm.models.commands import variant_table

    print(variant_table(preset))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(args=args or ["--help"], prog_name="hax", standalone_mode=False)
    except HaxError as err:
        print(f"hax: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        print("hax: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as exit_:
        return exit_.exit_code
    except ClickException as err:
        print(f"hax: error: {err.format_message()}", file=sys.stderr)
        return err.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
