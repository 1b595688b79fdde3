"""The ``openfeeder`` command: parses arguments and calls the library; no domain logic here.

Exit codes: 0 success, 1 failure (one clear line on stderr), 2 usage error.
"""

from __future__ import annotations

import sys

import click

from openfeeder import __version__
from openfeeder.cli.agent_cmd import agent_command, algorithm_group, meters_command
from openfeeder.cli.analysis_cmd import pf_command, topology_command
from openfeeder.cli.audit_cmd import audit_group
from openfeeder.cli.broker_cmd import broker_command
from openfeeder.cli.case_cmd import case_group, cases_command
from openfeeder.cli.catalog_cmd import catalog_group
from openfeeder.cli.config_cmd import config_group
from openfeeder.cli.demo_cmd import demo_command
from openfeeder.cli.estimation_cmd import estimation_group
from openfeeder.cli.flisr_cmd import flisr_group
from openfeeder.cli.historian_cmd import historian_group
from openfeeder.cli.keys_cmd import keys_group
from openfeeder.cli.pki_cmd import pki_group
from openfeeder.cli.se_cmd import se_command
from openfeeder.cli.token_cmd import token_group
from openfeeder.cli.twin_cmd import twin_group
from openfeeder.errors import OpenFeederError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="openfeeder")
def cli() -> None:
    """OpenFeeder: open distribution automation platform."""


cli.add_command(cases_command)
cli.add_command(case_group)
cli.add_command(topology_command)
cli.add_command(pf_command)
cli.add_command(demo_command)
cli.add_command(config_group)
cli.add_command(broker_command)
cli.add_command(catalog_group)
cli.add_command(historian_group)
cli.add_command(agent_command)
cli.add_command(meters_command)
cli.add_command(algorithm_group)
cli.add_command(twin_group)
cli.add_command(flisr_group)
cli.add_command(se_command)
cli.add_command(estimation_group)
cli.add_command(keys_group)
cli.add_command(audit_group)
cli.add_command(token_group)
cli.add_command(pki_group)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (used by the console script)."""
    try:
        # without standalone mode click returns the code of a click.exceptions.Exit
        code = cli.main(args=argv, prog_name="openfeeder", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except OpenFeederError as err:
        click.echo(f"error: {err}", err=True)
        return 1
    except click.exceptions.Exit as err:
        return int(err.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
