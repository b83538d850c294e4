import torch
import torch.nn.functional as F
from torch import nn

from wsseg.models.heads import ASPP, GlobalCueInjection, StochasticGate


def test_aspp_shape_and_literal_batch_norms():
    aspp = ASPP(in_channels=32, channels=8)
    aspp.train()
    bns = [m for m in aspp.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 6  # 4 rates + image pooling + projection
    assert all(not bn.training for bn in bns)
    assert aspp.dropout.training and aspp.dropout.p == 0.5
    assert [conv[0].dilation for conv in aspp.atrous] == [(12, 12), (24, 24), (36, 36)]

    out = aspp(torch.rand(2, 32, 9, 11))
    assert out.shape == (2, 8, 9, 11)
    out.sum().backward()
    for bn in bns:
        # Literal: statistics never leave 0/1, the affine learns.
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert bn.weight.requires_grad and bn.weight.grad is not None


def test_aspp_clean_variant_uses_batch_statistics():
    aspp = ASPP(in_channels=16, channels=4, literal_bn=False).train()
    aspp(torch.rand(2, 16, 5, 5))
    assert not torch.equal(aspp.rate1[1].running_mean, torch.zeros(4))


def test_gci_is_film_of_the_skip_by_global_max_of_deep_features():
    torch.manual_seed(0)
    gci = GlobalCueInjection(shallow_channels=6, channels=4).eval()
    for bn in gci.modules():  # non-trivial statistics so the check means something
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    shallow, deep = torch.randn(2, 6, 8, 8), torch.randn(2, 4, 8, 8)

    film = gci.deep_to_film(deep).flatten(2).max(-1).values
    gamma, beta = film[:, :4, None, None], film[:, 4:, None, None]
    expected = gci.out(F.relu(gci.skip(shallow) * (gamma + 1) + beta))
    assert torch.allclose(gci(shallow, deep), expected)
    assert gci.skip[1].weight is None  # BN without affine on the skip


def test_stochastic_gate_training_expectation_is_deep():
    torch.manual_seed(0)
    gate = StochasticGate(psi=0.3).train()
    x_deep, x_shallow = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    samples = torch.stack([gate(x_deep, x_shallow) for _ in range(4000)])
    # E[m]=0.7: 0.7·(x_d − 0.3·x_s)/0.7 + 0.3·x_s = x_d, whatever the shallow features.
    # Per element the two outcomes differ by (x_d − x_s)/0.7, so the sample mean has standard
    # error √(0.3·0.7/n)·|x_d − x_s|/0.7; allow 5 of them.
    standard_error = (0.21 / len(samples)) ** 0.5 * (x_deep - x_shallow).abs() / 0.7
    assert ((samples.mean(0) - x_deep).abs() <= 5 * standard_error + 1e-6).all()
    took_shallow = (samples == x_shallow).float().mean()
    assert abs(took_shallow.item() - 0.3) < 0.01


def test_stochastic_gate_single_sample_is_elementwise_choice():
    torch.manual_seed(1)
    gate = StochasticGate(psi=0.3).train()
    x_deep, x_shallow = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    out = gate(x_deep, x_shallow)
    deep_value = (x_deep - 0.3 * x_shallow) / 0.7
    is_shallow = torch.isclose(out, x_shallow)
    assert torch.allclose(out[~is_shallow], deep_value[~is_shallow])


def test_stochastic_gate_test_time_mix():
    x_deep, x_shallow = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    literal = StochasticGate(psi=0.3).eval()
    assert torch.allclose(literal(x_deep, x_shallow), 0.7 * x_deep + 0.3 * x_shallow)
    clean = StochasticGate(psi=0.3, test_mix="expectation").eval()
    assert torch.equal(clean(x_deep, x_shallow), x_deep)
