"""Model configuration: one dataclass, JSON round-trip, validation with field-named errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["ModelConfig", "MOL_INPUTS", "CONCENTRATION_KINDS", "POOLING_KINDS", "ONEHOT_UNKNOWN"]

#: Molecular input kinds (``"column:<name>"`` is also accepted: a precomputed embedding column).
MOL_INPUTS = ("morgan", "rdkit2d", "maccs", "minimol", "graph")
#: Concentration encodings; join several with ``"+"`` (e.g. ``"onehot+log10"``).
CONCENTRATION_KINDS = ("none", "onehot", "log10", "sigmoid")
#: Graph pooling of the message-passing network.
POOLING_KINDS = ("sum", "mean", "sum+mean")
#: What the one-hot encoding does with a dose that is not in the dose set.
ONEHOT_UNKNOWN = ("nearest", "zero")


@dataclass
class ModelConfig:
    """Shape and options of a :class:`~molphenix.nn.MolPhenixModel`.

    ``phenomic_dim`` and ``molecular_dim`` come from the data (the trainer fills them in at
    build time); a config file leaves them at 0. Every other field has a default.

    Attributes:
        name: Config name (informational; the registry key for shipped configs).
        phenomic_dim: E, width of the phenomic input (0 = not yet known).
        molecular_dim: F, width of the molecular feature vector (0 = not yet known; must stay
            0 when ``mol_input == "graph"``: the graph network defines its own width).
        embed_dim: D, width of the shared L2-normalised embedding.
        phenomic_hidden: Width of the phenomic head's residual blocks.
        phenomic_blocks: Number of residual blocks in the phenomic head (>= 0).
        molecular_hidden: Width of the molecular head's residual blocks.
        molecular_blocks: Number of residual blocks in the molecular head (>= 0).
        dropout: Dropout probability inside every residual block, in [0, 1).
        mol_input: ``"morgan"`` (default), ``"rdkit2d"``, ``"maccs"``, ``"minimol"`` (the
            pretrained MiniMol encoder), ``"graph"`` or ``"column:<name>"``. Tells the trainer which featurizer to use; the model only
            distinguishes ``"graph"`` (a :class:`~molphenix.data.featurize.GraphBatch`) from
            the rest (a dense ``[B, F]`` tensor).
        concentration: ``"none"`` or a ``"+"``-joined subset of ``onehot``, ``log10``,
            ``sigmoid`` (see :class:`~molphenix.nn.ConcentrationEncoder`).
        doses: The dose set in µM for the one-hot encoding (required, non-empty, when
            ``concentration`` contains ``onehot``; the trainer fills it from the data).
        onehot_unknown: ``"nearest"`` (a dose outside the set is encoded as the nearest dose
            in log10 space) or ``"zero"`` (an all-zero one-hot).
        sigmoid_centers: Centers of the sigmoid bank in log10 µM.
        sigmoid_slope: Slope of every sigmoid of the bank, per log10 unit (> 0).
        mpnn_hidden: Node width of the message-passing network (graph input).
        mpnn_rounds: Message-passing rounds (>= 1).
        mpnn_pool: Graph pooling, ``"sum"``, ``"mean"`` or ``"sum+mean"``.

    Raises:
        ValueError: on construction, for any field of the wrong type or out of range; the
            message names the field.
    """

    name: str = "custom"
    phenomic_dim: int = 0
    molecular_dim: int = 0
    embed_dim: int = 256
    phenomic_hidden: int = 512
    phenomic_blocks: int = 2
    molecular_hidden: int = 512
    molecular_blocks: int = 1
    dropout: float = 0.1
    mol_input: str = "morgan"
    concentration: str = "log10+sigmoid"
    doses: List[float] = field(default_factory=list)
    onehot_unknown: str = "nearest"
    sigmoid_centers: List[float] = field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    sigmoid_slope: float = 3.0
    mpnn_hidden: int = 128
    mpnn_rounds: int = 3
    mpnn_pool: str = "mean"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------

    def validate(self, *, require_dims: bool = False) -> "ModelConfig":
        """Check every field; normalise lists to ``list[float]``.

        Args:
            require_dims: also require ``phenomic_dim > 0`` and (unless the input is a graph)
                ``molecular_dim > 0``, i.e. the config is ready to build a model.

        Returns:
            ``self``.

        Raises:
            ValueError: naming the first offending field.
        """
        _check_str(self.name, "name")
        for f in ("phenomic_dim", "molecular_dim"):
            _check_int(getattr(self, f), f, lo=0)
        for f in ("embed_dim", "phenomic_hidden", "molecular_hidden", "mpnn_hidden", "mpnn_rounds"):
            _check_int(getattr(self, f), f, lo=1)
        for f in ("phenomic_blocks", "molecular_blocks"):
            _check_int(getattr(self, f), f, lo=0)
        d = _check_float(self.dropout, "dropout")
        if not 0.0 <= d < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        _check_str(self.mol_input, "mol_input")
        if self.mol_input.startswith("column:"):
            if not self.mol_input[len("column:"):]:
                raise ValueError("mol_input: 'column:' needs a column name, e.g. 'column:embedding'")
        elif self.mol_input not in MOL_INPUTS:
            raise ValueError(f"mol_input: expected one of {list(MOL_INPUTS)} or 'column:<name>', "
                             f"got {self.mol_input!r}")
        kinds = self.concentration_kinds()  # validates `concentration`
        self.doses = _check_float_list(self.doses, "doses")
        for x in self.doses:
            if not x > 0.0:
                raise ValueError(f"doses: every dose must be > 0 µM, got {x!r}")
        if len(set(self.doses)) != len(self.doses):
            raise ValueError(f"doses: duplicate doses in {self.doses!r}")
        if "onehot" in kinds and require_dims and not self.doses:
            raise ValueError("doses: the 'onehot' concentration encoding needs the dose set; "
                             "pass doses=[...] (µM) or use concentration='log10+sigmoid'")
        _check_choice(self.onehot_unknown, "onehot_unknown", ONEHOT_UNKNOWN)
        self.sigmoid_centers = _check_float_list(self.sigmoid_centers, "sigmoid_centers")
        if "sigmoid" in kinds and not self.sigmoid_centers:
            raise ValueError("sigmoid_centers: the 'sigmoid' concentration encoding needs at "
                             "least one center")
        if not _check_float(self.sigmoid_slope, "sigmoid_slope") > 0.0:
            raise ValueError(f"sigmoid_slope: must be > 0, got {self.sigmoid_slope!r}")
        _check_choice(self.mpnn_pool, "mpnn_pool", POOLING_KINDS)
        if self.mol_input == "graph" and self.molecular_dim != 0:
            raise ValueError(f"molecular_dim: must be 0 with mol_input='graph' (the message-"
                             f"passing network sets the width), got {self.molecular_dim}")
        if require_dims:
            if self.phenomic_dim <= 0:
                raise ValueError("phenomic_dim: must be set (> 0) to build a model; pass "
                                 "phenomic_dim=E, the width of the phenomic embeddings")
            if self.mol_input != "graph" and self.molecular_dim <= 0:
                raise ValueError("molecular_dim: must be set (> 0) to build a model with "
                                 f"mol_input={self.mol_input!r}; pass molecular_dim=F")
        return self

    def concentration_kinds(self) -> List[str]:
        """The encodings named by ``concentration``, in order (``[]`` for ``"none"``).

        Raises:
            ValueError: unknown or repeated kind, or ``"none"`` combined with another.
        """
        _check_str(self.concentration, "concentration")
        parts = [p.strip() for p in self.concentration.split("+")]
        for p in parts:
            if p not in CONCENTRATION_KINDS:
                raise ValueError(f"concentration: unknown encoding {p!r} in {self.concentration!r}; "
                                 f"expected 'none' or a '+'-joined subset of "
                                 f"{list(CONCENTRATION_KINDS[1:])}")
        if len(set(parts)) != len(parts):
            raise ValueError(f"concentration: repeated encoding in {self.concentration!r}")
        if "none" in parts:
            if len(parts) > 1:
                raise ValueError(f"concentration: 'none' cannot be combined ({self.concentration!r})")
            return []
        return parts

    # -- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """All fields as a JSON-serialisable dict (lists copied)."""
        return {f.name: (list(v) if isinstance(v, list) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        """Build and validate a config from a dict (missing keys take their defaults).

        Raises:
            TypeError: ``d`` is not a dict.
            ValueError: an unknown key (named) or an invalid value (field named).
        """
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown model config key (known: {sorted(known)})")
        return cls(**d)

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A validated copy with ``overrides`` applied.

        Raises:
            ValueError: an unknown key (named) or an invalid value (field named).
        """
        d = self.to_dict()
        d.update(overrides)
        return type(self).from_dict(d)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Serialise to JSON text; also write it to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelConfig":
        """Read a config from a JSON file.

        Raises:
            ValueError: unreadable JSON (with the file name) or an invalid config.
        """
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)


def _check_str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{name}: expected a string, got {type(v).__name__} {v!r}")
    return v


def _check_int(v: Any, name: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {v}")
    return v


def _check_float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {v!r}")
    return float(v)


def _check_float_list(v: Any, name: str) -> List[float]:
    if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
        raise ValueError(f"{name}: expected a list of numbers, got {type(v).__name__} {v!r}")
    return [_check_float(x, name) for x in v]


def _check_choice(v: Any, name: str, choices: tuple) -> str:
    if v not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {v!r}")
    return v
