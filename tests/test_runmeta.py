"""Run metadata (edgepack.runmeta): round trip, schema versions, malformed files, unknown keys.

No TensorFlow: these run in well under a second."""

from __future__ import annotations

import json

import pytest

from edgepack import rundir, runmeta
from edgepack.runmeta import SCHEMA_VERSION, RunMetadata, RunMetadataError
from edgepack.runtime.preprocess import PIXEL_SCALING


def record(**over) -> dict:
    """The fields a compress run writes (as write_run_files gets them)."""
    fields = dict(kind="compress", technique="prune", variant="prune-0.5", model_file="model.keras",
                  model_format="keras", class_names=["cat", "dog"], input_shape=[32, 32, 3],
                  pixel_scaling=PIXEL_SCALING, params={"sparsity": 0.5, "epochs": 1},
                  source_run="/runs/baseline", source_sha256="a" * 64, compressed_layers=["conv1"],
                  skipped_layers={"dense2": "kept dense"}, finetune={"epochs": 1, "learning_rate": 1e-4},
                  invariants={"sparsity": 0.5}, train_seconds=1.5, model_sha256="b" * 64)
    return {**fields, **over}


def written(tmp_path, **over) -> dict:
    path = tmp_path / "metadata.json"
    runmeta.write(path, runmeta.build(**record(**over)))
    return json.loads(path.read_text())


def test_round_trip(tmp_path):
    meta = runmeta.build(**record())
    runmeta.write(tmp_path / "metadata.json", meta)
    back = runmeta.read(tmp_path / "metadata.json")
    assert back == meta and back.schema_version == SCHEMA_VERSION
    assert back.class_names == ("cat", "dog") and back.input_shape == (32, 32, 3)
    assert back.params == {"sparsity": 0.5, "epochs": 1} and back.compressed_layers == ("conv1",)
    raw = json.loads((tmp_path / "metadata.json").read_text())
    assert raw["source_sha256"] == "a" * 64 and "source_model_sha256" not in raw and "extra" not in raw


@pytest.mark.parametrize("version, words", [
    (None, "no schema_version (written by an older edgepack)"), (0, "schema 0 is older"),
    (SCHEMA_VERSION + 1, "upgrade edgepack"), ("1", "schema_version: must be a whole number, got '1'")])
def test_other_schema_is_refused_in_one_line(tmp_path, version, words):
    raw = written(tmp_path)
    if version is None:
        del raw["schema_version"]
    else:
        raw["schema_version"] = version
    with pytest.raises(RunMetadataError) as info:
        RunMetadata.from_dict(raw, "runs/x/metadata.json")
    msg = str(info.value)
    assert words in msg and "runs/x/metadata.json" in msg and "\n" not in msg


@pytest.mark.parametrize("change, words", [
    ({"class_names": "cat"}, "class_names: must be a list of strings, got 'cat'"),
    ({"class_names": ["cat", 2]}, r"class_names\[1\]: must be a string, got 2"),
    ({"input_shape": [32, 32]}, r"input_shape: must be \[height, width, channels\]"),
    ({"kind": "magic"}, "kind: must be one of"), ({"params": [1]}, r"params: must be an object, got \[1\]"),
    ({"model_file": "../model.keras"}, "model_file: must be a file name"),
    ({"pixel_scaling": {"divisor": 0}}, "positive divisor"),
    ({"train_seconds": "1"}, "train_seconds: must be a number, got '1'"),
    ({"parameters": True}, "parameters: must be a whole number, got True"),  # strict: a bool is no count
])
def test_malformed_is_refused(tmp_path, change, words):
    """One line: the file, the key, what it must be and the fix."""
    raw = {**written(tmp_path), **change}
    with pytest.raises(RunMetadataError, match=words) as info:
        RunMetadata.from_dict(raw, "runs/x/metadata.json")
    msg = str(info.value)
    assert msg.startswith("runs/x/metadata.json: ") and msg.endswith(runmeta.FIX) and "\n" not in msg


def test_missing_key_and_not_an_object(tmp_path):
    raw = written(tmp_path)
    del raw["variant"]
    with pytest.raises(RunMetadataError, match="variant: missing \\(required\\): re-create the run folder"):
        RunMetadata.from_dict(raw, "metadata.json")
    with pytest.raises(RunMetadataError, match="must hold a JSON object"):
        RunMetadata.from_dict([raw], "metadata.json")


def test_unknown_keys_are_kept_on_read_and_refused_on_write(tmp_path):
    """A newer minor writer's key survives a read and a re-write; a writer's own typo fails at once."""
    raw = {**written(tmp_path), "chain": ["prune", "cluster"]}
    meta = RunMetadata.from_dict(raw, "metadata.json")
    assert meta.extra == {"chain": ["prune", "cluster"]} and not hasattr(meta, "chain")
    assert meta.to_dict()["chain"] == ["prune", "cluster"]
    with pytest.raises(ValueError, match="unknown key 'source_model_sha256'"):
        runmeta.build(**record(source_model_sha256="a" * 64))


def test_load_run_refuses_an_old_run_folder_in_one_line(tiny_run, tmp_path, capsys):
    """An untyped metadata.json (written before schema 1) is refused by every command, in one line."""
    import shutil

    from edgepack.cli import main

    old = shutil.copytree(tiny_run, tmp_path / "old")
    raw = json.loads((old / "metadata.json").read_text())
    raw.pop("schema_version")
    (old / "metadata.json").write_text(json.dumps(raw))
    with pytest.raises(rundir.RunFolderError, match="re-create the run folder with this edgepack"):
        rundir.load_run(old)
    assert main(["export", "--model", str(old), "--out", str(tmp_path / "e"), "--format", "onnx-fp32"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no schema_version" in err[0] and not (tmp_path / "e").exists()


def test_writer_values_are_checked_before_writing(tmp_path):
    with pytest.raises(ValueError, match="run metadata: class_names: must be a list of strings"):
        runmeta.build(**record(class_names="cat"))  # a string is not a list of names
    with pytest.raises(ValueError, match="parameters: must be a whole number, got 1.5"):
        runmeta.build(**record(parameters=1.5))
