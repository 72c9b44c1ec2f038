"""The template config a new model starts from says the truth: its values are the defaults.

configs/templates/intents.toml promises that a key left out takes the value shown; the README's
accuracy figures come from training with it (bench/bench_accuracy.py).
"""

from __future__ import annotations

import pytest

from dc.errors import InvalidInput
from dc.model_config import ModelConfig, TuningConfig, load_config
from tests.conftest import REPO

TEMPLATE = REPO / "configs" / "templates" / "intents.toml"


def test_every_value_of_the_template_is_the_default():
    template = load_config(TEMPLATE)
    defaults = ModelConfig.model_validate({"model": {"name": template.name}})
    assert template.as_dict() == defaults.as_dict()


def test_the_template_fits_calibrated_refitted_seed_ensembles():
    training = load_config(TEMPLATE).training
    assert (training.ensemble, training.refit, training.calibrate) == (5, True, True)


def test_tuning_and_threshold_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="range must be"):
        TuningConfig(dropout=(0.5, 0.1))
    path = tmp_path / "m.toml"
    path.write_text('[model]\nname = "m"\n[serving]\nchoose_threshold = true\n')
    with pytest.raises(InvalidInput, match="choose_threshold needs a fallback_label"):
        load_config(path)
    path.write_text('[model]\nname = "m"\n[training]\nensemble = 0\n')
    with pytest.raises(InvalidInput, match=r"training\.ensemble"):
        load_config(path)
