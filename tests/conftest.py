import os
from pathlib import Path

import pytest
import torch

# Two cores: more threads than that only adds contention in the tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """The tests' precision decisions and downloads stay out of the user's cache ($WSSEG_CACHE),
    where later real runs on this machine would take them up."""
    saved = os.environ.get("WSSEG_CACHE")
    os.environ["WSSEG_CACHE"] = str(tmp_path_factory.mktemp("wsseg_cache"))
    yield
    if saved is None:
        os.environ.pop("WSSEG_CACHE", None)
    else:
        os.environ["WSSEG_CACHE"] = saved


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample datasets; skipped (with the reason) only when WSSEG_SHARED is unset."""
    root = os.environ.get("WSSEG_SHARED")
    if not root:
        pytest.skip("WSSEG_SHARED is not set: real-data tests need ../shared/data")
    data = Path(root) / "data"
    assert data.is_dir(), f"WSSEG_SHARED={root} has no data/ folder"
    return data
