"""A full disk, a read-only file system, an exceeded quota or a refused permission is a one-line
error with exit status 1 in every writer, and leaves the store (and checkpoints) unchanged;
any other error keeps its traceback."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import zarr.storage._local
from click.testing import CliRunner, Result
from nf.main import _register, cli, disk_error
from safetensors import SafetensorError

from tests.conftest import tree_state


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    _register()
    return CliRunner()


@pytest.fixture
def store(train_store_ro: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(train_store_ro, tmp_path / "nf.zarr"))


def _full_disk(code: int = errno.ENOSPC):  # noqa: ANN202
    """A zarr chunk write that fails as the OS does: no file name on a failed write()."""
    def put(*args: object, **kwargs: object) -> int:
        raise OSError(code, __import__("os").strerror(code))
    return put


def _one_line(r: Result) -> str:
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    return lines[0]


@pytest.mark.parametrize("code, what", [
    (errno.ENOSPC, "could not write (no space left on device); the store is unchanged, free "
                   "space and rerun"),
    (errno.EROFS, "could not write (read-only file system); the store is unchanged, rerun on a "
                  "writable copy or mount"),
    (errno.EDQUOT, "could not write (disk quota exceeded); the store is unchanged, free space "
                   "or raise the quota and rerun"),
])
def test_augment_on_a_full_disk(runner: CliRunner, store: Path, monkeypatch: pytest.MonkeyPatch,
                                code: int, what: str) -> None:
    before = tree_state(store)
    monkeypatch.setattr(zarr.storage._local, "_put", _full_disk(code))
    r = runner.invoke(cli, ["augment", str(store), "nsd/subj01", "--pool", "novel", "--n", "10",
                            "--alpha", "10", "--name", "full", "--no-progress"])
    assert _one_line(r) == f"Error: {store}: {what}"
    assert tree_state(store) == before


def test_embed_on_a_full_disk(runner: CliRunner, store: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    def committed() -> dict:  # work staged aside is kept for the rerun to resume
        return {k: v for k, v in tree_state(store).items() if not k.startswith("_staging/")}

    before = committed()
    monkeypatch.setattr(zarr.storage._local, "_put", _full_disk())
    r = runner.invoke(cli, ["embed", str(store), "--model", "pixels", "--size", "8",
                            "--no-progress"])
    assert _one_line(r) == (f"Error: {store}: could not write (no space left on device); the "
                            f"store is unchanged, free space and rerun")
    assert committed() == before


def test_train_on_a_full_disk_leaves_no_half_checkpoint(runner: CliRunner, store: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors reports the OS error as text in its own error class."""
    import nftrain.checkpoint

    run = tmp_path / "run"
    args = ["train", str(store), "--set", f"output_dir={run}", 'subjects=["nsd/subj01"]',
            "epochs=2", "batch_size=16", "adapter_dim=16", "width=16", "--no-progress"]
    real = nftrain.checkpoint.save_file

    def save_file(tensors: dict, path: str) -> None:
        if (run / "last").is_dir():  # the disk fills up after epoch 1's checkpoints
            raise SafetensorError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)")
        real(tensors, path)

    monkeypatch.setattr(nftrain.checkpoint, "save_file", save_file)
    before = tree_state(store)
    line = _one_line(runner.invoke(cli, args))
    assert line.startswith(f"Error: {run}/") and line.endswith(
        ": could not write (no space left on device); the store is unchanged, free space and "
        "rerun"), line
    assert tree_state(store) == before
    assert sorted(p.name for p in run.iterdir()) == ["best", "last"]  # nothing aside
    for name in ("best", "last"):
        assert nftrain.checkpoint.is_complete(run / name)
    monkeypatch.setattr(nftrain.checkpoint, "save_file", real)
    r = runner.invoke(cli, [*args, "--resume"])  # the rerun finishes from the last good one
    assert r.exit_code == 0 and "trained 2 epochs" in r.output, r.output


def test_other_errors_keep_their_traceback(runner: CliRunner, store: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for error in (ValueError("a defect"), OSError(errno.EIO, "Input/output error")):
        def put(*args: object, _e: Exception = error, **kwargs: object) -> int:
            raise _e
        monkeypatch.setattr(zarr.storage._local, "_put", put)
        r = runner.invoke(cli, ["augment", str(store), "nsd/subj01", "--pool", "novel", "--n",
                                "10", "--alpha", "10", "--no-progress"])
        assert r.exit_code == 1 and r.exception is error and "Error:" not in r.output


def test_disk_errors_are_found_behind_the_errors_raised_from_them() -> None:
    try:
        try:
            raise PermissionError(errno.EACCES, "Permission denied", "/x/y")
        except OSError as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as outer:
        assert disk_error(outer) == (errno.EACCES, "/x/y")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise KeyError("a defect while cleaning up")  # context only: a defect of its own
    except KeyError as outer:
        assert disk_error(outer) is None
    assert disk_error(SafetensorError("I/O error: Read-only file system (os error 30)")) == (
        errno.EROFS, None)
    assert disk_error(SafetensorError("invalid header")) is None
