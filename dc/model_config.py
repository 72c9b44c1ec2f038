"""Typed per-model training configs, one TOML file per model in `configs/`.

A config says which rows to train on (`[data]`), what the Keras head looks like (`[head]`),
how to fit it (`[training]`) and which business rule applies to its predictions (`[serving]`,
optional); `[model]` names the model (the registry and artifact name) and the region it belongs
to. Unknown keys are errors, so a typo never silently falls back to a default.

```toml
[model]
name = "banking77"
region = "global"

[data]
history_days = 1095
min_examples_per_class = 10

[head]
hidden_layers = 1
units = 512
dropout = 0.3
l2 = 1e-5
optimizer = "adam"
learning_rate = 1e-3

[training]
epochs = 100
batch_size = 64
early_stopping_patience = 8

[serving]                     # optional; left out, every prediction is the top class
fallback_label = "oos"
min_probability = 0.2
```

The config is copied into every version's manifest, so a version is served with the
`[serving]` rule it was trained with; versions trained before the section existed hold no
`serving` key and get the default (no rule).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dc.errors import InvalidInput

# Names become folder names (<artifacts_dir>/<region>/<model>/) and registry keys.
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_NAME_RE = re.compile(_NAME_PATTERN)


def is_valid_name(value: object, *, max_length: int) -> bool:
    """Whether `value` could be a model or region name of a config (`[model] name`)."""
    return isinstance(value, str) and len(value) <= max_length and bool(_NAME_RE.fullmatch(value))


# The region of a config without `[model] region`, and of rows loaded without --region: one
# default everywhere, so that rows loaded and models trained with the defaults meet.
DEFAULT_REGION = "global"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Section):
    """`[model]`: what the trained head is called and where it belongs."""

    name: str = Field(pattern=_NAME_PATTERN, max_length=100)
    region: str = Field(DEFAULT_REGION, pattern=_NAME_PATTERN, max_length=50)


class DataConfig(_Section):
    """`[data]`: which training rows to use and how to clean and split them."""

    # The model tag of the training rows in the database. Left out, it is the model's own name
    # (filled in by ModelConfig); set, several models (e.g. CLINC150 with and without `oos`)
    # can share one set of rows.
    source: str | None = Field(None, min_length=1)
    history_days: int = Field(1095, ge=1)
    min_examples_per_class: int = Field(5, ge=1)
    drop_rare_classes: bool = False
    exclude_labels: list[str] = Field(default_factory=list)
    # Share of each class held out for validation when the rows carry no validation split (and,
    # with the same share, for the test set when they carry no test split).
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)


class HeadConfig(_Section):
    """`[head]`: the Keras head on the frozen sentence vectors."""

    hidden_layers: int = Field(1, ge=0, le=8)  # 0: softmax regression on the vectors
    units: int = Field(512, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    l2: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class TrainingConfig(_Section):
    """`[training]`: how the head is fitted.

    The defaults here and in `[head]`, `[data]` and `[tuning]` are configs/templates/intents.toml's
    (a test holds them equal): the values that reach the README's accuracy figures.
    """

    epochs: int = Field(200, ge=1)  # an upper bound: early stopping ends it
    batch_size: int = Field(64, ge=1)
    early_stopping_patience: int = Field(8, ge=0)  # epochs without a better val loss
    class_weights: bool = False  # weight classes by inverse frequency ("balanced")
    seed: int = Field(42, ge=0)
    # Heads fitted from seeds seed, seed+1, ...; the served head averages their probabilities.
    ensemble: int = Field(5, ge=1, le=20)
    # After early stopping has chosen each member's epochs on validation, fit it again from
    # scratch on train + validation for that many epochs (the validation rows then teach too).
    refit: bool = True
    # Temperature scaling on the validation split (dc.calibration): honest probabilities for
    # the [serving] rule and the reports' calibration error; the ranking does not change.
    calibrate: bool = True


class TuningConfig(_Section):
    """`[tuning]`: an Optuna search of the head's hyper-parameters, scored on validation only.

    With `trials` > 0, each trial fits one head (the config's seed, early stopping) with
    `units`, `dropout`, `learning_rate` and `label_smoothing` drawn by Optuna's seeded TPE
    sampler from the ranges below and is scored by its best validation loss; the best trial's
    values replace `[head]`'s before the members are fitted. The test split is never seen.
    """

    trials: int = Field(0, ge=0, le=500)  # 0: no search, [head] as written
    timeout_s: float = Field(1800, gt=0)  # stop starting trials after this long
    units: list[int] = Field(default_factory=lambda: [256, 512, 1024], min_length=1)
    dropout: tuple[float, float] = (0.1, 0.6)
    learning_rate: tuple[float, float] = (3e-4, 3e-3)  # searched on a log scale
    label_smoothing: tuple[float, float] = (0.0, 0.2)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> TuningConfig:
        for name in ("dropout", "learning_rate", "label_smoothing"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name}: the range must be [low, high] with 0 <= low <= high")
        if self.dropout[1] >= 1 or self.label_smoothing[1] >= 1 or self.learning_rate[0] <= 0:
            raise ValueError("dropout and label_smoothing below 1, learning_rate above 0")
        return self


class ServingConfig(_Section):
    """`[serving]`: the rule applied to a head's probabilities when it serves (dc.postprocessing).

    When the top probability of a prediction is below `min_probability`, its label becomes
    `fallback_label` (e.g. "oos" or "other"). The defaults apply no rule.
    """

    fallback_label: str | None = Field(None, min_length=1, max_length=200)
    min_probability: float = Field(0.0, ge=0, le=1)
    # Choose min_probability at training time on the validation split (never the test split),
    # with dc.postprocessing.choose_threshold: the threshold maximising
    # fallback_share * recall of the fallback label + (1 - fallback_share) * accuracy on the
    # other rows. The version records the chosen threshold in its config.
    choose_threshold: bool = False
    # 0.5 weighs the two equally, whatever share the validation split happens to hold (CLINC150's
    # has 3% oos, its test split 18%); set production's share when the inference log knows it.
    fallback_share: float = Field(0.5, gt=0, lt=1)

    @model_validator(mode="after")
    def _threshold_needs_a_label(self) -> ServingConfig:
        # A threshold without a label to fall back to would silently do nothing.
        if (self.min_probability > 0 or self.choose_threshold) and self.fallback_label is None:
            raise ValueError("min_probability > 0 or choose_threshold needs a fallback_label")
        return self

    @property
    def active(self) -> bool:
        """Whether the rule can change a prediction at all."""
        return self.fallback_label is not None and self.min_probability > 0


class ModelConfig(_Section):
    """One model's whole training config (a TOML file in `configs/`)."""

    model: ModelSection
    data: DataConfig = Field(default_factory=DataConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)

    @model_validator(mode="after")
    def _source_defaults_to_name(self) -> ModelConfig:
        if self.data.source is None:
            data = self.data.model_copy(update={"source": self.model.name})
            object.__setattr__(self, "data", data)  # frozen model: set once, while validating
        return self

    @property
    def name(self) -> str:
        """The model's registry and artifact name."""
        return self.model.name

    @property
    def region(self) -> str:
        """The region the model belongs to (the first folder under `artifacts_dir`)."""
        return self.model.region

    @property
    def source(self) -> str:
        """The model tag of the training rows: `[data] source`, or the model's name."""
        return self.data.source or self.model.name

    @property
    def architecture(self) -> str:
        """Short name of the head, used as a folder name: `softmax` or `mlp-<layers>x<units>`."""
        if self.head.hidden_layers == 0:
            return "softmax"
        return f"mlp-{self.head.hidden_layers}x{self.head.units}"

    def as_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready data (the TOML's sections, with defaults filled in)."""
        return self.model_dump(mode="json")


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate one model config from a TOML file.

    Raises:
        InvalidInput: the file is not valid TOML, or breaks the schema (an unknown key, a
            missing name, a value out of range); the message names the file and the field.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    with path.open("rb") as file:
        try:
            raw = tomllib.load(file)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{path}: not valid TOML: {exc}") from exc
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(f"{path}: invalid model config: {problems}") from exc


def load_configs(folder: str | Path) -> dict[str, ModelConfig]:
    """Load every `*.toml` in `folder`, keyed by model name (sorted by file name).

    Raises:
        InvalidInput: a file is invalid, or two files declare the same model name.
    """
    configs: dict[str, ModelConfig] = {}
    origins: dict[str, Path] = {}
    for path in sorted(Path(folder).glob("*.toml")):
        config = load_config(path)
        if config.name in configs:
            raise InvalidInput(
                f"model {config.name!r} is declared twice: {origins[config.name]} and {path}"
            )
        configs[config.name] = config
        origins[config.name] = path
    return configs
