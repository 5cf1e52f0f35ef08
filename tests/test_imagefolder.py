"""Image folders as data sets: both layouts, the split, channels, sizes, the hash and every bad case."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgepack import imagefolder
from edgepack.cli import main
from edgepack.data import Dataset, balanced_subset, check_limits, load_data
from edgepack.errors import DataError
from edgepack.runtime.images import crop_box, read_image


def _png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def _colour(value: int, size=(8, 8)) -> np.ndarray:
    return np.full((*size, 3), value, np.uint8)


def make_folder(root: Path, classes=("cat", "dog", "ant"), per_class=(3, 2), size=(8, 8), split=True) -> Path:
    """train/CLASS and test/CLASS (split=True), else ROOT/CLASS with per_class[0] images each.
    Pixel value = 10 * class index in sorted order + image number, so labels can be read back."""
    for c, name in enumerate(sorted(classes)):
        parts = (("train", per_class[0]), ("test", per_class[1])) if split else (("", per_class[0]),)
        for part, n in parts:
            for i in range(n):
                _png(root / part / name / f"{i:03d}.png", _colour(10 * c + i, size))
    return root


def test_given_layout(tmp_path):
    d = load_data(make_folder(tmp_path / "set"))
    assert isinstance(d, Dataset) and d.class_names == ("ant", "cat", "dog")  # sorted folder names
    assert d.x_train.shape == (9, 8, 8, 3) and d.x_test.shape == (6, 8, 8, 3) and d.input_shape == (8, 8, 3)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64
    assert d.split == {"rule": "given"} and d.source == str(tmp_path / "set")
    # Each pixel was written as 10 * label + image number: labels match folders, pixels are exact.
    np.testing.assert_array_equal(d.x_train[:, 0, 0, 0] // 10, d.y_train)
    assert d.y_test.tolist() == [0, 0, 1, 1, 2, 2] and d.x_test[:, 3, 3, 1].tolist() == [0, 1, 10, 11, 20, 21]


def test_one_folder_is_split_stratified_seeded_and_recorded(tmp_path):
    root = make_folder(tmp_path / "set", per_class=(10, 0), split=False)
    d = load_data(root, seed=3)
    assert d.split == {"rule": "stratified", "test_fraction": imagefolder.TEST_FRACTION, "seed": 3}
    assert np.bincount(d.y_test).tolist() == [2, 2, 2] and np.bincount(d.y_train).tolist() == [8, 8, 8]
    ids = lambda x: set(x[:, 0, 0, 0].tolist())  # noqa: E731 - each image's pixel value is unique
    assert ids(d.x_train).isdisjoint(ids(d.x_test)) and len(ids(d.x_train) | ids(d.x_test)) == 30
    again = load_data(root, seed=3)
    np.testing.assert_array_equal(again.x_test, d.x_test)
    other = load_data(root, seed=4)
    assert ids(other.x_test) != ids(d.x_test) and other.sha256 == d.sha256  # same files, other split


def test_split_keeps_one_test_and_one_training_image_per_class(tmp_path):
    d = load_data(make_folder(tmp_path / "set", classes=("a", "b"), per_class=(2, 0), split=False))
    assert np.bincount(d.y_train).tolist() == [1, 1] and np.bincount(d.y_test).tolist() == [1, 1]
    big = {"a": [Path(f"{i}") for i in range(100)], "b": [Path(f"{i}") for i in range(3)]}
    train, test = imagefolder.stratified_split(big, 0.2, 0, tmp_path)
    assert (len(test["a"]), len(test["b"]), len(train["b"])) == (20, 1, 2)


@pytest.mark.parametrize("k", [2, 3, 12])
def test_any_class_count(tmp_path, k):
    names = [f"class{i:02d}" for i in range(k)]
    d = load_data(make_folder(tmp_path / "set", classes=names, per_class=(2, 1)))
    assert len(d.class_names) == k and np.bincount(d.y_train).tolist() == [2] * k
    assert d.x_test.shape == (k, 8, 8, 3)


def test_grayscale_only_is_one_channel(tmp_path):
    root = tmp_path / "set"
    for part in ("train", "test"):
        _png(root / part / "a" / "x.png", np.full((8, 8), 7, np.uint8), "L")
        sixteen = Image.fromarray(np.full((8, 8), 0x3412, np.uint16)).convert("I;16")
        (root / part / "b").mkdir(parents=True)
        sixteen.save(root / part / "b" / "y.png")
    d = load_data(root)
    assert d.input_shape == (8, 8, 1) and d.x_train.shape == (2, 8, 8, 1)
    assert d.x_train[:, 0, 0, 0].tolist() == [7, 0x34]  # 16-bit keeps its high byte


def test_grey_in_a_colour_set_is_replicated(tmp_path):
    root = tmp_path / "set"
    for part in ("train", "test"):
        _png(root / part / "a" / "x.png", np.full((8, 8), 7, np.uint8), "L")
        _png(root / part / "b" / "y.png", _colour(5))
    d = load_data(root)
    assert d.input_shape == (8, 8, 3) and d.x_train[0, 0, 0].tolist() == [7, 7, 7]
    assert d.x_test[1, 0, 0].tolist() == [5, 5, 5]


def test_channels_are_decided_over_train_and_test_together(tmp_path):
    root = tmp_path / "set"
    for part, cls in (("train", "a"), ("train", "b"), ("test", "a")):
        _png(root / part / cls / "x.png", np.full((8, 8), 7, np.uint8), "L")
    _png(root / "test" / "b" / "y.png", _colour(5))
    d = load_data(root)
    assert d.x_train.shape[-1] == d.x_test.shape[-1] == 3


def test_mixed_sizes_need_an_image_size(tmp_path):
    root = make_folder(tmp_path / "set", classes=("a", "b"), per_class=(1, 1))
    odd = _png(root / "test" / "b" / "wide.png", np.arange(12 * 20 * 3, dtype=np.uint8).reshape(12, 20, 3))
    with pytest.raises(DataError, match=r"000\.png is 8x8 but .*wide\.png is 20x12 .*pass an image size"):
        load_data(root)
    d = load_data(root, image_size=(6, 10))
    assert d.input_shape == (6, 10, 3)
    np.testing.assert_array_equal(d.x_test[-1], read_image(odd, (6, 10)))  # exactly as the runtime reads it


@pytest.mark.parametrize("size", [(0, 4), (4,), "32x32", (4.0, 4), (True, 4)])
def test_bad_image_size(tmp_path, size):
    with pytest.raises(DataError, match="image size must be two positive integers"):
        load_data(make_folder(tmp_path / "set"), image_size=size)


def test_hash_covers_names_and_bytes(tmp_path):
    root = make_folder(tmp_path / "set")
    first = load_data(root).sha256
    assert load_data(root).sha256 == first
    f = root / "train" / "cat" / "001.png"
    _png(f, _colour(99))
    edited = load_data(root).sha256
    f.rename(f.with_name("zzz.png"))
    renamed = load_data(root).sha256
    assert len({first, edited, renamed}) == 3


def test_hidden_files_are_skipped(tmp_path):
    root = make_folder(tmp_path / "set")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "test" / ".hidden").mkdir()
    (root / "README.txt").write_text("top-level files beside train/ and test/ are ignored")
    assert load_data(root).x_train.shape[0] == 9


def _corrupt(root):
    (root / "train" / "cat" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)


def _truncated(root):
    f = root / "train" / "cat" / "001.png"
    _png(f, np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    f.write_bytes(f.read_bytes()[:300])


def _broken_link(root):
    os.symlink(root / "nowhere.png", root / "train" / "cat" / "link.png")


def _remove_test_class(root):
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    (root / "test" / "dog").rmdir()


BAD_FOLDERS = {  # name -> (how to break a good folder, the message's key phrase)
    "empty class": (lambda r: [f.unlink() for f in (r / "train" / "dog").iterdir()],
                    r"train/dog: class 'dog' has no training images"),
    "one class only": (lambda r: [_rm_tree(r / p / c) for p in ("train", "test") for c in ("cat", "dog")],
                       r"train: needs at least 2 class folders of training images, found only 'ant'"),
    "stray txt": (lambda r: (r / "train" / "cat" / "notes.txt").write_text("x"),
                  r"notes\.txt: not a \.png, \.jpg or \.jpeg file"),
    "corrupt png": (_corrupt, r"001\.png: not a readable image"),
    "truncated png": (_truncated, r"001\.png: not a readable image"),
    "broken link": (_broken_link, r"link\.png: not a regular file"),
    "image link loop": (lambda r: os.symlink("loop.png", r / "train" / "cat" / "loop.png"),
                        r"loop\.png: not a regular file \(a broken link or link loop"),
    "class link loop": (lambda r: os.symlink("loop", r / "train" / "loop"),
                        r"train/loop: a symbolic link that leads nowhere \(broken, or a loop\)"),
    "file for a class folder": (lambda r: _png(r / "train" / "x.png", _colour(1)),
                                r"train/x\.png: a file where a class folder is expected"),
    "folder for an image": (lambda r: (r / "test" / "cat" / "sub").mkdir(),
                            r"test/cat/sub: a folder where an image file is expected"),
    "missing test": (lambda r: _rm_tree(r / "test"), r"has train/ but no test/ folder"),
    "class missing in test": (_remove_test_class, r"test/dog: class 'dog' has no test images"),
    "extra folder": (lambda r: (r / "val" / "cat").mkdir(parents=True), r"val: unexpected folder"),
}


def _rm_tree(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    path.rmdir()


@pytest.mark.parametrize("kind", BAD_FOLDERS)
def test_bad_folders_fail_in_one_line(tmp_path, kind):
    root = make_folder(tmp_path / "set")
    breaks, message = BAD_FOLDERS[kind]
    breaks(root)
    with pytest.raises(DataError, match=message) as e:
        load_data(root)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_one_folder_bad_cases(tmp_path):
    root = make_folder(tmp_path / "set", per_class=(3, 0), split=False)
    (root / "cat" / "000.png").unlink()
    (root / "cat" / "001.png").unlink()
    with pytest.raises(DataError, match="class 'cat' has 1 image, at least 2 are needed"):
        load_data(root)
    with pytest.raises(DataError, match="needs at least 2 class folders of images, found none"):
        load_data((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "set")
    target = root / "test" / "ant" / "000.png"

    def guarded_open(path, *args, **kwargs):  # root reads any file: deny one the way the OS would
        if Path(path) == target:
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(imagefolder, "open", guarded_open, raising=False)
    with pytest.raises(DataError, match=r"ant/000\.png: cannot be read \(Permission denied\)"):
        load_data(root)


def test_too_many_pixels_are_refused_before_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "set")
    monkeypatch.setattr(imagefolder, "MAX_BYTES", 15 * 8 * 8 * 3 - 1)
    with pytest.raises(DataError, match=r"15 images of 8x8 .* more than"):
        load_data(root)
    with pytest.raises(DataError, match=r"15 images of 64x64"):
        load_data(root, image_size=(64, 64))
    assert load_data(root, limit_train=3, limit_test=3).x_train.shape[0] == 3  # a subset fits


def test_limits_and_balanced_subset_with_three_classes(tmp_path):
    labels = np.repeat(np.arange(3), [5, 7, 9])
    idx = balanced_subset(labels, 7, seed=1)
    assert sorted(np.bincount(labels[idx]).tolist()) == [2, 2, 3]
    root = make_folder(tmp_path / "set", per_class=(4, 2))
    d = load_data(root, limit_train=6, limit_test=3, seed=1)
    assert np.bincount(d.y_train).tolist() == [2, 2, 2] and np.bincount(d.y_test).tolist() == [1, 1, 1]
    assert d.sha256 == load_data(root).sha256  # the hash names the folder, not the subset
    with pytest.raises(DataError, match=r"--limit-train must be >= 3 \(one image per class\), got 2"):
        load_data(root, limit_train=2)
    check_limits(limit_train=3, limit_test=2)  # before the data is read only 2 classes are certain
    with pytest.raises(DataError, match=r"--limit-test must be >= 3"):
        check_limits(num_classes=3, limit_test=2)


def test_an_image_file_as_data_points_to_folders(tmp_path):
    png = _png(tmp_path / "photo.png", _colour(3))
    with pytest.raises(DataError, match=r"photo\.png: cannot read as a tar archive.*or an image folder"):
        load_data(png)


def test_cifar_paths_still_load_and_refuse_other_sizes(tiny_archive):
    d = load_data(tiny_archive)
    assert d.input_shape == (32, 32, 3) and d.split == {"rule": "given"} and len(d.class_names) == 10
    assert load_data(tiny_archive, image_size=(32, 32)).sha256 == d.sha256
    with pytest.raises(DataError, match="CIFAR-10 images are 32x32, an image size of 64x64 applies"):
        load_data(tiny_archive, image_size=(64, 64))
    with pytest.raises(DataError, match="--limit-test must be >= 10"):
        load_data(tiny_archive, limit_test=5)


def test_a_dataset_derives_its_fields():
    x, y = np.zeros((2, 5, 6, 1), np.uint8), np.array([0, 1])
    d = Dataset(x, y, x, y, ("a", "b"), "src", "hash")
    assert d.input_shape == (5, 6, 1) and d.split == {"rule": "given"}


def test_read_image_crops_to_the_inputs_aspect_ratio_and_keeps_grey(tmp_path):
    assert crop_box(40, 30, (32, 32)) == (5, 0, 35, 30)  # a square, as before
    assert crop_box(40, 30, (10, 20)) == (0, 5, 40, 25)  # 2:1 wide
    assert crop_box(40, 30, (30, 10)) == (15, 0, 25, 30)  # 1:3 tall
    grid = np.arange(30 * 40, dtype=np.uint32).reshape(30, 40)
    img = np.stack([grid % 251, grid // 40, grid % 40], axis=-1).astype(np.uint8)
    path = _png(tmp_path / "a.png", img)
    np.testing.assert_array_equal(read_image(path, (20, 40)), img[5:25])  # crop only, pixel for pixel
    np.testing.assert_array_equal(read_image(path, None), img)
    grey = _png(tmp_path / "g.png", img[..., 0], "L")
    assert read_image(grey, (8, 8), channels=None).shape == (8, 8, 1)
    np.testing.assert_array_equal(read_image(grey, (8, 8)), np.repeat(read_image(grey, (8, 8), None), 3, 2))
    np.testing.assert_array_equal(read_image(grey, (8, 8), 1), read_image(grey, (8, 8), None))
    assert read_image(path, None, channels=None).shape == (30, 40, 3)  # colour stays colour
    luma = np.asarray(Image.fromarray(img).convert("L"))[..., None]  # Pillow's ITU-R 601-2 formula
    np.testing.assert_array_equal(read_image(path, None, channels=1), luma)


def test_cli_train_names_a_bad_folder_in_one_line(tmp_path, capsys):
    root = make_folder(tmp_path / "set")
    (root / "train" / "cat" / "notes.txt").write_text("x")
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"])
    out, err = capsys.readouterr()
    assert code != 0 and err.count("\n") == 1 and "notes.txt: not a .png" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_trains_on_a_32x32_image_folder(tmp_path, capsys):
    """Today's model takes 32x32x3 only: a folder of that shape trains end to end, with 3 classes."""
    root = make_folder(tmp_path / "set", size=(32, 32), per_class=(4, 2))
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["class_names"] == ["ant", "cat", "dog"] and meta["data_sha256"] == load_data(root).sha256


def test_one_folder_split_rule_is_recorded_in_the_run_and_weak_classes_are_named(tmp_path, capsys):
    """README: the one-folder layout's run records its split rule (`split`). An unequal grey set whose
    1-epoch model can only learn the big class: train prints macro F1 and, when metrics.json names weak
    classes, the one warning line naming them (edgepack.metrics' rule)."""
    root = tmp_path / "set"
    for c, (name, n) in enumerate((("big", 30), ("mid", 5), ("small", 3), ("tiny", 2))):
        for i in range(n):
            _png(root / name / f"{i:03d}.png", np.full((20, 20), 40 * c + i, np.uint8), "L")
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--out", str(out), "--epochs", "1", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["split"] == {"rule": "stratified", "test_fraction": imagefolder.TEST_FRACTION, "seed": 4}
    assert meta["input_shape"] == [20, 20, 1] and meta["num_test_images"] == 6 + 1 + 1 + 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"macro F1 {metrics['f1_macro']:.4f}" in printed
    warnings = [line for line in printed.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == (1 if metrics["weak_classes"] else 0), printed
    for name, recall in metrics["weak_classes"].items():
        assert f"{name} {100 * recall:.1f}%" in warnings[0]


def test_make_image_folder_script(tiny_archive, tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "make_image_folder.py"
    spec = importlib.util.spec_from_file_location("make_image_folder", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "made"
    args = ["--data", str(tiny_archive), "--out", str(out), "--size", "40", "--train-per-class", "2",
            "--test-per-class", "1", "--classes", "ship,airplane,cat"]
    assert script.main(args) == 0
    d = load_data(out)
    assert d.class_names == ("airplane", "cat", "ship") and d.x_train.shape == (6, 40, 40, 3)
    assert np.bincount(d.y_test).tolist() == [1, 1, 1]
    assert script.main([*args[:3], str(tmp_path / "x"), "--classes", "cat,unicorn"]) == 2
    assert "unknown: unicorn" in capsys.readouterr().err and not (tmp_path / "x").exists()
