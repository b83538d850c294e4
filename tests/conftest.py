import os
from pathlib import Path

import pytest
import torch

# Two cores: more threads than that only adds contention in the tests.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample datasets; skipped (with the reason) only when WSSEG_SHARED is unset."""
    root = os.environ.get("WSSEG_SHARED")
    if not root:
        pytest.skip("WSSEG_SHARED is not set: real-data tests need ../shared/data")
    data = Path(root) / "data"
    assert data.is_dir(), f"WSSEG_SHARED={root} has no data/ folder"
    return data
