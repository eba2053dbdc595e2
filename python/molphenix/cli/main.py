"""The ``molphenix`` command: ``bench``, ``info``, ``simulate``, ``call-activity`` (+ train / evaluate ...).

Adding a command: write it in its own module under ``molphenix/cli/`` (``train.py``, ...) and
register it below with ``app.command("name")(function)``. Report errors with
``molphenix.cli._errors.usage_error(flag, message)`` (exit 2) or ``data_error`` (exit 1); every
command on ``app`` prints them as one line, ``error: --flag: message``, without a usage banner
(see :mod:`molphenix.cli._errors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from molphenix._version import __version__
from molphenix.cli._errors import _SHOW_TRACEBACK, MolphenixGroup, threads_option

app = typer.Typer(
    cls=MolphenixGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: no boxes, no truncated option names
    help="molphenix: fast contrastive phenomolecular retrieval.",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"molphenix {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
    traceback: bool = typer.Option(False, "--traceback",
                                   help="Show the Python traceback of an error instead of one line."),
) -> None:
    """molphenix: fast contrastive phenomolecular retrieval."""
    _SHOW_TRACEBACK["on"] = traceback


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes: finishes in about a minute on 2 cores"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    threads: Optional[int] = threads_option("threads for every provider (default: torch's); must be >= 1"),
    out: Optional[Path] = typer.Option(None, "--out", help="append the results to this CSV"),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="seconds-long smoke sizes (tests)"),
) -> None:
    """Benchmark the compiled kernels against the pure-torch reference on generated data."""
    from molphenix.cli._errors import usage_error

    if device not in ("cpu", "cuda"):
        usage_error("--device", f"must be cpu or cuda, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            usage_error("--device", "'cuda' requested but torch sees no CUDA device")
    if out is not None and out.is_dir():
        usage_error("--out", f"{out} is a directory; give a CSV file path")
    from molphenix.cli.bench import run

    run(quick=quick, device=device, threads=threads, out=out, tiny=tiny)


@app.command()
def info() -> None:
    """Versions, compiled features, devices and the backend each op uses."""
    from molphenix.info import main as info_main

    info_main()


def _register_data_commands() -> None:
    try:
        from molphenix.cli.data import register
    except ImportError:  # the data layer's dependencies (pyarrow, rdkit) are missing
        return
    register(app)


_register_data_commands()


def _register_train_commands() -> None:
    try:
        from molphenix.cli.train import register
    except ImportError:  # the training stack's dependencies are missing
        return
    register(app)


_register_train_commands()


def _register_demo_commands() -> None:
    try:
        from molphenix.cli.cv import register as register_cv
        from molphenix.cli.demo import register as register_demo
        from molphenix.cli.retrieve import register as register_retrieve
    except ImportError:  # the training stack's dependencies are missing
        return
    register_retrieve(app)
    register_cv(app)
    register_demo(app)


_register_demo_commands()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI in-process (tests call ``main([...])``); returns the exit code.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for usage errors, 1 for failures on the input data (see
        :mod:`molphenix.cli._errors`).
    """
    return typer.main.get_command(app).main(args=argv, prog_name="molphenix", standalone_mode=False)


if __name__ == "__main__":
    raise SystemExit(main())
