"""The `shoal` application, the options its commands share, and main(): errors become one line and an exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from shoal.errors import ShoalError

app = typer.Typer(help="Train, evaluate, compress and serve transformer language models.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Prepare and inspect training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOption = Annotated[str, typer.Option("--config", "-c", help="Preset name (tiny, gpt2-124m, ...) or a TOML file.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key: --set train.lr=3e-4 (repeatable).")]


def _load(config: str, overrides: list[str] | None):
    from shoal.config import load_config

    return load_config(config, overrides or [])


VERDICT_EXIT_CODES = {"pass": 0, "regression": 1, "inconclusive": 2}
VERDICTS_GIVEN: list[str] = []  # so main() can tell an "inconclusive" exit 2 from a usage error's


def main() -> None:
    try:
        app()
    except SystemExit as e:
        # A mistyped option exits 2 (click's usage error), which from compare would read as "inconclusive".
        if sys.argv[1:2] == ["compare"] and e.code == 2 and not VERDICTS_GIVEN:
            sys.exit(3)
        raise
    except ShoalError as e:
        typer.secho(f"error: {e}", err=True, fg="red")
        sys.exit(1)
    except Exception as e:
        if not type(e).__module__.startswith("mlflow"):
            raise
        # The registry's server or store refused something (an unreachable server, a name it does not allow).
        typer.secho(f"error: MLflow: {str(e).splitlines()[0] if str(e) else type(e).__name__}", err=True, fg="red")
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
