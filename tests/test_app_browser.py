"""The app in a real browser: ``python -m ppd_lightning.app`` with a tiny random model on 127.0.0.1, driven by
headless Chromium (Debian's ``chromium``) through Playwright.

Playwright rather than Selenium + chromedriver: it waits for elements by itself (no sleeps, no retry loops
around a page that Gradio renders asynchronously), sets files on an ``<input type=file>`` directly, captures
downloads as files, takes element screenshots, and drives the system browser through its DevTools protocol
(``executable_path``) with no driver binary whose version must match the browser's.

The downloads are checked against ``python -m ppd_lightning.predict`` on the same image with the same seed;
the screenshots must not be blank. The page screenshot is the README's ``docs/app.png``: written when it is
missing or with ``PPD_UPDATE_SCREENSHOT=1``.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import trimesh
from app_helpers import AREA, STEPS, camera_frame_ply, scene_png, tiny_ppd_files, truncated_png
from playwright import sync_api

from ppd_lightning import atomic, predict

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "app.png"
MAX_PIXELS = 300_000  # the server's --max-pixels: a 640x480 upload is refused
SEED = 5

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium; CI's .ci/run installs it)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _video_files(folder: Path) -> tuple[Path, Path, Path]:
    """A tiny random PPVD (``ppvd.pth`` + Pi3's ``model.safetensors``) and a 20-frame mp4."""
    sys.path.insert(0, str(Path(__file__).parent / "video"))
    from model_helpers import pi3_checkpoint, video_dit_checkpoint
    from safetensors.torch import save_file
    from video_fakes import write_synthetic_video

    from ppd_lightning.models.video_dit import REFERENCE_FROM

    dit, semantics = folder / "ppvd.pth", folder / "pi3.safetensors"
    torch.save(video_dit_checkpoint(depth=24, temporal_depth=3, reference_from=REFERENCE_FROM), dit)
    save_file(pi3_checkpoint(), semantics)
    return dit, semantics, write_synthetic_video(folder / "clip.mp4", frames=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app's own command line on a free port, serving a tiny random image model (and video model)."""
    root = tmp_path_factory.mktemp("app-browser")
    dit, semantics = tiny_ppd_files(root / "weights")
    video = _video_files(root / "weights")
    port = _free_port()
    cmd = [sys.executable, "-m", "ppd_lightning.app", "--dit", str(dit), "--semantics", str(semantics)]
    cmd += ["--area", str(AREA), "--steps", str(STEPS), "--device", "cpu", "--port", str(port)]
    cmd += ["--max-pixels", str(MAX_PIXELS), "--max-upload", "5mb"]
    cmd += ["--video-dit", str(video[0]), "--video-semantics", str(video[1])]
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env |= {
        "GRADIO_TEMP_DIR": str(root / "gradio"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 150
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within 150 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "dit": dit, "semantics": semantics, "video": video, "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(server["url"], wait_until="domcontentloaded")
    page.locator("#run-image").wait_for()
    yield page
    context.close()


def _not_blank(png: bytes, what: str, min_std: float = 8.0) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR_RGB)
    assert image is not None and image.size, what
    assert image.std() > min_std, f"{what} looks blank (pixel std {image.std():.1f})"
    return image


def _download_all(page, links, folder: Path) -> dict[str, Path]:
    got = {}
    for i in range(links.count()):
        with page.expect_download() as info:
            links.nth(i).click()
        d = info.value
        got[d.suggested_filename] = folder / d.suggested_filename
        d.save_as(got[d.suggested_filename])
    return got


def _upload_and_run(page, image: Path):
    page.locator("#image-input input[type=file]").set_input_files(str(image))
    page.locator("#image-input img").wait_for()  # the upload arrived and is shown
    page.locator("#run-image").click()


def test_image_depth_3d_view_and_downloads_match_predict(page, server, tmp_path):
    image = scene_png(tmp_path / "scene.png", height=192, width=256)
    page.locator("#seed input").fill(str(SEED))
    page.locator("#outlier-filter input[type=checkbox]").uncheck()  # predict --ply keeps every point
    _upload_and_run(page, image)

    info = page.locator("#image-info")
    sync_api.expect(info).to_contain_text("scene.png: 256x192, sampled at 64x48", timeout=60_000)
    sync_api.expect(info).to_contain_text("assumed, not metric")
    sync_api.expect(page.locator("#depth-map img")).to_have_attribute("src", re.compile(r"\.png"))
    assert page.locator("#depth-slider img").count() == 2  # image | depth
    canvas = page.locator("#point-cloud canvas")
    canvas.wait_for()
    page.wait_for_timeout(1500)  # the viewer's first frames

    files = _download_all(page, page.locator("#downloads a[download]"), tmp_path)
    assert sorted(files) == ["scene.glb", "scene.ply", "scene_depth.npy", "scene_depth16.png"]

    out = tmp_path / "predict"
    args = [
        str(image),
        "--out",
        str(out),
        "--dit",
        str(server["dit"]),
        "--semantics",
        str(server["semantics"]),
    ]
    args += ["--steps", str(STEPS), "--seed", str(SEED), "--area", str(AREA), "--ply", "--device", "cpu"]
    assert predict.main(args) == 0
    want = np.load(out / "scene_depth.npy")
    got = np.load(files["scene_depth.npy"])
    assert got.dtype == np.float32 and got.shape == want.shape == (192, 256)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)  # another process: the same call, same seed
    png16 = cv2.imread(str(files["scene_depth16.png"]), cv2.IMREAD_UNCHANGED)
    assert png16.dtype == np.uint16 and png16.shape == want.shape and (png16.min(), png16.max()) == (0, 65535)
    span = float(want.max() - want.min())
    np.testing.assert_allclose(png16 / 65535.0, (want - want.min()) / span, rtol=0, atol=1e-4 + 1e-5 / span)
    points, colours = camera_frame_ply(files["scene.ply"])
    want_points, want_colours = camera_frame_ply(out / "scene.ply")
    np.testing.assert_allclose(points, want_points, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(colours, want_colours)
    (cloud,) = trimesh.load(files["scene.glb"], file_type="glb").geometry.values()
    np.testing.assert_allclose(cloud.vertices, points * [1, -1, -1], rtol=0, atol=1e-6)

    view = _not_blank(page.locator("#point-cloud").screenshot(), "the 3D view", min_std=1.0)
    background = np.array([0.12, 0.12, 0.14]) * 255
    drawn = (np.abs(view.astype(np.float64) - background).sum(-1) > 30).mean()
    assert drawn > 0.002, (
        f"the 3D view shows no points ({drawn:.4%} of its pixels differ from the background)"
    )
    _not_blank(page.locator("#depth-map").screenshot(), "the depth map")
    shot = page.screenshot(full_page=True)
    _not_blank(shot, "the page")
    (tmp_path / "app.png").write_bytes(shot)
    if os.environ.get("PPD_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
        image = cv2.resize(image, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)  # a README image
        ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        atomic.write_bytes(SCREENSHOT, png.tobytes())


def test_a_bad_upload_is_one_message_and_the_app_keeps_serving(page, server, tmp_path):
    good = scene_png(tmp_path / "good.png")
    cut = truncated_png(tmp_path / "cut.png", good)
    page.locator("#image-input input[type=file]").set_input_files(str(cut))
    page.locator("#run-image").click()
    message = page.get_by_text(re.compile(r"cut\.png: not a readable image \(80 bytes; truncated"))
    sync_api.expect(message).to_have_count(1, timeout=60_000)
    _not_blank(page.screenshot(), "the page with the error")

    page.goto(server["url"])
    huge = tmp_path / "huge.png"
    huge.write_bytes(np.random.default_rng(0).bytes(6_000_000))  # over the server's --max-upload 5mb
    page.locator("#image-input input[type=file]").set_input_files(str(huge))
    sync_api.expect(page.get_by_text('exceed the maximum allowed size of 5.0 Mb: "huge.png"')).to_have_count(1)

    page.goto(server["url"])
    big = scene_png(tmp_path / "big.png", height=480, width=640)
    _upload_and_run(page, big)
    sync_api.expect(page.get_by_text(re.compile(r"big\.png: 640x480 is 0\.3 MP, more than"))).to_have_count(1)

    page.goto(server["url"])
    page.locator(".gallery-item").first.click()  # an example (the synthetic world), after the failures
    page.locator("#image-input img").wait_for()
    page.locator("#run-image").click()
    sync_api.expect(page.locator("#image-info")).to_contain_text("synthetic_0.png: 512x384", timeout=60_000)


def test_video_depth_and_download(page, server, tmp_path):
    dit, semantics, clip = server["video"]
    page.get_by_role("tab", name="Video").click()
    page.locator("#video-input input[type=file]").set_input_files(str(clip))
    page.locator("#run-video").click()
    sync_api.expect(page.locator("#video-info")).to_contain_text("clip.mp4: 20 frame(s)", timeout=60_000)
    sync_api.expect(page.locator("#depth-video video")).to_have_attribute(
        "src", re.compile(r"clip_depth\.mp4")
    )
    sync_api.expect(page.locator("#side-by-side video")).to_have_attribute(
        "src", re.compile(r"side_by_side\.mp4")
    )
    files = _download_all(page, page.locator("#video-depths a[download]"), tmp_path)
    assert list(files) == ["clip_depths.npz"]

    from ppd_lightning.app import build_parser, load_video_model
    from ppd_lightning.video.run import VideoOptions, predict_video

    args = ["--video-dit", str(dit), "--video-semantics", str(semantics), "--device", "cpu"]
    model = load_video_model(build_parser().parse_args(args))
    predict_video(clip, model, tmp_path / "direct", VideoOptions(steps=STEPS, seed=0, progress=False))
    got, want = np.load(files["clip_depths.npz"]), np.load(tmp_path / "direct" / "clip_depths.npz")
    assert got["depths"].shape == want["depths"].shape and len(got["depths"]) == 20
    np.testing.assert_allclose(got["depths"], want["depths"], rtol=0, atol=1e-5)
    _not_blank(page.screenshot(full_page=True), "the video tab")
