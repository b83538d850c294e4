"""Files from the web, verified and cached: downloads with pooch, the zip of a published model,
the registry of model names.

    download(url, sha256)    → the file in the cache (fetched once; offline after that)
    unpack_zip(archive)      → the archive's files in a folder of the cache, unpacked once
    load_registry()          → {name: {"url", "sha256"}} from wsseg/checkpoints.yaml

The cache is `$WSSEG_CACHE`, by default the user's cache folder for "wsseg" (platformdirs, as
pooch finds it: ~/.cache/wsseg on Linux). A download goes to a temporary file beside its final
name and is renamed only once complete and, when its sha256 is known, matching it: a file of the
cache is whole or absent, so an interrupted or corrupted download never loads later.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import yaml

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.io import new_file_mode
from wsseg.core.progress import progress_enabled

CACHE_ENV = "WSSEG_CACHE"
REGISTRY_ENV = "WSSEG_REGISTRY"
# The registry that ships with the package: wsseg/checkpoints.yaml.
DEFAULT_REGISTRY = Path(__file__).resolve().parents[1] / "checkpoints.yaml"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(CheckpointError):
    """A file that could not be fetched, or was not what its checksum says: the message names the URL."""


def cache_dir() -> Path:
    """Where downloads and unpacked models live: `$WSSEG_CACHE`, else the user's cache for wsseg."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import pooch

    return Path(pooch.os_cache("wsseg"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(value: str, where: str) -> str:
    value = str(value).lower()
    if not _SHA256.match(value):
        raise CheckpointError(f"{where}: sha256 must be 64 hexadecimal digits, got {value!r}")
    return value


def download(url: str, sha256: str | None = None, progress: bool = True) -> Path:
    """`url` in the cache, downloaded unless already there (then no network is needed).

    With `sha256` the download must match it: a mismatch is a DownloadError naming both hashes,
    and nothing is kept. Without it the file is taken as it comes (its hash is in pooch's log).
    """
    import pooch
    import requests

    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs are downloaded")
    if sha256 is not None:
        sha256 = check_sha256(sha256, url)
    # One folder per file: by its checksum when known (content-addressed), else by its URL.
    key = sha256 or "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
    name = Path(url.split("?", 1)[0].split("#", 1)[0]).name or "download"
    folder = cache_dir() / "downloads" / key
    # Decided outside the try: a bad $WSSEG_PROGRESS is a ValueError, not a checksum mismatch.
    downloader = pooch.HTTPDownloader(progressbar=progress and progress_enabled(), timeout=60)
    try:
        path = pooch.retrieve(url, known_hash=sha256 and f"sha256:{sha256}", fname=name, path=folder,
                              downloader=downloader)
    except ValueError as err:  # pooch's checksum mismatch; the temporary file is already gone
        got = re.search(r"but got ([0-9a-fA-F]{64})", str(err))
        raise DownloadError(f"{url}: sha256 mismatch: expected {sha256}, got "
                            f"{got.group(1).lower() if got else 'another'}; the download was deleted") from None
    except requests.exceptions.HTTPError as err:
        raise DownloadError(f"cannot download {url}: HTTP {err.response.status_code} "
                            f"{err.response.reason}") from None
    except requests.exceptions.RequestException as err:
        raise DownloadError(f"cannot download {url} (offline, or the transfer broke off): "
                            f"{type(err).__name__}: {err}") from None
    finally:
        _remove_if_empty(folder)
    return Path(path)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds when empty: a failed first download leaves no folder behind
    except OSError:
        pass


def forget(path: Path) -> None:
    """Drop a cached download that turned out unusable (not a zip, say), and its folder if emptied."""
    Path(path).unlink(missing_ok=True)
    _remove_if_empty(Path(path).parent)


def unpack_zip(archive: Path) -> Path:
    """The files of zip `archive`, unpacked once into `<cache>/unpacked/<its sha256>/`.

    Unpacked into a temporary folder and renamed when complete, like a download. Members must be
    plain files at the top level, or all inside one top folder (a zipped folder), which is
    dropped; anything else (absolute paths, `..`, deeper folders) is refused.
    """
    archive = Path(archive)
    sha256 = file_sha256(archive)
    target = cache_dir() / "unpacked" / sha256
    if target.is_dir():
        return target
    try:
        with zipfile.ZipFile(archive) as zf:
            members = _flat_members(zf, archive)
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{sha256[:12]}.", suffix=".tmp"))
            try:
                # mkdtemp's 0o700 would keep a shared cache's models from everyone but their unpacker.
                staging.chmod(new_file_mode(directory=True))
                for info, name in members:
                    with zf.open(info) as src, open(staging / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if target.is_dir():  # another process unpacked the same archive first
                    return target
                raise
    except (zipfile.BadZipFile, EOFError) as err:
        raise DownloadError(f"{archive.name} is not a complete zip archive ({err})") from None
    return target


def _flat_members(zf: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, str]]:
    files = [info for info in zf.infolist() if not info.is_dir()]
    parts = [info.filename.split("/") for info in files]
    if parts and all(len(p) == 2 for p in parts) and len({p[0] for p in parts}) == 1 \
            and parts[0][0] not in ("", ".", ".."):
        parts = [p[1:] for p in parts]  # the zip of a folder: its files
    members = []
    for info, p in zip(files, parts):
        name = p[0] if len(p) == 1 else ""
        if not name or name in (".", "..") or "\\" in name or ":" in name:
            raise DownloadError(f"{archive.name}: member {info.filename!r} is not a plain file name; a model zip "
                                f"holds model.json, model.safetensors and its card, at the top level")
        members.append((info, name))
    return members


def load_registry(path: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Model names → {"url", "sha256"}, from `path`, `$WSSEG_REGISTRY` or wsseg/checkpoints.yaml."""
    path = Path(path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)
    if not path.is_file():
        raise CheckpointError(f"model registry {path} does not exist")
    try:
        entries = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise CheckpointError(f"model registry {path} is not valid YAML: {err}") from None
    if not isinstance(entries, dict):
        raise CheckpointError(f"model registry {path} must map names to {{url, sha256}}")
    registry = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) - {"url", "sha256", "description"} or "url" not in entry \
                or "sha256" not in entry:
            raise CheckpointError(f"model registry {path}: entry {name!r} must have url and sha256 "
                                  f"(and optionally description)")
        url = str(entry["url"])
        if not url.startswith(("http://", "https://")):
            raise CheckpointError(f"model registry {path}: {name!r} has url {url!r}, not http(s)://")
        registry[str(name)] = {"url": url, "sha256": check_sha256(entry["sha256"], f"model registry {path}: {name!r}")}
    return registry
