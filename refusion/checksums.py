"""SHA-256 of files and the checksums.json manifests of saved weight folders.

Used by run directories (model/, best/, scheduler/, autoencoder/), saved pipelines, the LPIPS
sdist check and dataset manifests; neutral ground, so inference need not import training.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from refusion.errors import CorruptWeightsError

WEIGHTS_MANIFEST = "checksums.json"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (weight files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def first_mismatch(folder: Path, files: dict[str, str]) -> tuple[Path, str | None, str] | None:
    """The first listed file that is missing or whose sha256 differs: (path, found or None, expected)."""
    for name, expected in files.items():
        path = Path(folder) / name
        if not path.is_file():
            return path, None, expected
        found = sha256_file(path)
        if found != expected:
            return path, found, expected
    return None


def write_manifest(folder: Path, name: str, extra: dict | None = None) -> None:
    """Fsync and hash every file under ``folder`` except ``name``, then write ``name`` last.

    The JSON holds ``extra`` plus ``files`` (relative path -> sha256); it goes through a temporary
    file and a rename, so a reader sees the old manifest or the new one, never half of one.
    """
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != name):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.relative_to(folder).as_posix()] = sha256_file(path)
    tmp = folder / (".tmp-" + name)
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({**(extra or {}), "files": files}, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / name)


def write_weights_manifest(folder: Path) -> None:
    """Write ``checksums.json``: the sha256 of every other file of a saved weight folder."""
    write_manifest(folder, WEIGHTS_MANIFEST)


def verify_weights_dir(folder: Path) -> None:
    """Check every file listed in ``folder/checksums.json``; nothing to check when it is absent.

    Raises :class:`CorruptWeightsError` naming the file, the expected and the found sha256. Files
    not listed are not checked (loaders read only config.json and safetensors, which are listed).
    """
    folder = Path(folder)
    manifest = folder / WEIGHTS_MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError(f"'files' is a {type(files).__name__}, not a mapping")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CorruptWeightsError(f"{str(manifest)!r} is corrupt: not a JSON object with a 'files' mapping "
                                  f"({type(exc).__name__}: {exc}); save the weights again") from exc
    bad = first_mismatch(folder, files)
    if bad is not None:
        path, found, expected = bad
        if found is None:
            raise CorruptWeightsError(f"weight file {str(path)!r} listed in {str(manifest)!r} is missing")
        raise CorruptWeightsError(
            f"weight file {str(path)!r} is corrupt: sha256 {found} found, {expected} expected (recorded in "
            f"{str(manifest)!r}); copy or save the weights again")
