"""`precision: auto`: decided once per machine by timing the model, recorded in the run folder,
invisible to the weights."""

import json

import pytest
import torch

from wsseg.core import precision as prec
from wsseg.core.stage import Stage


@pytest.fixture(autouse=True)
def machine_cache(monkeypatch, tmp_path):
    """Each test on a machine of its own: no decision of another test is in its cache."""
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "machine"))
    return tmp_path / "machine"


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 1))


def test_choose_keeps_fp32_unless_16_bit_is_clearly_faster_in_every_pair():
    assert prec.choose({"fp32": [1.0, 1.0, 1.0], "bf16": [0.95, 0.95, 0.95]}) == "fp32"
    assert prec.choose({"fp32": [1.0, 1.0, 1.0], "bf16": [0.8, 0.8, 0.8]}) == "bf16"
    assert prec.choose({"fp32": [1.0, 1.0, 1.0], "bf16": [1.5, 1.5, 1.5]}) == "fp32"
    assert prec.choose({"fp32": [1.0, 1.0, 1.0], "fp16": [0.5, 0.5, 0.5]}) == "fp16"
    # A median over the bar with one pair where 16-bit was slower: too close to call.
    assert prec.choose({"fp32": [1.0, 1.0, 1.0], "bf16": [0.8, 0.8, 1.05]}) == "fp32"
    assert prec.choose({"fp32": [1.0]}) == "fp32"


def test_candidates_alternate_and_every_step_is_kept():
    calls, now = [], [0.0]
    cost = {"fp32": 3.0, "bf16": 1.0}

    def step(p):
        calls.append(p)
        now[0] += cost[p]

    times = prec.time_precisions(step, ["fp32", "bf16"], timed_steps=2, clock=lambda: now[0])
    assert calls == ["fp32", "bf16"] * 3  # one warm-up each, then alternating
    assert times == {"fp32": [3.0, 3.0], "bf16": [1.0, 1.0]}
    assert prec.speedup(times, "bf16") == 3.0


def test_explicit_precision_is_never_measured(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: pytest.fail("measured"))
    for p in ("fp32", "bf16"):
        assert prec.resolve_precision(p, small_net(), (2, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == p
    assert not (tmp_path / prec.CACHE_NAME).exists()


def test_cpu_without_bf16_instructions_stays_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: pytest.fail("measured"))
    assert prec.resolve_precision("auto", small_net(), (2, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == "fp32"


def test_auto_measures_once_then_reads_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})
    measured = []

    def fake_measure(model, shape, device, channels_last, training, candidates):
        measured.append((shape, candidates))
        return {"fp32": [2.0, 2.0, 2.0], "bf16": [1.0, 1.0, 1.0]}

    monkeypatch.setattr(prec, "_measure", fake_measure)
    net = small_net()
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == "bf16"
    # at most MEASURE_BATCH images are timed
    assert measured == [((prec.MEASURE_BATCH, 3, 16, 16), ["fp32", "bf16"])]
    cache = json.loads((tmp_path / prec.CACHE_NAME).read_text())
    (entry,) = cache.values()
    assert entry["choice"] == "bf16" and entry["speedup"] == 2.0 and entry["source"] == "measured"
    assert entry["step_ms"] == {"fp32": [2000.0] * 3, "bf16": [1000.0] * 3}
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == "bf16"
    assert len(measured) == 1
    # another input size, or inference, is another model for the cache
    prec.resolve_precision("auto", net, (8, 3, 32, 32), torch.device("cpu"), cache_dir=tmp_path)
    prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path, training=False)
    assert len(measured) == 3 and len(json.loads((tmp_path / prec.CACHE_NAME).read_text())) == 3


def test_an_unreadable_cache_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: {"fp32": [1.0], "bf16": [1.0]})
    (tmp_path / prec.CACHE_NAME).write_text("{not json")
    assert prec.resolve_precision("auto", small_net(), (2, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == "fp32"
    assert json.loads((tmp_path / prec.CACHE_NAME).read_text())


def test_measuring_leaves_the_model_and_the_random_streams_alone(monkeypatch, tmp_path):
    """A run gives the same weights whether or not it measured: real timing of a real model."""
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})
    net = small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    choice = prec.resolve_precision("auto", net, (2, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path)
    assert choice in ("fp32", "bf16")
    assert torch.equal(torch.rand(3), expected)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    entry = next(iter(json.loads((tmp_path / prec.CACHE_NAME).read_text()).values()))
    assert entry["choice"] == choice and set(entry["step_ms"]) == {"fp32", "bf16"}


def test_dict_outputs_with_detached_parts_are_timed(monkeypatch):
    class DictNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            logits = self.conv(x)
            return {"logits": logits, "refined": logits.detach() * 2, "labels": logits.argmax(1)}

    step = prec._step_function(DictNet(), torch.rand(1, 3, 8, 8), torch.device("cpu"), training=True)
    for p in ("fp32", "bf16"):
        step(p)


def test_stage_decides_auto_in_prepare(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: {"fp32": [3.0], "bf16": [1.0]})
    stage = Stage(tmp_path / "task_i", device="cpu", precision="auto", precision_cache_dir=tmp_path)
    with pytest.raises(ValueError, match="input_shape"):
        stage.prepare(small_net())
    with pytest.raises(RuntimeError, match="prepare"):
        stage.fit(small_net(), [], None, None, None, 1)
    stage.prepare(small_net(), input_shape=(4, 3, 16, 16))
    assert stage.precision == "bf16" and stage.amp_dtype == torch.bfloat16
    assert (tmp_path / prec.CACHE_NAME).exists()


def test_a_candidate_that_fails_to_run_leaves_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})

    def failing(*args, **kwargs):
        raise RuntimeError("no bf16 kernel")

    monkeypatch.setattr(prec, "_measure", failing)
    assert prec.resolve_precision("auto", small_net(), (2, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path) == "fp32"


def test_two_runs_on_one_machine_take_the_same_decision_whatever_the_timing_noise(monkeypatch, tmp_path):
    """The first run's timing (bf16 1.14× faster) decides; the second run's own timing would say
    1.03×, and would choose fp32, but it is never taken: the machine's decision is reused."""
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "machine"))
    noisy = iter([{"fp32": [1.14] * 5, "bf16": [1.0] * 5}, {"fp32": [1.03] * 5, "bf16": [1.0] * 5}])
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: next(noisy))
    net = small_net()
    first = prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "run_1")
    second = prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "run_2")
    assert first == second == "bf16"
    machine = json.loads((tmp_path / "machine" / prec.CACHE_NAME).read_text())
    (decision,) = machine.values()
    assert decision["choice"] == "bf16" and decision["source"] == "measured"
    # Each run records the decision and where it came from.
    (record_1,) = json.loads((tmp_path / "run_1" / prec.CACHE_NAME).read_text()).values()
    (record_2,) = json.loads((tmp_path / "run_2" / prec.CACHE_NAME).read_text()).values()
    assert record_1["source"] == "measured"
    assert record_2["source"] == str(tmp_path / "machine" / prec.CACHE_NAME)
    # Without the machine's record, the second timing would have decided otherwise.
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "other_machine"))
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: {"fp32": [1.03] * 5, "bf16": [1.0] * 5})
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "run_3") == "fp32"


def test_a_resumed_run_keeps_its_own_decision(monkeypatch, tmp_path):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv("WSSEG_CACHE", str(tmp_path / "machine"))
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: {"fp32": [2.0], "bf16": [1.0]})
    net = small_net()
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "run") == "bf16"
    # The machine's record changes later (deleted and measured anew on a busier day) ...
    (tmp_path / "machine" / prec.CACHE_NAME).unlink()
    monkeypatch.setattr(prec, "_measure", lambda *a, **k: {"fp32": [1.0], "bf16": [1.0]})
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "new") == "fp32"
    # ... but the run that started in bf16 resumes in bf16.
    assert prec.resolve_precision("auto", net, (8, 3, 16, 16), torch.device("cpu"), cache_dir=tmp_path / "run") == "bf16"
