"""The ``rewardlab`` command: a thin typer layer over library functions.

Each ``rewardlab.cli.<module>`` defines ``register(app)`` that adds its commands.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

from rewardlab.config import ConfigError
from rewardlab.io import DataError
from rewardlab.training.checkpoint import TrainingDivergedError
from rewardlab.training.distributed import close_process_group


# Idle OpenMP threads spin by default; on a busy 2-core machine that slows tiny models 5-10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer
from rich.console import Console
from rich.markup import escape


COMMAND_MODULES = ["data_cmd", "sft_cmd", "eval_cmd", "label_cmd", "rm_cmd", "rl_cmd", "po_cmd", "demo_cmd"]

err_console = Console(stderr=True)


def build_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="rewardlab: training-time reward design for LLM reasoning.")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(f"rewardlab.cli.{name}") is None:
            continue
        importlib.import_module(f"rewardlab.cli.{name}").register(app)
    return app


def os_error_message(e: OSError) -> str:
    """``cannot use PATH: reason`` for an OS error on a path the user gave."""
    what = {PermissionError: "no permission", IsADirectoryError: "it is a directory",
            NotADirectoryError: "a part of it is not a directory",
            FileExistsError: "it exists"}.get(type(e), e.strerror or str(e))
    return f"cannot use {e.filename}: {what}" if e.filename else str(e)


def one_line(text: str) -> str:
    """``text`` on one line: a message of several lines (some libraries' errors) joined."""
    return " ".join(ln.strip() for ln in str(text).splitlines() if ln.strip())


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warning: message`` on one line (``warnings.formatwarning`` for the CLI): a skipped
    checkpoint or a dropped metrics line is a note to the user, not a source location."""
    return f"warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input or config, 1 a diverged run or
    another failure). Errors print as one line, without a traceback; so do warnings."""
    warnings.formatwarning = one_line_warning
    app = build_app()
    try:
        app(args=argv if argv is not None else sys.argv[1:], standalone_mode=False)
    except (DataError, ConfigError, FileNotFoundError, ValueError) as e:
        err_console.print(f"[bold red]error:[/] {escape(one_line(e))}", soft_wrap=True)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError) as e:
        # an output path the user gave that cannot be written: their error, one line
        err_console.print(f"[bold red]error:[/] {escape(os_error_message(e))}", soft_wrap=True)
        return 2
    except TrainingDivergedError as e:
        err_console.print(f"[bold red]error:[/] {escape(one_line(e))}", soft_wrap=True)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except Exception as e:  # click usage errors (typer ships its own click) carry their exit code
        if callable(getattr(e, "show", None)) and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        raise
    finally:
        close_process_group()   # a launched command's ranks end with their process group closed
    return 0


if __name__ == "__main__":
    sys.exit(main())
