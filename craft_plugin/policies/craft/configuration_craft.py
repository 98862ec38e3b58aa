"""``CRaFTConfig``: the ``craft`` policy type (LeRobot naming: ``CRaFTConfig`` → ``CRaFTPolicy``),
a wrapper config around a base policy. Not to be confused with :class:`craft_plugin.CraftConfig`,
the CRaFT settings it carries as its ``craft`` block.

    lerobot-train --discover_packages_path=craft_plugin --policy.type=craft \
        --policy.base_path=<pretrained_model dir or hub id> \
        --policy.craft.anchor_cache_dir=<cache> --policy.craft.epsilon_end=0.05 ...

The base is named by ``base_path`` (a pretrained checkpoint) or ``base_type`` (a base trained
from its default config). The base's own config is loaded here and *not* stored as a field
(a nested ``PreTrainedConfig`` field sends draccus into infinite recursion): features,
normalization mapping, delta indices and optimizer/scheduler presets are the base's, so
every other ``lerobot-train`` flag keeps its meaning. The CRaFT settings are the ``craft``
block, a :class:`craft_plugin.CraftConfig` (a pydantic dataclass draccus parses directly), or
a file given by ``craft_config_file``.

Options of the base policy: ``base_options``, a mapping of the base config's field names to
values, written as a YAML/JSON mapping on the command line (quote it for the shell)::

    --policy.base_options='{train_expert_only: false, n_action_steps: 10}'
    --policy.base_options='{"train_expert_only": false}'

(``--policy.base.train_expert_only=false`` cannot work: LeRobot's parser, draccus, registers
one command-line flag per field of the *classes* it knows before it reads the command line,
and the base's class is only known once ``base_path`` is read; such a flag stops with
``unrecognized arguments``.) The options are applied to the loaded base config
(:attr:`CRaFTConfig.base_config`) as if they had been in its ``config.json``: the base class
is re-instantiated with them, so its own checks (``__post_init__``) run. An unknown name
stops with a ``ValueError`` naming it and listing close matches among the base config's
fields; a value of the wrong type stops with one naming the option, the value and the
expected type (strings are converted as LeRobot's parser would: ``"false"`` → ``False``,
``"10"`` → ``10``). The options persist: a checkpoint's ``base/config.json`` holds the changed
values and its ``config.json`` the ``base_options`` themselves; loading the checkpoint
(``from_pretrained``, ``--resume``) reads ``base/config.json`` and sets the same values again,
which changes nothing (setting an option is idempotent); a different value given then wins.

Normalization statistics: ``normalization`` (see :mod:`.processor_craft`): ``base`` (default,
the base checkpoint's), ``dataset`` (the new dataset's, what ``--policy.path`` does) or
``merged`` (those of the 50/50 mixture of both). ``renormalize=true`` is a deprecated alias
of ``normalization=dataset``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import draccus
import yaml
from lerobot.configs.policies import PreTrainedConfig

from craft_plugin.cache.shards import atomic_write_bytes
from craft_plugin.config import CraftConfig
from craft_plugin.policies.craft.run_config import CraftRunConfig, run_dir_of_checkpoint

logger = logging.getLogger(__name__)

BASE_CONFIG_DIR = "base"
#: The run's CRaFT state in a checkpoint, next to ``config.json`` (see ``CRaFTConfig.run_state``).
CRAFT_STATE_FILE = "craft_state.json"
#: One JSON record per logged CRaFT step, in the run's output folder (see :mod:`.run_config`).
METRICS_FILE = "craft_metrics.jsonl"
NORMALIZATION_MODES = ("base", "dataset", "merged")


class CraftStartupError(SystemExit):
    """A user error found while a craft run starts (a base option, the anchor cache, its
    teacher): the run ends with the message alone (a ``SystemExit``, so ``lerobot-train``
    prints one line and exits 1, no traceback); ``error`` (and ``__cause__``) is the original
    exception, so Python code can still catch and inspect it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"craft: {error}")
        self.error = error


@PreTrainedConfig.register_subclass("craft")
@dataclass
class CRaFTConfig(PreTrainedConfig):
    """A base LeRobot policy fine-tuned with CRaFT."""

    base_path: str | None = None
    base_type: str | None = None
    # Options of the base policy config, e.g. '{train_expert_only: false}' (a YAML/JSON mapping).
    base_options: dict[str, Any] = field(default_factory=dict)
    craft: CraftConfig = field(default_factory=CraftConfig)
    craft_config_file: str | None = None
    # Normalization statistics: base (the base checkpoint's), dataset (the new dataset's) or merged.
    normalization: str = "base"
    # Deprecated: renormalize=true is normalization=dataset.
    renormalize: bool = False
    # The training run this policy is in: steps, output_dir, log_freq (see run_config.py). Filled
    # in by `craft train`, or read from lerobot-train's command line; saved empty in checkpoints.
    run: CraftRunConfig = field(default_factory=CraftRunConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.craft_config_file:
            self.craft = CraftConfig.from_file(self.craft_config_file)
        self._check_normalization()
        if self.base_options is None:
            self.base_options = {}
        if not isinstance(self.base_options, dict):
            _fail(
                f"--policy.base_options must be a mapping of the base config's options to values, e.g. "
                f"--policy.base_options='{{train_expert_only: false}}'; got {self.base_options!r}"
            )
        self._base_config: PreTrainedConfig | None = None
        #: The run's CRaFT state (``step``, ``lambda``, ``schedule``, ``sampler_draws``), kept
        #: current by :class:`CRaFTPolicy` after every CRaFT step and set from ``craft_state.json``
        #: when a checkpoint is loaded. Plain data, not a config field (not in ``config.json``):
        #: :meth:`_save_pretrained` writes it as ``craft_state.json`` next to ``config.json``, which
        #: LeRobot saves with every checkpoint, plain or PEFT (a PEFT checkpoint saves adapter
        #: weights and this config, never the policy's own ``_save_pretrained``).
        self.run_state: dict[str, Any] | None = None
        #: Where :class:`CRaFTPolicy` appends its metrics records (``<output_dir>/craft_metrics.jsonl``),
        #: None while the run's output folder is unknown; records made meanwhile wait in
        #: ``unwritten_metrics`` and are written by :meth:`_save_pretrained` into the run folder of
        #: the first LeRobot checkpoint (see :mod:`.run_config`). Plain data, not config fields.
        self.metrics_file: Path | None = None
        self.unwritten_metrics: list[dict[str, Any]] = []

    def _check_normalization(self) -> None:
        mode = str(self.normalization).strip().lower()
        if self.renormalize:
            if mode not in ("base", "dataset"):
                _fail(
                    f"--policy.renormalize=true (deprecated, means --policy.normalization=dataset) contradicts "
                    f"--policy.normalization={self.normalization}; drop --policy.renormalize"
                )
            logger.warning(
                "--policy.renormalize=true is deprecated: use --policy.normalization=dataset (its meaning)"
            )
            mode, self.renormalize = "dataset", False
        if mode not in NORMALIZATION_MODES:
            _fail(
                f"--policy.normalization={self.normalization!r} is not one of {', '.join(NORMALIZATION_MODES)} "
                "(base: the base checkpoint's statistics; dataset: the new dataset's; merged: both, as a "
                "50/50 mixture)"
            )
        self.normalization = mode

    # ------------------------------------------------------------------ the base config
    @property
    def base_config(self) -> PreTrainedConfig:
        if self._base_config is None:
            self._base_config = apply_base_options(self._load_base_config(), self.base_options)
            self._base_config.device = self.device
        return self._base_config

    def _base(self) -> PreTrainedConfig:
        """:attr:`base_config` for LeRobot's calls into this config (delta indices, presets,
        features...), which ``lerobot-train`` makes before step 1: a bad base option or base
        path ends the run with its message (:class:`CraftStartupError`), not a traceback."""
        try:
            return self.base_config
        except (ValueError, FileNotFoundError, OSError) as err:
            raise CraftStartupError(err) from err

    def _load_base_config(self) -> PreTrainedConfig:
        if self.pretrained_path is not None:
            saved = Path(str(self.pretrained_path)) / BASE_CONFIG_DIR
            if (saved / "config.json").is_file():
                return PreTrainedConfig.from_pretrained(str(saved))
        if self.base_path:
            return PreTrainedConfig.from_pretrained(self.base_path)
        if self.base_type:
            if self.base_type == "craft":
                raise ValueError("--policy.base_type cannot be 'craft'")
            return PreTrainedConfig.get_choice_class(self.base_type)()
        raise ValueError(
            "the craft policy needs a base: --policy.base_path=<pretrained_model dir or hub id> "
            "or --policy.base_type=<act|diffusion|pi0|pi05|pi0_fast|smolvla|...>"
        )

    def _save_pretrained(self, save_directory: Path) -> None:
        run, self.run = self.run, CraftRunConfig()  # the run's own values are not the checkpoint's
        try:
            super()._save_pretrained(save_directory)
        finally:
            self.run = run
        base_dir = Path(save_directory) / BASE_CONFIG_DIR
        base_dir.mkdir(parents=True, exist_ok=True)
        self.base_config._save_pretrained(base_dir)
        if self.run_state is not None:  # see run_state: saved with plain and PEFT checkpoints alike
            atomic_write_bytes(Path(save_directory) / CRAFT_STATE_FILE, json.dumps(self.run_state).encode())
        self._write_unwritten_metrics(save_directory)

    def _write_unwritten_metrics(self, save_directory: Path) -> None:
        """A run whose output folder was unknown: its first LeRobot checkpoint names it."""
        if self.metrics_file is None:
            run_dir = run_dir_of_checkpoint(save_directory)
            if run_dir is None:
                return
            self.metrics_file = run_dir / METRICS_FILE
            logger.info("CRaFT: metrics records go to %s (the run folder of checkpoint %s)", self.metrics_file, save_directory)
        if self.unwritten_metrics:
            append_records(self.metrics_file, self.unwritten_metrics)
            self.unwritten_metrics = []

    # ------------------------------------------------------------------ delegation
    @property
    def observation_delta_indices(self) -> list | None:
        return self._base().observation_delta_indices

    @property
    def action_delta_indices(self) -> list | None:
        return self._base().action_delta_indices

    @property
    def reward_delta_indices(self) -> list | None:
        return self._base().reward_delta_indices

    def get_optimizer_preset(self) -> Any:
        return self._base().get_optimizer_preset()

    def get_scheduler_preset(self) -> Any:
        return self._base().get_scheduler_preset()

    def validate_features(self) -> None:
        self.sync_features_to_base()
        self._base().validate_features()

    def sync_features_to_base(self) -> None:
        """A base built from its type takes the dataset's features; a pretrained base keeps its own."""
        base = self._base()
        if not base.input_features and self.input_features:
            base.input_features = dict(self.input_features)
        if not base.output_features and self.output_features:
            base.output_features = dict(self.output_features)
        if base.input_features:
            self.input_features = dict(base.input_features)
        if base.output_features:
            self.output_features = dict(base.output_features)

    @property
    def normalization_mapping(self) -> dict:
        return getattr(self._base(), "normalization_mapping", {})

    def describe(self) -> str:
        return json.dumps({"base": self.base_path or self.base_type, "craft": self.craft.to_dict()})


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append ``records`` to the JSON-lines file ``path``, one line each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------- base options
def _fail(message: str) -> typing.NoReturn:
    # draccus wraps an error raised while it builds the config into "Couldn't instantiate class
    # ..."; log the readable message first (as craft_plugin.config does).
    logger.error(message)
    raise ValueError(message)


def apply_base_options(base: PreTrainedConfig, options: dict[str, Any] | None) -> PreTrainedConfig:
    """``base`` re-instantiated with ``options`` (field name → value) set, checked and typed.

    Raises ``ValueError`` for an unknown field (with close matches), a value of the wrong type
    (with the expected type), or a combination the base class's own checks refuse.
    """
    if not options:
        return base
    cls = type(base)
    kind = base.type
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: fall back to each field's own annotation
        hints = {}
    values: dict[str, Any] = {}
    for name, value in options.items():
        if name not in fields:
            # YAML reads `{dropout:0.25}` (no space after the colon) as the one key 'dropout:0.25'.
            key, colon, rest = (part.strip() for part in str(name).partition(":"))
            close = difflib.get_close_matches(str(name), list(fields), n=5, cutoff=0.6)
            if colon and key in fields and value is None:
                hint = (
                    f"it reads as one key: write '{{{key}: {rest}}}' (a space after the colon) "
                    f'or JSON \'{{"{key}": {rest}}}\''
                )
            elif close:
                hint = f"close matches: {', '.join(close)}"
            else:
                hint = f"the {kind} config's options are: {', '.join(sorted(fields))}"
            raise ValueError(f"--policy.base_options: the {kind} base config has no option {name!r}; {hint}")
        typ = hints.get(name, fields[name].type)
        values[name] = _typed_value(kind, name, value, typ)
    try:
        updated = dataclasses.replace(base, **values)
    except Exception as err:
        raise ValueError(f"--policy.base_options {options}: the {kind} base config refuses them: {err}") from err
    logger.info("CRaFT: base (%s) options set: %s", kind, ", ".join(f"{k}={v!r}" for k, v in values.items()))
    return updated


def _typed_value(kind: str, name: str, value: Any, typ: Any) -> Any:
    """``value`` decoded as LeRobot's parser decodes a field of type ``typ``, or a ValueError."""
    if isinstance(typ, str) or typ is Any:  # annotation not resolvable: take the value as given
        return value
    members = _union_members(typ)
    optional = type(None) in members
    members = [m for m in members if m is not type(None)]

    def wrong(detail: str = "") -> ValueError:
        tail = f" ({detail})" if detail else ""
        return ValueError(
            f"--policy.base_options: {name}={value!r} is not a valid value for the {kind} base config's "
            f"option {name!r}: expected {_type_name(typ)}{tail}"
        )

    if value is None:
        if optional:
            return None
        raise wrong()
    candidates = [value]
    if isinstance(value, str) and str not in members:
        try:
            candidates.append(yaml.safe_load(value))  # "false" → False, "10" → 10, "[1, 2]" → [1, 2]
        except yaml.YAMLError:
            pass
    detail = ""
    for candidate in candidates:
        if candidate is None:
            if optional:
                return None
            continue
        if isinstance(candidate, bool) and bool not in members and any(m in (int, float) for m in members):
            continue  # draccus would turn True into 1
        try:
            decoded = draccus.decode(typ, candidate)
        except Exception as err:
            detail = str(err)
            continue
        plain = tuple(m for m in members if isinstance(m, type) and typing.get_origin(m) is None)
        if plain and len(plain) == len(members):
            accepted = plain + ((int,) if float in plain else ())
            if not isinstance(decoded, accepted) or (isinstance(decoded, bool) and bool not in plain):
                continue
        return decoded
    raise wrong(detail)


def _union_members(typ: Any) -> list[Any]:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return list(typing.get_args(typ))
    return [typ]


def _type_name(typ: Any) -> str:
    if isinstance(typ, type) and typing.get_origin(typ) is None:
        return typ.__name__
    return str(typ).replace("typing.", "")


def base_weights_file(base_path: str) -> Path:
    """The ``model.safetensors`` of a base checkpoint: a local ``pretrained_model`` folder (or the
    run folder holding one) or a hub id (from the local Hugging Face cache, downloaded if absent)."""
    local = Path(base_path)
    if local.is_dir():
        file = local / "pretrained_model" / "model.safetensors"
        file = file if file.is_file() else local / "model.safetensors"
    else:
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(base_path, "model.safetensors"))
    if not file.is_file():
        raise FileNotFoundError(f"base weights not found: {file} (the craft config's base_path is {base_path!r})")
    return file
