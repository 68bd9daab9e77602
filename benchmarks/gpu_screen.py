"""Screen many small set-ups on one GPU: train_drl.py runs side by side in one process, each run's
whole step a CUDA graph replayed on its own stream, so that one GPU trains a group of `cpu`-sized
runs in about the time one takes (a single such step leaves most of the GPU idle).

    python benchmarks/gpu_screen.py --dataset fashion_mnist --out runs/gs --group 8 \
        --rows "cf-s0=--ch 4 --t-uniform-share 0 --steps 7467 --seed 0" \
               "ae-s0=--objective ae --lr 1e-3 --steps 9225 --seed 0"
    python probe.py --ckpt runs/gs/cf-s0/ckpt.pt runs/gs/ae-s0/ckpt.pt --no-baselines --out probes/gs

A row is NAME=FLAGS: train_drl.py flags on top of the `cpu` preset (give each its --steps and
--seed). Rows train in groups of --group; each run saves OUT/NAME/ckpt.pt (and config.json) when
it reaches its steps, the same checkpoint train_drl.py writes, so probe.py, sample.py and a resumed
train_drl.py read it. With --probe, each finished group is probed (probe.py, in the background
while the next group trains). --limit S starts no group that the pace so far says would end after S
seconds. A run here learns what the same command of train_drl.py learns, but not bit for bit: the
runs of a group share the CUDA generator that draws t and the noise (each replay still draws fresh
numbers), and the step is the graphed one. On a CPU (--device cpu, for tests) the runs of a group
take eager steps in turn.
"""
import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_drl  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def build(name, flags, args, device):
    argv = ["--dataset", args.dataset, "--device", str(device), "--out", str(Path(args.out) / name),
            "--probe-n", "0", "--save-every", "100000000", *flags]
    if device.type == "cuda":
        argv.append("--cuda-graph")
    if args.data_dir:
        argv += ["--data-dir", args.data_dir]
    targs = train_drl.parse_args(argv)
    torch.manual_seed(targs.seed)  # the row's seed sets its initialisation, as in train_drl.py
    tr = train_drl.Training(targs, device)
    for m in tr.nets.values():
        m.train()
    Path(targs.out).mkdir(parents=True, exist_ok=True)
    return tr


def train_group(trainers, device):
    """Round-robin: one step of every unfinished run, each on its own stream; returns seconds."""
    streams = [torch.cuda.Stream(device) if device.type == "cuda" else None for _ in trainers]
    sums = [torch.zeros((), device=device) for _ in trainers]  # loss over the last 500 steps, no host sync
    t0 = time.perf_counter()
    active = list(range(len(trainers)))
    while active:
        for i in active:
            tr = trainers[i]
            with torch.cuda.stream(streams[i]) if streams[i] is not None else contextlib.nullcontext():
                loss, reg = tr.train_step(tr.next_batch())
                if tr.args.steps - tr.step < 500:
                    sums[i] += loss
        active = [i for i in active if trainers[i].step < trainers[i].args.steps]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    losses = [(s / min(500, tr.args.steps)).item() for s, tr in zip(sums, trainers)]
    return seconds, losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", required=True, help="NAME=FLAGS, train_drl.py flags on the cpu preset")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="runs/gs")
    p.add_argument("--group", type=int, default=8, help="runs trained side by side")
    p.add_argument("--limit", type=float, default=float("inf"), help="seconds: start no group that would end later")
    p.add_argument("--probe", action="store_true", help="probe each finished group (probe.py, in the background)")
    p.add_argument("--probe-out", default="probes/gs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for row in args.rows:
        name, sep, flags = row.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --rows takes NAME=FLAGS, got {row!r}")
        rows.append((name, shlex.split(flags)))
        if (Path(args.out) / name / "ckpt.pt").exists():  # checked for every row before any trains
            raise SystemExit(f"error: {args.out}/{name}/ckpt.pt exists; remove it or pass another --out")
    start, per_step, probes = time.perf_counter(), None, []
    summary = Path(args.out) / "screen.jsonl"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for g in range(0, len(rows), args.group):
        group = rows[g:g + args.group]
        if per_step is not None:  # seconds per step of the slowest run so far, scaled to this group's
            need = per_step * max(int(train_drl.parse_args(f).steps) for _, f in group) * len(group)
            if time.perf_counter() - start + need > args.limit:
                print(f"stopping before rows {[n for n, _ in group]}: about {need:.0f} s needed", flush=True)
                break
        trainers = [build(name, flags, args, device) for name, flags in group]
        seconds, losses = train_group(trainers, device)
        per_step = max(per_step or 0, seconds / max(tr.args.steps for tr in trainers) / len(trainers))
        for (name, flags), tr, loss in zip(group, trainers, losses):
            tr.train_seconds = seconds
            tr.save()
            row = dict(name=name, flags=" ".join(flags), steps=tr.step, group_seconds=round(seconds, 1),
                       runs_in_group=len(group), final_loss=loss)
            with open(summary, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
        del trainers
        if args.probe:
            ckpts = [str(Path(args.out) / name / "ckpt.pt") for name, _ in group]
            cmd = [sys.executable, str(ROOT / "probe.py"), "--ckpt", *ckpts, "--no-baselines", "--device",
                   args.device, "--out", f"{args.probe_out}/g{g // args.group}"]
            probes.append(subprocess.Popen(cmd, cwd=ROOT))
    for proc in probes:
        proc.wait()
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
