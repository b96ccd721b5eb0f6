"""GPU train step: ddp_scratch (backend cupy, the trainer's own step) against PyTorch CUDA eager,
the same shapes in the same run; samples/s ratio, TFLOP/s, MFU against the device's FP32 peak,
NVML energy per step, joules per sample and mean watts.

  python benchmarks/gpu/bench_gpu.py                  # MLP 784-1024-1024-10 (batch 1024) and a GPT
  python benchmarks/gpu/bench_gpu.py --models mlp     #   (6 layers, d384, context 256, batch 32)

Writes benchmarks/results/gpu/gpu_steps.json naming the device, driver, CUDA, CuPy, NCCL, MPI and
torch versions; benchmarks/gpu/device_run.sh calls it on the GPU machine.

--check runs everything here but the GPU: tiny shapes, ddp_scratch on whatever `import cupy` finds
(the tests' strict stand-in under DDP_TEST_DEVICE=strict) and torch on the CPU; the results are
marked as a check. tests/test_benchmarks.py runs it.

Timing: both sides alternate in windows (benchmarks/common.py time_windows, synchronising the
device before and after each window), medians reported. ddp_scratch's FP32 GEMMs run in plain FP32
(CuPy uses no TF32 unless CUPY_TF32=1); torch is held to the same (allow_tf32 off), so MFU is
against the FP32 (non-tensor-core) peak.
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import common  # noqa: E402

# Dense FP32 peaks (FLOP/s) of the data-centre GPUs a course cluster has, from NVIDIA's datasheets;
# matched by substring of the device name, first match wins. Unknown devices get no MFU.
FP32_PEAK = [("H100 NVL", 60e12), ("H100 PCIe", 51e12), ("H100", 67e12), ("H200", 67e12),
             ("GH200", 67e12), ("A100", 19.5e12), ("L40S", 91.6e12), ("L4", 30.3e12), ("V100", 15.7e12),
             ("A40", 37.4e12), ("A30", 10.3e12), ("T4", 8.1e12)]

SHAPES = {   # (ddp_scratch --set overrides, rows or sequences per step)
    "mlp": (["data.name=synthetic", "data.n_features=784", "data.n_samples=16384", "model.hidden=[1024,1024]",
             "train.batch_size=1024"], 1024),
    "gpt": (["model.name=gpt", "data.name=text", "data.path=/usr/share/common-licenses/GPL-3", "model.n_layer=6",
             "model.n_head=6", "model.d_model=384", "model.block_size=256", "train.batch_size=32"], 32),
}
CHECK = {   # the same, tiny: a CPU check of the code paths
    "mlp": (["data.name=synthetic", "data.n_features=16", "data.n_samples=256", "model.hidden=[32]",
             "train.batch_size=32"], 32),
    "gpt": (["model.name=gpt", "data.name=addition", "model.n_layer=1", "model.n_head=2", "model.d_model=16",
             "train.batch_size=4"], 4),
}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--steps", type=int, default=20, help="steps per timing window")
    ap.add_argument("--windows", type=int, default=5, help="timed windows per side (median reported)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    ap.add_argument("--check", action="store_true", help="CPU check: tiny shapes, torch on the CPU")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "gpu", "gpu_steps.json"), help="JSON file")
    a = ap.parse_args(argv)
    for k in ("steps", "windows"):
        if getattr(a, k) < 1:
            ap.error(f"--{k}: expected at least 1, got {getattr(a, k)}")
    if a.warmup < 0:
        ap.error(f"--warmup: expected at least 0, got {a.warmup}")
    return a


def fp32_peak(name):
    return next((p for key, p in FP32_PEAK if key in name), None)


def versions():
    """What the results must name: device, driver, CUDA, CuPy, NCCL, MPI, torch (None where absent)."""
    from ddp_scratch import backend as B
    v = {"device": B.device_name(), "driver": None, "cuda_runtime": None, "cupy": None, "nccl": None,
         "mpi": None, "torch": None, "torch_cuda": None}
    try:
        import cupy
        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["driver"] = cupy.cuda.runtime.driverGetVersion()
        from cupy.cuda import nccl
        v["nccl"] = nccl.get_version()
    except Exception:          # no NCCL in the stand-in, or an older CuPy
        pass
    try:
        import pynvml
        pynvml.nvmlInit()
        d = pynvml.nvmlSystemGetDriverVersion()
        v["driver"] = d.decode() if isinstance(d, bytes) else d
    except Exception:
        pass
    try:
        from mpi4py import MPI
        v["mpi"] = MPI.Get_library_version().splitlines()[0].strip()
    except Exception:
        pass
    try:
        import torch
        v["torch"], v["torch_cuda"] = torch.__version__, torch.version.cuda
    except Exception:
        pass
    return v


def ours(name, sets, out):
    """ddp_scratch's Trainer on one process: (step function, items per step, FLOPs per step)."""
    from ddp_scratch.config import load_config
    from ddp_scratch.parallel.world import Comm
    from ddp_scratch.run.trainer import Options, Trainer
    cfg = load_config(None, sets + ["backend=cupy", "optim.name=adamw", "train.grad_clip=1.0",
                                    "logging.progress=false"])
    tr = Trainer(cfg, Options(out=out, quiet=True), comm=Comm(serial=True))
    i = [0]

    def step():
        tr.train_step(0, i[0] % tr.spe)
        i[0] += 1
    ips = tr.task.items_per_step()
    return step, tr, ips, tr.model.flops_per_step(ips)


def torch_twin(name, tr, device):
    """The same model and batch in PyTorch eager (AdamW, clip 1): a step function."""
    import torch
    from ddp_scratch import backend as B
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    x, y, _ = tr.task.batch(0, 0)
    x, y = torch.from_numpy(B.to_numpy(x).copy()).to(device), torch.from_numpy(B.to_numpy(y).copy()).to(device)
    if name == "mlp":
        dims = tr.model.dims
        layers = []
        for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if k < len(dims) - 2 else [])
        net = torch.nn.Sequential(*layers).to(device)

        def loss_fn():
            return torch.nn.functional.cross_entropy(net(x), y.long())
    else:
        sys.path.insert(0, os.path.dirname(HERE))
        import bench_gpt
        net, _ = bench_gpt.build_torch(tr.model, "sdpa", device=device)

        def loss_fn():
            return net(x.long(), y.long())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return step


def measure(step, sync, a):
    w = common.time_windows(step, a.steps, a.windows, a.warmup, sync=sync)
    return sorted(s for s, _ in w)[len(w) // 2] / a.steps       # median seconds per step


def energy_per_step(step, sync, steps):
    """(joules per step, mean watts) from NVML's energy counter around `steps` steps, or (None, None)."""
    from ddp_scratch import backend as B
    from ddp_scratch.study.energy import NvmlReader
    r = NvmlReader(device_index=0)
    if not r.available() or not B.on_gpu():
        return None, None
    sync()
    e0, t0 = r.read(), time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    e1, t1 = r.read(), time.perf_counter()
    return (e1 - e0) / 1000.0 / steps, (e1 - e0) / 1000.0 / (t1 - t0)


def main(argv=None):
    a = parse(argv)
    from ddp_scratch import backend as B
    from ddp_scratch.errors import UserError
    import torch
    device = "cpu" if a.check else "cuda"
    try:
        B.use("cupy")
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("torch sees no CUDA device")
    except UserError as e:
        print(f"error: {e} (bench_gpu.py needs a GPU; --check runs it on the CPU stand-in)", file=sys.stderr)
        return 2
    tsync = (lambda: torch.cuda.synchronize()) if device == "cuda" else (lambda: None)
    res = {"check": a.check, "versions": versions(), "steps_per_window": a.steps, "windows": a.windows,
           "when": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
    peak = fp32_peak(res["versions"]["device"])
    for name in a.models:
        sets, _ = (CHECK if a.check else SHAPES)[name]
        with tempfile.TemporaryDirectory() as out:
            step, tr, ips, flops = ours(name, sets, out)
            s_ours = measure(step, B.synchronize, a)
            j_step, watts = energy_per_step(step, B.synchronize, 5 * a.steps)
            t_step = torch_twin(name, tr, device)
            s_torch = measure(t_step, tsync, a)
        unit = tr.task.items
        r = {"shape": sets, "items": unit, "items_per_step": ips, "flops_per_step": flops,
             "ours_s_per_step": s_ours, "torch_s_per_step": s_torch,
             f"ours_{unit}_per_s": ips / s_ours, f"torch_{unit}_per_s": ips / s_torch,
             "ratio_vs_torch": s_torch / s_ours, "ours_tflops": flops / s_ours / 1e12,
             "mfu_fp32": flops / s_ours / peak if peak else None, "fp32_peak_flops": peak,
             "joules_per_step": j_step, "mean_watts": watts,
             "joules_per_sample": j_step / (ips / getattr(tr.task, "T", 1)) if j_step else None}
        res["models"][name] = r
        print(f"{name}: ours {ips / s_ours:,.0f} {unit}/s, torch {ips / s_torch:,.0f} -> {r['ratio_vs_torch']:.2f}x; "
              f"{r['ours_tflops']:.2f} TFLOP/s" + (f", MFU {r['mfu_fp32']:.1%}" if peak else "")
              + (f", {watts:.0f} W, {r['joules_per_sample']:.2e} J/sample" if watts else ""), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
