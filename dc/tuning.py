"""Tune a head's hyper-parameters on the validation split with Optuna (`[tuning]`).

"Were the hyper-parameters tuned manually or algorithmically?" Here: algorithmically, within a
bounded number of trials, on validation only. Each trial fits one head from the config's seed with
early stopping, as an ensemble member is fitted, and scores its best validation loss (the
quantity early stopping already watches; smoother than accuracy on a few hundred rows). The
sampler is Optuna's TPE seeded from the config, so the same data and config search the same
points. The winner's values replace `[head]`'s; `dc.train` then fits the members with them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dc.model_config import ModelConfig

if TYPE_CHECKING:
    from dc.train import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuningResult:
    """The search's outcome: the config to train with and what the search saw."""

    config: ModelConfig  # `[head]` holds the best trial's values
    best: dict[str, Any]  # the best trial's parameters
    best_val_loss: float
    trials: list[dict[str, Any]]  # number, params, val_loss, val_accuracy, epochs
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready, for the version's manifest."""
        return {
            "best": self.best,
            "best_val_loss": round(self.best_val_loss, 6),
            "trials": self.trials,
            "seconds": round(self.seconds, 3),
        }


def tune_head(
    trainer: Trainer,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
) -> TuningResult:
    """Search `[head]` within `[tuning]`'s ranges and trial budget; see the module docstring."""
    import optuna

    config = trainer.config
    tuning = config.tuning
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=config.training.seed)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    trials: list[dict[str, Any]] = []
    started = time.perf_counter()

    def objective(trial: optuna.Trial) -> float:
        params = {
            "units": trial.suggest_categorical("units", list(tuning.units)),
            "dropout": trial.suggest_float("dropout", *tuning.dropout),
            "learning_rate": trial.suggest_float("learning_rate", *tuning.learning_rate, log=True),
            "label_smoothing": trial.suggest_float("label_smoothing", *tuning.label_smoothing),
        }
        head = config.head.model_copy(update=params)
        candidate = trainer.with_config(config.model_copy(update={"head": head}))
        _, table = candidate.fit_member(
            x_train,
            y_train,
            num_classes,
            config.training.seed,
            config.training.epochs,
            (x_val, y_val),
            f"trial {trial.number + 1}/{tuning.trials}",
        )
        best = int(table["val_loss"].idxmin())
        loss = float(table.loc[best, "val_loss"])
        trials.append(
            {
                "number": trial.number + 1,
                "params": {name: _rounded(value) for name, value in params.items()},
                "val_loss": round(loss, 6),
                "val_accuracy": round(float(table.loc[best, "val_accuracy"]), 6),
                "epochs": best + 1,
            }
        )
        return loss

    study.optimize(objective, n_trials=tuning.trials, timeout=tuning.timeout_s)
    best = {name: _rounded(value) for name, value in study.best_params.items()}
    tuned = config.model_copy(update={"head": config.head.model_copy(update=study.best_params)})
    seconds = time.perf_counter() - started
    log.info(
        "%s: %d trials in %.1f s; best val loss %.4f with %s",
        config.name,
        len(trials),
        seconds,
        study.best_value,
        best,
    )
    return TuningResult(tuned, best, float(study.best_value), trials, seconds)


def _rounded(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value
