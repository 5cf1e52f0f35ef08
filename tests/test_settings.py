"""The settings model: the docs and --help come from it, and loading it stays free of TensorFlow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from conftest import ROOT

from edgepack import settings
from edgepack.cli import build_parser
from edgepack.compress.schedule import Phase, own_phases, phase_of
from edgepack.report.derived import schedule_key
from edgepack.report.rows import Recipe


def test_docs_settings_table_is_the_rendered_model():
    text = (ROOT / "docs" / "pipeline.md").read_text(encoding="utf-8")
    begin, end = "<!-- settings table: begin -->\n", "<!-- settings table: end -->"
    table = text[text.index(begin) + len(begin):text.index(end)]
    assert table == settings.markdown_table(), (
        "docs/pipeline.md is out of date: paste edgepack.settings.markdown_table() between its markers")


def test_pipeline_help_defaults_come_from_the_model():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["pipeline"]
    text = " ".join(sub.format_help().split())
    defaults = settings.Settings()
    assert f"(default: {defaults.train.epochs}; --quick: {settings.QUICK['train']['epochs']})" in text
    assert f"(default: {defaults.compare.runs}; --quick: {settings.QUICK['compare']['runs']})" in text


def test_quick_layer_and_defaults_are_valid_settings():
    settings.validate(settings.Settings, settings.QUICK, "QUICK: ")
    resolved = settings.load_settings(quick=True)
    # settings.json is the dump: it loads back as the same model.
    assert settings.Resolved.model_validate(resolved.model_dump()) == resolved


def test_loading_settings_does_not_import_tensorflow():
    code = ("import sys; from edgepack.settings import load_settings; "
            "load_settings('examples/pipeline.toml', quick=True); "
            "print([m for m in ('tensorflow', 'tf_keras', 'onnx', 'tf2onnx') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


# Schedules as run folders recorded them before phases were a type (metrics.json "schedule"): plain,
# distilling, augmenting (whole numbers where JSON wrote them so).
OLD_SCHEDULES = [[[2, 0.001], [1, 0.0001]], [[1, 1], [1, 0.0001, 0.5, 2.0]],
                 [[1, 0.001], [1, 0.0001, 0.0, 4.0, "flip"]]]


@pytest.mark.parametrize("old", OLD_SCHEDULES)
def test_a_recorded_schedule_reads_back_equal_and_is_written_the_same(old):
    phases = tuple(phase_of(p) for p in old)
    assert json.dumps([p.record() for p in phases]) == json.dumps(old).replace("[1, 1]", "[1, 1.0]")
    recipe = Recipe(epochs=1, learning_rate=1e-4, schedule=old)  # as a results.json row holds it
    assert schedule_key(recipe) == phases  # what matches a row with its control
    assert schedule_key(Recipe.model_validate_json(recipe.model_dump_json())) == phases
    assert len({phases, tuple(phase_of(p) for p in json.loads(json.dumps(old)))}) == 1  # hashable


def test_an_old_recorded_schedule_equals_the_one_compress_makes_now():
    prune = {"epochs": 2, "learning_rate": 1e-3, "polish_epochs": 1, "polish_learning_rate": 1e-4,
             "distill": 0.0, "temperature": 4.0, "augment": "none"}
    recorded = Recipe(epochs=2, learning_rate=1e-3, schedule=[[2, 0.001], [1, 0.0001]])
    assert schedule_key(recorded) == own_phases(prune)
    kd = {**prune, "distill": 0.5, "temperature": 2.0, "polish_epochs": 0}
    assert own_phases(kd) == (phase_of([2, 0.001, 0.5, 2.0]),) and own_phases(kd)[0].distill == 0.5
    # a temperature means nothing without distillation or augmentation: not recorded, not compared
    assert Phase(2, 1e-3, temperature=2.0) == Phase(2, 1e-3) and Phase(2, 1e-3).record() == [2, 0.001]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Phase(2, 1e-3).epochs = 3
