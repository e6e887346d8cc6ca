"""The entry-point matrix: every model `refusion restore` takes, evaluation and the app take too, with the
same pixels.

For each kind of model a user brings (an SDE run folder, a saved pipeline, a regressor run folder, an
imported NAFNetLocal with TLC, an official .pth with its option file, a latent SDE, a stereo pair model,
a bokeh model with lens information, the Gaussian-denoising SDE) the same 8-bit input restored with the
same settings (sampler, steps, seed) gives the same result through

- the library (``refusion.sample`` / ``refusion.restore``), the reference;
- the command line (``refusion.cli.restore.main``), whose PNG must equal the library result within one
  quantisation step (tests/same_results.py);
- the app (``AppService.restore``), whose float result must equal it at float32-instance tolerance;
- evaluation (``evaluate_runs``), whose restored PNG of test image i (restored with seed S + i) must
  equal it within one quantisation step.

Each kind also checks that the restoration changed the input (no vacuous pass), and the TLC kinds that
the test-time local converter is really on in every entry point. The networks are tiny and randomly
initialised (fixed seeds), never trained: only the sameness of the paths is under test.

Known gaps are strict xfails (APP_GAPS): the app cannot restore with a stereo model (it takes one image
file, not a view pair); `refusion app` refuses it at start, naming `refusion restore`. When the app learns
view pairs, the xfail turns into a failure to remove. A bokeh model gets its lens information from the
page's three fields.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import refusion
from refusion.cli import restore as restore_cli
from refusion.cli.app_service import AppInputError, AppModel, AppService, Limits, Settings
from refusion.data.image_io import image_bit_depth, read_image, write_image
from refusion.data.lens import lens_info
from refusion.evaluation.evaluate import evaluate_runs
from refusion.inference.model import load_model
from refusion.inference.pipeline import RefusionPipeline
from refusion.models import (BokehNAFNet, ConditionalNAFNet, LatentUNet, NAFNet, StereoNAFNet,
                             UnconditionalNAFNet)
from refusion.official.importer import import_official
from refusion.schedulers.denoising_sde import DenoisingSDEScheduler
from refusion.schedulers.ir_sde import IRSDEScheduler
from same_results import INSTANCE_ATOL, assert_close_outputs, assert_same_images
from test_restore_cli import write_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DATA = Path(__file__).parent / "data"
OFFICIAL_OPTIONS = DATA / "official_import" / "nafnet_local_small.yml"   # NAFNetLocal, train_size 32x32
SEED = 7            # the seed of the image under test, in every entry point
STEPS = 2
TINY = dict(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])
STEP_8BIT = 1.0 / 255.0
# the decoy image sorts first, so evaluation restores the image under test as test image 1 (seed S + 1)
DECOY, NAME = "a", "b"
LENSES = {DECOY: ("Canon50mmf1.4BS", "Sony50mmf1.8BS", "12"), NAME: ("Sony50mmf1.8BS", "Canon50mmf1.4BS", "35")}

KINDS = ["sde_run", "pipeline", "regressor_run", "nafnet_local_import", "official_pth", "latent_sde", "stereo",
         "bokeh", "denoising_sde"]
TLC_KINDS = ["nafnet_local_import", "official_pth"]
TLC_SIZE = 96       # 3 x the training patch: the small official network's TLC moves pixels by about 3e-3 there
# what the app cannot take yet: it reads one image file and passes no lens information
# (refusion/cli/app_service.py, AppService.restore / AppService._run)
APP_GAPS = {"stereo": "the app restores one image file; a stereo model needs both views of a pair"}


# ----------------------------------------------------------------------------------------- the models


def activate(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A NAF-family network whose blocks (and the stereo fusion) have a say: their skip gains beta/gamma
    start at zero, which would leave the blocks, the lens embedding and the cross-view attention unused."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net.eval()


def save_pipeline(root: Path, unet, scheduler, autoencoder=None) -> Path:
    RefusionPipeline(unet=unet, scheduler=scheduler, autoencoder=autoencoder).save_pretrained(root)
    return root


def official_checkpoint(folder: Path) -> Path:
    """tests/data/net_nafnet_local_small.pt saved as the official code saves it (params_ema, module.),
    as tests/test_official_import.py's ``official`` helper does."""
    sd = {"module." + k: v for k, v in torch.load(DATA / "net_nafnet_local_small.pt", weights_only=True).items()}
    path = folder / "net_nafnet_local_small_params_ema.pth"
    torch.save({"params_ema": sd}, path)
    return path


def build_model(kind: str, root: Path, checkpoint: Path) -> tuple[Path, Path | None]:
    """(the model path every entry point is given, the option file of a .pth or None)."""
    torch.manual_seed(0)
    if kind == "sde_run":
        return write_run(root / "sde run", "sde", activate(ConditionalNAFNet(img_channel=3, **TINY)),
                         IRSDEScheduler(num_train_timesteps=10, sampler="ode")), None
    if kind == "pipeline":
        unet = activate(ConditionalNAFNet(img_channel=3, width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1],
                                          middle_blk_num=1))
        return save_pipeline(root / "pipeline", unet, IRSDEScheduler(num_train_timesteps=10)), None
    if kind == "regressor_run":
        return write_run(root / "nafnet", "regressor", activate(NAFNet(img_channel=3, **TINY))), None
    if kind == "nafnet_local_import":
        out = root / "nafnet_local"
        import_official(out, weights=checkpoint, options=OFFICIAL_OPTIONS)
        return out, None
    if kind == "official_pth":
        return checkpoint, OFFICIAL_OPTIONS
    if kind == "latent_sde":
        ae = LatentUNet(in_ch=3, out_ch=3, ch=4, ch_mult=[1, 2], embed_dim=4).eval()
        unet = activate(ConditionalNAFNet(img_channel=4, **TINY))
        return save_pipeline(root / "latent", unet, IRSDEScheduler(num_train_timesteps=10), autoencoder=ae), None
    if kind == "stereo":
        return save_pipeline(root / "stereo", activate(StereoNAFNet(img_channel=3, **TINY)),
                             IRSDEScheduler(num_train_timesteps=10)), None
    if kind == "bokeh":
        return save_pipeline(root / "bokeh", activate(BokehNAFNet(img_channel=3, **TINY)),
                             IRSDEScheduler(num_train_timesteps=10)), None
    if kind == "denoising_sde":
        return save_pipeline(root / "denoising", activate(UnconditionalNAFNet(img_channel=3, **TINY)),
                             DenoisingSDEScheduler(noise_level=25)), None
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------- the cases


@dataclass
class Case:
    kind: str
    model: Path                  # --model, evaluate_runs' run, load_model's source
    options: Path | None         # the option file of an official .pth
    folder: Path                 # inputs and outputs of this kind
    sde: bool
    sampler: str | None          # explicit sampler of the SDE kinds
    stereo: bool
    lens: bool
    views: tuple[str, ...]       # file stems of the image under test: ("b",) or ("b_L", "b_R")
    library: np.ndarray          # the library result (H, W, C; 2C for a stereo pair), float32
    lq: np.ndarray               # the input the library got, as read back from the 8-bit PNG(s)
    without_tlc: np.ndarray | None = None   # TLC kinds: the library result with tlc=False

    @property
    def cli_input(self) -> Path:
        """A single file, or for a stereo pair the folder that holds just its two views."""
        return self.folder / "cli_in" if self.stereo else self.folder / "cli_in" / f"{NAME}.png"

    @property
    def meta(self) -> Path:
        return self.folder / "meta.txt"

    def library_views(self) -> list[np.ndarray]:
        return np.split(self.library, len(self.views), axis=2)

    def write_library_pngs(self) -> dict[str, Path]:
        """The library result quantised as the 8-bit outputs are, one PNG per view."""
        paths = {}
        for stem, view in zip(self.views, self.library_views()):
            paths[stem] = write_image(self.folder / "library" / f"{stem}.png", view, bit_depth=8)
        return paths


def sde_sampler(kind: str) -> str | None:
    if kind == "denoising_sde":
        return "sde"        # DenoisingSDEScheduler samplers: posterior / sde / ode; sde draws noise every step
    return None if kind in ("regressor_run", "nafnet_local_import", "official_pth") else "mr_sde"


def lq_image(rng: np.random.Generator, size: int, structured: bool) -> np.ndarray:
    """A noisy image; ``structured``: dark left half, bright right half, whose local means are far from the
    global one, so the TLC's local pools (1.5 x the 32-pixel training patch) change the result visibly."""
    if not structured:
        return np.clip(rng.random((size, size, 3)) + 0.1 * rng.standard_normal((size, size, 3)), 0, 1)
    image = np.zeros((size, size, 3))
    image[:, size // 2:] = 1.0
    return np.clip(image + 0.03 * rng.standard_normal(image.shape), 0, 1)


def write_inputs(folder: Path, kind: str, size: int) -> tuple[str, ...]:
    """LQ and GT folders for evaluation (decoy + image under test), the CLI's input, the lens table."""
    rng = np.random.default_rng(KINDS.index(kind))
    stems = {DECOY: [DECOY], NAME: [NAME]} if kind != "stereo" else {i: [f"{i}_L", f"{i}_R"] for i in (DECOY, NAME)}
    for image_id, names in stems.items():
        for stem in names:
            write_image(folder / "gt" / f"{stem}.png", rng.random((size, size, 3)), bit_depth=8)
            lq = lq_image(rng, size, structured=kind in TLC_KINDS and image_id == NAME)
            write_image(folder / "lq" / f"{stem}.png", lq, bit_depth=8)
            if image_id == NAME:
                write_image(folder / "cli_in" / f"{stem}.png", lq, bit_depth=8)
    (folder / "meta.txt").write_text("".join(f"{i}, {', '.join(LENSES[i])}\n" for i in (DECOY, NAME)))
    return tuple(stems[NAME])


def library_result(kind: str, model: Path, options: Path | None, lq: np.ndarray, sampler: str | None,
                   **extra) -> np.ndarray:
    """The library's restoration of ``lq`` (HWC float32) with the settings every entry point gets."""
    if sampler is None:
        source = refusion.load_model(model, options=options) if options is not None else model
        return refusion.restore(lq, model=source, progress=False, **extra)
    lens = lens_info(*LENSES[NAME]) if kind == "bokeh" else None
    return refusion.sample(lq, steps=STEPS, model=model, sampler=sampler, progress=False, lens_info=lens,
                           generator=torch.Generator().manual_seed(SEED), **extra)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The folder of the module, with the project cache (REFUSION_CACHE_DIR: imported checkpoints, LPIPS
    weights) and the torch cache in it (LPIPS is then unavailable, which evaluation reports and goes on
    without), and the official checkpoint every TLC kind shares."""
    root = tmp_path_factory.mktemp("entry_points")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REFUSION_CACHE_DIR", str(root / "cache"))        # the import cache and the LPIPS weights
        mp.setenv("TORCH_HOME", str(root / "torch"))
        yield root, official_checkpoint(root)


@pytest.fixture(scope="module", params=KINDS, ids=KINDS)
def case(request, workspace) -> Case:
    root, checkpoint = workspace
    kind = request.param
    folder = root / kind
    folder.mkdir()
    model, options = build_model(kind, folder / "models", checkpoint)
    # TLC kinds: larger than the training patch (32), so the local pools differ from the global ones
    views = write_inputs(folder, kind, TLC_SIZE if kind in TLC_KINDS else 32)
    lq = np.concatenate([read_image(folder / "cli_in" / f"{stem}.png") for stem in views], axis=2)
    sampler = sde_sampler(kind)
    library = library_result(kind, model, options, lq, sampler)
    assert isinstance(library, np.ndarray) and library.dtype == np.float32 and library.shape == lq.shape
    without = library_result(kind, model, options, lq, None, tlc=False) if kind in TLC_KINDS else None
    if options is not None:     # the .pth was imported into this module's cache, not the user's
        assert any((root / "cache" / "imported").iterdir())
    return Case(kind, model, options, folder, sde=sampler is not None, sampler=sampler, stereo=kind == "stereo",
                lens=kind == "bokeh", views=views, library=library, lq=lq, without_tlc=without)


def slug(label: str) -> str:
    """evaluate's folder name of a row label: every character but letters, digits, - and _ becomes _,
    leading and trailing _ are dropped."""
    return re.sub(r"[^0-9A-Za-z_-]", "_", label).strip("_")


def evaluate_label(case: Case) -> str:
    return f"{case.model.name} [{case.sampler}, {STEPS}]" if case.sde else case.model.name


def assert_tlc_on(case: Case, got: np.ndarray, entry: str, *, png: bool) -> None:
    """For the imported NAFNetLocal (folder or .pth): the result of ``entry`` is off the TLC-off library
    result by more than 1e-3 somewhere. ``png``: ``got`` is an 8-bit PNG read back, within half a step of
    the float result it was rounded from, so it must be off by half a step more."""
    if case.kind not in TLC_KINDS:
        return
    assert min(case.lq.shape[:2]) > 32          # larger than the training patch: the local pools are not global
    margin = 1e-3 + (0.5 * STEP_8BIT + 1e-6 if png else 0.0)
    worst = float(np.abs(got - case.without_tlc).max())
    assert worst > margin, f"{entry}: within {worst:.2e} of the result without TLC (need > {margin:.2e})"


# ----------------------------------------------------------------------------------------- the matrix

# kind -> (LoadedModel.kind, network class, has an autoencoder, TLC default)
EXPECTED = {
    "sde_run": ("sde", ConditionalNAFNet, False, None), "pipeline": ("sde", ConditionalNAFNet, False, None),
    "regressor_run": ("regressor", NAFNet, False, None), "nafnet_local_import": ("regressor", NAFNet, False, (32, 32)),
    "official_pth": ("regressor", NAFNet, False, (32, 32)), "latent_sde": ("sde", ConditionalNAFNet, True, None),
    "stereo": ("sde", StereoNAFNet, False, None), "bokeh": ("sde", BokehNAFNet, False, None),
    "denoising_sde": ("sde", UnconditionalNAFNet, False, None),
}


def test_the_model_is_the_kind_under_test(case):
    loaded = load_model(case.model, options=case.options)
    kind, network, autoencoder, tlc = EXPECTED[case.kind]
    assert (loaded.kind, type(loaded.network), loaded.autoencoder is not None) == (kind, network, autoencoder)
    assert loaded.defaults.tlc is None if tlc is None else tuple(loaded.defaults.tlc) == tlc
    if case.kind == "denoising_sde":
        assert isinstance(loaded.scheduler, DenoisingSDEScheduler) and case.sampler in loaded.samplers


def test_the_restoration_changes_the_input(case):
    """The model does something, so the sameness below cannot hold by returning the input."""
    assert np.isfinite(case.library).all() and 0.0 <= case.library.min() and case.library.max() <= 1.0
    assert np.abs(case.library - case.lq).max() > 10 * STEP_8BIT
    assert_tlc_on(case, case.library, "library", png=False)


def test_command_line_matches_the_library(case):
    out = case.folder / "cli_out"
    args = [str(case.cli_input), "-o", str(out), "--model", str(case.model), "--seed", str(SEED), "--no-progress",
            "--device", "cpu", "--threads", "1"]
    if case.options is not None:
        args += ["--options", str(case.options)]
    if case.sde:
        args += ["--steps", str(STEPS), "--sampler", case.sampler]
    if case.lens:
        args += ["--lens-meta", str(case.meta)]
    assert restore_cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.png" for stem in case.views)
    for stem, want in case.write_library_pngs().items():
        assert image_bit_depth(out / f"{stem}.png") == 8           # 8-bit in, 8-bit out
        assert_same_images(out / f"{stem}.png", want)
        assert_tlc_on(case, read_image(out / f"{stem}.png"), "command line", png=True)


def test_app_matches_the_library(case, request):
    if case.kind in APP_GAPS:
        request.applymarker(pytest.mark.xfail(raises=AppInputError, strict=True, reason=APP_GAPS[case.kind]))
    loaded = load_model(case.model, options=case.options)
    service = AppService([AppModel(case.kind, loaded)], Limits(), case.folder / "app")
    lens = dict(zip(("src_lens", "tgt_lens", "disparity"), LENSES[NAME])) if case.lens else {}   # the page's fields
    settings = Settings(sampler=case.sampler, steps=STEPS if case.sde else None, seed=SEED, **lens)
    result = service.restore(case.kind, case.folder / "cli_in" / f"{case.views[0]}.png", settings)
    assert result.restored.dtype == np.float32
    assert_close_outputs(torch.from_numpy(result.restored), torch.from_numpy(case.library), atol=INSTANCE_ATOL)
    assert_tlc_on(case, result.restored, "app", png=False)


def test_evaluation_matches_the_library(case):
    out = case.folder / "evaluation"
    result = evaluate_runs([case.model], case.folder / "gt", case.folder / "lq", out,
                           samplers=[f"{case.sampler}:{STEPS}"] if case.sde else ["mr_sde:2"],
                           seed=SEED - 1,   # the image under test is test image 1 (the decoy sorts first)
                           progress=False, options={case.model: case.options} if case.options else None,
                           lens=case.meta if case.lens else None)
    label = evaluate_label(case)
    assert [row["method"] for row in result["rows"]][1:] == [label]
    images = out / "images" / slug(label)
    decoys = [f"{DECOY}_{v}.png" for v in "LR"] if case.stereo else [f"{DECOY}.png"]
    assert sorted(p.name for p in images.iterdir()) == sorted(decoys + [f"{stem}.png" for stem in case.views])
    for stem, want in case.write_library_pngs().items():
        assert image_bit_depth(images / f"{stem}.png") == 8
        assert_same_images(images / f"{stem}.png", want)
        assert_tlc_on(case, read_image(images / f"{stem}.png"), "evaluation", png=True)


@pytest.mark.parametrize("kind", sorted(APP_GAPS))
def test_the_app_refuses_at_start_what_its_page_cannot_drive(workspace, kind, tmp_path):
    from refusion.cli import app as app_cli

    root, checkpoint = workspace
    model, options = build_model(kind, tmp_path / "models", checkpoint)
    with pytest.raises(app_cli.UsageError, match=r"refusion restore") as info:
        app_cli.load_models([app_cli.ModelSpec(model, options)], torch.device("cpu"))
    assert str(model) in str(info.value) and "view pairs" in str(info.value)


def test_the_app_asks_a_bokeh_model_for_all_three_lens_fields(workspace, tmp_path):
    root, checkpoint = workspace
    model, _ = build_model("bokeh", tmp_path / "models", checkpoint)
    views = write_inputs(tmp_path, "bokeh", 32)
    service = AppService([AppModel("bokeh", load_model(model))], Limits(), tmp_path / "app")
    image = tmp_path / "cli_in" / f"{views[0]}.png"
    with pytest.raises(AppInputError, match="lens information .*target lens, disparity missing"):
        service.restore("bokeh", image, Settings(sampler="mr_sde", steps=STEPS, src_lens="Sony50mmf1.8BS"))
    with pytest.raises(AppInputError, match="src_lens"):
        service.restore("bokeh", image, Settings(sampler="mr_sde", steps=STEPS, src_lens="Nikon", tgt_lens="Canon50mmf1.4BS",
                                                 disparity="35"))
