"""The settings model: the docs and --help come from it, and loading it stays free of TensorFlow."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

from edgepack import settings
from edgepack.cli import build_parser


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
