"""Time to accuracy: the probe curves of several runs on one plot, accuracy against training minutes.

    python benchmarks/time_to_accuracy.py runs/cpu/w-s0 runs/cpu/ae60 --out time_to_accuracy.png

Reads each run folder's stats.jsonl (train_drl.py with --probe-n N writes, at every save, the linear
probe of the EMA encoder and the code's participation ratio) and draws both against the minutes of
training (evaluation and probing excluded), one line per run, labelled by its folder name or by
NAME=FOLDER. Prints the curves as a table too.
"""
import argparse
import json
from pathlib import Path


def read_curve(folder):
    rows = [json.loads(line) for line in (Path(folder) / "stats.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "probe_linear" in r]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders, or NAME=FOLDER")
    p.add_argument("--out", default="time_to_accuracy.png")
    p.add_argument("--title", default="linear probe of the EMA encoder while training")
    args = p.parse_args()
    curves = {}
    for spec in args.runs:
        name, folder = spec.split("=", 1) if "=" in spec else (Path(spec).name, spec)
        if not (Path(folder) / "stats.jsonl").exists():
            raise SystemExit(f"error: {folder}/stats.jsonl not found; pass a train_drl.py run folder")
        curves[name] = read_curve(folder)
        if not curves[name]:
            raise SystemExit(f"error: {folder} has no probe curve; train it with --probe-n N")
        print(f"{name:>20}: " + "  ".join(f"{r['minutes']:.1f} min {100 * r['probe_linear']:.1f}%"
                                          f" (dim {r['probe_pr']:.1f})" for r in curves[name]))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in curves.items():
        minutes = [r["minutes"] for r in rows]
        axes[0].plot(minutes, [100 * r["probe_linear"] for r in rows], "o-", ms=3, label=name)
        axes[1].plot(minutes, [r["probe_pr"] for r in rows], "o-", ms=3, label=name)
    axes[0].set(xlabel="minutes of training", ylabel="linear probe accuracy (%)", title=args.title)
    axes[1].set(xlabel="minutes of training", ylabel="participation ratio of the code",
                title="effective dimension of the code")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
