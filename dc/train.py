"""Train one version of a model: raw extract -> prepared data -> vectors -> Keras head -> artifacts.

`train_version` is the entry point (the pipeline calls it with a version from the registry).
It stages everything in a hidden folder and renames it into place when complete (see
`dc.artifacts` for the layout). The work itself is done by a `Trainer`, built from the config
by `make_trainer`: it embeds texts through the `Embedder` client (local or remote, so cached
phrases cost nothing), fits the head as `[training]` says (a seed ensemble of early-stopped
members, each refitted on train + validation, one temperature fitted on validation; after an
Optuna search of the head when `[tuning]` asks, `dc.tuning`), and scores it.

Reproducibility: `build_head` seeds Python, NumPy and TensorFlow and every initializer and
dropout layer, and `fit` shuffles from that seed, so the same config, data and embedder give
the same head. On this project's CPU machine two runs in separate processes produced bitwise
identical weights (BANKING77, CLINC150 with and without `oos`) without
`tf.config.experimental.enable_op_determinism()`, which is left off: it is process-wide and
would also constrain an in-process embedder.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dc import artifacts
from dc.config import Settings
from dc.errors import EmbedderMismatch, InvalidInput, Overloaded
from dc.evaluation import Evaluation, evaluate
from dc.model_config import ModelConfig
from dc.nlp.embeddings import Embedder, EmbedResult
from dc.plots import plot_confusion_matrix, plot_per_class_f1
from dc.preparation import PreparedData, prepare
from dc.utilities.files import sha256_file

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Texts per embed() call: big enough to keep the encoder's batches full, small enough for the
# progress bar to move and for one request to the embedder service.
EMBED_CHUNK = 256
# Overloaded (429) answers from a busy embedder are waited out this many times per chunk.
EMBED_RETRIES = 5
PREDICT_BATCH = 1024


@dataclass
class FitResult:
    """A fitted head and how fitting went."""

    model: keras.Model  # the served head: the members averaged, temperature folded in
    # One row per early-stopping epoch of each member: member, epoch, loss, accuracy, val_loss,
    # val_accuracy (the refits have no validation to report).
    history: pd.DataFrame
    best_epoch: int  # the first member's 1-based epoch whose weights were kept
    seconds: float
    members: list[dict[str, Any]]  # seed, epochs_run, best_epoch, best_val_loss[, refit_epochs]
    temperature: float  # 1.0 when not calibrated
    # The calibrated ensemble of the early-stopped members on the validation split: the honest
    # validation figures (the refitted members have seen those rows) and the threshold's data.
    validation_probabilities: np.ndarray


@dataclass
class TrainResult:
    """What `train_version` produced.

    Attributes:
        version_dir: the complete version folder.
        metrics: test-set `accuracy`, `weighted_f1`, `macro_f1` and `n`.
        manifest: the content of the version's manifest.json.
        model: the trained head in memory (the same as the saved model.keras).
    """

    version_dir: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any] = field(repr=False)
    model: keras.Model | None = field(default=None, repr=False)


@dataclass
class Trainer:
    """Embeds texts, fits a head and scores it, as one model config says.

    Build it with `make_trainer`; `train_version` drives it and writes what it makes.
    """

    config: ModelConfig
    embedder: Embedder
    chunk_size: int = EMBED_CHUNK
    progress: bool | None = None  # tqdm bars: None shows them only on a terminal
    fingerprint: str | None = None  # of the vectors embedded so far
    # Parquet of `scripts/batch.py embed` (DC_EMBEDDING_CACHE_DIR): vectors taken from there
    # for the embedder in use, the other texts embedded.
    vector_cache: str | None = None

    def with_config(self, config: ModelConfig) -> Trainer:
        """The same trainer (embedder, fingerprint, progress) for another config."""
        return dataclasses.replace(self, config=config)

    def embed_texts(self, texts: Sequence[str], description: str = "embed") -> np.ndarray:
        """Embed `texts` in chunks through the embedder client, with a progress bar.

        Returns:
            float32 [len(texts), dimension], in order.

        Raises:
            EmbedderMismatch: the embedder's fingerprint changed between chunks (the remote
                service was redeployed mid-run); vectors of two encoders must not be mixed.
        """
        texts = list(texts)
        if self.vector_cache:
            return self._embed_with_cache(texts, description)
        parts: list[np.ndarray] = []
        with tqdm(
            total=len(texts), desc=description, unit="text", disable=self._bar_disabled()
        ) as bar:
            for start in range(0, len(texts), self.chunk_size):
                chunk = texts[start : start + self.chunk_size]
                result = self._embed_chunk(chunk)
                if self.fingerprint is None:
                    self.fingerprint = result.fingerprint
                elif result.fingerprint != self.fingerprint:
                    raise EmbedderMismatch(
                        f"the embedder changed from {self.fingerprint} to {result.fingerprint} "
                        "while training data was embedded; train again"
                    )
                parts.append(result.vectors)
                bar.update(len(chunk))
        if not parts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _embed_with_cache(self, texts: list[str], description: str) -> np.ndarray:
        """`embed_texts` with the vectors the cache holds for this embedder: only the texts it
        lacks go to the embedder (and their fingerprint must be the cache's)."""
        from dc.batch.vectors import cached_vectors

        fingerprint = self.fingerprint or self.embedder.fingerprint
        found = cached_vectors(self.vector_cache, fingerprint, texts)
        missing = sorted({text for text in texts if text not in found})
        if missing:
            cache, self.vector_cache = self.vector_cache, None
            try:
                vectors = self.embed_texts(missing, description)
            finally:
                self.vector_cache = cache
            found.update(zip(missing, vectors, strict=True))
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        elif self.fingerprint != fingerprint:
            raise EmbedderMismatch(
                f"the embedder is {self.fingerprint}, the cache's vectors are {fingerprint}"
            )
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([found[text] for text in texts]).astype(np.float32, copy=False)

    def _embed_chunk(self, chunk: list[str]) -> EmbedResult:
        for attempt in range(EMBED_RETRIES + 1):
            try:
                return self.embedder.embed(chunk)
            except Overloaded as exc:  # a shared embedder service is busy: back off
                if attempt == EMBED_RETRIES:
                    raise
                time.sleep(exc.retry_after_s or 1)
        raise AssertionError("unreachable")

    def _bar_disabled(self) -> bool | None:
        return None if self.progress is None else not self.progress

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        num_classes: int,
    ) -> FitResult:
        """Fit the head the config asks for on class ids (0..num_classes-1).

        Each of `[training] ensemble` members (seeds seed, seed+1, ...) is fitted with early
        stopping on the validation loss, its best epoch's weights restored; with `refit`, it is
        then fitted again from the same seed on train + validation for that many epochs. With
        `calibrate`, one temperature is fitted on the validation probabilities of the
        early-stopped members (the refitted ones have seen those rows). The served head is
        `dc.keras_head.build_ensemble` of the members with that temperature.
        """
        from dc.calibration import fit_temperature, scale_probabilities
        from dc.keras_head import build_ensemble

        training = self.config.training
        started = time.perf_counter()
        members, validation_members, fits, tables = [], [], [], []
        x_all = np.concatenate([x_train, x_val]) if training.refit else x_train
        y_all = np.concatenate([y_train, y_val]) if training.refit else y_train
        for index in range(training.ensemble):
            seed = training.seed + index
            label = f"{index + 1}/{training.ensemble}" if training.ensemble > 1 else ""
            model, table = self.fit_member(
                x_train, y_train, num_classes, seed, training.epochs, (x_val, y_val), label
            )
            best_epoch = int(table["val_loss"].idxmin()) + 1
            validation_members.append(self.predict_proba(model, x_val))
            member = {
                "seed": seed,
                "epochs_run": len(table),
                "best_epoch": best_epoch,
                "best_val_loss": float(table["val_loss"].min()),
            }
            table.insert(0, "member", index + 1)
            tables.append(table)
            if training.refit:
                model, _ = self.fit_member(
                    x_all, y_all, num_classes, seed, best_epoch, None, f"{label} refit".strip()
                )
                member["refit_epochs"] = best_epoch
            members.append(model)
            fits.append(member)
        temperature = fit_temperature(validation_members, y_val) if training.calibrate else 1.0
        head = build_ensemble(members, temperature)
        seconds = time.perf_counter() - started
        history = pd.concat(tables, ignore_index=True)
        log.info(
            "%s: %d member(s)%s in %.1f s, best epochs %s, temperature %.3f",
            self.config.name,
            len(members),
            " refitted on train + validation" if training.refit else "",
            seconds,
            [fit["best_epoch"] for fit in fits],
            temperature,
        )
        return FitResult(
            model=head,
            history=history,
            best_epoch=fits[0]["best_epoch"],
            seconds=seconds,
            members=fits,
            temperature=temperature,
            validation_probabilities=scale_probabilities(validation_members, temperature),
        )

    def fit_member(
        self,
        x: np.ndarray,
        y: np.ndarray,
        num_classes: int,
        seed: int,
        epochs: int,
        validation: tuple[np.ndarray, np.ndarray] | None,
        label: str,
    ) -> tuple[keras.Model, pd.DataFrame]:
        """Fit one fresh head from `seed`: with early stopping on `validation` when given (best
        weights restored), else for exactly `epochs` epochs. Returns it and its history."""
        import keras
        from sklearn.utils.class_weight import compute_class_weight

        from dc.keras_head import build_head

        training = self.config.training
        model = build_head(self.config.head, x.shape[1], num_classes, seed)
        class_weight = None
        if training.class_weights:
            present = np.unique(y)
            weights = compute_class_weight("balanced", classes=present, y=y)
            class_weight = {int(c): float(w) for c, w in zip(present, weights, strict=True)}
        callbacks = [_epoch_progress(epochs, self._bar_disabled(), label)]
        validation_data = None
        if validation is not None:
            x_val, y_val = validation
            validation_data = (x_val, keras.utils.to_categorical(y_val, num_classes))
            callbacks.insert(
                0,
                keras.callbacks.EarlyStopping(
                    monitor="val_loss",
                    patience=training.early_stopping_patience,
                    restore_best_weights=True,
                ),
            )
        started = time.perf_counter()
        history = model.fit(
            x,
            keras.utils.to_categorical(y, num_classes),
            validation_data=validation_data,
            epochs=epochs,
            batch_size=training.batch_size,
            class_weight=class_weight,
            shuffle=True,
            callbacks=callbacks,
            verbose=0,
        )
        table = pd.DataFrame(history.history)
        table.insert(0, "epoch", np.arange(1, len(table) + 1))
        if validation is not None:
            best = int(table["val_loss"].idxmin())
            log.info(
                "%s%s: %d epochs in %.1f s, best epoch %d (val loss %.4f, val accuracy %.4f)",
                self.config.name,
                f" member {label}" if label else "",
                len(table),
                time.perf_counter() - started,
                best + 1,
                table.loc[best, "val_loss"],
                table.loc[best, "val_accuracy"],
            )
        return model, table

    def predict_proba(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        """Class probabilities [n, classes] for vectors `x`."""
        return model.predict(x, batch_size=PREDICT_BATCH, verbose=0)

    def score(self, model: keras.Model, x: np.ndarray, y: np.ndarray, labels: Sequence[str]):
        """Predict `x` and score against class ids `y`.

        Returns:
            (Evaluation, predicted class ids).
        """
        return score_probabilities(self.predict_proba(model, x), y, labels)


def score_probabilities(probabilities: np.ndarray, y: np.ndarray, labels: Sequence[str]):
    """Score class probabilities [n, classes] against class ids `y`.

    Returns:
        (Evaluation, predicted class ids): the top class, its probability as the confidence.
    """
    predicted = probabilities.argmax(axis=1)
    return evaluate(y, predicted, labels, probabilities.max(axis=1)), predicted


def _epoch_progress(
    epochs: int, disabled: bool | None, label: str = ""
) -> keras.callbacks.Callback:
    """A Keras callback advancing a tqdm bar per epoch and logging each epoch at DEBUG."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            description = f"train {label}" if label else "train"
            self.bar = tqdm(total=epochs, desc=description, unit="epoch", disable=disabled)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{logs.get('loss', float('nan')):.4f}",
                val_loss=f"{logs.get('val_loss', float('nan')):.4f}",
                val_acc=f"{logs.get('val_accuracy', float('nan')):.4f}",
            )
            log.debug("epoch %d: %s", epoch + 1, logs)

        def on_train_end(self, logs: dict | None = None) -> None:
            self.bar.close()

    return EpochProgress()


def make_trainer(
    config: ModelConfig, settings: Settings, embedder: Embedder, *, progress: bool | None = None
) -> Trainer:
    """Build the trainer of one model config on an embedder client.

    Chunks never exceed `settings.max_texts_per_request`, so each chunk fits in one request to
    the embedder service and in the local micro-batcher's queue. `progress` shows tqdm bars
    (None: only on a terminal).
    """
    return Trainer(
        config=config,
        embedder=embedder,
        chunk_size=max(1, min(EMBED_CHUNK, settings.max_texts_per_request)),
        progress=progress,
        vector_cache=settings.embedding_cache_dir or None,
    )


def train_version(
    config: ModelConfig,
    settings: Settings,
    embedder: Embedder,
    raw: pd.DataFrame,
    version: str,
    *,
    progress: bool | None = None,
) -> TrainResult:
    """Prepare, embed, train, evaluate and write one complete version of a model.

    Args:
        config: the model's training config.
        settings: where artifacts go (`artifacts_dir`) and the embedder's request limits.
        embedder: the embedding client; its name and fingerprint are recorded.
        raw: the raw extract (`text`, `label`, optional `split`, `example_time`).
        version: the version name (the registry makes it); the folder must not exist yet.
        progress: show tqdm bars (None: only on a terminal).

    Returns:
        The version folder, the test metrics and the manifest.

    Raises:
        InvalidInput: the data cannot be prepared (see `dc.preparation.prepare`).
        FileExistsError: the version folder exists already.
    """
    import keras

    started_at = datetime.now(UTC)
    clock = _StageClock()
    final_dir = artifacts.version_dir(settings, config.region, config.name, version)
    with artifacts.staged_version_dir(final_dir) as stage:
        raw_path = stage / artifacts.RAW_DIR / artifacts.RAW_FILE
        raw_path.parent.mkdir(parents=True)
        raw.to_csv(raw_path, index=False)
        data_hash = sha256_file(raw_path)

        prepared = prepare(raw, config.data, config.training.seed)
        _write_processed(prepared, stage / artifacts.PROCESSED_DIR)
        clock.lap("prepare")
        log.info(
            "%s/%s %s: %s rows (train/validation/test), %d classes",
            config.region,
            config.name,
            version,
            prepared.report["rows"],
            len(prepared.labels),
        )

        trainer = make_trainer(config, settings, embedder, progress=progress)
        vectors = {
            name: trainer.embed_texts(frame["text"].tolist(), f"embed {name}")
            for name, frame in _sets(prepared)
        }
        targets = {name: frame["label_id"].to_numpy() for name, frame in _sets(prepared)}
        clock.lap("embed")

        labels = prepared.labels
        tuning = None
        if config.tuning.trials:
            from dc.tuning import tune_head

            tuning = tune_head(
                trainer,
                vectors["train"],
                targets["train"],
                vectors["validation"],
                targets["validation"],
                num_classes=len(labels),
            )
            config = tuning.config
            trainer = trainer.with_config(config)
            clock.lap("tune")
        fitted = trainer.fit(
            vectors["train"],
            targets["train"],
            vectors["validation"],
            targets["validation"],
            num_classes=len(labels),
        )
        clock.lap("train")

        probabilities = {
            "train": trainer.predict_proba(fitted.model, vectors["train"]),
            # The early-stopped members' calibrated ensemble: the refitted head has been fitted
            # on these rows, so its own validation figures would flatter it.
            "validation": fitted.validation_probabilities,
            "test": trainer.predict_proba(fitted.model, vectors["test"]),
        }
        config, rule_metrics = _settle_rule(config, probabilities, targets, labels)

        head_dir = artifacts.model_dir(stage, config.architecture)
        reports = head_dir / artifacts.REPORTS_DIR
        reports.mkdir(parents=True)
        scores: dict[str, Evaluation] = {}
        for name in ("train", "validation", "test"):
            scores[name], predicted = score_probabilities(
                probabilities[name], targets[name], labels
            )
            if name == "test":
                plot_confusion_matrix(
                    targets[name],
                    predicted,
                    labels,
                    reports / artifacts.CONFUSION_MATRIX,
                    title=f"{config.name} {version}: test set",
                )
        plot_per_class_f1(
            scores["test"].per_class,
            reports / artifacts.PER_CLASS_F1,
            title=f"{config.name} {version}: test set",
        )
        scores["train"].per_class.to_csv(reports / artifacts.TRAIN_REPORT, index=False)
        scores["test"].per_class.to_csv(reports / artifacts.TEST_REPORT, index=False)
        fitted.history.to_csv(reports / artifacts.TRAIN_HISTORY, index=False)
        test_history = fitted.model.evaluate(
            vectors["test"],
            keras.utils.to_categorical(targets["test"], len(labels)),
            batch_size=PREDICT_BATCH,
            verbose=0,
            return_dict=True,
        )
        test_history = {
            name: float(test_history[name])
            for name in ["loss", "accuracy", *sorted(set(test_history) - {"loss", "accuracy"})]
        }
        pd.DataFrame([test_history]).to_csv(reports / artifacts.TEST_HISTORY, index=False)
        clock.lap("evaluate")

        fitted.model.save(head_dir / artifacts.MODEL_FILE)
        artifacts.save_label_encoder(prepared.label_encoder, head_dir / artifacts.ENCODERS_FILE)
        artifacts.write_code_zip(stage / artifacts.CODE_ZIP)
        clock.lap("save")

        metrics = scores["test"].summary()
        manifest = {
            "name": config.name,
            "region": config.region,
            "version": version,
            "architecture": config.architecture,
            "created_at": started_at.isoformat(timespec="seconds"),
            "metrics": {
                **{name: score.summary() for name, score in scores.items()},
                **({"rule": rule_metrics} if rule_metrics else {}),
            },
            "test_loss": float(test_history["loss"]),
            "embedder": {
                "name": embedder.name,
                "fingerprint": trainer.fingerprint or embedder.fingerprint,
                "dimension": int(vectors["train"].shape[1]),
            },
            "data": {
                "source": config.source,
                "sha256": data_hash,
                "raw_rows": len(raw),
                "rows": prepared.report["rows"],
                "split_origin": prepared.report["split_origin"],
                "classes": len(labels),
            },
            "labels": labels,
            "training": {
                "epochs_run": fitted.members[0]["epochs_run"],
                "best_epoch": fitted.best_epoch,
                "best_val_loss": fitted.members[0]["best_val_loss"],
                "members": fitted.members,
                "temperature": fitted.temperature,
                "seconds_fit": round(fitted.seconds, 3),
                "parameters": int(fitted.model.count_params()),
                # Equal for equal weights; model.keras's bytes are not (zip entry times).
                "weights_sha256": artifacts.weights_sha256(fitted.model),
            },
            "tuning": tuning.summary() if tuning else None,
            "config": config.as_dict(),
            "code": artifacts.code_revision(),
            "versions": artifacts.framework_versions(),
            "seconds": clock.laps,
            "files": artifacts.expected_files(config.architecture),
        }
        manifest["seconds"]["total"] = round(sum(clock.laps.values()), 3)
        artifacts.write_json(stage / artifacts.MANIFEST_FILE, manifest)
    log.info(
        "%s/%s %s written to %s: test accuracy %.4f, weighted F1 %.4f, macro F1 %.4f",
        config.region,
        config.name,
        version,
        final_dir,
        metrics["accuracy"],
        metrics["weighted_f1"],
        metrics["macro_f1"],
    )
    return TrainResult(
        version_dir=final_dir, metrics=metrics, manifest=manifest, model=fitted.model
    )


def _settle_rule(
    config: ModelConfig,
    probabilities: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    labels: list[str],
) -> tuple[ModelConfig, dict[str, dict[str, float]]]:
    """The config with its `[serving]` threshold chosen on validation (when it asks for that),
    and the rule's figures on validation and test (empty when there is no rule).

    Raises:
        InvalidInput: the threshold is to be chosen but the fallback label is not a class, or
            the validation split lacks rows of it or of the other classes.
    """
    from dc.postprocessing import choose_threshold, threshold_scores

    rule = config.serving
    if rule.fallback_label is None or (rule.min_probability <= 0 and not rule.choose_threshold):
        return config, {}
    if rule.fallback_label not in labels:
        if not rule.choose_threshold:
            return config, {}  # a label outside the classes ("other"): no figures to compare
        raise InvalidInput(
            f"{config.name}: [serving] choose_threshold needs fallback_label "
            f"{rule.fallback_label!r} among the trained classes, with rows in the validation "
            "split"
        )
    if rule.choose_threshold:
        try:
            choice = choose_threshold(
                probabilities["validation"],
                targets["validation"],
                labels,
                rule.fallback_label,
                fallback_share=rule.fallback_share,
            )
        except ValueError as exc:
            raise InvalidInput(f"{config.name}: cannot choose the threshold: {exc}") from exc
        rule = rule.model_copy(update={"min_probability": choice.threshold})
        config = config.model_copy(update={"serving": rule})
        log.info(
            "%s: min_probability %.2f chosen on validation (objective %.4f, without the rule %.4f)",
            config.name,
            choice.threshold,
            choice.accuracy,
            choice.baseline,
        )
    index = labels.index(rule.fallback_label)
    figures = {
        name: threshold_scores(probabilities[name], targets[name], index, rule.min_probability)
        for name in ("validation", "test")
    }
    return config, figures


def _sets(prepared: PreparedData) -> list[tuple[str, pd.DataFrame]]:
    return [("train", prepared.train), ("validation", prepared.validation), ("test", prepared.test)]


def _write_processed(prepared: PreparedData, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, frame in _sets(prepared):
        frame.to_csv(folder / f"{name}.csv", index=False)
    artifacts.write_json(folder / artifacts.PREPARATION_REPORT, prepared.report)


class _StageClock:
    """Wall seconds per stage, measured back to back."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 3)
        self._last = now
