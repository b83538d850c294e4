"""benchmarks/common.py: the FLOP count a step's achieved rate is computed from, and the GEMM peak."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402
from benchmarks.common import achieved, count_flops, gemm_rates  # noqa: E402


def conv_forward_flop(conv: nn.Conv2d, x: torch.Tensor) -> int:
    out_h, out_w = conv(x).shape[-2:]
    kh, kw = conv.kernel_size
    return 2 * x.shape[0] * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * out_h * out_w


def test_a_conv_backward_costs_twice_its_forward_grouped_or_not():
    torch.manual_seed(0)
    for groups in (1, 4, 32):  # 32: depthwise, which torch's own formula overcounts 32×
        conv = nn.Conv2d(32, 32, 3, padding=1, groups=groups)
        x = torch.rand(2, 32, 16, 16, requires_grad=True)
        forward = conv_forward_flop(conv, x)
        assert count_flops(lambda: conv(x)) == forward
        assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward
        # An input that needs no gradient: the weight gradient alone.
        assert count_flops(lambda: conv(x.detach()).sum().backward()) == 2 * forward


def test_gemm_rates_time_both_dtypes_and_name_the_faster_as_peak(monkeypatch):
    monkeypatch.setattr(common, "bf16_in_hardware", lambda device: True)
    rates = gemm_rates(n=64, warmup=1, repeats=2)
    assert rates["n"] == 64 and rates["threads"] == torch.get_num_threads()
    for dtype in ("fp32", "bf16"):
        assert rates[dtype]["calls"] == 2 and rates[dtype]["best_gflop_s"] >= rates[dtype]["median_gflop_s"] > 0
    assert rates["peak_gflop_s"] == max(rates["fp32"]["best_gflop_s"], rates["bf16"]["best_gflop_s"])
    assert rates["bf16"]["bf16_in_hardware"] is True and "n" not in rates["bf16"]


def test_emulated_bf16_is_timed_once_and_at_a_smaller_size(monkeypatch):
    monkeypatch.setattr(common, "bf16_in_hardware", lambda device: False)
    monkeypatch.setattr(common, "EMULATED_BF16_N", 32)
    rates = gemm_rates(n=64, warmup=2, repeats=3)
    assert rates["fp32"]["calls"] == 3 and "n" not in rates["fp32"]
    assert rates["bf16"] == {**rates["bf16"], "calls": 1, "n": 32, "bf16_in_hardware": False}


def test_achieved_is_a_fraction_of_the_peak_and_of_the_same_precision_gemm():
    gemm = {"fp32": {"best_gflop_s": 100.0}, "bf16": {"best_gflop_s": 400.0}, "peak_gflop_s": 400.0}
    assert achieved(40e9, 2.0, gemm, "fp32") == {"achieved_gflop_s": 20.0, "fraction_of_gemm_peak": 0.05,
                                                 "fraction_of_gemm_same_precision": 0.2}
