"""The ``molphenix`` command: ``bench``, ``info``, ``simulate`` (and, later, train / evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="molphenix: fast contrastive phenomolecular retrieval.")


@app.command()
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes: finishes in about a minute on 2 cores"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    threads: Optional[int] = typer.Option(None, help="threads for every provider (default: torch's)"),
    out: Optional[Path] = typer.Option(None, help="append the results to this CSV"),
    tiny: bool = typer.Option(False, "--tiny", hidden=True, help="seconds-long smoke sizes (tests)"),
) -> None:
    """Benchmark the compiled kernels against the pure-torch reference on generated data."""
    from molphenix.cli.bench import run

    try:
        run(quick=quick, device=device, threads=threads, out=out, tiny=tiny)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)


@app.command()
def info() -> None:
    """Versions, compiled features, devices and the backend each op uses."""
    from molphenix.info import main as info_main

    info_main()


def _register_data_commands() -> None:
    try:
        from molphenix.data.cli import call_activity_command, simulate_command
    except ImportError:  # the data layer's dependencies (pyarrow, rdkit) are missing
        return
    app.command("simulate", help="Simulate a paired phenomic/molecular dataset (the embedded default).")(
        simulate_command)
    app.command("call-activity", help="Activity p-values of a dataset's (molecule, concentration) samples.")(
        call_activity_command)


_register_data_commands()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI in-process (tests call ``main([...])``); returns the exit code."""
    try:
        app(args=argv, prog_name="molphenix")
    except SystemExit as exc:  # typer/click end every run with SystemExit in standalone mode
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
