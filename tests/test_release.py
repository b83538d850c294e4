"""A trained model that travels: `wsseg publish`, `resolve_checkpoint` from a folder, a zip, a URL
or a registry name, the download cache, and `--init-from` / `--reset-head`."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from wsseg.cli import main
from wsseg.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsseg.core.hub import DownloadError
from wsseg.datasets.isprs import VAIHINGEN_CLASSES
from wsseg.datasets.splits import Split, save_split
from wsseg.models import build_segmenter, head_prefixes
from wsseg.pipeline.config import config_to_dict
from wsseg.pipeline.config_files import config_from_dict
from wsseg.pipeline.data import class_record
from wsseg.pipeline.publish import publish
from wsseg.pipeline.release import TrainedModel, initialise_from, load_run_checkpoint, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"name": "unet", "options": {"base_channels": 4, "depth": 2}}
NAMES = VAIHINGEN_CLASSES.names


@pytest.fixture(autouse=True)
def private_cache_and_no_proxy(tmp_path, monkeypatch):
    """Every download goes to this test's own cache, and straight to 127.0.0.1."""
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "cache"))
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def cached_files(tmp_path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as training leaves it: task_ii/best.pt as the Stage saves it, metrics, plot, split."""
    run = tmp_path_factory.mktemp("run")
    cfg = config_from_dict({"data": {"kind": "synthetic_vaihingen", "root": "data/synthetic"}, "model": TINY_MODEL,
                            "train": {"max_minutes": 2.0}})
    torch.manual_seed(0)
    model = build_segmenter("unet", len(NAMES), **TINY_MODEL["options"])
    with torch.no_grad():  # weights and BatchNorm statistics unlike a fresh model's
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.1)
    save_checkpoint(run / "task_ii" / "best.pt", {
        "model": model.state_dict(), "optimizer": {}, "lr_scheduler": {}, "scaler": None, "epoch": 2,
        "best_score": 0.5, "history": [], "global_step": 30, "config": config_to_dict(cfg), "epochs": 5,
        "classes": class_record(VAIHINGEN_CLASSES)})
    save_split(run / "split.json", Split(labelled=["area1"], tagged=["area2"], val=["area3"], test=["area4", "area5"],
                                         seed=0))
    per_class = {n: {"iou": 0.1 * i, "f1": 0.2, "precision": 0.3, "recall": 0.4, "support": 100 + i}
                 for i, n in enumerate(NAMES)}
    metrics = {"miou": 0.25, "mean_f1": 0.5, "overall_accuracy": 0.75, "per_class": per_class,
               "classes_in_mean": list(VAIHINGEN_CLASSES.in_mean), "checkpoint": {"path": "best.pt", "epoch": 3}}
    (run / "task_ii" / "metrics.json").write_text(json.dumps(metrics))
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(run / "task_ii" / "iou_bars.png")
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    return run


@pytest.fixture
def release(run_dir, tmp_path) -> Path:
    out = tmp_path / "tiny-unet"
    publish(run_dir / "task_ii", out)
    return out


def logits_of(trained: TrainedModel) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return trained.model(torch.rand(2, 3, 32, 40))


# ------------------------------------------------------------------------------------ publish

def test_publish_writes_the_release_and_prints_the_sha256_of_each_file(run_dir, tmp_path, capsys):
    out = tmp_path / "release"
    assert main(["publish", str(run_dir / "task_ii"), "--out", str(out), "--url", "https://example.org/m.zip"]) == 0
    printed = capsys.readouterr().out
    files = ["model.safetensors", "model.json", "iou_bars.png", "README.md", "model.zip"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    for name in files:
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert f"sha256 {digest}  {name}" in printed, name
    zip_sha = hashlib.sha256((out / "model.zip").read_bytes()).hexdigest()
    assert f"release: {{url: https://example.org/m.zip, sha256: {zip_sha}}}" in printed

    meta = json.loads((out / "model.json").read_text())
    state = load_checkpoint(run_dir / "task_ii" / "best.pt")
    assert meta["format"] == "wsseg-model" and meta["format_version"] == 1
    assert meta["model"] == TINY_MODEL
    assert meta["classes"]["names"] == list(NAMES) and meta["classes"]["ignore_index"] == 255
    assert meta["classes"]["palette"] == [list(c) for c in VAIHINGEN_CLASSES.palette]
    assert meta["input"]["bands"] == ["nir", "red", "green"]  # Vaihingen's false colour
    assert meta["input"]["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["input"]["std"][0] == 0.229
    assert meta["config"] == state["config"]
    assert meta["split"]["test"] == ["area4", "area5"]
    assert meta["metrics"] == json.loads((run_dir / "task_ii" / "metrics.json").read_text())
    assert meta["weights"]["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert meta["trained"] == {"stage": "task_ii", "checkpoint": "best.pt", "epoch": 3, "epochs": 5,
                               "validation_score": 0.5}
    assert meta["wsseg_version"] and "git_commit" in meta

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # plain tensors, no pickle
        assert set(f.keys()) == set(state["model"])
    card = (out / "README.md").read_text()
    assert "| car | yes | 0.400 |" in card and "![per-class IoU](iou_bars.png)" in card
    assert "resolve_checkpoint(" in card and "--init-from release" in card
    # The time budget cut the training to 5 of the config's 20 epochs: the card says what ran.
    assert "- 5 epochs (of 20 asked, within train.max_minutes 2.0) × 1000 steps" in card
    assert (out / "iou_bars.png").read_bytes() == (run_dir / "task_ii" / "iou_bars.png").read_bytes()
    with zipfile.ZipFile(out / "model.zip") as zf:
        assert sorted(zf.namelist()) == sorted(files[:-1])
    # The same checkpoint published again gives the same bytes: the registry's sha256 stays valid.
    assert main(["publish", str(run_dir / "task_ii" / "best.pt"), "--out", str(out), "--force"]) == 0
    assert hashlib.sha256((out / "model.zip").read_bytes()).hexdigest() == zip_sha


def test_publish_refuses_a_non_empty_folder_without_force(run_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["publish", str(run_dir / "task_ii"), "--out", str(out)]) == 2
    assert "not empty: pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------- loading

def test_a_release_loads_with_the_logits_of_the_original(run_dir, release, tmp_path):
    original = load_run_checkpoint(run_dir / "task_ii" / "best.pt")
    expected = logits_of(original)
    for spec in (release, release / "model.json", release / "model.safetensors", release / "model.zip",
                 run_dir / "task_ii", run_dir / "task_ii" / "best.pt"):
        trained = resolve_checkpoint(spec)
        assert torch.equal(logits_of(trained), expected), spec
        assert not trained.model.training
        assert (trained.model_name, trained.options) == ("unet", TINY_MODEL["options"])
        assert trained.class_names == NAMES and trained.palette == VAIHINGEN_CLASSES.palette
        assert trained.ignore_index == 255 and trained.bands == ("nir", "red", "green")
        assert trained.mean == (0.485, 0.456, 0.406) and trained.std == (0.229, 0.224, 0.225)
        assert trained.config["model"]["name"] == "unet"


def test_tampered_weights_in_a_release_are_refused(release):
    data = bytearray((release / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (release / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 mismatch: model.json says [0-9a-f]{64}, the file has"):
        resolve_checkpoint(release)


def test_a_checkpoint_from_before_class_records_takes_its_dataset_kinds_classes(run_dir, tmp_path):
    state = load_checkpoint(run_dir / "task_ii" / "best.pt")
    del state["classes"]
    save_checkpoint(tmp_path / "old.pt", state)
    assert resolve_checkpoint(tmp_path / "old.pt").class_names == NAMES


def test_a_pickle_payload_in_a_checkpoint_never_runs(tmp_path, capsys):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"model": Payload(), "config": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        resolve_checkpoint(tmp_path / "evil.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "evil.pt")]) == 2
    assert main(["publish", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.count("error: ") == 2
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # the payload is live: unpickled in full, it runs
    assert marker.exists()


def test_a_spec_that_is_nothing_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="registry name"):
        resolve_checkpoint("no-such-model")
    (tmp_path / "run" / "task_i").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("{}")
    with pytest.raises(CheckpointError, match="run folder: name one of its stages"):
        resolve_checkpoint(tmp_path / "run")


# ------------------------------------------------------------------------------- downloads

class Routes(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (body, how)`: how is "ok", "truncated" (the connection closes
    halfway through the announced length) or "stall" (half, then waits for `server.release`)."""

    def do_GET(self):
        if self.path not in self.server.routes:
            self.send_error(404, "File not found")
            return
        body, how = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if how == "ok":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if how == "stall":
            self.server.started.set()
            self.server.release.wait(30)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Routes)
    httpd.daemon_threads = True
    httpd.routes, httpd.started, httpd.release = {}, threading.Event(), threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.running = True

    def stop():
        if httpd.running:
            httpd.release.set()
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)
            httpd.running = False

    httpd.stop = stop
    yield httpd
    stop()


def test_a_url_downloads_once_and_loads_offline_after(release, server, tmp_path):
    body = (release / "model.zip").read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    server.routes["/models/tiny/model.zip"] = (body, "ok")
    expected = logits_of(resolve_checkpoint(release))
    url = f"{server.url}/models/tiny/model.zip"
    assert torch.equal(logits_of(resolve_checkpoint(f"{url}#sha256={sha}")), expected)
    assert torch.equal(logits_of(resolve_checkpoint(url)), expected)  # without a checksum: taken as it comes
    server.stop()
    trained = resolve_checkpoint(f"{url}#sha256={sha}")  # offline now: from the cache
    assert torch.equal(logits_of(trained), expected) and trained.source == f"{url}#sha256={sha}"
    with pytest.raises(DownloadError, match="cannot download"):
        resolve_checkpoint(f"{server.url}/models/other/model.zip")


@pytest.mark.parametrize("how", ["truncated", "tampered", "missing", "broken zip, no checksum"])
def test_a_broken_download_is_one_clear_error_and_leaves_nothing_in_the_cache(release, server, tmp_path, how):
    body = (release / "model.zip").read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    url = f"{server.url}/m/model.zip#sha256={sha}"
    if how == "truncated":
        server.routes["/m/model.zip"] = (body, "truncated")
        message = "the transfer broke off"
    elif how == "tampered":
        tampered = body[:-1] + bytes([body[-1] ^ 0xFF])
        server.routes["/m/model.zip"] = (tampered, "ok")
        message = f"sha256 mismatch: expected {sha}, got {hashlib.sha256(tampered).hexdigest()}"
    elif how == "missing":
        message = "HTTP 404"
    else:
        server.routes["/m/model.zip"] = (body[: len(body) // 2], "ok")
        url = url.split("#")[0]
        message = "not a complete zip archive"
    with pytest.raises(DownloadError) as caught:
        resolve_checkpoint(url)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert cached_files(tmp_path) == []


def test_a_killed_download_leaves_nothing_that_loads(release, server, tmp_path):
    body = (release / "model.zip").read_bytes()
    sha = hashlib.sha256(body).hexdigest()
    server.routes["/m/model.zip"] = (body, "stall")
    url = f"{server.url}/m/model.zip#sha256={sha}"
    downloader = subprocess.Popen(
        [sys.executable, "-c", "import sys; from wsseg.core.hub import download; download(sys.argv[1], sys.argv[2])",
         url.split("#")[0], sha], env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert server.started.wait(60), "the download never started"
        time.sleep(0.3)  # the first half reaches the temporary file
    finally:
        downloader.kill()
        downloader.wait(10)
    server.stop()
    # What was received lies in a temporary file at most, never under the name that loads.
    assert not [p for p in cached_files(tmp_path) if p.name == "model.zip"]
    with pytest.raises(DownloadError, match="cannot download"):  # nothing partial is taken for the model
        resolve_checkpoint(url)


def test_a_registry_name_resolves_to_its_download(release, server, tmp_path, monkeypatch):
    body = (release / "model.zip").read_bytes()
    server.routes["/tiny/model.zip"] = (body, "ok")
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"tiny-unet": {"url": f"{server.url}/tiny/model.zip",
                                                      "sha256": hashlib.sha256(body).hexdigest()}}))
    monkeypatch.setenv("WSSEG_REGISTRY", str(registry))
    trained = resolve_checkpoint("tiny-unet")
    assert torch.equal(logits_of(trained), logits_of(resolve_checkpoint(release)))
    assert trained.source.startswith("tiny-unet (http://127.0.0.1:")
    with pytest.raises(CheckpointError, match="registry names: tiny-unet"):
        resolve_checkpoint("tiny-unet-2")


def test_the_shipped_registry_names_no_dead_model():
    from wsseg.core.hub import DEFAULT_REGISTRY, load_registry

    assert DEFAULT_REGISTRY == ROOT / "wsseg" / "checkpoints.yaml"
    for name, entry in load_registry(DEFAULT_REGISTRY).items():
        assert entry["url"].startswith("https://") and "example" not in entry["url"], name


# --------------------------------------------------------------------------- --init-from

def trained_model(name: str, options: dict, class_names, seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    model = build_segmenter(name, len(class_names), **options).eval()
    return TrainedModel(model=model, model_name=name, options=options, class_names=tuple(class_names),
                        palette=((0, 0, 0),) * len(class_names), ignore_index=255, mean=(0.5,) * 3, std=(0.5,) * 3,
                        bands=("red", "green", "blue"), config={}, source="the trained model")


@pytest.mark.parametrize("name, options", [("unet", {"base_channels": 4, "depth": 2}),
                                           ("effnet_lite0_unet", {"pretrained": False,
                                                                  "decoder_channels": [16, 16, 8, 8]})])
def test_init_from_loads_every_weight_and_reset_head_all_but_the_classifier(name, options):
    trained = trained_model(name, options, NAMES)
    torch.manual_seed(5)
    same = build_segmenter(name, len(NAMES), **options)
    initialise_from(same, trained, model_name=name, options=options, class_names=NAMES)
    for key, value in trained.model.state_dict().items():
        assert torch.equal(same.state_dict()[key], value), key

    other = ("road", "grass", "water")
    torch.manual_seed(6)
    fresh = build_segmenter(name, len(other), **options)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError, match="pass --reset-head"):
        initialise_from(fresh, trained, model_name=name, options=options, class_names=other)
    initialise_from(fresh, trained, model_name=name, options=options, class_names=other, reset_head=True)
    head = [k for k in before if k.startswith(head_prefixes(name))]
    assert head and all(torch.equal(fresh.state_dict()[k], before[k]) for k in head)  # left as initialised
    for key, value in trained.model.state_dict().items():
        if key not in head:
            assert torch.equal(fresh.state_dict()[key], value), key


def test_init_from_another_model_or_shape_is_an_error():
    trained = trained_model("unet", {"base_channels": 4, "depth": 2}, NAMES)
    with pytest.raises(CheckpointError, match="is a 'unet' model; this run's model.name is 'fcn8s'"):
        initialise_from(build_segmenter("fcn8s", 6, width=0.0625), trained, model_name="fcn8s", options={},
                        class_names=NAMES)
    wider = {"base_channels": 8, "depth": 2}
    with pytest.raises(CheckpointError, match=r"shape differs: stem\.0\.weight .*this run's are"):
        initialise_from(build_segmenter("unet", 6, **wider), trained, model_name="unet", options=wider,
                        class_names=NAMES)


def test_train_flags_set_the_config_that_the_run_records(tmp_path, monkeypatch, capsys):
    import wsseg.pipeline.tasks

    seen = {}
    monkeypatch.setattr(wsseg.pipeline.tasks, "run_task", lambda cfg, *args, **kwargs: seen.setdefault("cfg", cfg))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL}))
    out = str(tmp_path / "run")
    assert main(["train", "--config", str(config), "--out", out, "--init-from", "some-model", "--reset-head"]) == 0
    assert (seen["cfg"].model.init_from, seen["cfg"].model.reset_head) == ("some-model", True)
    assert main(["train", "--config", str(config), "--out", out, "--reset-head"]) == 2
    assert "--reset-head (model.reset_head) needs --init-from" in capsys.readouterr().err


def test_a_run_starts_from_a_release_and_the_release_evaluates_as_its_run(release, tmp_path, capsys):
    """End to end: train task i from the release (at lr 0, so its weights stay the release's),
    publish that run, and evaluate the new release on its split: the run's own test scores."""
    from wsseg.datasets.synthetic_aerial import generate_synthetic_vaihingen

    data = generate_synthetic_vaihingen(tmp_path / "data", num_tiles=6, tile_px=(64, 64), seed=3)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"kind": "vaihingen", "root": str(data)}, "model": TINY_MODEL,
        "split": {"n_labelled": 2, "n_tagged": 1, "n_val": 0, "n_test": 1},
        "train": {"epochs": 1, "iters_per_epoch": 1, "batch_size": 2, "crop_px": 32, "workers": 0, "lr": 0.0,
                  "precision": "fp32"},
        "eval": {"window_px": 64, "stride_px": 64, "num_triptychs": 0}}))
    run = tmp_path / "run"
    assert main(["train", "--task", "i", "--config", str(config), "--out", str(run), "--init-from", str(release)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_from"] == str(release)
    state = load_checkpoint(run / "task_i" / "best.pt")
    assert state["classes"]["names"] == list(NAMES)  # checkpoints now carry their classes
    started = state["model"]
    source = resolve_checkpoint(release).model.state_dict()
    for key, value in source.items():
        if "running_" not in key and "num_batches" not in key:  # BatchNorm statistics move in train mode
            assert torch.equal(started[key], value), key

    assert main(["publish", str(run / "task_i"), "--out", str(tmp_path / "again")]) == 0
    assert main(["eval", "--checkpoint", str(tmp_path / "again"), "--out", str(tmp_path / "eval")]) == 0
    assert main(["eval", "--checkpoint", str(run / "task_i" / "best.pt")]) == 0  # as always: beside it
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("mIoU ")]) == 2
    first = json.loads((run / "task_i" / "metrics.json").read_text())["miou"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == pytest.approx(first)
    assert json.loads((run / "task_i" / "eval-best" / "metrics.json").read_text())["miou"] == pytest.approx(first)
    assert json.loads((tmp_path / "eval" / "split.json").read_text())["test"] == \
        json.loads((run / "split.json").read_text())["test"]


def test_the_card_names_the_tags_the_model_learnt_from(release):
    from wsseg.pipeline.publish import model_card

    meta = json.loads((release / "model.json").read_text())
    assert "(task ii: N1 pixel labels + N2 crop tags)" in model_card(meta, {})
    meta["config"]["weak"]["tags"] = "image"
    assert "(task ii: N1 pixel labels + N2 image tags)" in model_card(meta, {})
    meta["trained"]["stage"] = "oracle"
    assert "(oracle: N1 + N2 pixel labels (experiments only))" in model_card(meta, {})
