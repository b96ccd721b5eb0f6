"""16-bit gradients against float32: what `comm.compress` costs in accuracy, and what it saves in bytes.

  python benchmarks/bench_compress.py                      # digits MLP (30 epochs), 2 ranks, ~1 min
  python benchmarks/bench_compress.py --tasks digits addition fashion

Each task trains five times on 2 ranks from the same seed (`launch.py local -n 2`):
`comm.algorithm: mpi` uncompressed, and the ring with fp16, bf16, fp16 + error feedback, bf16 +
error feedback. Prints and writes (results/compress.json) each run's headline metric, final
training loss, validation loss, bytes sent per step and rank (`comm_bytes_per_step`) and the
seconds spent in the all-reduce (`comm_s`). One seed per variant: differences of a few tenths of
a percent are within what another seed would give, and the uncompressed run is one such seed.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TASKS = {   # name: (config, extra --set, headline metric in summary.json)
    "digits": ("experiments/mlp_digits.yaml", [], "test_accuracy"),
    "addition": ("experiments/gpt_addition.yaml", ["train.max_steps=600"], "exact_match"),
    "fashion": ("experiments/mlp_mnist.yaml", ["data.path=/usr/share/datasets/fashion-mnist", "train.epochs=2"],
                "test_accuracy"),
}
VARIANTS = {
    "float32 (MPI_Allreduce)": [],
    "fp16": ["comm.algorithm=ring", "comm.compress=fp16"],
    "bf16": ["comm.algorithm=ring", "comm.compress=bf16"],
    "fp16 + error feedback": ["comm.algorithm=ring", "comm.compress=fp16", "comm.error_feedback=true"],
    "bf16 + error feedback": ["comm.algorithm=ring", "comm.compress=bf16", "comm.error_feedback=true"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", choices=list(TASKS), default=["digits"])
    ap.add_argument("--out", default="compress.json")
    a = ap.parse_args()
    rows = []
    for task in a.tasks:
        config, sets, metric = TASKS[task]
        for variant, extra in VARIANTS.items():
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, os.path.join(common.ROOT, "launch.py"), "local", "-n", "2", config,
                       "--out", out, "--quiet", "--set", "train.threads=1"]
                for s in [*sets, *extra]:
                    cmd += ["--set", s]
                r = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True,
                                   env=dict(os.environ, WANDB_MODE="disabled"))
                if r.returncode != 0:
                    raise SystemExit(f"{task} {variant}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
                with open(os.path.join(out, "summary.json")) as f:
                    s = json.load(f)
            rows.append({"task": task, "variant": variant, "metric": metric, "value": s[metric],
                         "train_loss": s["train_loss"], "val_loss": s["val_loss"], "steps": s["steps"],
                         "comm_bytes_per_step": s["comm_bytes_per_step"], "comm_s": s["comm_s"]})
            print(f"{task:9s} {variant:24s} {metric} {s[metric]:.4f}  train loss {s['train_loss']:.5f}  "
                  f"val loss {s['val_loss']:.5f}  {s['comm_bytes_per_step']:,.0f} B/step/rank  "
                  f"all-reduce {s['comm_s']:.2f} s", flush=True)
    path = common.write_json(a.out, {"benchmark": "compress", "world_size": 2, "env": common.environment(),
                                     "rows": rows})
    print(f"-> {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
