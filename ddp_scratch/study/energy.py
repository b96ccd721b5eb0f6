"""Energy accounting that never passes an estimate off as a measurement.

Every result carries a ``source`` label:

* ``measured-rapl``  - Intel RAPL package counters (``/sys/class/powercap``).
  They cover the whole CPU package(s), i.e. every process on the host, so
  ranks sharing a host must not sum their readings.
* ``measured-nvml``  - NVIDIA ``nvmlDeviceGetTotalEnergyConsumption`` (mJ,
  Volta and newer). Whole-GPU, same sharing caveat.
* ``estimated-horowitz45nm`` - op/byte counts times per-op energies from
  M. Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm, 0.9 V:
  fp32 add 0.9 pJ, fp32 mult 3.7 pJ, fp16 add 0.4 pJ, fp16 mult 1.1 pJ,
  DRAM ~640 pJ per 32-bit word. An FMA counts as 2 FLOPs, so a FLOP costs
  (add + mult) / 2. fp64 at 4x fp32 is OUR ASSUMPTION (a 53-bit multiplier
  array is ~4x a 24-bit one), not a number from the paper. This ignores
  static/leakage power, caches, interconnect and cooling, so it is a lower
  bound, typically far below measured wall power.
* ``estimated-tdp``  - seconds x a nominal power (TDP or power limit); an
  upper-bound-ish guess that assumes the chip ran flat out.
"""
from __future__ import annotations

import os
import re
import time
from typing import Any

__all__ = [
    "RaplReader", "NvmlReader", "EnergyMeter", "estimate_joules",
    "tdp_estimate", "PJ_PER_FLOP", "PJ_PER_DRAM_WORD32",
]

PJ_FP32_ADD, PJ_FP32_MULT = 0.9, 3.7
PJ_FP16_ADD, PJ_FP16_MULT = 0.4, 1.1
FP64_OVER_FP32 = 4.0  # assumption, see module docstring
PJ_PER_FLOP = {
    "float16": (PJ_FP16_ADD + PJ_FP16_MULT) / 2,
    "float32": (PJ_FP32_ADD + PJ_FP32_MULT) / 2,
    "float64": FP64_OVER_FP32 * (PJ_FP32_ADD + PJ_FP32_MULT) / 2,
}
PJ_PER_DRAM_WORD32 = 640.0

_PKG_RE = re.compile(r"^intel-rapl:\d+$")  # sub-zones are intel-rapl:N:M


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().strip())


class RaplReader:
    """Package-level RAPL counters in microjoules."""

    def __init__(self, root: str = "/sys/class/powercap"):
        self.root = root
        self.domains: dict[str, dict[str, Any]] = {}
        self.reason = ""
        try:
            names = sorted(os.listdir(root))
        except OSError as e:
            self.reason = f"cannot list {root}: {e.strerror}"
            return
        for name in names:
            if not _PKG_RE.match(name):
                continue
            d = os.path.join(root, name)
            try:
                # Reading energy_uj is the real test: since CVE-2020-8694 it
                # is root-only on most distros even though the file exists.
                _read_int(os.path.join(d, "energy_uj"))
                max_range = _read_int(os.path.join(d, "max_energy_range_uj"))
            except (OSError, ValueError) as e:
                self.reason = f"{d}: {e}"
                continue
            label = name
            try:
                with open(os.path.join(d, "name")) as f:
                    label = f"{name}({f.read().strip()})"
            except OSError:
                pass
            self.domains[name] = {"path": d, "max_range": max_range,
                                  "label": label}
        if not self.domains and not self.reason:
            self.reason = f"no intel-rapl:N package domains under {root}"

    def available(self) -> bool:
        return bool(self.domains)

    def read(self) -> dict[str, int]:
        return {n: _read_int(os.path.join(d["path"], "energy_uj"))
                for n, d in self.domains.items()}

    def delta(self, prev: dict[str, int], cur: dict[str, int]) -> dict[str, int]:
        """Per-domain microjoules between two reads, undoing one wrap-around.

        The counter wraps to 0 after ``max_energy_range_uj``; more than one
        wrap between reads (hours at package power) cannot be detected, so
        callers should read at least every few minutes on long runs.
        """
        out = {}
        for name, c in cur.items():
            p = prev[name]
            out[name] = c - p if c >= p else c + self.domains[name]["max_range"] - p
        return out


class NvmlReader:
    """One GPU's cumulative energy via a pynvml-like object (mJ)."""

    def __init__(self, nvml: Any = None, device_index: int | str = 0):
        """device_index: an NVML index, or a PCI bus id ('0000:3B:00.0', as CuPy's Device gives):
        NVML numbers all GPUs of the node and ignores CUDA_VISIBLE_DEVICES, so a rank that sees
        one GPU as CUDA device 0 must name it by bus id to read its own counter."""
        self.nvml, self.handle, self.reason = nvml, None, ""
        self.device_index = device_index
        try:
            if self.nvml is None:
                import pynvml  # package nvidia-ml-py; optional
                self.nvml = pynvml
            self.nvml.nvmlInit()
            if isinstance(device_index, str):
                self.handle = self.nvml.nvmlDeviceGetHandleByPciBusId(device_index)
            else:
                self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device_index)
            # Pre-Volta GPUs raise NotSupported here; probe once so that
            # available() means "read() will work".
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as e:  # ImportError, NVMLError_*, driver missing
            self.handle = None
            self.reason = f"NVML unavailable: {type(e).__name__}: {e}"

    def available(self) -> bool:
        return self.handle is not None

    def read(self) -> int:
        """Millijoules since the driver was loaded."""
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def name(self) -> str:
        n = self.nvml.nvmlDeviceGetName(self.handle)
        return n.decode() if isinstance(n, bytes) else str(n)

    def power_limit_watts(self) -> float:
        return self.nvml.nvmlDeviceGetPowerManagementLimit(self.handle) / 1000.0


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    aliases = {"fp16": "float16", "half": "float16", "fp32": "float32",
               "single": "float32", "float": "float64", "fp64": "float64",
               "double": "float64"}
    return aliases.get(name, name)


def estimate_joules(flops: float, bytes_moved: float = 0.0,
                    dtype: Any = "float32") -> float:
    """Horowitz-45nm estimate: flops x pJ/FLOP + DRAM bytes x 640 pJ / 4 B."""
    key = _dtype_name(dtype)
    if key not in PJ_PER_FLOP:
        raise ValueError(f"no Horowitz energy for dtype {key!r}; "
                         f"known: {sorted(PJ_PER_FLOP)}")
    if flops < 0 or bytes_moved < 0:
        raise ValueError("flops and bytes_moved must be non-negative")
    pj = flops * PJ_PER_FLOP[key] + (bytes_moved / 4.0) * PJ_PER_DRAM_WORD32
    return pj * 1e-12


def tdp_estimate(seconds: float, watts: float) -> float:
    """Joules if the device drew ``watts`` for the whole interval."""
    if seconds < 0 or watts < 0:
        raise ValueError("seconds and watts must be non-negative")
    return seconds * watts


class EnergyMeter:
    """start()/stop() around a region; stop() returns a labelled dict.

    ``source="auto"`` tries ``auto_order`` (NVML first: on a GPU run the GPU
    dominates) and falls back to an estimate. CPU-backend runs on a host that
    also has an idle GPU should pass ``source="rapl"`` or
    ``auto_order=("rapl",)``. An explicitly requested measured source that is
    unavailable raises, so nobody silently gets an estimate instead.
    """

    SOURCES = ("auto", "rapl", "nvml", "estimate", "tdp")

    def __init__(self, source: str = "auto", device_index: int | str = 0, *,
                 dtype: Any = "float32", tdp_watts: float | None = None,
                 rapl_root: str = "/sys/class/powercap", nvml: Any = None,
                 auto_order: tuple[str, ...] = ("nvml", "rapl")):
        if source not in self.SOURCES:
            raise ValueError(f"source must be one of {self.SOURCES}, got {source!r}")
        self.dtype, self.tdp_watts = dtype, tdp_watts
        self.reader: Any = None
        self.kind = "estimate"
        reasons = []
        wanted = auto_order if source == "auto" else (source,)
        for kind in wanted:
            if kind == "rapl":
                r = RaplReader(rapl_root)
            elif kind == "nvml":
                r = NvmlReader(nvml, device_index)
            else:
                self.kind = kind
                break
            if r.available():
                self.reader, self.kind = r, kind
                break
            reasons.append(r.reason)
            if source != "auto":
                raise RuntimeError(f"energy source {kind!r} unavailable: {r.reason}")
        self.fallback_reason = "; ".join(reasons)
        self._t0: float | None = None
        self._e0: Any = None

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._e0 = self.reader.read() if self.reader is not None else None

    def stop(self, flops: float | None = None, bytes_moved: float = 0.0,
             seconds: float | None = None) -> dict:
        if self._t0 is None:
            raise RuntimeError("EnergyMeter.stop() called before start()")
        wall = time.perf_counter() - self._t0
        secs = wall if seconds is None else float(seconds)
        if self.kind == "rapl":
            d = self.reader.delta(self._e0, self.reader.read())
            joules = sum(d.values()) * 1e-6
            labels = ", ".join(v["label"] for v in self.reader.domains.values())
            out = {"source": "measured-rapl", "joules": joules,
                   "note": f"RAPL package counters [{labels}]; host-wide, "
                           "includes other processes"}
        elif self.kind == "nvml":
            joules = (self.reader.read() - self._e0) * 1e-3
            out = {"source": "measured-nvml", "joules": joules,
                   "note": f"NVML total energy of GPU {self.reader.device_index} "
                           f"({self.reader.name()}); whole device"}
        else:
            out = self._estimate(flops, bytes_moved, secs)
        if self.fallback_reason:
            out["note"] += f"; fallback because: {self.fallback_reason}"
        out["seconds"] = secs
        out["mean_watts"] = out["joules"] / secs if secs > 0 else float("nan")
        return out

    def _estimate(self, flops, bytes_moved, secs) -> dict:
        if self.kind == "estimate" and flops is not None:
            return {"source": "estimated-horowitz45nm",
                    "joules": estimate_joules(flops, bytes_moved, self.dtype),
                    "note": f"Horowitz ISSCC'14 45nm per-op energies, dtype "
                            f"{_dtype_name(self.dtype)} (fp64=4x fp32 assumed); "
                            "dynamic energy only, a lower bound"}
        if self.tdp_watts is not None:
            return {"source": "estimated-tdp",
                    "joules": tdp_estimate(secs, self.tdp_watts),
                    "note": f"{self.tdp_watts} W nominal x {secs:.4g} s"}
        raise ValueError("estimate needs flops= (Horowitz) or tdp_watts= (TDP)")
