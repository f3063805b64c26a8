"""Issue 15.9/15.10: the package's errors as one line, CheckpointError for every bad checkpoint at every
entry point, config keys named in type errors, sizes checked before the first step, a full disk said so,
and a warning for more CPU processes than cores."""

import errno
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from model_helpers import randomize, tiny_dit
from omegaconf import OmegaConf

from ppd_lightning import atomic
from ppd_lightning.errors import (
    CheckpointError,
    ConfigError,
    DiskFullError,
    PPDError,
    exit_on_user_error,
    is_user_error,
    one_line,
    run_main,
)

REPO = Path(__file__).resolve().parents[1]


# --- bad checkpoint files ---------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pth"
    torch.save({f"dit.{k}": v for k, v in randomize(tiny_dit(semantic_dim=64)).state_dict().items()}, good)
    files = {"empty": tmp_path / "empty.ckpt", "truncated": tmp_path / "truncated.ckpt"}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["random zip"] = tmp_path / "random.ckpt"
    with zipfile.ZipFile(files["random zip"], "w") as z:
        z.writestr("notes/readme.txt", "not a checkpoint")
    files["foreign pickle"] = tmp_path / "foreign.ckpt"
    files["foreign pickle"].write_bytes(pickle.dumps({"epoch": 3, "weights": [1.0, 2.0]}))
    files["other structure"] = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 7}, files["other structure"])
    return files


@pytest.fixture
def bad_checkpoints(tmp_path):
    return _bad_files(tmp_path)


def _entry_points():
    from ppd_lightning.official import load_dit, load_pixel_perfect_depth, load_semantic_encoder
    from ppd_lightning.training.checkpoint import RESUMABLE_KEYS, AtomicCheckpointIO
    from ppd_lightning.training.run import init_dit_weights
    from ppd_lightning.weights.checkpoints import export_dit, load_model_from_checkpoint

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dit, self.ema_dit = tiny_dit(semantic_dim=64), None

    return {
        "predict --dit / evaluate official.dit=": load_dit,
        "predict --semantics / evaluate official.semantics=": load_semantic_encoder,
        "load_pixel_perfect_depth": lambda p: load_pixel_perfect_depth(p, p),
        "predict --ckpt / evaluate ckpt=": load_model_from_checkpoint,
        "train init_dit=": lambda p: init_dit_weights(Holder(), str(p)),
        "train ckpt_path= (Lightning's loader)": AtomicCheckpointIO(RESUMABLE_KEYS).load_checkpoint,
        "export": lambda p: export_dit(p, p.with_suffix(".safetensors")),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "random zip", "foreign pickle", "other structure"])
def test_every_entry_point_gives_a_checkpoint_error_naming_the_file(bad_checkpoints, kind):
    path = bad_checkpoints[kind]
    for name, load in _entry_points().items():
        if kind == "other structure" and name.startswith("predict --semantics"):
            continue  # a {"model": ...} dict is checked as a MoGe-2 file below
        with pytest.raises(CheckpointError) as e:
            load(path)
        message = str(e.value)
        assert message.startswith(str(path)), (name, message)
        assert "\n" not in message, (name, message)
    if kind == "empty":
        assert "the file is empty (0 bytes)" in message
    if kind == "foreign pickle":
        assert "not a file of tensors and plain containers" in message


# --- one line ---------------------------------------------------------------------------------------


def _raise(exc):
    raise exc


def test_user_errors_are_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("PPD_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e, exit_on_user_error():
        _raise(CheckpointError("x.ckpt: cannot read checkpoint"))
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: x.ckpt: cannot read checkpoint\n"
    # a multi-line message (e.g. a benchmark layout) becomes one line
    with pytest.raises(SystemExit) as e:
        run_main(lambda: _raise(ConfigError("data.root: missing.\n  expected <root>/a.png")))
    assert e.value.code == 1
    assert capsys.readouterr().err == "error: data.root: missing. expected <root>/a.png\n"


def test_run_main_passes_the_exit_status_on():
    assert run_main(lambda: 0) == 0 and run_main(lambda: 3) == 3 and run_main(lambda: None) == 0


def test_traceback_on_request_and_bugs_keep_theirs(monkeypatch):
    monkeypatch.setenv("PPD_TRACEBACK", "1")
    with pytest.raises(CheckpointError), exit_on_user_error():
        _raise(CheckpointError("x"))
    monkeypatch.delenv("PPD_TRACEBACK")
    with pytest.raises(IndexError), exit_on_user_error():
        [][1]  # noqa: B018 - a bug: not a user error
    with pytest.raises(ValueError), exit_on_user_error():
        int("abc")  # raised by Python, not by the package's own checks


def test_which_errors_are_user_errors():
    from ppd_lightning.data.codec import SampleError
    from ppd_lightning.data.stream import NoReadableSamplesError
    from ppd_lightning.evaluation.datasets import BenchmarkLayoutError

    assert is_user_error(BenchmarkLayoutError("root x does not exist"))
    assert is_user_error(NoReadableSamplesError("source 'a': no sample"))
    assert is_user_error(SampleError("shard a.tar: expected depth.npy"))
    assert is_user_error(OSError(errno.ENOSPC, "No space left on device"))
    # anything the package did not raise as its own is a bug, and keeps its traceback
    assert not is_user_error(ValueError("a bug in a shape computation"))
    assert not is_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y.png"))
    assert not is_user_error(KeyError("k"))
    assert not is_user_error(RuntimeError("from torch"))


def test_hydra_instantiate_shows_the_constructors_own_error():
    from hydra.errors import InstantiationException

    from ppd_lightning.training.run import instantiate

    bad = OmegaConf.create(
        {"_target_": "ppd_lightning.data.transforms.ReleaseResize", "size": [32, 32], "crop_from": {"a": [8, 8]}}
    )
    with pytest.raises(ConfigError, match=r"data.crop_from\['a'\] must be \[H, W\]") as e:
        instantiate(bad)  # ours, unwrapped: one line, no Hydra wrapper around it
    assert not isinstance(e.value, InstantiationException)
    buggy = OmegaConf.create({"_target_": "builtins.int", "_args_": ["abc"]})
    with pytest.raises(InstantiationException):  # a plain ValueError stays Hydra's, with its traceback
        instantiate(buggy)


def test_an_error_re_raised_from_a_dataloader_worker_shows_its_message():
    from ppd_lightning.data.codec import SampleError

    text = (
        "Caught SampleError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        f'  File "{REPO}/src/ppd_lightning/data/stream.py", line 10, in __iter__\n'
        "    raise SampleError(...)\nppd_lightning.data.codec.SampleError: shard a.tar: expected depth.npy"
    )
    exc = SampleError(text)  # what torch's worker re-raise builds: the same class, the whole report
    assert is_user_error(exc)
    assert one_line(exc) == "shard a.tar: expected depth.npy"


# --- a full disk ------------------------------------------------------------------------------------


def test_a_full_disk_says_so_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "out" / "metrics.json"
    atomic.write_json(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFullError) as e:
        atomic.write_json(target, {"new": 2})
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert str(e.value).startswith(f"{target}: disk full")
    assert one_line(e.value).startswith(f"{target}: disk full")
    assert target.read_text() == '{\n  "old": 1\n}\n'  # left as it was
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]  # no temporary left behind


# --- config types, sizes, devices -------------------------------------------------------------------


def _train_cfg(**over):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=["experiment=smoke"])
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("data.batch_size", "abc", "data.batch_size: expected an integer >= 1, got 'abc'"),
        ("data.batch_size", 0, "data.batch_size: expected an integer >= 1, got 0"),
        ("data.val_size", [32, "x"], "data.val_size: expected [H, W] of integers >= 1"),
        ("data.train_size", 32, "data.train_size: expected [H, W] of integers >= 1, got 32 (int)"),
        ("model.optimizer.lr", "fast", "model.optimizer.lr: expected a number >= 0, got 'fast'"),
        ("trainer.max_steps", 1.5, "trainer.max_steps: expected an integer >= -1, got 1.5 (float)"),
        ("trainer.devices", "eight", "trainer.devices: expected a positive integer"),
        ("trainer.devices", 0, "trainer.devices: expected a positive integer"),
    ],
)
def test_config_type_errors_name_the_key(key, value, message):
    from ppd_lightning.training.config import check_train_config

    check_train_config(_train_cfg())  # the good config passes
    with pytest.raises(ConfigError) as e:
        check_train_config(_train_cfg(**{key: value}))
    assert str(e.value).startswith(message)


def test_train_and_val_sizes_are_checked_against_the_model():
    from types import SimpleNamespace

    from ppd_lightning.training.preflight import check_sizes

    model = SimpleNamespace(dit=tiny_dit(semantic_dim=64))
    m = model.dit.size_multiple
    check_sizes(model, SimpleNamespace(train_size=(2 * m, 3 * m), val_size=(m, m)))
    with pytest.raises(ConfigError, match=rf"data.val_size: {m + 1}x{m} is not a multiple of {m}"):
        check_sizes(model, SimpleNamespace(train_size=(m, m), val_size=(m + 1, m)))


def test_more_cpu_processes_than_cores_warns(monkeypatch):
    from ppd_lightning.training.preflight import warn_cpu_oversubscription

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert "trainer.devices=8 on the CPU starts 8 training processes on 2 CPU core(s)" in (
        warn_cpu_oversubscription({"accelerator": "cpu", "devices": 8}, cores=2)
    )
    assert warn_cpu_oversubscription({"accelerator": "cpu", "devices": 2}, cores=2) is None
    assert warn_cpu_oversubscription({"accelerator": "gpu", "devices": 8}, cores=2) is None
    monkeypatch.setenv("LOCAL_RANK", "3")  # Lightning's other ranks stay quiet
    assert warn_cpu_oversubscription({"accelerator": "cpu", "devices": 8}, cores=2) is None


def test_package_errors_share_a_base():
    for cls in (CheckpointError, ConfigError, DiskFullError):
        assert issubclass(cls, PPDError)
    from ppd_lightning.official import CheckpointError as FromOfficial

    assert FromOfficial is CheckpointError and issubclass(CheckpointError, ValueError)


# --- the commands, as users run them ----------------------------------------------------------------


def _cli(args, cwd, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("PPD_TRACEBACK", "HYDRA_FULL_ERROR")}
    e.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=e
    )


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_train_cli_bad_key_and_bad_checkpoint_are_one_line(tmp_path):
    base = [str(REPO / "train.py"), "experiment=smoke", f"paths.data_dir={tmp_path / 'data'}"]
    proc = _cli([*base, f"hydra.run.dir={tmp_path / 'a'}", "data.batch_size=abc"], tmp_path)
    assert _one_error_line(proc) == "error: data.batch_size: expected an integer >= 1, got 'abc'"
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    proc = _cli([*base, f"hydra.run.dir={tmp_path / 'b'}", f"ckpt_path={empty}"], tmp_path)
    assert _one_error_line(proc) == f"error: {empty}: cannot read checkpoint: the file is empty (0 bytes)"
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, foreign)
    proc = _cli([*base, f"hydra.run.dir={tmp_path / 'f'}", f"ckpt_path={foreign}"], tmp_path)
    assert _one_error_line(proc).startswith(
        f"error: {foreign}: not a resumable ppd-lightning training checkpoint"
    )
    proc = _cli(
        [*base, f"hydra.run.dir={tmp_path / 'c'}", f"ckpt_path={empty}"], tmp_path, {"PPD_TRACEBACK": "1"}
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_evaluate_and_make_shards_cli_errors_are_one_line(tmp_path):
    bad = _bad_files(tmp_path)["random zip"]
    proc = _cli(
        [str(REPO / "evaluate.py"), "benchmark=nyuv2", f"benchmark.root={tmp_path}", f"ckpt={bad}",
         f"hydra.run.dir={tmp_path / 'ev'}"],
        tmp_path,
    )  # fmt: skip
    assert _one_error_line(proc).startswith(f"error: {bad}: cannot read checkpoint")
    proc = _cli(
        ["-m", "ppd_lightning.data.make_shards", "hypersim", str(tmp_path / "nope"), "--out", "s"], tmp_path
    )
    assert (
        _one_error_line(proc) == f"error: hypersim: raw dataset root {tmp_path / 'nope'} is not a directory"
    )
