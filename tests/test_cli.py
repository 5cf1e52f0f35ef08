"""The command line: help for every command, one-line errors, the toolchain message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgepack.cli import COMMANDS, build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_command_has_help_with_an_example():
    found = subcommands()
    assert "train" in found
    assert set(found) == set(COMMANDS)  # every listed command is built
    for name, p in found.items():
        text = p.format_help()
        assert "example" in text.lower() and f"edgepack {name}" in text, name


def test_python_dash_m_and_help_exit_zero():
    r = subprocess.run([sys.executable, "-m", "edgepack", "train", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--limit-train" in r.stdout


@pytest.mark.parametrize("argv, message", [
    (["train", "--out", "x", "--epochs", "0"], "expected a number >= 1"),
    (["train", "--out", "x", "--limit-train", "many"], "expected a whole number"),
    (["train"], "--out"),
    (["nonsense"], "invalid choice"),
])
def test_bad_options_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgepack: error:") and message in err[-1]


def test_missing_data_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "nope.tar.gz"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "nope.tar.gz" in err[0] and "cifar-10-python.tar.gz" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path, capsys, tiny_archive):
    (tmp_path / "run").mkdir()
    code = main(["train", "--data", str(tiny_archive), "--out", str(tmp_path / "run")])
    assert code == 1 and "--force" in capsys.readouterr().err


def test_missing_toolchain_names_the_fix(monkeypatch, capsys, tmp_path, tiny_archive):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    code = main(["train", "--data", str(tiny_archive), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "pip install 'edgepack[toolchain]'" in err and "\n" not in err


def test_unwritable_output_is_refused_before_any_work(tmp_path, capsys, tiny_archive):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code = main(["train", "--data", str(tiny_archive), "--out", str(blocker / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "not a writable folder" in err and "\n" not in err


def test_cli_starts_without_the_toolchain():
    """The runtime-only install (no toolchain extra) runs `edgepack predict` and `edgepack verify`: building
    the parser must not import filelock, TensorFlow or the other toolchain modules."""
    from edgepack.errors import TOOLCHAIN_MODULES

    code = ("import sys\n"
            f"for m in {TOOLCHAIN_MODULES!r}: sys.modules[m] = None  # import m raises ImportError\n"
            "from edgepack.cli import main\n"
            "sys.exit(main(['verify', '--help']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "GOLDEN" in r.stdout, r.stderr[-500:]


DATA_COMMANDS = {  # every command with --data: the arguments that get it as far as reading the data
    "train": lambda run, out: ["train", "--out", out],
    "compress": lambda run, out: ["compress", "--model", run, "--technique", "prune", "--out", out],
    "export": lambda run, out: ["export", "--model", run, "--format", "tflite-fp32", "--out", out],
    "compare": lambda run, out: ["compare", run, "--out", out],
    "optimize": lambda run, out: ["optimize", "--model", run, "--out", out, "--max-drop", "1",
                                  "--objective", "size"],
    "pipeline": lambda run, out: ["pipeline", "--out", out],
}


@pytest.mark.parametrize("command", DATA_COMMANDS)
def test_data_as_a_symlink_loop_is_one_line(command, tiny_run, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # resolving it raises RuntimeError (Python < 3.13) or OSError
    out = tmp_path / "out"
    code = main([*DATA_COMMANDS[command](str(tiny_run), str(out)), "--data", str(loop)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("edgepack: error: --data "), err
    assert "loop" in err[0] and "point it at the real file or folder" in err[0]
    assert not out.exists()


def test_a_symlink_loop_is_one_line_wherever_data_is_resolved(tmp_path, monkeypatch):
    from edgepack.data import ENV_VAR, resolve_data_path
    from edgepack.errors import DataError

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"\(from --data\) is a symbolic link that leads nowhere"):
        resolve_data_path(loop)
    monkeypatch.setenv(ENV_VAR, str(loop))
    with pytest.raises(DataError, match=rf"\(from \${ENV_VAR}\) is a symbolic link that leads nowhere"):
        resolve_data_path(None)


def test_data_help_names_image_folders_in_every_command():
    for name, p in subcommands().items():
        data = next((a for a in p._actions if "--data" in a.option_strings), None)
        if data is not None:
            assert "image folder" in data.help and "DIR/train/CLASS/" in data.help, name
