"""logging.trackers beside TensorBoard, kept on this machine: a tiny run logs to wandb in offline mode and to
an mlflow file store, and what each stored is read back (every scalar the engine logged, at its step, and
the validation image lq | restored | gt)."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from PIL import Image

from refusion.config import recipe_from_dict
from refusion.training import train
from test_training import make_pairs, tiny_recipe_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE = 32   # the validation image: the logged row is SIZE x 3 * SIZE


def tiny_run(tmp_path: Path, tracker: str):
    """Two steps of a tiny regressor, one validation image at step 2, logged to ``tracker`` only."""
    data = make_pairs(tmp_path / "pairs", n_train=2, n_val=1, size=SIZE)
    recipe = tiny_recipe_dict("regressor", data, tmp_path / "run", total_iters=2, checkpoint_every=2)
    recipe["data"]["val"] = {"gt": str(data / "val/gt"), "lq": str(data / "val/lq")}
    recipe["validation"] = {"every": 2, "max_images": 1}
    recipe["logging"] = {"trackers": [tracker], "image_every": 2}
    return recipe_from_dict(recipe), data / "val/gt/img0.png"


@pytest.fixture()
def sent(monkeypatch) -> dict[str, dict[int, float]]:
    """What the engine hands to accelerator.log, {key: {step: value}}, as the trackers get it."""
    from accelerate import Accelerator

    values_by_key: dict[str, dict[int, float]] = {}
    log = Accelerator.log

    def spy(self, values, step=None, **kwargs):
        for key, value in values.items():
            values_by_key.setdefault(key, {})[step] = value
        return log(self, values, step=step, **kwargs)

    monkeypatch.setattr(Accelerator, "log", spy)
    return values_by_key


def check_scalars(stored: dict[str, dict[int, float]], sent: dict[str, dict[int, float]], run: Path) -> None:
    """Every scalar the engine logged is stored at its step with its value; validation's are those of
    metrics.jsonl."""
    assert set(sent["train/loss"]) == set(sent["train/lr"]) == {1, 2} and set(sent["val/psnr"]) == {2}
    for key, by_step in sent.items():
        assert stored.get(key) == by_step, key
    (validation,) = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    assert validation["step"] == 2
    assert {k: stored[f"val/{k}"][2] for k in ("psnr", "ssim")} == {k: validation[k] for k in ("psnr", "ssim")}


def check_row(png: bytes, gt_file: Path) -> None:
    """The logged image is the row lq | restored | gt: SIZE x 3 * SIZE, its right third the GT."""
    row = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    assert row.shape == (SIZE, 3 * SIZE, 3)
    gt = np.asarray(Image.open(gt_file).convert("RGB")).astype(int)
    assert np.abs(row[:, 2 * SIZE:] - gt).max() <= 1          # 8 bits each way: one level of rounding


# --- wandb, offline ---------------------------------------------------------------------------

BLOCK, FULL, LAST = 32768, 1, 4


def wandb_history(run_dir: Path) -> dict[int, dict]:
    """The history rows of an offline run's .wandb file, {step: {key: value}} (a media value as its dict of
    fields). The file is wandb's protobuf Records in a LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks, each crc32 (4 bytes) | length (2) | type (1: whole record, 2/3/4: first/middle/last
    part); a block's tail shorter than a chunk header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    pos, parts, rows = 7, [], {}
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind not in (FULL, LAST):
            continue
        record = wandb_internal_pb2.Record.FromString(b"".join(parts))
        parts = []
        if record.WhichOneof("record_type") != "history":
            continue
        row = rows.setdefault(record.history.step.num, {})
        for item in record.history.item:
            *outer, key = list(item.nested_key) or [item.key]
            target = row
            for name in outer:
                target = target.setdefault(name, {})
            target[key] = json.loads(item.value_json)
    return rows


def test_wandb_offline_stores_the_scalars_and_the_validation_image(tmp_path, monkeypatch, sent):
    pytest.importorskip("wandb", reason="the wandb tracker: pip install \"refusion[wandb]\"")
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")     # no crash reports either
    recipe, gt_file = tiny_run(tmp_path, "wandb")
    run = train(recipe)
    (run_dir,) = (tmp_path / "wandb").glob("*run-*")
    assert run_dir.name.startswith("offline-run-")             # an online run is run-<time>-<id>
    assert not list(tmp_path.rglob("*.synced"))                # never uploaded (wandb sync marks what it sent)
    rows = wandb_history(run_dir)
    stored: dict[str, dict[int, float]] = {}
    for step, row in rows.items():
        for key, value in row.items():
            if not key.startswith("_") and not isinstance(value, dict):
                stored.setdefault(key, {})[step] = value
    check_scalars(stored, sent, run)
    (image,) = [v for v in rows[2].values() if isinstance(v, dict) and v.get("_type") == "image-file"]
    assert (image["width"], image["height"]) == (3 * SIZE, SIZE)
    assert "val/img0 (lq | restored | gt)" in rows[2]
    check_row((run_dir / "files" / image["path"]).read_bytes(), gt_file)


# --- mlflow, a file store ---------------------------------------------------------------------


def test_mlflow_file_store_holds_the_scalars_and_the_validation_image(tmp_path, monkeypatch, sent):
    pytest.importorskip("mlflow", reason="the mlflow tracker: pip install \"refusion[mlflow]\"")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")    # mlflow 3 refuses a file store without it
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")   # no usage reports
    recipe, gt_file = tiny_run(tmp_path, "mlflow")
    run = train(recipe)
    client = MlflowClient(uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(recipe.name).experiment_id])
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.artifact_uri.startswith(uri)        # the artifacts stay under tmp_path too
    run_id = mlflow_run.info.run_id
    stored = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in sent}
    check_scalars(stored, sent, run)
    (image,) = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert Path(image).name.startswith("val~img0_lq_restored_gt+step+2+")
    check_row((Path(unquote(urlparse(mlflow_run.info.artifact_uri).path)) / image).read_bytes(), gt_file)
