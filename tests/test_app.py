"""refusion app: the request function on tiny models, the server through gradio_client, and the page in
a real headless Chromium (Debian's chromium + chromium-driver; no browser is downloaded).

Hostile uploads (not an image, truncated, a decompression bomb, a declared 100-megapixel image,
transparent RGBA, an image above --max-megapixels) get a message and the next request still works;
16-bit PNG/TIFF, grey and opaque RGBA images are restored, 16-bit in gives 16-bit out.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from refusion.benchmarks.app_start import stop_server
from refusion.benchmarks.ports import free_port
from refusion.cli import app as app_cli
from refusion.cli.app_service import AppInputError, AppService, Limits, Settings, metrics_markdown
from refusion.data.image_io import image_bit_depth, read_image, write_image
from refusion.evaluation import metrics
from refusion.inference.pipeline import RefusionPipeline
from refusion.models.conditional_nafnet import ConditionalNAFNet
from refusion.models.nafnet import NAFNet
from refusion.schedulers.ir_sde import IRSDEScheduler

ROOT = Path(__file__).resolve().parents[1]
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TRAINED_STEPS = 20
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,2000")


# ----------------------------------------------------------------------------------------------
# Tiny models and upload files


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """A saved NAFNet (regressor) and a saved RefusionPipeline (SDE), both tiny."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    nafnet = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    with torch.no_grad():  # a visible, deterministic change of the image
        nafnet.ending.weight.mul_(0).add_(0.01)
        nafnet.ending.bias.fill_(0.003)
    nafnet.save_pretrained(root / "tiny_nafnet")
    unet = ConditionalNAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
    RefusionPipeline(unet=unet, scheduler=IRSDEScheduler(num_train_timesteps=TRAINED_STEPS)).save_pretrained(
        root / "tiny_sde")
    return {"regressor": root / "tiny_nafnet", "sde": root / "tiny_sde"}


def _png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose header is rewritten to declare width x height (a decompression bomb)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (40, 80, 120)).save(buffer, format="PNG")
    out = bytearray(buffer.getvalue())
    struct.pack_into(">II", out, 16, width, height)
    struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    return bytes(out)


def make_uploads(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image = rng.random((24, 32, 3))
    files = {name: folder / name for name in (
        "photo.png", "deep.png", "deep.tif", "photo.jpg", "grey.png", "opaque_rgba.png",  # accepted
        "text.png", "truncated.png", "bomb.png", "hundred_mp.png", "transparent.png", "large.png")}
    write_image(files["photo.png"], image)
    write_image(files["deep.png"], image, bit_depth=16)
    tifffile.imwrite(files["deep.tif"], (image * 65535).astype(np.uint16), photometric="rgb")
    Image.fromarray((image * 255).astype(np.uint8)).save(files["photo.jpg"], quality=95)
    Image.fromarray((image[:, :, 0] * 255).astype(np.uint8), "L").save(files["grey.png"])
    rgba = np.concatenate([(image * 255).astype(np.uint8), np.full((24, 32, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(files["opaque_rgba.png"])
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(files["transparent.png"])
    files["text.png"].write_text("this is text, not a PNG")
    files["truncated.png"].write_bytes(files["photo.png"].read_bytes()[:80])
    files["bomb.png"].write_bytes(_png_declaring(100_000, 100_000))
    files["hundred_mp.png"].write_bytes(_png_declaring(10_000, 10_000))
    write_image(files["large.png"], np.full((1000, 1200, 3), 0.5))          # 1.2 megapixels, real
    return files


HOSTILE = {  # upload -> what the message must say
    "text.png": "not an image file",
    "truncated.png": "corrupt or truncated",
    "bomb.png": "decompression bomb",
    "hundred_mp.png": "10000x10000 = 100.0 megapixels",
    "transparent.png": "transparent pixels",
    "large.png": "above the limit of 1.0 megapixels",
}


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, Path]:
    return make_uploads(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def service(model_dirs, tmp_path_factory) -> AppService:
    models = app_cli.load_models([app_cli.ModelSpec(model_dirs["regressor"]), app_cli.ModelSpec(model_dirs["sde"])],
                                 torch.device("cpu"))
    return AppService(models, Limits(max_pixels=1_000_000, max_steps=10), tmp_path_factory.mktemp("work"),
                      device=torch.device("cpu"))


# ----------------------------------------------------------------------------------------------
# The request function, without a server


@pytest.mark.parametrize("name, bit_depth, suffix", [
    ("photo.png", 8, ".png"), ("deep.png", 16, ".png"), ("deep.tif", 16, ".tif"), ("photo.jpg", 8, ".png"),
    ("grey.png", 8, ".png"), ("opaque_rgba.png", 8, ".png")])
@pytest.mark.parametrize("model", ["tiny_nafnet", "tiny_sde"])
def test_restore_writes_the_full_resolution_result_at_the_input_bit_depth(service, uploads, model, name,
                                                                          bit_depth, suffix):
    result = service.restore(model, uploads[name], Settings(steps=3))
    assert result.path.is_file() and result.path.is_relative_to(service.workdir)
    assert result.path.name == Path(name).stem + "_restored" + suffix
    assert image_bit_depth(result.path) == bit_depth == result.bit_depth
    written = read_image(result.path)
    assert written.shape == (24, 32, 3) and result.restored.shape == (24, 32, 3)
    np.testing.assert_allclose(written, result.restored, atol=0.5 / (2 ** bit_depth - 1) + 1e-6)
    assert not np.allclose(result.restored, result.lq, atol=1e-3)    # the model did something
    assert model in result.summary and "24" in result.summary


def test_sde_reports_every_step_and_the_seed_fixes_the_result(service, uploads):
    calls = []
    first = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=4, seed=3, sampler="mr_sde"),
                            on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert "sampler mr_sde, 4 steps, seed 3" in first.summary
    again = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=4, seed=3, sampler="mr_sde"))
    other = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=4, seed=4, sampler="mr_sde"))
    np.testing.assert_array_equal(first.restored, again.restored)
    assert not np.array_equal(first.restored, other.restored)
    tiled = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=4, seed=3, sampler="ode", tile=16))
    assert "tiles of 16 px" in tiled.summary and tiled.restored.shape == (24, 32, 3)


@pytest.mark.parametrize("method", ["adain", "wavelet"])
@pytest.mark.parametrize("model", ["tiny_nafnet", "tiny_sde"])
def test_colour_fix_gives_the_result_the_inputs_colours(service, uploads, model, method):
    from refusion.inference.color_fix import apply_color_fix

    settings = dict(steps=3, seed=2, sampler="mr_ode")
    plain = service.restore(model, uploads["photo.png"], Settings(**settings))
    fixed = service.restore(model, uploads["photo.png"], Settings(**settings, color_fix=method))
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    expected = apply_color_fix(as_tensor(plain.restored), as_tensor(plain.lq), method).clamp(0, 1)
    np.testing.assert_allclose(fixed.restored, expected[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert not np.allclose(fixed.restored, plain.restored, atol=1e-3)
    assert f"colour fix {method}" in fixed.summary and "colour fix" not in plain.summary
    same = service.restore(model, uploads["photo.png"], Settings(**settings, color_fix="off"))
    np.testing.assert_array_equal(same.restored, plain.restored)


@pytest.mark.parametrize("model", ["tiny_nafnet", "tiny_sde"])
def test_self_ensemble_is_the_librarys_x8_mean(service, uploads, model):
    import refusion

    entry = service.model(model)
    result = service.restore(model, uploads["photo.png"], Settings(steps=3, seed=4, sampler="mr_sde", self_ensemble=True))
    assert "x8 self-ensemble" in result.summary
    if entry.kind == "regressor":
        expected = refusion.restore(result.lq, model=entry.model, progress=False, self_ensemble=True)
    else:
        expected = refusion.sample(result.lq, steps=3, model=entry.model, sampler="mr_sde", progress=False,
                                   generator=torch.Generator().manual_seed(4), self_ensemble=True)
    np.testing.assert_allclose(result.restored, expected, atol=1e-6)
    plain = service.restore(model, uploads["photo.png"], Settings(steps=3, seed=4, sampler="mr_sde"))
    assert not np.allclose(result.restored, plain.restored, atol=1e-4)


def test_posterior_samples_give_their_mean_and_an_uncertainty_map(service, uploads):
    from refusion.cli.app_service import uncertainty_map
    from refusion.inference.posterior import sample_posterior

    result = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=3, seed=2, sampler="mr_sde", samples=3))
    post = sample_posterior(result.lq, model=service.model("tiny_sde").model, num_samples=3, steps=3, sampler="mr_sde",
                            generator=torch.Generator().manual_seed(2), progress=False)
    np.testing.assert_allclose(result.restored, post.mean[0].permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(result.std, post.std[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert result.std.shape == (24, 32, 3) and result.std.max() > 0
    assert "the mean of 3 posterior samples" in result.summary
    picture = uncertainty_map(result.std)
    assert picture.shape == (24, 32, 3) and 0 <= picture.min() and picture.max() <= 1
    assert not np.allclose(picture, picture[0, 0])                 # the std varies, so does its picture
    one = service.restore("tiny_sde", uploads["photo.png"], Settings(steps=3, seed=2, sampler="mr_sde"))
    assert one.std is None and "posterior samples" not in one.summary
    regressor = service.restore("tiny_nafnet", uploads["photo.png"], Settings(samples=3))   # no posterior: one pass
    assert regressor.std is None


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_uploads_get_a_message_and_the_next_request_works(service, uploads, name):
    before = {p.name: p.read_bytes() for p in uploads.values()}
    with pytest.raises(AppInputError) as info:
        service.restore("tiny_sde", uploads[name], Settings(steps=2))
    assert HOSTILE[name] in str(info.value) and name in str(info.value)
    assert str(uploads[name].parent) not in str(info.value)          # the page never shows server paths
    assert service.restore("tiny_nafnet", uploads["photo.png"]).path.is_file()
    assert {p.name: p.read_bytes() for p in uploads.values()} == before


def test_limit_message_names_the_flag(service, uploads):
    with pytest.raises(AppInputError, match=r"up to 1 megapixels \(refusion app --max-megapixels\)"):
        service.restore("tiny_nafnet", uploads["large.png"])


@pytest.mark.parametrize("settings, message", [
    (Settings(steps=11), "at most 10 (refusion app --max-steps)"),
    (Settings(sampler="euler"), "sampler 'euler' is not offered by tiny_sde"),
    (Settings(steps=2.5), "steps must be a whole number"),
    (Settings(seed=-1), "seed must be between 0"),
    (Settings(steps=2, tile=7), "tile_size must be a multiple of 2"),
    (Settings(color_fix="sepia"), "colour fix 'sepia' is not offered; choose one of off, adain, wavelet"),
    (Settings(steps=2, samples=9, sampler="mr_sde"), "9 posterior samples asked for; this app allows at most 8 "
                                                     "(refusion app --max-samples)"),
    (Settings(steps=2, samples=0), "posterior samples must be at least 1"),
])
def test_settings_out_of_bounds_are_refused(service, uploads, settings, message):
    with pytest.raises(AppInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        service.restore("tiny_sde", uploads["photo.png"], settings)


def test_unknown_model_and_missing_upload(service, uploads):
    with pytest.raises(AppInputError, match="unknown model 'nope'; loaded: tiny_nafnet, tiny_sde"):
        service.restore("nope", uploads["photo.png"])
    with pytest.raises(AppInputError, match="no image"):
        service.restore("tiny_nafnet", None)


def test_ground_truth_gives_psnr_and_lpips(service, uploads):
    result = service.restore("tiny_nafnet", uploads["photo.jpg"], gt_path=uploads["photo.png"])
    gt = read_image(uploads["photo.png"])
    assert result.metrics["restored"]["psnr"] == pytest.approx(metrics.psnr(result.restored, gt))
    assert result.metrics["input"]["psnr"] == pytest.approx(metrics.psnr(result.lq, gt))
    table = metrics_markdown(result.metrics)
    assert "| restored |" in table and "| input |" in table
    assert result.metrics["restored"]["lpips"] is None and "LPIPS unavailable" in table   # 32x24: too small
    mismatch = AppService(list(service.models.values()), Limits(), service.workdir).restore(
        "tiny_nafnet", uploads["photo.png"], gt_path=uploads["large.png"])
    assert mismatch.path.is_file()                       # the result still comes back, the table says why not
    assert "the ground truth is 1200x1000 but the result is 32x24" in metrics_markdown(mismatch.metrics)


def test_half_precision_says_what_it_did(service, uploads):
    from refusion.inference.capability import native_bf16

    summary = service.restore("tiny_nafnet", uploads["photo.png"], Settings(half=True)).summary
    assert ("half precision" in summary) and (native_bf16("cpu") != ("not used" in summary))


def test_sample_photograph_is_degraded_and_paired_with_its_ground_truth(service):
    lq, gt = service.sample("coffee", "noise")
    assert lq.is_relative_to(service.workdir) and gt.is_relative_to(service.workdir)
    assert read_image(lq).shape == read_image(gt).shape == (400, 600, 3)
    assert metrics.psnr(read_image(lq), read_image(gt)) < 35
    assert service.sample("coffee", "none") == (gt, gt)
    result = service.restore("tiny_nafnet", lq, gt_path=gt)
    lpips = result.metrics["restored"]["lpips"]
    assert (lpips is not None and 0 <= lpips < 1) or "LPIPS unavailable" in metrics_markdown(result.metrics)
    with pytest.raises(AppInputError, match="unknown sample photograph 'moon'"):
        service.sample("moon")


# ----------------------------------------------------------------------------------------------
# The command line


def test_options_belong_to_the_model_before_them(tmp_path):
    args = app_cli.parse_args(["--model", "a.pth", "--options", "a.yml", "--model", "runs/b"])
    assert args.models == [app_cli.ModelSpec(Path("a.pth"), Path("a.yml")), app_cli.ModelSpec(Path("runs/b"))]
    for argv in (["--options", "a.yml", "--model", "a.pth"], ["--model", "a", "--options", "x", "--options", "y"], []):
        with pytest.raises(SystemExit) as info:
            app_cli.parse_args(argv)
        assert info.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be between 1 and 65535"),
    (["--max-steps", "0"], "--max-steps must be positive"),
    (["--max-samples", "0"], "--max-samples must be positive"),
    (["--steps", "50", "--max-steps", "20"], "--steps 50 is outside 1..--max-steps (20)"),
    (["--model", "missing folder"], "is neither a file nor a directory"),
])
def test_usage_errors_exit_2_with_a_message(tmp_path, model_dirs, capsys, argv, message):
    argv = argv if "--model" in argv else ["--model", str(model_dirs["regressor"]), *argv]
    assert app_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_loopback_addresses():
    assert all(map(app_cli.is_loopback, ("127.0.0.1", "localhost", "::1", "127.0.0.2")))
    assert not any(map(app_cli.is_loopback, ("0.0.0.0", "192.168.1.4", "example.org")))


# ----------------------------------------------------------------------------------------------
# A real server on a free loopback port: gradio_client, then the page in Chromium


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    pytest.importorskip("gradio", reason="the web app needs Gradio (pip install -e '.[app]')")
    base = tmp_path_factory.mktemp("server")
    cwd, tmp = base / "cwd", base / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    port = free_port()
    # torch makes its (empty) compile cache folder at import, in TMPDIR unless told: not the app's doing
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp),
           "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("GRADIO_TEMP_DIR", None)
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "refusion", "app", "--model", str(model_dirs["regressor"]),
                             "--model", str(model_dirs["sde"]), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--steps", "3", "--max-steps", "10", "--max-megapixels", "1",
                             "--max-samples", "4"],
                            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{(base / 'server.log').read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the app did not answer within 120 s:\n{(base / 'server.log').read_text()}")
        time.sleep(0.3)
    info = type("Server", (), dict(url=url, port=port, proc=proc, cwd=cwd, tmp=tmp, log=base / "server.log"))
    yield info
    stop_server(proc)
    log.close()


def test_api_through_gradio_client(server, uploads, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    # model, image, ground truth, sampler, steps, tile, seed, half, colour fix, self-ensemble, posterior samples
    status, compare, result, _, std_map = client.predict("tiny_sde", handle_file(uploads["deep.png"]), None, "mr_sde",
                                                         3, 0, 0, False, "off", False, 1, api_name="/restore")
    assert "sampler mr_sde, 3 steps" in status and std_map is None
    assert image_bit_depth(result) == 16 and read_image(result).shape == (24, 32, 3)
    assert len(compare) == 2
    status, compare, result, _, _ = client.predict("tiny_sde", handle_file(uploads["bomb.png"]), None, "mr_sde", 3, 0,
                                                   0, False, "off", False, 1, api_name="/restore")
    assert "decompression bomb" in status and result is None
    status, *_ = client.predict("tiny_nafnet", handle_file(uploads["photo.png"]), handle_file(uploads["photo.png"]),
                                None, 3, 0, 0, False, "off", False, 1, api_name="/restore")
    assert "restored photo.png" in status and server.proc.poll() is None
    # the new controls: colour fix, self-ensemble, K posterior samples with their uncertainty map
    status, _, result, _, std_map = client.predict("tiny_sde", handle_file(uploads["photo.png"]), None, "mr_sde", 2, 0,
                                                   1, False, "wavelet", True, 3, api_name="/restore")
    assert "the mean of 3 posterior samples" in status and "x8 self-ensemble" in status
    assert "colour fix wavelet" in status and read_image(result).shape == (24, 32, 3)
    assert std_map is not None and read_image(std_map).shape == (24, 32, 3)
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="greater than maximum value 4"):     # the control's bound: --max-samples
        client.predict("tiny_sde", handle_file(uploads["photo.png"]), None, "mr_sde", 2, 0, 1, False, "off", False, 5,
                       api_name="/restore")
    assert server.proc.poll() is None


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium/ChromeDriver on this machine: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium with selenium")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")          # never let selenium look for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 30, what: str = "the page"):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: condition(d), message=f"timed out waiting for {what}")


def _text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def _upload(driver, block: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    for clear in driver.find_elements(By.CSS_SELECTOR, f"{block} button[aria-label='Clear']"):
        clear.click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"{block} input[type=file]"), what=f"{block} upload")
    driver.find_element(By.CSS_SELECTOR, f"{block} input[type=file]").send_keys(str(path))


def _restore(driver, expect: str) -> str:
    from selenium.webdriver.common.by import By

    previous = _text(driver, "#status")
    driver.find_element(By.CSS_SELECTOR, "#restore").click()
    _wait(driver, lambda d: _text(d, "#status") != previous and expect in _text(d, "#status"), 60,
          f"{expect!r} in the status (it says {_text(driver, '#status')!r})")
    return _text(driver, "#status")


def _choose(driver, block: str, option: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f"{block} input[role=combobox]").click()
    item = _wait(driver, lambda d: [li for li in d.find_elements(By.CSS_SELECTOR, "[role=option]")
                                    if li.text.strip() == option], what=f"option {option}")
    item[0].click()
    _wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"{block} input[role=combobox]").get_attribute("value")
          == option, what=f"{option} chosen")


def _screenshot(driver, name: str, tmp_path: Path, width: int = 1000, colours: int = 128) -> None:
    driver.save_screenshot(str(tmp_path / name))
    if os.environ.get("REFUSION_APP_SCREENSHOTS"):    # a folder to keep them in (docs): smaller, 128-colour PNGs
        folder = Path(os.environ["REFUSION_APP_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shot = Image.open(tmp_path / name).convert("RGB")
        shot = shot.resize((width, round(shot.height * width / shot.width)), Image.Resampling.LANCZOS)
        shot.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            folder / name, optimize=True)


@pytest.mark.browser
def test_page_in_chromium_restores_refuses_bad_uploads_and_keeps_serving(server, browser, uploads, tmp_path):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    start = time.perf_counter()
    browser.get(server.url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#restore") and "tiny_nafnet" in _text(d, "#about"),
          what="the page")
    first_page_s = time.perf_counter() - start
    assert browser.title == "refusion"
    # every model: colour fix and self-ensemble; the posterior samples control only for SDE models
    assert len(browser.find_elements(By.CSS_SELECTOR, "#color-fix input[type=radio]")) == 3
    assert browser.find_elements(By.CSS_SELECTOR, "#self-ensemble input[type=checkbox]")
    assert not [e for e in browser.find_elements(By.CSS_SELECTOR, "#samples") if e.is_displayed()]

    # a 16-bit PNG with the regressor: before/after, and the download is the full-size 16-bit result
    _upload(browser, "#lq-file", uploads["deep.png"])
    _wait(browser, lambda d: "deep.png: 32x24, 16-bit" in _text(d, "#status"), what="the upload's preview")
    assert "restored deep.png (32x24, 16-bit) with tiny_nafnet" in _restore(browser, "restored deep.png")
    link = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#result-file a[download]"), what="the download")
    assert link[0].get_attribute("download") == "deep_restored.png"
    with urllib.request.urlopen(link[0].get_attribute("href"), timeout=10) as response:
        (tmp_path / "download.png").write_bytes(response.read())
    assert image_bit_depth(tmp_path / "download.png") == 16 and read_image(tmp_path / "download.png").shape == (24, 32, 3)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#compare img")) == 2

    # bad uploads: a message in the page, at upload and at restore
    _upload(browser, "#lq-file", uploads["text.png"])
    _wait(browser, lambda d: "not an image file" in _text(d, "#status"), what="the refusal of text.png")
    assert _restore(browser, "not an image file").startswith("Not restored: image 'text.png' was refused")
    _upload(browser, "#lq-file", uploads["bomb.png"])
    _wait(browser, lambda d: "decompression bomb" in _text(d, "#status"), what="the refusal of bomb.png")

    # the next request works: a sample photograph with its ground truth, through the SDE model
    _choose(browser, "#model", "tiny_sde")
    _wait(browser, lambda d: "tiny_sde: SDE" in _text(d, "#about"), what="the SDE model's description")
    _wait(browser, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, "#samples") if e.is_displayed()],
          what="the posterior samples control of the SDE model")
    browser.find_element(By.CSS_SELECTOR, "#use-sample").click()
    _wait(browser, lambda d: "coffee_noise.png: 600x400, 8-bit" in _text(d, "#status"), what="the sample")
    status = _restore(browser, "restored coffee_noise.png")
    assert "tiny_sde" in status and "sampler mr_sde, 3 steps, seed 0" in status
    _wait(browser, lambda d: "| restored |" in d.find_element(By.CSS_SELECTOR, "#metrics").get_attribute("innerHTML")
          or "PSNR" in _text(d, "#metrics"), what="the metrics table")
    assert "PSNR" in _text(browser, "#metrics")
    _screenshot(browser, "app_restored.png", tmp_path)

    # K = 3 posterior samples with the wavelet colour fix and the x8 self-ensemble: the mean and its uncertainty map
    samples = browser.find_element(By.CSS_SELECTOR, "#samples input[type=number]")
    samples.clear()
    samples.send_keys("3", Keys.TAB)
    _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#samples input[type=range]").get_attribute("value") == "3",
          what="K = 3 on the slider")
    browser.find_element(By.CSS_SELECTOR, "#color-fix input[value=wavelet]").click()
    browser.find_element(By.CSS_SELECTOR, "#self-ensemble input[type=checkbox]").click()
    status = _restore(browser, "posterior samples")
    assert "the mean of 3 posterior samples" in status and "colour fix wavelet" in status
    assert "x8 self-ensemble" in status
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#std-map img"), what="the uncertainty map")
    browser.execute_script("document.querySelector('#std-map').scrollIntoView({block: 'center'})")
    _screenshot(browser, "app_posterior.png", tmp_path)

    # the page asked nothing of any host but the app's
    urls = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in browser.get_log("performance")
            if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"]
    foreign = [u for u in urls if not u.startswith((server.url, "data:", "blob:"))]
    assert urls and not foreign, foreign
    assert server.proc.poll() is None
    assert first_page_s < 15, f"first page took {first_page_s:.1f} s"


# onnxruntime, which diffusers imports (when installed) to load any pipeline, writes a telemetry session
# file there at import; it is the same for `refusion restore` and not the app's
IMPORT_SIDE_FILES = {".ses"}


def test_app_wrote_nothing_outside_its_temporary_folder_and_removes_it_on_exit(server):
    assert list(server.cwd.iterdir()) == []
    work = {p.name for p in server.tmp.iterdir()} - IMPORT_SIDE_FILES
    assert len(work) == 1 and next(iter(work)).startswith("refusion-app-"), work
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0, server.log.read_text()
    assert {p.name for p in server.tmp.iterdir()} <= IMPORT_SIDE_FILES


def test_app_start_benchmark_smoke_mode_starts_a_saved_sde_pipeline_alone(tmp_path):
    """`refusion benchmark app_start --smoke`: one start of the app on a saved SDE pipeline (loaded in a
    fresh process with no other model) up to its first page, and the --help times. No timing is asserted."""
    pytest.importorskip("gradio", reason="the web app needs Gradio (pip install -e '.[app]')")
    import json

    from refusion.cli import benchmark

    out = tmp_path / "app_start.json"
    assert benchmark.main(["app_start", "--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["benchmarks"]["app_start"]
    assert "error" not in result, result.get("error")
    assert result["repeats"] == 1 and len(result["first_page_s"]["runs"]) == 1
    assert result["first_page_s"]["median"] > 0
    assert set(result["help_s"]) == {"refusion --help", "refusion app --help"}
    assert json.loads(out.read_text())["machine"]["cpu_capability"]
