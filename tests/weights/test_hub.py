"""Released models by name: the real ``hf_hub_download`` against a local server that answers like the Hub
(``HF_ENDPOINT`` = 127.0.0.1), tiny files in the real formats, and every way a file can be missing or wrong.
No test reaches the internet."""

import io
import os
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from model_helpers import da2_checkpoint, moge2_checkpoint, pi3_checkpoint, released_dit_checkpoint
from safetensors.torch import save as save_safetensors

from ppd_lightning.errors import CheckpointError, MissingFileError, PPDError, one_line
from ppd_lightning.official import load_pixel_perfect_depth
from ppd_lightning.weights.hub import (
    RELEASED,
    WEIGHTS_DIR_ENV,
    UnknownModelError,
    WeightsNotFoundError,
    is_released_name,
    released,
    resolve_model_files,
)

PPD_REPO, DA2_REPO = "gangweix/Pixel-Perfect-Depth", "depth-anything/Depth-Anything-V2-Large"
MOGE_REPO, PI3_REPO = "Ruicheng/moge-2-vitl-normal", "yyfz233/Pi3"
MOGE_DIM = 96  # the tiny MoGe-2's dim_out, so its DiT's semantic width


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """Every released file, tiny, in its real format, by its name in a weights folder."""
    return {
        "ppd.pth": _torch_bytes(released_dit_checkpoint()),
        "depth_anything_v2_vitl.pth": _torch_bytes(da2_checkpoint(dim=24)),
        "moge2.pt": _torch_bytes(moge2_checkpoint(dim_out=MOGE_DIM)),
        "pi3.safetensors": save_safetensors(pi3_checkpoint()),
        "ppd_moge.pth": _torch_bytes(released_dit_checkpoint(semantic_dim=MOGE_DIM, seed=1)),
        "ppvd.pth": _torch_bytes(released_dit_checkpoint(prefix="dit_video.", seed=2)),
    }


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean environment: an empty HF_HOME and default weights folder under tmp_path; set after
    huggingface_hub was imported, which the code must honour (it reads the environment at each call)."""
    from huggingface_hub import constants

    for var in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # in case the shell that ran pytest was offline
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture
def hub(env, files, monkeypatch):
    server = FakeHub()
    server.add(PPD_REPO, "ppd.pth", files["ppd.pth"])
    server.add(DA2_REPO, "depth_anything_v2_vitl.pth", files["depth_anything_v2_vitl.pth"])
    server.add(MOGE_REPO, "model.pt", files["moge2.pt"])
    server.add(PI3_REPO, "model.safetensors", files["pi3.safetensors"])
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    yield server
    server.stop()


def _cache(env: Path) -> Path:
    return env / "hf" / "hub"


def _snapshot(hub: FakeHub, env: Path, repo: str, filename: str) -> Path:
    return _cache(env) / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.commit(repo) / filename


def _weights_dir(tmp_path: Path, files: dict[str, bytes], *names: str, sub: str = "w") -> Path:
    folder = tmp_path / sub
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(files[n])
    return folder


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and one_line(exc.value) == text
    return text


# --- the registry -------------------------------------------------------------------------------------


def test_registry_names_kinds_and_sources():
    assert set(RELEASED) == {"ppd", "ppd-moge2", "ppvd", "moge2"}
    assert {n: m.kind for n, m in RELEASED.items()} == {
        "ppd": "image",
        "ppd-moge2": "image",
        "ppvd": "video",
        "moge2": "geometry",
    }
    hub_files = {
        (f.repo_id, f.hub_filename) for m in RELEASED.values() for f in m.files().values() if f.on_hub
    }
    assert hub_files == {
        (PPD_REPO, "ppd.pth"),
        (DA2_REPO, "depth_anything_v2_vitl.pth"),
        (MOGE_REPO, "model.pt"),
        (PI3_REPO, "model.safetensors"),
    }
    drive = {
        f.filename: f.download_url for m in RELEASED.values() for f in m.files().values() if not f.on_hub
    }
    assert set(drive) == {"ppd_moge.pth", "ppvd.pth"}
    assert all(url.startswith("https://drive.google.com/file/d/") for url in drive.values())
    moge2 = RELEASED["ppd-moge2"]
    assert moge2.semantics is moge2.geometry is RELEASED["moge2"].geometry
    assert RELEASED["ppd"].geometry is None and RELEASED["moge2"].dit is None
    assert is_released_name("ppd") and not is_released_name("ppd.pth") and not is_released_name(Path("ppd"))


# --- downloads through huggingface_hub ------------------------------------------------------------------


def test_first_download_lands_in_hf_home_and_loads(hub, env, files):
    got = released("ppd")
    assert (got.name, got.kind, got.geometry) == ("ppd", "image", None)
    assert got.dit == _snapshot(hub, env, PPD_REPO, "ppd.pth")
    assert got.semantics == _snapshot(hub, env, DA2_REPO, "depth_anything_v2_vitl.pth")
    assert got.dit.read_bytes() == files["ppd.pth"]
    assert got.semantics.read_bytes() == files["depth_anything_v2_vitl.pth"]
    # the Hub's protocol and nothing else: a HEAD on resolve (answered by a redirect), a GET of the blob
    # from the CDN; no xet (no X-Xet-* headers are served), no other endpoint
    sha = {r: hub.sha256(r, f) for r, f in ((PPD_REPO, "ppd.pth"), (DA2_REPO, "depth_anything_v2_vitl.pth"))}
    assert sorted((r.server, r.method, r.path) for r in hub.requests) == sorted(
        [("hub", "HEAD", f"/{PPD_REPO}/resolve/main/ppd.pth"), ("cdn", "GET", f"/blobs/{sha[PPD_REPO]}")]
        + [
            ("hub", "HEAD", f"/{DA2_REPO}/resolve/main/depth_anything_v2_vitl.pth"),
            ("cdn", "GET", f"/blobs/{sha[DA2_REPO]}"),
        ]
    )
    model = load_pixel_perfect_depth(got.dit, got.semantics)  # the files are the real formats
    assert model.dit.config()["hidden_size"] == 32

    geometry = released("moge2")
    assert (geometry.kind, geometry.dit, geometry.semantics) == ("geometry", None, None)
    assert geometry.geometry == _snapshot(hub, env, MOGE_REPO, "model.pt")


def test_cached_second_run_needs_no_server(hub, env):
    first = released("ppd")
    hub.stop()
    assert released("ppd") == first


def test_offline_uses_the_cache_and_never_calls(hub, env, monkeypatch):
    first = released("ppd")
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert released("ppd") == first
    assert len(hub.requests) == n

    monkeypatch.setenv("HF_HOME", str(env / "empty-hf"))
    with pytest.raises(WeightsNotFoundError) as exc:
        released("ppd")
    msg = _one_line(exc)
    assert all(s in msg for s in ("ppd.pth", PPD_REPO, "HF_HUB_OFFLINE", str(env / "empty-hf" / "hub")))
    assert "https://huggingface.co/gangweix/Pixel-Perfect-Depth/resolve/main/ppd.pth" in msg
    assert len(hub.requests) == n


def _big_ppd(hub: FakeHub) -> bytes:
    """A ppd.pth larger than huggingface_hub's download chunk: it resumes from whole chunks written."""
    from huggingface_hub import constants

    data = _torch_bytes(released_dit_checkpoint(hidden_size=192, num_heads=3))
    assert len(data) > getattr(constants, "DOWNLOAD_CHUNK_SIZE", 10 * 2**20) + 2**20
    hub.add(PPD_REPO, "ppd.pth", data)
    return data


def test_interrupted_download_resumes_with_a_range_request(hub, env):
    data = _big_ppd(hub)
    cut = len(data) - 100_000
    hub.cut_downloads(PPD_REPO, "ppd.pth", after=cut)
    got = released("ppd")
    assert got.dit.read_bytes() == data
    gets = [r for r in hub.calls("GET", "cdn") if r.path == f"/blobs/{hub.sha256(PPD_REPO, 'ppd.pth')}"]
    assert len(gets) == 2 and "Range" not in gets[0].headers
    resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= cut  # the second request asked only for the rest
    assert not list(got.dit.parent.parent.parent.glob("blobs/*.incomplete"))


# --- corrupt, foreign and missing files -------------------------------------------------------------------


def test_html_page_served_as_the_file_is_one_error_naming_it(hub, env):
    hub.add(PPD_REPO, "ppd.pth", b"<!DOCTYPE html><html><body>Service unavailable</body></html>")
    with pytest.raises(CheckpointError) as exc:
        released("ppd")
    msg = _one_line(exc)
    cached = _snapshot(hub, env, PPD_REPO, "ppd.pth")
    assert msg.startswith(f"{cached}: a web page")
    assert f"delete {os.path.realpath(cached)}" in msg


def test_corrupted_in_transit_then_deleted_as_told_downloads_afresh(hub, env, files):
    hub.corrupt_next_download(PPD_REPO, "ppd.pth", b"\0" * len(files["ppd.pth"]))  # right size, wrong bytes
    with pytest.raises(CheckpointError) as exc:
        released("ppd")
    msg = _one_line(exc)
    cached = _snapshot(hub, env, PPD_REPO, "ppd.pth")
    blob = Path(os.path.realpath(cached))
    assert str(cached) in msg and "truncated, or not a PyTorch" in msg and f"delete {blob}" in msg
    with pytest.raises(CheckpointError):  # not fixed by itself: the cache keeps the bad file
        released("ppd")
    blob.unlink()  # what the message says to do
    assert released("ppd").dit.read_bytes() == files["ppd.pth"]


def test_truncated_and_foreign_files_name_the_file_and_what_it_is(hub, env, files):
    hub.add(PPD_REPO, "ppd.pth", files["ppd.pth"][: len(files["ppd.pth"]) // 2])  # a truncated upload
    with pytest.raises(CheckpointError, match="truncated") as exc:
        released("ppd")
    assert str(_snapshot(hub, env, PPD_REPO, "ppd.pth")) in _one_line(exc)

    hub.add(PPD_REPO, "ppd.pth", files["depth_anything_v2_vitl.pth"])  # another model's file
    with pytest.raises(CheckpointError) as exc:
        released("ppd")
    msg = _one_line(exc)
    assert "not ppd.pth" in msg and "dit.x_embedder.proj.weight" in msg
    assert "it looks like depth_anything_v2_vitl.pth" in msg

    hub.add(MOGE_REPO, "model.pt", files["ppd.pth"])
    with pytest.raises(CheckpointError, match="it looks like ppd.pth or ppd_moge.pth"):
        released("moge2")
    hub.add(MOGE_REPO, "model.pt", _torch_bytes({"model_config": {}, "model": {"neck.w": torch.zeros(1)}}))
    with pytest.raises(CheckpointError, match="encoder.backbone"):
        released("moge2")  # MoGe-2's outer layout without its ViT

    pi3 = files["pi3.safetensors"]
    hub.add(PI3_REPO, "model.safetensors", pi3[: len(pi3) - 1000])
    folder = _weights_dir(env, files, "ppvd.pth")
    with pytest.raises(CheckpointError, match="cannot read the safetensors header") as exc:
        released("ppvd", folder)
    assert "model.safetensors" in _one_line(exc)
    hub.add(PI3_REPO, "model.safetensors", save_safetensors(da2_checkpoint(dim=24)))
    with pytest.raises(CheckpointError, match="encoder.register_tokens.*it looks like depth_anything"):
        released("ppvd", folder)


def test_missing_file_and_missing_repo_are_one_error_naming_them(hub, env):
    hub.repos[PPD_REPO].pop("ppd.pth")
    with pytest.raises(WeightsNotFoundError) as exc:
        released("ppd")
    msg = _one_line(exc)
    assert f"{PPD_REPO} has no 'ppd.pth'" in msg and hub.endpoint in msg and "HTTP 404" in msg

    hub.repos.pop(DA2_REPO)
    with pytest.raises(WeightsNotFoundError) as exc:
        resolve_model_files(model="ppd", dit=__file__)
    msg = _one_line(exc)
    assert f"repository {DA2_REPO} not found at {hub.endpoint}" in msg and "depth_anything_v2_vitl.pth" in msg
    assert isinstance(exc.value, PPDError) and isinstance(exc.value, FileNotFoundError)


# --- files published on Google Drive only, and weights folders -----------------------------------------------


def test_drive_only_file_absent_says_where_to_get_it_and_where_to_put_it(hub, env, files):
    with pytest.raises(WeightsNotFoundError) as exc:
        released("ppd-moge2")
    msg = _one_line(exc)
    default = env / "xdg" / "ppd-lightning"
    assert msg.startswith("ppd-moge2 needs ppd_moge.pth")
    assert "https://drive.google.com/file/d/1tabmcsbRVDKDfmO4KU1vOjurzN-wp0HV/view" in msg
    assert f"put it in {default} as ppd_moge.pth" in msg and "--weights-dir" in msg and WEIGHTS_DIR_ENV in msg
    assert hub.requests == []  # reported before any download starts

    folder = _weights_dir(env, files)
    with pytest.raises(WeightsNotFoundError, match=f"put it in {folder} as ppvd.pth"):
        released("ppvd", weights_dir=folder)
    with pytest.raises(MissingFileError, match=f"weights dir {env / 'nope'}: no such folder"):
        released("ppvd", weights_dir=env / "nope")


def test_drive_only_file_found_in_weights_dir_env_var_and_default_folder(hub, env, files, monkeypatch):
    folder = _weights_dir(env, files, "ppd_moge.pth")
    got = released("ppd-moge2", weights_dir=folder)
    assert got.dit == folder / "ppd_moge.pth"
    assert got.semantics == got.geometry == _snapshot(hub, env, MOGE_REPO, "model.pt")
    model = load_pixel_perfect_depth(got.dit, got.semantics)
    assert model.dit.config()["semantic_dim"] == MOGE_DIM

    other = _weights_dir(env, files, "ppd_moge.pth", "ppvd.pth", sub="env")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(other))
    assert released("ppd-moge2").dit == other / "ppd_moge.pth"
    assert released("ppd-moge2", weights_dir=folder).dit == folder / "ppd_moge.pth"  # the argument first
    video = released("ppvd")
    assert (video.kind, video.dit, video.semantics) == (
        "video",
        other / "ppvd.pth",
        _snapshot(hub, env, PI3_REPO, "model.safetensors"),
    )

    monkeypatch.delenv(WEIGHTS_DIR_ENV)
    default = _weights_dir(env / "xdg", files, "ppd_moge.pth", sub="ppd-lightning")
    assert released("ppd-moge2").dit == default / "ppd_moge.pth"


def test_hub_files_in_a_weights_dir_need_no_network(hub, env, files):
    folder = _weights_dir(env, files, "ppd.pth", "depth_anything_v2_vitl.pth", "moge2.pt")
    assert released("ppd", folder) == resolve_model_files(model="ppd", weights_dir=folder)
    got = released("ppd", folder)
    assert (got.dit, got.semantics) == (folder / "ppd.pth", folder / "depth_anything_v2_vitl.pth")
    assert released("moge2", folder).geometry == folder / "moge2.pt"
    assert hub.requests == []


def test_bad_file_in_a_weights_dir_names_it_and_its_download(hub, env, files):
    folder = _weights_dir(env, files)
    (folder / "ppd_moge.pth").write_bytes(b"\n  <html><head><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(CheckpointError) as exc:
        released("ppd-moge2", folder)
    msg = _one_line(exc)
    assert msg.startswith(f"{folder / 'ppd_moge.pth'}: a web page") and "Google Drive" in msg
    assert "replace it with https://drive.google.com/file/d/1tabmcsbRVDKDfmO4KU1vOjurzN-wp0HV/view" in msg

    (folder / "ppvd.pth").write_bytes(files["ppd_moge.pth"])  # the image DiT where the video DiT goes
    with pytest.raises(CheckpointError, match="ppvd.pth: not ppvd.pth .*'dit_video.\\*'.*looks like ppd.pth"):
        released("ppvd", folder)
    (folder / "ppd.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        released("ppd", folder)
    assert hub.requests == []


# --- names and paths together -----------------------------------------------------------------------------


def test_names_and_paths_mix(hub, env, files, monkeypatch):
    folder = _weights_dir(env, files, "ppd.pth", "depth_anything_v2_vitl.pth")
    plain = resolve_model_files(folder / "ppd.pth", str(folder / "depth_anything_v2_vitl.pth"))
    assert plain == type(plain)(folder / "ppd.pth", folder / "depth_anything_v2_vitl.pth")
    assert (plain.name, plain.kind) == (None, None) and hub.requests == []

    mixed = resolve_model_files(
        model="ppd", semantics=folder / "depth_anything_v2_vitl.pth", geometry="moge2"
    )
    assert (mixed.name, mixed.kind) == ("ppd", "image")
    assert mixed.dit == _snapshot(hub, env, PPD_REPO, "ppd.pth")
    assert mixed.geometry == _snapshot(hub, env, MOGE_REPO, "model.pt")
    assert not [r for r in hub.requests if DA2_REPO in r.path]  # a role given by path is never downloaded

    by_dit_name = resolve_model_files("ppd")
    assert by_dit_name == released("ppd")
    assert resolve_model_files(semantics="ppd-moge2").semantics == mixed.geometry

    monkeypatch.chdir(folder)
    (folder / "ppd").write_bytes(files["ppd.pth"])
    assert resolve_model_files("./ppd", "ppd.pth").dit == Path("ppd")

    with pytest.raises(
        UnknownModelError, match="unknown model 'pdd': expected one of ppd, ppd-moge2, ppvd, moge2"
    ):
        resolve_model_files(model="pdd")
    with pytest.raises(MissingFileError, match="dit file pdd: no such file; released models: ppd"):
        resolve_model_files("pdd")
    with pytest.raises(MissingFileError, match="semantics file .*missing.pth: no such file$"):
        resolve_model_files("ppd", folder / "missing.pth")
    with pytest.raises(
        UnknownModelError, match="geometry='ppd': the released model 'ppd' has no geometry file"
    ):
        resolve_model_files(model="ppd", geometry="ppd")


# --- slow: huggingface_hub's own retries and back-off take tens of seconds ------------------------------------


@pytest.mark.slow
def test_unreachable_server_and_nothing_cached_is_one_error(env, monkeypatch):
    server = FakeHub()
    endpoint = server.endpoint
    server.stop()  # nothing listens there any more: connection refused
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(WeightsNotFoundError) as exc:
        released("moge2")
    msg = _one_line(exc)
    assert f"could not reach {endpoint}" in msg and "ConnectError" in msg and MOGE_REPO in msg


@pytest.mark.slow
def test_download_dropped_for_good_is_one_error_and_the_next_run_starts_over(hub, env, files):
    hub.cut_downloads(PPD_REPO, "ppd.pth", after=1000, times=100)
    with pytest.raises(WeightsNotFoundError) as exc:
        released("ppd")
    msg = _one_line(exc)
    assert f"ppd needs ppd.pth ({RELEASED['ppd'].dit.what}; {PPD_REPO} 'ppd.pth')" in msg and "failed" in msg
    blobs = _cache(env) / f"models--{PPD_REPO.replace('/', '--')}" / "blobs"
    assert not list(blobs.glob("*"))  # huggingface_hub kept no partial file
    hub._cuts.clear()
    assert released("ppd").dit.read_bytes() == files["ppd.pth"]
    last = [r for r in hub.calls("GET", "cdn") if r.path.endswith(hub.sha256(PPD_REPO, "ppd.pth"))][-1]
    assert "Range" not in last.headers  # this huggingface_hub restarts an abandoned download from byte 0


# --- names where paths go: the Python API, predict, the app ------------------------------------------------


def test_names_work_in_the_python_api_and_predict(env, files, monkeypatch, tmp_path):
    import cv2
    import numpy as np

    from ppd_lightning import predict
    from ppd_lightning.models.ppd import PixelPerfectDepth

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # everything from the weights folder: no server at all
    folder = _weights_dir(env, files, "ppd.pth", "depth_anything_v2_vitl.pth")
    by_name = load_pixel_perfect_depth("ppd", weights_dir=folder)
    by_path = load_pixel_perfect_depth(folder / "ppd.pth", folder / "depth_anything_v2_vitl.pth")
    assert by_name.dit.config() == by_path.dit.config()
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    assert PixelPerfectDepth.from_released("ppd").dit.config() == by_path.dit.config()
    with pytest.raises(PPDError, match="'moge2' is a geometry model, not an image model"):
        load_pixel_perfect_depth("moge2")

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    common = ["--steps", "1", "--area", str(64 * 48), "--device", "cpu"]
    assert predict.main([str(image), "--out", str(tmp_path / "a"), "--model", "ppd", *common]) == 0
    paths = ["--dit", str(folder / "ppd.pth"), "--semantics", str(folder / "depth_anything_v2_vitl.pth")]
    assert predict.main([str(image), "--out", str(tmp_path / "b"), *paths, *common]) == 0
    a, b = np.load(tmp_path / "a" / "photo_depth.npy"), np.load(tmp_path / "b" / "photo_depth.npy")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(PPDError, match="not several"):
        predict.main([str(image), "--out", str(tmp_path / "c"), "--model", "ppd", *paths, *common])


def test_evaluate_takes_a_released_name(env, files, monkeypatch, tmp_path):
    import sys

    from hydra import compose, initialize_config_dir

    from ppd_lightning.evaluation.run import evaluate

    sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
    from fake_benchmarks import build

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _weights_dir(env, files, "ppd.pth", "depth_anything_v2_vitl.pth")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    build("hypersim", tmp_path / "hypersim")
    common = ["protocol=ppd", "benchmark=hypersim", f"benchmark.root={tmp_path / 'hypersim'}", "steps=1"]
    common += ["infer_area=1024", "device=cpu", "num_workers=0", "progress=false", "benchmark.split=null"]
    results = []
    for i, source in enumerate(
        (
            ["official=ppd"],
            ["official.dit=ppd"],
            [f"official.dit={folder / 'ppd.pth'}", f"official.semantics={folder / 'depth_anything_v2_vitl.pth'}"],
        )
    ):
        with initialize_config_dir(config_dir=str(Path(__file__).parents[2] / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=[*common, *source, f"output_dir={tmp_path / str(i)}"])
        results.append(evaluate(cfg)["hypersim"])
    assert results[0]["n_images"] == 2
    assert results[0]["abs_rel"] == results[1]["abs_rel"] == results[2]["abs_rel"]
