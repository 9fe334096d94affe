"""``comcoco sahm preflight``: live-tensor accounting, the batch extrapolation checked against a measured
larger batch, the printed report, and the refusal of devices that do not exist."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from comcoco.cli import app
from comcoco.sahm.config import get_config
from comcoco.sahm.model import build_discriminator, build_generator, count_parameters
from comcoco.sahm.preflight import DISPATCH_SECONDS, LiveTensorBytes, preflight

runner = CliRunner()
# Stated tolerance of the memory model peak(B) = fixed + B × per-sample: the peak predicted for batch 3 from
# batch 1 against the peak measured at batch 3 (tiny, 96²). Measured: within 2 % (0.5 % at 128², batch 4).
EXTRAPOLATION_RTOL = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_live_tensor_bytes_follow_allocations_and_releases():
    x = torch.ones(1000, 250)  # 1 MB
    with LiveTensorBytes(torch.device("cpu"), [x]) as live:
        y = x * 2
        z = y + 1
        view = z[10:]  # shares z's storage
        assert live.live == 3 * 10**6
        del y
        w = z * 3
        assert live.live == 3 * 10**6 and live.peak == 3 * 10**6
        del view, z, w
    assert live.live == 10**6 and live.peak == 3 * 10**6


def test_preflight_extrapolates_what_a_larger_batch_measures():
    one = preflight("tiny", "cpu", batch=1, image_size=96)
    three = preflight("tiny", "cpu", batch=3, image_size=96)
    cfg = get_config("tiny", image_size=96)
    assert one.params_g == count_parameters(build_generator(cfg))
    assert one.params_d == count_parameters(build_discriminator(cfg))
    assert one.fixed_bytes == 16 * (one.params_g + one.params_d)  # fp32 weights, grads, two AdamW moments
    predicted = one.fixed_bytes + 3 * one.per_sample_bytes
    print(f"\npreflight tiny 96²: peak(3) predicted from batch 1 {predicted / 2**20:.1f} MiB, "
          f"measured {three.peak_bytes / 2**20:.1f} MiB")
    assert predicted == pytest.approx(three.peak_bytes, rel=EXTRAPOLATION_RTOL)
    assert three.activation_bytes == pytest.approx(3 * one.activation_bytes, rel=0.1)
    assert three.flops == pytest.approx(3 * one.flops, rel=0.02) and three.ops == pytest.approx(one.ops, rel=0.05)
    assert one.peak_bytes > one.fixed_bytes and one.step_seconds > 0
    assert one.max_batch == int((0.9 * one.device_bytes - one.fixed_bytes) // one.per_sample_bytes)
    assert [g.name for g in one.gpus][:2] == ["T4 16 GB", "V100 32 GB"]
    for g in one.gpus:  # slowest first; no step faster than its operations take to dispatch
        assert g.max_batch > 100 and g.step_seconds[0] >= g.step_seconds[1] >= one.ops * DISPATCH_SECONDS > 0


def test_cli_report_and_device_refusals():
    res = runner.invoke(app, ["sahm", "preflight", "--config", "tiny", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    for label in ("parameters", "fixed state", "activations", "peak memory", "step time", "compute",
                  "largest batch", "extrapolated from batch 1", "GPU estimates (until measured)"):
        assert label in res.output
    # a device that does not exist here is refused (3); a name of no known form is a usage error (2)
    for device, says, code in (("cuda:0", "no CUDA device is available", 3), ("cuda:99", "cuda:99", 3),
                               ("tpu", "tpu", 2)):
        if device.startswith("cuda") and torch.cuda.device_count() > 99:
            continue
        res = runner.invoke(app, ["sahm", "preflight", "--device", device])
        assert res.exit_code == code and res.output.count("\n") == 1 and says in res.output, res.output
        assert res.output.startswith("error: --device")
