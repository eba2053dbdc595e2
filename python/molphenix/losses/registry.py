"""The loss registry: ``register_loss`` adds a loss under a name, ``create_loss`` builds one.

The built-in losses register themselves in :mod:`molphenix.losses`; a new loss (a
:class:`~molphenix.losses.ContrastiveLoss` subclass, or a function returning one) registers the
same way and is then usable everywhere a loss name is (``TrainConfig.loss``, ``molphenix train
--loss``). Nothing patches ``create_loss``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Tuple

from molphenix.losses.base import ContrastiveLoss

__all__ = ["LossEntry", "register_loss", "create_loss", "available_losses", "loss_entry"]


class LossEntry(NamedTuple):
    """A registered loss.

    Attributes:
        name: The registry name.
        factory: A :class:`ContrastiveLoss` subclass or a function returning one; its keyword
            arguments are the loss's options.
        uses_similarity_inputs: The loss can read similarity inputs ``u`` (so the trainer fits
            a similarity scale for it and ``TrainConfig.soft_positive_fraction`` belongs to the
            identity of its runs).
    """

    name: str
    factory: Callable[..., ContrastiveLoss]
    uses_similarity_inputs: bool


_REGISTRY: Dict[str, LossEntry] = {}


def register_loss(name: str, factory: Callable[..., ContrastiveLoss], *, uses_similarity_inputs: bool = False,
                  replace: bool = False) -> LossEntry:
    """Register a loss under ``name``.

    Args:
        name: A non-empty name (e.g. ``"my-loss"``).
        factory: A :class:`ContrastiveLoss` subclass, or a function taking the loss's options
            as keyword arguments and returning a :class:`ContrastiveLoss`.
        uses_similarity_inputs: True when the loss can take similarity inputs ``u`` (the
            trainer then asks its :meth:`~ContrastiveLoss.similarity_scale`).
        replace: Allow replacing an existing registration of ``name``.

    Returns:
        The :class:`LossEntry`.

    Raises:
        ValueError: an empty or taken name (without ``replace``); ``factory`` not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory: expected a ContrastiveLoss subclass or a function, got {factory!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"name: a loss named {name!r} is already registered (replace=True replaces it)")
    entry = LossEntry(name, factory, bool(uses_similarity_inputs))
    _REGISTRY[name] = entry
    return entry


def available_losses() -> Tuple[str, ...]:
    """The registered loss names, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def loss_entry(name: str) -> LossEntry:
    """The registration of ``name``.

    Raises:
        ValueError: unknown name (the known ones listed).
    """
    if name not in _REGISTRY:
        raise ValueError(f"loss: unknown loss {name!r}; expected one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def _options(factory: Callable[..., Any]):
    """The keyword options ``factory`` accepts, or None when it takes ``**kwargs``."""
    fn = factory.__init__ if inspect.isclass(factory) else factory
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def create_loss(name: str, **kw: Any) -> ContrastiveLoss:
    """Build the loss ``name`` with options ``kw``.

    Args:
        name: A registered name (:func:`available_losses`; the built-ins are
            :data:`molphenix.losses.LOSSES`).
        **kw: Options of that loss (e.g. ``S2LLoss``: ``c``, ``threshold``, ``gamma``,
            ``delta``, ``diagonal``, ``sim_space``, ``similarity``, ``u_norm``, ``unit_scale``,
            ``init_t``, ``init_b``, ``backend``).

    Returns:
        A :class:`ContrastiveLoss` (an ``nn.Module``; its parameters are the learnable
        temperature and bias).

    Raises:
        ValueError: unknown name (the known ones listed), an option the loss does not take
            (named, with the accepted ones), or an invalid option value (named).
        TypeError: a factory that does not return a :class:`ContrastiveLoss`.
    """
    entry = loss_entry(name)
    accepted = _options(entry.factory)
    if accepted is not None:
        for k in kw:
            if k not in accepted:
                raise ValueError(f"{k}: not an option of the {name!r} loss (accepted: {accepted})")
    loss = entry.factory(**kw)
    if not isinstance(loss, ContrastiveLoss):
        raise TypeError(f"loss: the factory of {name!r} returned {type(loss).__name__}, not a ContrastiveLoss")
    return loss
