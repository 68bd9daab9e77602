"""What pays on a CPU: images/s of train_drl.py's whole step for several set-ups, side by side in one
process (round-robin, so every set-up sees the same machine load), on Fashion-MNIST-sized batches.

    python benchmarks/cpu_step.py --threads 2 --steps 20 --rounds 3
    python benchmarks/cpu_step.py --threads 2 --compile     # also torch.compile (inductor's C++ backend)
    python benchmarks/cpu_step.py --threads 1 --rows "preset=" "ch4=--ch 4" "ae=--objective ae"

Rows: the `cpu` preset as it was (a 16-channel score net with middle attention, the code map read from
the code's embedding) in contiguous memory and in channels_last (the step's default), a 4-channel score
net without middle attention (the code map read from z), and the `cpu` preset now (the same at 8
channels) in both formats, plus the autoencoder baseline for scale. A row's flag `contiguous` trains
in contiguous memory. Each row builds train_drl.py's own Training object and times
Training.train_step; the median round is printed. The step is the same code in every row: only the
flags differ. --rows replaces the rows by NAME=FLAGS pairs (train_drl.py flags on top of the `cpu`
preset; the first row is the reference).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_drl  # noqa: E402

BEFORE = ["--ch", "16", "--mid-attn"]
SETUPS = {
    "cpu preset before (ch 16, middle attention), contiguous": BEFORE + ["contiguous"],
    "cpu preset before, channels_last": BEFORE,
    "score net ch 4, no middle attention": ["--ch", "4"],
    "cpu preset now (score net ch 8, no middle attention), contiguous": ["contiguous"],
    "cpu preset now, channels_last (the step's default)": [],
    "autoencoder (--objective ae)": ["--objective", "ae"],
}


def build(flags, dataset, compile_):
    contiguous = "contiguous" in flags  # the step's default memory format is channels_last
    flags = [f for f in flags if f != "contiguous"]
    args = train_drl.parse_args(["--dataset", dataset, "--device", "cpu", "--probe-n", "0", *flags])
    tr = train_drl.Training(args, "unused", torch.device("cpu"))
    if contiguous:
        tr.memory_format = torch.contiguous_format
        for m in [*tr.nets.values(), *tr.emas.values()]:
            m.to(memory_format=torch.contiguous_format)
    if compile_:
        for m in tr.nets.values():
            m.compile()
    for _ in range(3):  # warm-up (and compilation)
        tr.train_step(tr.next_batch())
    return tr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="shapes", help="images only set the shape; shapes needs no files")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="steps per set-up per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="add compiled rows (slow to build)")
    p.add_argument("--rows", nargs="+", metavar="NAME=FLAGS", help="these set-ups instead (first: the reference)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    setups = dict(SETUPS)
    if args.rows:
        if not all("=" in r for r in args.rows):
            p.error('--rows takes NAME=FLAGS pairs, e.g. "preset=" "wide=--enc-ch 32"')
        setups = {name: flags.split() for name, flags in (r.split("=", 1) for r in args.rows)}
    if args.compile:
        setups["cpu preset before, compiled"] = BEFORE
        setups["cpu preset now, compiled"] = []
    trainings = {name: build(flags, args.dataset, "compiled" in name) for name, flags in setups.items()}
    speeds = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, tr in trainings.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tr.train_step(tr.next_batch())
            speeds[name].append(args.steps * tr.batch / (time.perf_counter() - t0))
    base = statistics.median(speeds[next(iter(setups))])
    print(f"{args.threads} thread(s), batch {next(iter(trainings.values())).batch}, median of {args.rounds} rounds "
          f"of {args.steps} steps, {torch.__version__}")
    print(f"| set-up | images/s | vs {next(iter(setups))} |\n|---|---|---|")
    for name, s in speeds.items():
        print(f"| {name} | {statistics.median(s):.0f} | {statistics.median(s) / base:.2f}x |")


if __name__ == "__main__":
    main()
