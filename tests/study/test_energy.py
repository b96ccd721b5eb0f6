import numpy as np
import pytest

from ddp_scratch.study.energy import (PJ_PER_FLOP, EnergyMeter, NvmlReader, RaplReader,
                                estimate_joules, tdp_estimate)

MAX_RANGE = 262143328850  # a real Skylake package max_energy_range_uj


def make_powercap(root, domains):
    """domains: {dirname: (name, energy_uj, max_range) or None for unreadable}."""
    root.mkdir(parents=True, exist_ok=True)
    for d, spec in domains.items():
        p = root / d
        p.mkdir()
        if spec is None:
            (p / "name").write_text("package-9\n")
            continue  # no energy_uj: like a root-only file seen by a user
        name, e, mx = spec
        (p / "name").write_text(name + "\n")
        (p / "energy_uj").write_text(f"{e}\n")
        (p / "max_energy_range_uj").write_text(f"{mx}\n")
    return root


def set_energy(root, d, e):
    (root / d / "energy_uj").write_text(f"{e}\n")


@pytest.fixture
def rapl_root(tmp_path):
    return make_powercap(tmp_path / "powercap", {
        "intel-rapl:0": ("package-0", 1_000_000, MAX_RANGE),
        "intel-rapl:0:0": ("core", 5, MAX_RANGE),  # sub-zone: must be ignored
        "intel-rapl:1": ("package-1", 2_000_000, MAX_RANGE),
        "dtpm": ("dtpm", 1, 10),
    })


def test_rapl_finds_package_domains_only(rapl_root):
    r = RaplReader(str(rapl_root))
    assert r.available()
    assert sorted(r.domains) == ["intel-rapl:0", "intel-rapl:1"]
    assert r.domains["intel-rapl:0"]["max_range"] == MAX_RANGE
    assert r.read() == {"intel-rapl:0": 1_000_000, "intel-rapl:1": 2_000_000}


def test_rapl_delta_plain_and_wraparound(rapl_root):
    r = RaplReader(str(rapl_root))
    prev = {"intel-rapl:0": MAX_RANGE - 100, "intel-rapl:1": 10}
    cur = {"intel-rapl:0": 50, "intel-rapl:1": 1010}
    d = r.delta(prev, cur)
    want = {"intel-rapl:0": 150, "intel-rapl:1": 1000}
    err = max(abs(d[k] - want[k]) for k in want)
    print(f"max rapl delta error: {err} uJ")
    assert err == 0


def test_rapl_missing_or_unreadable(tmp_path):
    missing = RaplReader(str(tmp_path / "nope"))
    assert not missing.available() and "cannot list" in missing.reason
    root = make_powercap(tmp_path / "pc", {"intel-rapl:0": None})
    r = RaplReader(str(root))
    assert not r.available() and "energy_uj" in r.reason
    empty = RaplReader(str(make_powercap(tmp_path / "empty", {})))
    assert not empty.available() and "no intel-rapl" in empty.reason


def test_meter_rapl_measures_with_wraparound(rapl_root):
    set_energy(rapl_root, "intel-rapl:0", MAX_RANGE - 1_000_000)
    m = EnergyMeter("rapl", rapl_root=str(rapl_root))
    m.start()
    set_energy(rapl_root, "intel-rapl:0", 2_000_000)        # wrapped: +3 J
    set_energy(rapl_root, "intel-rapl:1", 2_000_000 + 5_000_000)  # +5 J
    out = m.stop(seconds=2.0)
    err = max(abs(out["joules"] - 8.0), abs(out["mean_watts"] - 4.0))
    print(f"max rapl meter error: {err:.3g}")
    assert out["source"] == "measured-rapl"
    assert err < 1e-9
    assert "package-0" in out["note"] and "package-1" in out["note"]


class FakeNvml:
    def __init__(self, energy_mj=10_000, fail=None):
        self.energy_mj, self.fail = energy_mj, fail

    def nvmlInit(self):
        if self.fail == "init":
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByPciBusId(self, bus):   # pynvml (nvidia-ml-py) 13: the _v2 call, str accepted
        return ("bus", bus)

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if self.fail == "energy":
            raise RuntimeError("Not Supported")
        return self.energy_mj

    def nvmlDeviceGetName(self, h):
        return b"Fake GPU"

    def nvmlDeviceGetPowerManagementLimit(self, h):
        return 350_000  # mW


def test_nvml_reader_with_fake():
    fake = FakeNvml(12_345)
    r = NvmlReader(fake, device_index=3)
    assert r.available() and r.handle == ("handle", 3)
    assert r.read() == 12_345
    assert r.name() == "Fake GPU"
    assert r.power_limit_watts() == pytest.approx(350.0)


def test_nvml_reader_by_pci_bus_id():
    """A rank whose one visible GPU is CUDA device 0 reads that GPU's counter, not NVML's GPU 0."""
    r = NvmlReader(FakeNvml(), device_index="0000:3B:00.0")
    assert r.available() and r.handle == ("bus", "0000:3B:00.0")


@pytest.mark.parametrize("fail", ["init", "energy"])
def test_nvml_unavailable(fail):
    r = NvmlReader(FakeNvml(fail=fail))
    assert not r.available() and "NVML unavailable" in r.reason
    with pytest.raises(RuntimeError, match="nvml"):
        EnergyMeter("nvml", nvml=FakeNvml(fail=fail))


def test_nvml_default_import_never_raises():
    assert NvmlReader().available() in (True, False)


def test_meter_nvml():
    fake = FakeNvml(1_000_000)
    m = EnergyMeter("nvml", nvml=fake)
    m.start()
    fake.energy_mj += 1_500_000  # 1500 J
    out = m.stop(seconds=5.0)
    err = max(abs(out["joules"] - 1500.0), abs(out["mean_watts"] - 300.0))
    print(f"max nvml meter error: {err:.3g}")
    assert out["source"] == "measured-nvml" and err < 1e-9
    assert "Fake GPU" in out["note"]


def test_auto_prefers_order_and_falls_back(rapl_root, tmp_path):
    assert EnergyMeter(nvml=FakeNvml(), rapl_root=str(rapl_root)).kind == "nvml"
    m = EnergyMeter(nvml=FakeNvml(), rapl_root=str(rapl_root), auto_order=("rapl",))
    assert m.kind == "rapl"
    m = EnergyMeter(nvml=FakeNvml(fail="init"), rapl_root=str(tmp_path / "none"))
    assert m.kind == "estimate"
    m.start()
    out = m.stop(flops=1e12, seconds=1.0)
    assert out["source"] == "estimated-horowitz45nm"
    assert "fallback because" in out["note"] and "NVML" in out["note"]


def test_estimate_numbers():
    cases = [
        (estimate_joules(1e12, 0, "float32"), 2.3),           # (0.9+3.7)/2 pJ
        (estimate_joules(1e12, 0, np.float64), 9.2),          # 4x fp32 assumed
        (estimate_joules(1e12, 0, np.dtype("float16")), 0.75),  # (0.4+1.1)/2
        (estimate_joules(0, 4e9, "fp32"), 0.64),              # 1e9 words x 640 pJ
        (estimate_joules(2e9, 8e6, "float32"), 2e9 * 2.3e-12 + 2e6 * 640e-12),
        (tdp_estimate(10.0, 65.0), 650.0),
    ]
    err = max(abs(got - want) / want for got, want in cases)
    print(f"max estimate relative error: {err:.3g}")
    assert err < 1e-12
    assert PJ_PER_FLOP["float64"] == pytest.approx(4 * PJ_PER_FLOP["float32"])
    with pytest.raises(ValueError, match="int8"):
        estimate_joules(1, 0, "int8")
    with pytest.raises(ValueError):
        tdp_estimate(-1, 10)


def test_meter_estimate_and_tdp():
    m = EnergyMeter("estimate", dtype="float32")
    m.start()
    out = m.stop(flops=1e12, bytes_moved=4e9, seconds=2.0)
    err = max(abs(out["joules"] - 2.94), abs(out["mean_watts"] - 1.47))
    print(f"max horowitz meter error: {err:.3g}")
    assert out["source"] == "estimated-horowitz45nm" and err < 1e-9
    with pytest.raises(ValueError, match="flops"):
        m.stop()
    t = EnergyMeter("tdp", tdp_watts=100.0)
    t.start()
    out = t.stop(seconds=3.0)
    assert out["source"] == "estimated-tdp" and out["joules"] == pytest.approx(300.0)
    assert out["mean_watts"] == pytest.approx(100.0)


def test_meter_misuse():
    with pytest.raises(ValueError):
        EnergyMeter("magic")
    with pytest.raises(RuntimeError, match="before start"):
        EnergyMeter("estimate").stop(flops=1)
