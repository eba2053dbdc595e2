"""How every ``molphenix`` command reports errors: one line on stderr, a meaningful exit code.

Format (stderr, exactly one line)::

    error: --out: sim/wells.parquet exists; pass --overwrite
    error: --threads: must be >= 1, got 0
    error: DATASET: /data/x: dataset directory not found
    error: wells, column 'molecule_id', row 12: a control well must have a null molecule_id

Exit codes:

* ``0``: success.
* ``2``: usage error: an unknown, missing or invalid flag or argument, an output that already
  exists, an input path that does not exist, a value the library rejected (``ValueError``), a
  feature whose optional extra is not installed (``molphenix._extras.MissingExtraError``: the
  line says how to install it).
* ``1``: the command ran and failed on its input data (:class:`molphenix.data.SchemaError`,
  including unreadable or corrupt files) or on the file system (``PermissionError``, a full
  disk ...).
* ``130``: interrupted (Ctrl-C).

No usage banner, no box, no traceback for these. Any other exception is a bug and still shows
its full traceback; ``molphenix --traceback COMMAND ...`` shows the traceback for the errors
above too.

For command authors (``train``, ``evaluate``, ``embed-library``, ``retrieve``, ``demo``, ...)::

    import typer
    from molphenix.cli._errors import usage_error, data_error, threads_option

    def train(out: Path = typer.Option(..., "--out"), threads: Optional[int] = threads_option()):
        if (out / "model.pt").exists():
            usage_error("--out", f"{out / 'model.pt'} exists; pass --overwrite")   # exit 2
        ...
        if n_actives == 0:
            data_error("--data", "no active samples to train on")                # exit 1

* :func:`usage_error` ``(flag, message)`` raises :class:`CLIError` with exit code 2;
  :func:`data_error` ``(flag, message)`` the same with exit code 1. ``flag`` is the option as the
  user typed it (``"--out"``), an argument's metavar (``"DATASET"``), or ``None``.
* :func:`threads_option` is the shared ``--threads`` option; :func:`positive_int` /
  :func:`non_negative_int` are typer callbacks for any integer option (``--threads 0`` is
  rejected: ``error: --threads: must be >= 1, got 0``). ``typer.BadParameter("msg")`` raised
  from any callback is reported as ``error: --that-flag: msg``.
* Commands do not need to catch ``ValueError`` / ``FileNotFoundError`` / ``SchemaError`` from
  the library: the group turns them into one line (exit 2 / 2 / 1). Catch them only to name
  the flag.

All of this lives in :class:`MolphenixGroup` (``typer.Typer(cls=MolphenixGroup)`` in
:mod:`molphenix.cli.main`), so it applies to every command registered on ``app``, whoever
registers it, and to every way of running it (the ``molphenix`` script, ``python -m molphenix``,
``main([...])`` in tests, ``app()``).
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

import typer
import typer.core

# typer >= 0.2x vendors click as ``typer._click``; older typer uses the ``click`` package.
click: Any = getattr(typer.core, "_click", None) or getattr(typer.core, "click")
_exc = click.exceptions
# click >= 8.2 raises NoArgsIsHelpError for ``no_args_is_help``; older click exits 0 itself
_NO_ARGS_HELP: tuple = tuple(x for x in [getattr(_exc, "NoArgsIsHelpError", None)] if x is not None)

__all__ = [
    "dataset_dir",
    "CLIError",
    "MolphenixGroup",
    "data_error",
    "describe_os_error",
    "format_error",
    "non_negative_int",
    "positive_int",
    "threads_option",
    "usage_error",
]

#: Set by ``molphenix --traceback``: library errors re-raise with their traceback.
_SHOW_TRACEBACK = {"on": False}


class CLIError(_exc.UsageError):
    """A user-facing command error: printed as ``error: FLAG: MESSAGE``, exits ``exit_code``.

    Attributes:
        flag: The option (``"--out"``) or argument (``"DATASET"``) at fault, or ``None``.
        message: What is wrong and, where possible, what to do.
        exit_code: 2 for usage errors (default), 1 for failures on the input data.
    """

    def __init__(self, message: str, flag: Optional[str] = None, exit_code: int = 2):
        super().__init__(message)
        self.flag = flag
        self.exit_code = exit_code

    def format_message(self) -> str:  # used if something outside MolphenixGroup shows it
        return _join(self.flag, self.message)


def usage_error(flag: Optional[str], message: str) -> NoReturn:
    """Abort the command with ``error: FLAG: MESSAGE`` and exit code 2.

    Args:
        flag: The option as typed (``"--out"``), an argument's metavar, or ``None``.
        message: One sentence; say what to do (``"... exists; pass --overwrite"``).

    Raises:
        CLIError: always.
    """
    raise CLIError(message, flag=flag, exit_code=2)


def data_error(flag: Optional[str], message: str) -> NoReturn:
    """Abort the command with ``error: FLAG: MESSAGE`` and exit code 1 (bad input data).

    Args:
        flag: The option or argument whose data is at fault, or ``None``.
        message: What is wrong with the data.

    Raises:
        CLIError: always.
    """
    raise CLIError(message, flag=flag, exit_code=1)


# ----------------------------------------------------------------------------- validators


def dataset_dir(data: Path, flag: str = "--data") -> Path:
    """The dataset directory ``data`` names: a directory, else a bundled dataset's name
    (``cell-injury``); anything else is a usage error on ``flag`` (exit 2)."""
    if data.is_dir():
        return data
    from molphenix.data import bundled

    if str(data).replace("_", "-") in bundled.names():
        return bundled.path(str(data))
    usage_error(flag, f"{data}: dataset directory not found (nor a bundled dataset: {', '.join(bundled.names())})")


def _bounded_int(minimum: int) -> Callable[..., Optional[int]]:
    def check(value: Any) -> Optional[int]:
        if value is None:
            return None
        try:
            number = int(value)  # an un-annotated parameter arrives as a string
        except (TypeError, ValueError):
            raise typer.BadParameter(f"must be an integer, got {value!r}") from None
        if number < minimum:
            raise typer.BadParameter(f"must be >= {minimum}, got {number}")
        return number

    check.__doc__ = f"typer callback: reject an integer option below {minimum} (``None`` passes)."
    return check


#: typer callback for an integer option that must be >= 1 (``None``, i.e. unset, passes).
positive_int = _bounded_int(1)
positive_int.__name__ = "positive_int"
#: typer callback for an integer option that must be >= 0 (``None`` passes).
non_negative_int = _bounded_int(0)
non_negative_int.__name__ = "non_negative_int"


def threads_option(help: str = "CPU threads (default: torch's setting); must be >= 1") -> Any:
    """The shared ``--threads`` option (``Optional[int]``, default ``None``, rejects < 1).

    Args:
        help: Help text.

    Returns:
        A ``typer.Option`` to use as a parameter default.
    """
    return typer.Option(None, "--threads", help=help, callback=positive_int)


# ----------------------------------------------------------------------------- formatting


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _lower_first(text: str) -> str:
    # "Input should be ..." -> "input should be ..."; leave "SMILES ..." / "DATASET ..." alone
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _join(flag: Optional[str], message: str) -> str:
    message = _one_line(message).rstrip()
    if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]
    return f"{flag}: {message}" if flag else message


def _param_flag(param: Any) -> Optional[str]:
    if param is None:
        return None
    if getattr(param, "param_type_name", "") == "argument":
        name = getattr(param, "metavar", None) or getattr(param, "name", None) or ""
        return str(name).upper() or None
    opts: Sequence[str] = list(getattr(param, "opts", None) or [])
    longs = [o for o in opts if o.startswith("--")]
    if longs or opts:
        return (longs or opts)[0]
    name = getattr(param, "name", None)
    return f"--{name.replace('_', '-')}" if name else None


def describe_os_error(exc: OSError) -> str:
    """``"<file>: <reason>"`` for an ``OSError`` (``str(exc)`` when it names no file)."""
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    return str(exc)


def format_error(exc: BaseException) -> Optional[Tuple[str, int]]:
    """The one-line message (without ``error: ``) and exit code for a user-facing error.

    Args:
        exc: An exception raised while parsing or running a command.

    Returns:
        ``(message, exit_code)``, or ``None`` when ``exc`` is not a user-facing error (a bug:
        the caller lets it propagate with its traceback).
    """
    if isinstance(exc, CLIError):
        return _join(exc.flag, exc.message), exc.exit_code
    if isinstance(exc, _exc.MissingParameter):
        flag = _param_flag(exc.param) or (str(exc.param_hint).strip("'\"") if exc.param_hint else None)
        kind = "argument" if getattr(exc.param, "param_type_name", "") == "argument" else "option"
        msg = f"missing required {kind}"
        if exc.message:
            msg += f" ({_lower_first(exc.message)})"
        return _join(flag, msg), exc.exit_code
    if isinstance(exc, _exc.BadParameter):
        flag = _param_flag(exc.param)
        if flag is None and exc.param_hint is not None:
            hint = exc.param_hint
            flag = hint if isinstance(hint, str) else " / ".join(hint)
            flag = flag.replace("'", "")
        return _join(flag, _lower_first(exc.message)), exc.exit_code
    if isinstance(exc, _exc.NoSuchOption):
        msg = "no such option"
        if exc.possibilities:
            msg += f"; did you mean {' or '.join(sorted(exc.possibilities))}?"
        return _join(exc.option_name, msg), exc.exit_code
    if isinstance(exc, _exc.BadOptionUsage):
        text = _lower_first(exc.message)
        # "Option '--out' requires an argument." -> "--out: requires a value"
        if "requires an argument" in text:
            text = "requires a value"
        return _join(exc.option_name, text), exc.exit_code
    if isinstance(exc, _exc.UsageError):
        return _join(None, _lower_first(exc.format_message())), exc.exit_code
    if isinstance(exc, _exc.ClickException):
        return _join(None, _lower_first(exc.format_message())), exc.exit_code
    # --- errors from the library that are about the user's input
    try:
        from molphenix.data.schema import SchemaError
    except ImportError:  # pragma: no cover - data layer dependencies missing
        SchemaError = ()  # type: ignore[assignment,misc]
    if SchemaError and isinstance(exc, SchemaError):
        return _join(None, str(exc)), 1
    from molphenix._extras import MissingExtraError

    if isinstance(exc, MissingExtraError):  # an optional extra is needed: how to install it
        return _join(None, str(exc)), 2
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return _join(None, describe_os_error(exc)), 2
    if isinstance(exc, PermissionError):
        return _join(None, describe_os_error(exc)), 1
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return _join(None, describe_os_error(exc)), 1
    if isinstance(exc, ValueError):
        return _join(None, str(exc)), 2
    return None


def _echo_err(line: str) -> None:
    click.echo(f"error: {line}", err=True)


# ----------------------------------------------------------------------------- the group


class MolphenixGroup(typer.core.TyperGroup):
    """typer's group with molphenix's error reporting (see the module docstring).

    ``main`` always parses and runs in non-standalone mode and reports errors itself, so neither
    click's usage banner nor typer's rich error box nor a pretty traceback is ever printed for a
    user error. In standalone mode (the console script, ``app()``) it exits with the code; with
    ``standalone_mode=False`` (``molphenix.cli.main.main``) it returns it.
    """

    def main(  # type: ignore[override]
        self,
        args: Optional[Sequence[str]] = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "molphenix"
        _SHOW_TRACEBACK["on"] = False
        # shell completion requests (``_MOLPHENIX_COMPLETE=...``) exit here
        self._main_shell_completion(extra, prog_name, complete_var)
        code = self._run(args, prog_name, extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: List[str], prog_name: str, extra: dict) -> int:
        try:
            try:
                with self.make_context(prog_name, args, **extra) as ctx:
                    self.invoke(ctx)
                return 0
            except EOFError as e:
                raise typer.Abort() from e
        except typer.Exit as e:
            return int(e.exit_code or 0)
        except SystemExit as e:  # a command called sys.exit(...)
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except _NO_ARGS_HELP as e:
            text = e.format_message()
            if text:  # typer's rich help prints itself and leaves the message empty
                click.echo(text)
            return 0
        except typer.Abort:
            _echo_err("aborted")
            return 1
        except KeyboardInterrupt:
            _echo_err("interrupted")
            return 130
        except Exception as e:  # noqa: BLE001 - sorted below: user errors vs bugs
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                return 1
            if _SHOW_TRACEBACK["on"] and not isinstance(e, _exc.ClickException):
                raise
            found = format_error(e)
            if found is None:
                raise  # a bug: keep the traceback
            line, code = found
            _echo_err(line)
            return code
