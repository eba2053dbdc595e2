"""Named model configs (JSON files shipped in ``molphenix/nn/configs/``) and the factory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

from molphenix.nn.config import ModelConfig

__all__ = ["list_models", "get_model_config", "create_model", "CONFIG_DIR"]

#: Directory of the shipped JSON configs (one ``<name>.json`` per model).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_models() -> List[str]:
    """Names of the shipped model configs, sorted (e.g. ``"molphenix-small"``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def get_model_config(name: str | os.PathLike, /, **overrides: Any) -> ModelConfig:
    """The config ``name`` with ``overrides`` applied, validated (dims may still be 0).

    Args:
        name: A shipped config name (see :func:`list_models`) or a path to a JSON config file.
        **overrides: Field values replacing the config's (e.g. ``phenomic_dim=384``).

    Returns:
        A :class:`ModelConfig`.

    Raises:
        ValueError: unknown name (the known ones listed), unknown override key (named),
            invalid value (field named).
    """
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        p = Path(name)
        if p.suffix == ".json" and p.is_file():
            path = p
        else:
            raise ValueError(f"name: unknown model {str(name)!r}; available: {list_models()} "
                             "(or a path to a .json config)")
    cfg = ModelConfig.from_json(path)
    if overrides:
        known = set(cfg.to_dict())
        for k in overrides:
            if k not in known:
                raise ValueError(f"{k}: unknown model config key (known: {sorted(known)})")
        cfg = cfg.replace(**overrides)
    return cfg


def create_model(name: str | os.PathLike, /, **overrides: Any):
    """Build a :class:`~molphenix.nn.MolPhenixModel` from a named config.

    Args:
        name: A shipped config name (see :func:`list_models`) or a path to a JSON config file.
        **overrides: Field values replacing the config's; ``phenomic_dim`` (and
            ``molecular_dim`` unless ``mol_input="graph"``) must end up > 0, e.g.
            ``create_model("molphenix-small", phenomic_dim=384, molecular_dim=2048)``.

    Returns:
        A freshly initialised ``MolPhenixModel`` (parameters drawn from torch's global RNG:
        seed it for reproducible weights).

    Raises:
        ValueError: unknown name or override key, invalid or missing field (named).
    """
    from molphenix.nn.model import MolPhenixModel

    return MolPhenixModel(get_model_config(name, **overrides))
