"""The CIFAR-10 loader: real archive, tiny archives in the same format, corrupt and malicious inputs."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile

import numpy as np
import pytest
from conftest import batch_bytes, meta_bytes, tiny_members, write_archive
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.cli import main
from edgepack.data import balanced_subset, load_data, resolve_data_path
from edgepack.errors import DataError
from edgepack.runtime.preprocess import scale_pixels


@pytest.mark.real
def test_real_archive_shapes_labels_and_pixel_means(real_cifar):
    d = real_cifar
    assert d.x_train.shape == (50_000, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (10_000, 32, 32, 3) and d.y_test.dtype == np.int64
    assert d.class_names[0] == "airplane" and d.class_names[-1] == "truck" and len(d.class_names) == 10
    assert list(d.y_test[:10]) == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official order (data README)
    assert np.bincount(d.y_train).tolist() == [5000] * 10 and np.bincount(d.y_test).tolist() == [1000] * 10
    # Published per-channel training means: checks the NHWC transpose, not just the shape.
    np.testing.assert_allclose(d.x_train.reshape(-1, 3).mean(0), [125.306918046875, 122.950394140625,
                                                                   113.86538318359375], rtol=1e-9)
    assert d.sha256 == "957a21788a790d998453ba463efac25d62cd27828ec6d0d7700e583d2656a2da"


def test_tiny_archive_and_extracted_folder_load_the_same(tmp_path, tiny_archive):
    a = load_data(tiny_archive)
    with tarfile.open(tiny_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    b = load_data(tmp_path / "cifar-10-batches-py")
    c = load_data(tmp_path)  # the parent folder works too
    assert a.x_train.shape == (100, 32, 32, 3) and a.x_test.shape == (20, 32, 32, 3)
    for other in (b, c):
        np.testing.assert_array_equal(a.x_train, other.x_train)
        np.testing.assert_array_equal(a.y_test, other.y_test)
    assert a.class_names == b.class_names


def test_nhwc_layout_matches_the_format(tmp_path):
    # One image whose red plane is 1s, green 2s, blue 3s in the file's channel-planar row.
    members = tiny_members()
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 1, 2, 3
    members["test_batch"] = batch_bytes(img, [7])
    d = load_data(write_archive(tmp_path / "a.tar.gz", members))
    assert d.x_test[0, 5, 9].tolist() == [1, 2, 3] and d.y_test.tolist() == [7]


def test_scaling_is_the_seeds_division():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    y = scale_pixels(x)
    assert y.dtype == np.float32 and y.min() == 0.0 and y.max() == 1.0
    np.testing.assert_array_equal(y, (x / 255.0).astype(np.float32))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    members = tiny_members()
    members["data_batch_2"] = pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=protocol)
    path = write_archive(tmp_path / "evil.tar.gz", members)
    with pytest.raises(DataError, match=r"data_batch_2.*refused global (posix|os)\.system"):
        load_data(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_every_pickle_protocol_loads_the_same(tmp_path, tiny_archive, protocol):
    """Copies re-pickled with a newer protocol (5 stores arrays as raw buffers) read like the official 2."""
    d = load_data(write_archive(tmp_path / f"p{protocol}.tar.gz", tiny_members(protocol=protocol)))
    ref = load_data(tiny_archive)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, name), getattr(ref, name), err_msg=name)
    assert d.class_names == ref.class_names


def test_protocol_5_fortran_ordered_batch(tmp_path):
    members = tiny_members()
    img = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 32, 32, 3)
    data = np.asfortranarray(img.transpose(0, 3, 1, 2).reshape(2, 3072))  # pickled with order "F"
    members["test_batch"] = pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=5)
    d = load_data(write_archive(tmp_path / "f.tar.gz", members))
    np.testing.assert_array_equal(d.x_test, img)


class ObjectBuffer:
    """Protocol 5's array constructor asked for an object array (pointers from the file's bytes)."""

    def __reduce__(self):
        numeric = np._core.numeric if hasattr(np, "_core") else np.core.numeric  # numpy 2 | 1.x
        return (numeric._frombuffer, (bytearray(16), np.dtype(object), (2,), "C"))


@pytest.mark.parametrize("bad, message", [
    (lambda: pickle.dumps({b"data": ObjectBuffer(), b"labels": [0]}, protocol=5), "object"),
    # an array sent out-of-band: a file never comes with the buffers
    (lambda: pickle.dumps({b"data": pickle.PickleBuffer(np.zeros((1, 3072), np.uint8)), b"labels": [0]},
                          protocol=5, buffer_callback=lambda b: False), "out-of-band"),
    (lambda: pickle.dumps({b"data": bytearray(3072), b"labels": [0]}, protocol=2), "global .*bytearray"),
])
def test_protocol_5_only_rebuilds_plain_arrays(tmp_path, bad, message):
    members = tiny_members()
    members["data_batch_1"] = bad()
    with pytest.raises(DataError, match=f"data_batch_1.*{message}") as e:
        load_data(write_archive(tmp_path / "a.tar.gz", members))
    assert "\n" not in str(e.value)


def test_path_traversal_members_are_never_written(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    members = tiny_members()
    path = write_archive(tmp_path / "a.tar.gz", members)
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
    assert all(n.startswith("cifar-10-batches-py/") for n in names)
    # An archive whose batch sits at ../../ is not read (and nothing is extracted anywhere).
    evil = write_archive(tmp_path / "evil.tar.gz", members, folder="../..")
    with pytest.raises(DataError, match="missing"):
        load_data(evil)
    assert sorted(os.listdir(work)) == [] and not (tmp_path.parent / "data_batch_1").exists()


@pytest.mark.parametrize("name", ["test_batch", "batches.meta", "data_batch_3"])
def test_missing_batch_is_named(tmp_path, name):
    members = tiny_members()
    del members[name]
    with pytest.raises(DataError, match=f"missing {name}"):
        load_data(write_archive(tmp_path / "a.tar.gz", members))


def test_truncated_archive(tmp_path, tiny_archive):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tiny_archive.read_bytes()[: tiny_archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz.*(truncated|corrupt)"):
        load_data(cut)


def test_not_an_archive(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(DataError, match="junk.tar.gz"):
        load_data(junk)


BAD_ARCHIVES = {  # name -> (bytes of the file, or a path to use as is; the message's key phrase)
    "0-byte file": (lambda tiny: b"", "cannot read as a tar archive (empty file)"),
    "random bytes": (lambda tiny: os.urandom(5000), "cannot read as a tar archive"),
    "/dev/null": (lambda tiny: "/dev/null", "is not a regular file or folder"),
    "truncated archive": (lambda tiny: tiny.read_bytes()[: tiny.stat().st_size // 2], "truncated or corrupt"),
    "gzip of no tar": (lambda tiny: gzip.compress(b"hello, not a tar file\n" * 50), "cannot read as a tar"),
}


@pytest.mark.parametrize("kind", BAD_ARCHIVES)
def test_bad_data_archives_fail_the_cli_in_one_line(tmp_path, tiny_archive, capsys, kind):
    make, message = BAD_ARCHIVES[kind]
    made = make(tiny_archive)
    path = made if isinstance(made, str) else tmp_path / "cifar-10-python.tar.gz"
    if isinstance(made, bytes):
        path.write_bytes(made)
    code = main(["train", "--data", str(path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"edgepack: error: {path}") and message in err, err
    assert "expected a cifar-10-python.tar.gz file or a cifar-10-batches-py folder" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"\(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2 images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "0..9"),
    ([1, 2, 3], "expected a dict"),
])
def test_wrong_contents_are_named(tmp_path, bad, message):
    members = tiny_members()
    members["data_batch_4"] = pickle.dumps(bad, protocol=2)
    with pytest.raises(DataError, match=f"data_batch_4.*{message}"):
        load_data(write_archive(tmp_path / "a.tar.gz", members))


def test_wrong_class_names(tmp_path):
    members = tiny_members()
    members["batches.meta"] = meta_bytes(names=["a", "b"])
    with pytest.raises(DataError, match="10 label_names"):
        load_data(write_archive(tmp_path / "a.tar.gz", members))


def test_data_source_order(tmp_path, monkeypatch, tiny_archive):
    monkeypatch.setenv("EDGEPACK_DATA", str(tiny_archive))
    assert resolve_data_path(None) == tiny_archive  # the environment variable
    assert resolve_data_path(tmp_path) == tmp_path  # an explicit path wins
    monkeypatch.chdir(tiny_archive.parent)  # a relative path is made absolute: runs record it as their
    assert resolve_data_path(f"../{tiny_archive.parent.name}/./{tiny_archive.name}") == tiny_archive  # data
    monkeypatch.setenv("EDGEPACK_DATA", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DataError, match=r"nope\.tar\.gz.*EDGEPACK_DATA"):
        resolve_data_path(None)
    monkeypatch.delenv("EDGEPACK_DATA")
    monkeypatch.setattr("edgepack.data.KERAS_CACHE", tmp_path / "empty")
    with pytest.raises(DataError, match="--data PATH"):
        resolve_data_path(None, download=False)


def test_offline_download_fails_with_a_fix(no_data_sources):
    with pytest.raises(DataError, match="download failed.*--data PATH"):
        load_data(None)
    assert not list(no_data_sources.glob("*"))  # no partial download left


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(10), 100)
    a = balanced_subset(labels, 55, seed=1)
    assert len(a) == 55 and len(set(a)) == 55
    assert sorted(np.bincount(labels[a]).tolist()) == [5] * 5 + [6] * 5
    np.testing.assert_array_equal(a, balanced_subset(labels, 55, seed=1))
    assert not np.array_equal(a, balanced_subset(labels, 55, seed=2))
    assert len(balanced_subset(labels, 5000)) == 1000  # larger than the set: all of it


def test_limits_apply(tiny_archive):
    d = load_data(tiny_archive, limit_train=30, limit_test=10)
    assert len(d.y_train) == 30 and np.bincount(d.y_train).tolist() == [3] * 10
    assert len(d.y_test) == 10


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 30), min_size=10, max_size=10), n=st.integers(1, 400),
       seed=st.integers(0, 2**32 - 1))
def test_balanced_subset_properties(counts, n, seed):
    """Any class sizes: distinct in-range indices, sorted, as balanced as the classes allow."""
    labels = np.repeat(np.arange(10), counts)
    if labels.size == 0:
        return
    idx = balanced_subset(labels, n, seed)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < labels.size  # sorted, distinct
    np.testing.assert_array_equal(idx, balanced_subset(labels, n, seed))
    if n >= labels.size:
        assert idx.size == labels.size
        return
    got = np.bincount(labels[idx], minlength=10)
    present = np.unique(labels)
    per = n // len(present)
    for c in present:  # each class gets its share, or all it has
        assert got[c] >= min(per, counts[c])
    assert idx.size <= n
