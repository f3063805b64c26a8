"""Resuming `train.py` (issue 15, items 3, 4, 6): the losses equal the uninterrupted run's from any checkpoint,
every logger keeps its history, and kill -9 leaves no temporaries and no checkpoints beyond `save_top_k`.

Real subprocess runs at `experiment=smoke` sizes (3 batches per epoch, a step checkpoint every 2 steps),
without validation (it does not touch the training stream) to keep each test short."""

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FAST = ["+trainer.limit_val_batches=0", "validate_after_fit=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def command(run: Path, data_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=smoke",
        f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run}",
        *FAST,
        *args,
    ]


def train(run: Path, data_dir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command(run, data_dir, *args), cwd=run.parent, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def loss_rows(run: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every row of the run's metrics.csv that has a loss, in file order."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def assert_same_losses(straight: Path, resumed: Path, steps: list[int]) -> None:
    a, b = dict(loss_rows(straight)), dict(loss_rows(resumed))
    for step in steps:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """The uninterrupted run: 3 epochs (9 steps), two loader workers (batches interleaved round-robin),
    every step checkpoint kept (steps 2, 4, 6, 8)."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(
        run,
        data_dir,
        "trainer.max_epochs=3",
        "data.num_workers=2",
        "callbacks.model_checkpoint.save_top_k=-1",
    )
    assert [s for s, _ in loss_rows(run)] == list(range(9))
    return run


@pytest.mark.parametrize(
    "step, position",
    [
        (4, {"data_epoch": 1, "data_batches": 1}),  # mid-epoch; the next batch is worker 1's
        (6, {"data_epoch": 2, "data_batches": 0}),  # on epoch 1's last batch: the next epoch's stream
    ],
)
def test_resume_from_a_step_checkpoint_gives_the_uninterrupted_losses(
    tmp_path, data_dir, straight, step, position
):
    ckpt = straight / "checkpoints" / f"step{step:07d}.ckpt"
    resumed = tmp_path / "resumed"
    train(resumed, data_dir, "trainer.max_epochs=3", "data.num_workers=2", f"ckpt_path={ckpt}")
    assert [s for s, _ in loss_rows(resumed)] == list(range(step, 9))
    assert_same_losses(straight, resumed, list(range(step, 9)))
    assert torch.load(ckpt, weights_only=True)["DepthShardDataModule"] == position


def test_stop_at_max_steps_mid_epoch_then_resume_gives_the_uninterrupted_losses(tmp_path, data_dir, straight):
    """Lightning counts an epoch cut short by max_steps as complete; the data stream must not skip the
    rest of it."""
    run = tmp_path / "run"
    common = ("data.num_workers=2", "trainer.max_epochs=100")
    train(run, data_dir, "trainer.max_steps=4", *common)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["DepthShardDataModule"] == {
        "data_epoch": 1,
        "data_batches": 1,
    }
    train(run, data_dir, "trainer.max_steps=9", "ckpt_path=last", *common)
    assert [s for s, _ in loss_rows(run)] == list(range(9))  # the CSV history is kept, no step twice
    assert_same_losses(straight, run, list(range(9)))


def test_resume_keeps_the_csv_history_and_the_wandb_run(tmp_path, data_dir):
    pytest.importorskip("wandb")
    run = tmp_path / "run"
    loggers = "logger=[csv,wandb]"
    train(run, data_dir, "trainer.max_epochs=1", loggers)
    run_id = (run / "wandb_run_id").read_text().strip()
    first = loss_rows(run)
    assert [s for s, _ in first] == [0, 1, 2]
    # the killed run had logged a step past the checkpoint (step 3, which the resumed run trains again),
    # and was killed in the middle of appending a row
    with open(run / "csv" / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    bogus = {k: "" for k in header} | {"step": "3", "train/loss": "999.0"}
    with open(run / "csv" / "metrics.csv", "a") as f:
        f.write(",".join(bogus[k] for k in header) + "\n0.0,0,,4,1.2")

    train(run, data_dir, "trainer.max_epochs=2", "ckpt_path=last", loggers)
    rows = loss_rows(run)
    assert [s for s, _ in rows] == list(range(6))  # steps 0-2 kept, 3-5 once each
    assert rows[:3] == first and 999.0 not in [v for _, v in rows]
    assert (run / "wandb_run_id").read_text().strip() == run_id
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)


def _kill_9_writer(target: Path) -> Path:
    """A process killed with SIGKILL in the middle of an atomic write of ``target``: its temporary stays."""
    code = (
        "import sys, time\n"
        "from ppd_lightning import atomic\n"
        "with atomic.replacing(sys.argv[1]) as f:\n"
        "    f.write(b'x' * 4096); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    temps = list(target.parent.glob(f".{target.name}.{proc.pid}.*.tmp"))
    assert len(temps) == 1
    return temps[0]


def _train_until_killed(run: Path, data_dir: Path, *args: str) -> None:
    """Start train.py and kill -9 it once it has written a new last.ckpt."""
    last = run / "checkpoints" / "last.ckpt"
    before = last.stat().st_mtime_ns if last.is_file() else None
    proc = subprocess.Popen(
        command(run, data_dir, *args), cwd=run.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and last.stat().st_mtime_ns != before:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "train.py ended before it could be killed"
    finally:
        proc.kill()  # SIGKILL
        proc.wait(timeout=60)


def test_kill_9_twice_then_resume_leaves_no_temporaries_and_keeps_save_top_k(tmp_path, data_dir):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        for _ in range(2):
            _train_until_killed(run, data_dir, "trainer.max_epochs=30", "ckpt_path=last")
            # what a kill -9 leaves at its worst: a checkpoint's temporary file, and a step checkpoint
            # written after last.ckpt (the resumed run saves that step again)
            stale = _kill_9_writer(ckpts / "last.ckpt")
            step = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
            shutil.copy(ckpts / "last.ckpt", ckpts / f"step{step + 2:07d}.ckpt")
            assert stale.is_file()
        # a temporary of a process still running, and a user's file, are not ours to delete
        live_tmp = ckpts / f".last.ckpt.{live.pid}.0123abcd.tmp"
        live_tmp.write_bytes(b"partial")
        notes = ckpts / ".notes.tmp"
        notes.write_text("mine")
        train(run, data_dir, "trainer.max_epochs=4", "ckpt_path=last")
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(
        [live_tmp.name, notes.name, "last.ckpt", "step0000012.ckpt"]
    )
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 12
    assert os.path.getsize(ckpts / "step0000012.ckpt") > 0


def test_csv_logger_keeps_history_only_when_resuming(tmp_path):
    from ppd_lightning.training.loggers import ResumableCSVLogger

    def log(resume: bool, steps: range) -> list[int]:
        logger = ResumableCSVLogger(tmp_path, name="csv", version="", resume=resume)
        for s in steps:
            logger.log_metrics({"train/loss": float(s)}, step=s)
        logger.save()
        with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f)]

    assert log(False, range(0, 5)) == [0, 1, 2, 3, 4]
    assert log(True, range(3, 7)) == [0, 1, 2, 3, 4, 5, 6]  # rows from step 3 on are replaced
    assert log(False, range(0, 2)) == [0, 1]  # a fresh run restarts the file


def test_wandb_run_id_is_recorded_and_reused_only_when_resuming(tmp_path):
    from ppd_lightning.training.loggers import WANDB_ID_FILE, wandb_run_id

    first = wandb_run_id(tmp_path, resume=False, write=True)
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first and first.isalnum()
    assert wandb_run_id(tmp_path, resume=True, write=True) == first
    assert wandb_run_id(tmp_path, resume=True, write=False) == first
    fresh = wandb_run_id(tmp_path, resume=False, write=True)
    assert fresh != first and (tmp_path / WANDB_ID_FILE).read_text().strip() == fresh
    (tmp_path / WANDB_ID_FILE).write_text("../../etc\n")  # not an id: a new run, not a crash
    assert wandb_run_id(tmp_path, resume=True, write=False).isalnum()


def test_remove_stale_temporaries_only_removes_dead_writers_temporaries(tmp_path):
    from ppd_lightning import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".step0000002.ckpt.{dead.pid}.deadbeef.tmp"
    mine = tmp_path / f".last.ckpt.{os.getpid()}.0123abcd.tmp"  # a live process's (this one's)
    other = [tmp_path / ".notes.tmp", tmp_path / f"x.{dead.pid}.deadbeef.tmp", tmp_path / "last.ckpt"]
    sub = tmp_path / "sub"
    sub.mkdir()
    nested = sub / stale.name
    for p in (stale, mine, nested, *other):
        p.write_bytes(b"x")
    assert atomic.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and mine.exists() and nested.exists() and all(p.exists() for p in other)
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []
