"""``CraftConfig``: every CRaFT setting, its default and its validation (SPEC.md §3–5).

Defaults are the original CRaFT's where it had one (``initial_lambda=1.0``,
``use_grad_projection=True``, ``conflict_threshold=-0.1``, ``retention_freq=1``, hidden loss
``mse``), except the budget, the dual step and the anchor batch. The original's
``lambda_lr=0.01`` with ``epsilon_start=1.0 → epsilon_end=0.1`` let λ decay to ~0.2 while
``L_ret`` sat far under a budget it never met, and retained almost nothing of the old task's
actions in ``benchmarks/forgetting.py`` (task-A action error 0.361 against 0.396 for the
wrapper with CRaFT off, seed 0). The defaults are ``lambda_lr=0.5``,
``epsilon_start=0.1 → epsilon_end=0.05`` (standardized units: MSE 0.05 = a twentieth of the
teacher's variance), chosen from that benchmark's seed-0 sweep (`benchmarks/results/NOTES.md`), and
``anchor_batch_size`` :data:`DEFAULT_ANCHOR_BATCH_SIZE` instead of 8 (same sweep, see there).
``layers``, ``pooling`` and ``anchor_targets`` default to what the anchor cache holds.

Design decision: ``CraftConfig`` is a *pydantic dataclass* (``pydantic.dataclasses.dataclass``)
rather than a ``BaseModel``. It validates exactly like a model, exports a JSON schema, and
LeRobot's CLI parser (draccus) can parse it directly as a nested block
(``--policy.craft.epsilon_end=0.05``), so one class serves the Python API, config files and
the ``lerobot-train`` command line.

Load it from a dict, a JSON file or a YAML file::

    CraftConfig.from_dict({"epsilon_end": 0.05})
    CraftConfig.from_file("craft.yaml")

Bad values raise :class:`CraftConfigError` (a ``ValueError``) whose message names the field,
the value and what is allowed; unknown keys are rejected with a "did you mean" hint.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, ValidatorFunctionWrapHandler, field_validator, model_validator
from pydantic.dataclasses import dataclass

__all__ = ["DEFAULT_ANCHOR_BATCH_SIZE", "CraftConfig", "CraftConfigError"]

#: ``anchor_batch_size`` when it is not set (the original CRaFT's was 8). A retention gradient
#: from 8 anchors is noisy, and noise in λ·g_ret likely slows the new task (Adam divides every
#: step by the gradient's running RMS): in ``benchmarks/defaults_sweep.py`` (seed 0, SmolVLA)
#: 32 anchors per step forgot less *and* learnt task B better than 8. Cost: in
#: ``benchmarks/forgetting.py`` the CRaFT run took 1.24x naive's training time (1.11x with 8
#: anchors), each ratio within one script (``benchmarks/results/NOTES.md``).
DEFAULT_ANCHOR_BATCH_SIZE = 32

logger = logging.getLogger(__name__)

# Set while from_dict/from_file validate: they raise their own CraftConfigError, so the
# wrap validator below need not also log.
_QUIET = contextvars.ContextVar("craft_config_quiet", default=False)

RetentionMode = Literal["hidden", "token_ce"]
EpsilonScheduleKind = Literal["linear", "cosine", "exponential", "constant"]
Granularity = Literal["global", "per_layer"]
HiddenLoss = Literal["mse", "cosine", "l1"]
FeatureNorm = Literal["standardize", "none"]
Pooling = Literal["mean_image_tokens", "mean_masked", "last_token", "cls_token"]
AnchorTarget = Literal["features", "actions"]


class CraftConfigError(ValueError):
    """A CRaFT configuration that cannot be used; the message says which field and how to fix it."""


@dataclass(config=ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False))
class CraftConfig:
    """CRaFT settings (defaults: the module docstring says which are the original CRaFT's)."""

    enabled: bool = Field(True, description="Turn CRaFT on. Off: plain fine-tuning (task gradient only).")
    retention_mode: RetentionMode = Field(
        "hidden",
        description="hidden: anchor pooled hidden states to the teacher's cached ones (recommended). "
        "token_ce: the policy's own loss on cached anchor samples (legacy).",
    )
    anchor_cache_dir: Path | None = Field(
        None, description="Directory of the anchor cache built by `craft build-cache`."
    )
    anchor_batch_size: int | None = Field(
        None,
        ge=1,
        description=f"Anchors per retention step. null: {DEFAULT_ANCHOR_BATCH_SIZE}, or every anchor when the "
        "cache holds fewer (logged; original CRaFT: 8). An explicit value the cache cannot meet stops the run.",
    )
    retention_freq: int = Field(
        1, ge=1, description="Compute the retention loss every this many steps; other steps use the task gradient only."
    )
    initial_lambda: float = Field(1.0, ge=0.0, description="Initial Lagrange multiplier λ (0 ≤ λ ≤ lambda_max).")
    lambda_lr: float = Field(0.5, ge=0.0, description="Dual-ascent step size: λ ← clip(λ + lambda_lr·(L_ret − ε), 0, lambda_max).")
    lambda_max: float = Field(10.0, gt=0.0, description="Upper clip of λ.")
    epsilon_start: float = Field(0.1, ge=0.0, description="Retention budget ε at step 0 (original CRaFT: 1.0).")
    epsilon_end: float = Field(0.05, ge=0.0, description="Retention budget ε at the end of the anneal (original CRaFT: 0.1).")
    epsilon_schedule: EpsilonScheduleKind = Field(
        "linear",
        description="How ε goes from epsilon_start to epsilon_end: linear (original), cosine, "
        "exponential (geometric), or constant (epsilon_end from step 0).",
    )
    epsilon_decay_steps: int | None = Field(
        None, ge=1, description="Steps over which ε is annealed; null: the run's total number of steps."
    )
    use_grad_projection: bool = Field(
        True, description="PCGrad-style projection of the task gradient when it conflicts with the retention gradient."
    )
    conflict_threshold: float = Field(
        -0.1, ge=-1.0, le=1.0, description="Conflict when cos(g_task, g_ret) < this value."
    )
    projection_granularity: Granularity = Field(
        "global",
        description="global: one dot/cos over all trainable parameters (original). "
        "per_layer: per module's parameters (AEGIS-style), each projected on its own.",
    )
    hidden_loss: HiddenLoss = Field("mse", description="hidden mode: mse, cosine (1 − cos, in [0, 2]) or l1.")
    feature_norm: FeatureNorm = Field(
        "standardize",
        description="hidden mode: standardize student and teacher features before the loss: subtract the "
        "teacher's per-dimension mean and divide by the teacher's feature scale of each layer and pooled "
        "vector (the RMS of its per-dimension std; statistics kept in the cache), so an ε budget means the "
        "same for every model (MSE 1.0 = one teacher standard deviation); none: raw features.",
    )
    anchor_targets: list[AnchorTarget] | None = Field(
        None,
        min_length=1,
        description="hidden mode: what is anchored: backbone `features`, the action pathway's output "
        "(`actions`: the expert's velocity, the denoiser's output, ACT's chunk, pi0_fast's action-token "
        "states), or both. null: everything the cache holds (both, with `craft build-cache`'s defaults).",
    )
    allow_other_teacher: bool = Field(
        False,
        description="lerobot-train (craft policy): train against an anchor cache whose teacher has other "
        "weights than this run's base (anchoring on purpose to another model), with a warning. Default: "
        "such a run stops before step 1 naming both weights' sha256.",
    )
    layers: list[int] | None = Field(
        None,
        min_length=1,
        description="Backbone layers whose hidden states are anchored; negative indices count from the last. "
        "null: the cache's layers (`craft build-cache --layers`, default -2,-1).",
    )
    pooling: list[Pooling] | None = Field(
        None,
        min_length=1,
        description="Pooling strategies per layer, each giving one vector. null: the cache's pooling "
        "(`craft build-cache --pooling`, default: the policy family's).",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _surface_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # LeRobot's CLI parser (draccus) swallows a validation error into "Couldn't instantiate
        # class CraftConfig"; log the readable message (field, value, what is allowed) first.
        try:
            return handler(data)
        except ValidationError as err:
            if not _QUIET.get():
                logger.error(format_validation_error(err, "--policy.craft"))
            raise

    @field_validator("layers", "pooling", "anchor_targets")
    @classmethod
    def _unique(cls, value: list[Any] | None) -> list[Any] | None:
        if value is None:
            return value
        dupes = sorted({str(v) for v in value if value.count(v) > 1})
        if dupes:
            raise ValueError(f"entries must be unique, repeated: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> CraftConfig:
        if self.initial_lambda > self.lambda_max:
            raise ValueError(
                f"initial_lambda={self.initial_lambda} exceeds lambda_max={self.lambda_max}; "
                "lower initial_lambda or raise lambda_max"
            )
        if self.epsilon_schedule == "exponential" and (self.epsilon_start <= 0 or self.epsilon_end <= 0):
            raise ValueError(
                f"epsilon_schedule='exponential' needs epsilon_start > 0 and epsilon_end > 0 "
                f"(got {self.epsilon_start}, {self.epsilon_end}); use 'linear' or 'cosine' to reach 0"
            )
        return self

    # ---------------------------------------------------------------- loading and export
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "CRaFT config") -> CraftConfig:
        """Validate a plain dict (as read from JSON/YAML or a ``craft:`` block)."""
        if not isinstance(data, dict):
            raise CraftConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
        token = _QUIET.set(True)
        try:
            return _ADAPTER.validate_python(data)
        except ValidationError as err:
            raise CraftConfigError(format_validation_error(err, source)) from err
        finally:
            _QUIET.reset(token)

    @classmethod
    def from_file(cls, path: str | Path) -> CraftConfig:
        """Load from ``.json``, ``.yaml`` or ``.yml``. A file whose top level has a single
        ``craft`` key is read from that block."""
        path = Path(path)
        if not path.is_file():
            raise CraftConfigError(f"CRaFT config file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        suffix = path.suffix.lower()
        if suffix == ".json":
            try:
                data = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError as err:
                raise CraftConfigError(f"{path}: not valid JSON: {err}") from err
        elif suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as err:
                raise CraftConfigError(f"{path}: not valid YAML: {err}") from err
        else:
            raise CraftConfigError(f"{path}: unsupported config format {suffix!r}; use .json, .yaml or .yml")
        if isinstance(data, dict) and set(data) == {"craft"}:
            data = data["craft"]
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings) that :meth:`from_dict` reads back."""
        return _ADAPTER.dump_python(self, mode="json")

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema of the config (field types, defaults, bounds, descriptions)."""
        return _ADAPTER.json_schema()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


_ADAPTER: TypeAdapter[CraftConfig] = TypeAdapter(CraftConfig)


def config_reference_markdown() -> str:
    """The configuration reference as a Markdown table, rendered from the JSON schema.

    The README embeds this table between ``<!-- config-reference:start/end -->`` markers and a
    test keeps the two identical (regenerate with ``craft config --markdown``).
    """
    schema = CraftConfig.json_schema()
    defaults = CraftConfig().to_dict()
    rows = ["| field | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for name, prop in schema["properties"].items():
        rows.append(
            f"| `{name}` | {_type_of(prop)} | `{json.dumps(defaults[name])}` | {_allowed(prop)} | "
            f"{prop.get('description', '').replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        return f"list[{_type_of(prop.get('items', {}))}]"
    if "enum" in prop:
        return "string"
    return {"integer": "int", "number": "float", "boolean": "bool", "string": "string", "null": "null"}.get(
        prop.get("type", ""), prop.get("format", "any")
    )


def _allowed(prop: dict[str, Any]) -> str:
    items = prop.get("items", {})
    enum = prop.get("enum") or items.get("enum")
    if enum:
        return ", ".join(f"`{e}`" for e in enum)
    bounds = []
    for p in [prop, *prop.get("anyOf", [])]:
        for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in p:
                bounds.append(f"{sym} {p[key]}")
        if "minItems" in p:
            bounds.append(f">= {p['minItems']} item(s)")
    return ", ".join(bounds) if bounds else ""


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's errors into lines naming field, value and what is allowed."""
    fields = CraftConfig.field_names()
    lines = [f"{source}: invalid CRaFT configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            name = str(e["loc"][-1])
            hint = difflib.get_close_matches(name, fields, n=1)
            did = f" Did you mean {hint[0]!r}?" if hint else ""
            lines.append(f"  - unknown field {name!r}.{did} Allowed fields: {', '.join(fields)}")
            continue
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if "input" in e and e["loc"]:
            lines.append(f"  - {loc}={e['input']!r}: {msg}")
        else:
            lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)
