"""The download cache, zips of published models and the registry file (downloads themselves are
tested against a local server in test_release.py)."""

import os
import stat
import zipfile
from pathlib import Path

import pytest

from wsseg.core.checkpoint import CheckpointError
from wsseg.core.hub import DownloadError, cache_dir, download, file_sha256, load_registry, unpack_zip


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "cache"))


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_the_cache_is_where_the_environment_says(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("WSSEG_CACHE")
    assert cache_dir().name == "wsseg"  # the user's cache folder for wsseg


def test_a_zip_is_unpacked_once_into_a_folder_named_by_its_sha256(tmp_path):
    archive = make_zip(tmp_path / "model.zip", {"model.json": b"{}", "README.md": b"# m"})
    folder = unpack_zip(archive)
    assert folder == tmp_path / "cache" / "unpacked" / file_sha256(archive)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.json"]
    assert unpack_zip(archive) == folder
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # no staging folder left


def test_the_zip_of_a_folder_gives_its_files(tmp_path):
    archive = make_zip(tmp_path / "m.zip", {"release/model.json": b"{}", "release/model.safetensors": b"x"})
    assert sorted(p.name for p in unpack_zip(archive).iterdir()) == ["model.json", "model.safetensors"]


@pytest.mark.parametrize("members", [["../escape.json", "model.json"], ["../escape.json", "../model.json"],
                                     ["/abs/model.json"], ["a/b/model.json"]])
def test_a_zip_member_outside_the_folder_is_refused(tmp_path, members):
    archive = make_zip(tmp_path / "m.zip", {member: b"{}" for member in members})
    with pytest.raises(DownloadError, match="not a plain file name"):
        unpack_zip(archive)
    assert not (tmp_path / "escape.json").exists() and not list((tmp_path / "cache").rglob("*.json"))


def test_a_broken_zip_is_a_clear_error(tmp_path):
    data = make_zip(tmp_path / "m.zip", {"model.json": b"{}" * 100}).read_bytes()
    (tmp_path / "half.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError, match="half.zip is not a complete zip archive"):
        unpack_zip(tmp_path / "half.zip")


def test_only_web_urls_are_downloaded():
    with pytest.raises(DownloadError, match="only http:// and https://"):
        download("file:///etc/passwd")
    with pytest.raises(CheckpointError, match="sha256 must be 64 hexadecimal digits"):
        download("https://example.org/model.zip", "abc")


@pytest.mark.parametrize("text, message", [
    ("m: {url: https://example.org/m.zip}", "must have url and sha256"),
    ("m: {url: ftp://example.org/m.zip, sha256: " + "0" * 64 + "}", "not http"),
    ("m: {url: https://example.org/m.zip, sha256: 1234}", "64 hexadecimal digits"),
    ("[1, 2]", "must map names"),
])
def test_a_bad_registry_entry_names_the_file_and_the_entry(tmp_path, text, message):
    (tmp_path / "registry.yaml").write_text(text)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_registry(tmp_path / "registry.yaml")
    assert "registry.yaml" in str(caught.value)


def test_the_registry_file_comes_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "r.yaml").write_text("m: {url: https://example.org/m.zip, sha256: " + "A" * 64 + "}")
    monkeypatch.setenv("WSSEG_REGISTRY", str(tmp_path / "r.yaml"))
    assert load_registry() == {"m": {"url": "https://example.org/m.zip", "sha256": "a" * 64}}


def test_an_unpacked_model_folder_gets_the_mode_of_the_umask(tmp_path):
    """mkdtemp makes its folder 0o700: renamed into a shared cache as it is, nobody else could open it."""
    archive = make_zip(tmp_path / "model.zip", {"model.json": b"{}"})
    previous = os.umask(0o022)
    try:
        folder = unpack_zip(archive)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "model.json").stat().st_mode) == 0o644
