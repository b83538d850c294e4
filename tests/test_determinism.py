"""train.deterministic: torch's and cuDNN's deterministic switches, on for the run and off again."""

import os

import torch

from wsseg.core.determinism import CUBLAS_WORKSPACE, use_deterministic_algorithms


def test_the_switch_sets_and_clears_the_process_wide_flags(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    try:
        use_deterministic_algorithms(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # warns by name, never stops a run
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        # A later run without the setting must not inherit it: the flags are torch-global.
        use_deterministic_algorithms(False)
        assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
