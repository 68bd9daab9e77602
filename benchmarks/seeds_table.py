"""Seeds against seeds: mean ± std of each probe over the seeds of a group, and Welch's t-test of every
group against the first (the reference), with the word its p-value earns.

    python benchmarks/seeds_table.py ae='probes/ae-s*/probe.json' drl='probes/drl-s*/probe.json'
    python benchmarks/seeds_table.py ae='probes/ae-s*/probe.json' tc='probes/tc-s*/probe.json' --t 0.4
    python benchmarks/seeds_table.py 0.2='probes/t0.2-s*/probe.json' 0.5='probes/t0.5-s*/probe.json' \
        --plot silhouette.png --metrics silhouette,silhouette_fine --xlabel "training t"
    python benchmarks/seeds_table.py ae='probes/ae-s*/probe.json' tc='probes/tc-s*/probe.json' --t 0.4 \
        --along-t fig4.png
    python benchmarks/seeds_table.py random='runs/ssl/random-n100-no-mixup-s*/result.json' \
        drl='runs/ssl/drl-n100-no-mixup-s*/result.json'

Each probe.json (probe.py) gives one seed: its first run's row (at --t for a time-conditioned code); each
result.json (semisup.py) gives one label draw: its test accuracy.
Prints two markdown tables: the groups' numbers, and each group minus the reference with its p-value
("ahead" / "behind" at p < 0.05, "level" otherwise). With --plot, groups named by numbers (a training t,
a code width) are also drawn: each metric's mean ± std over the seeds against the number. With --along-t,
each metric against t (the paper's Fig. 4): a time-conditioned code is a curve, a static code a line.
"""
import argparse
import glob
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import save_together  # noqa: E402
from stats import mean_std, verdict, welch  # noqa: E402

pfmt = lambda p: "p < 0.001" if p < 0.001 else f"p = {p:.3f}"  # noqa: E731

PROBES = {"linear": "linear", "k-NN": "knn", "1-shot": "few_shot_1", "5-shot": "few_shot_5",
          "10-shot": "few_shot_10"}
SEMISUP = {"test accuracy": "test_acc"}


def seed_rows(path):
    """The probe rows (one per t; one with t None for a static code) of a probe.json's first run, or the one
    row of a semisup.py result.json."""
    data = json.loads(Path(path).read_text())
    if "test_acc" in data:
        return [dict(t=None, test_acc=data["test_acc"])]
    results = data["results"]
    return results[next(k for k in results if k not in ("raw_pixels", "random_encoder"))]["per_t"]


def seed_row(rows, t, path):
    """One seed's row: the static code's, or the time-conditioned code's at t."""
    if t is not None:
        rows = [r for r in rows if r["t"] is not None and abs(r["t"] - t) < 1e-9] or rows
    if len(rows) != 1:
        raise SystemExit(f"error: {path} holds a time-conditioned code at several t; pass --t")
    return rows[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("groups", nargs="+", help="NAME=GLOB of probe.json (or semisup.py's result.json) files, one per "
                   "seed; the first is the reference")
    p.add_argument("--t", type=float, default=None, help="the t to read of a time-conditioned code")
    p.add_argument("--plot", default=None, help="a PNG of --metrics against the groups' names, which are numbers")
    p.add_argument("--metrics", default="linear", help="--plot: probe.json keys, comma-separated (for example "
                   "linear,knn or silhouette,silhouette_fine)")
    p.add_argument("--xlabel", default="group", help="--plot: what the groups' names are")
    p.add_argument("--along-t", default=None, help="a PNG of --metrics against t: a curve per time-conditioned "
                   "group, a line per static one")
    args = p.parse_args(argv)
    if args.plot:
        try:
            [float(spec.split("=", 1)[0]) for spec in args.groups]
        except ValueError:
            raise SystemExit("error: --plot draws against the groups' names, so name each group by a number "
                             "(for example 0.2='probes/t0.2-s*/probe.json')") from None
    runs, groups = {}, {}  # per group: every seed's rows (each probe.json read once), and its row at --t
    for spec in args.groups:
        name, pattern = spec.split("=", 1)
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise SystemExit(f"error: {pattern} matches no probe.json or result.json file")
        runs[name] = [seed_rows(path) for path in paths]
        groups[name] = [seed_row(rows, args.t, path) for rows, path in zip(runs[name], paths)]
    kinds = {"test_acc" in rows[0] for rows in groups.values()}
    if len(kinds) > 1:
        raise SystemExit("error: the groups mix probe.json and semisup.py result.json files; compare like with like")
    columns = SEMISUP if kinds == {True} else PROBES
    first_name, first = next(iter(columns.items()))
    print(f"| group | seeds | {first_name} per seed | " + " | ".join(columns) + " |" + " dim |" * (columns is PROBES))
    print("|---" * (len(columns) + 3 + (columns is PROBES)) + "|")
    for name, rows in groups.items():
        cells = [f"{mean_std([100 * r[k] for r in rows])[0]:.2f} ± {mean_std([100 * r[k] for r in rows])[1]:.2f}"
                 for k in columns.values()]
        per_seed = " / ".join(f"{100 * r[first]:.2f}" for r in rows)
        dim = f" {mean_std([r['participation_ratio'] for r in rows])[0]:.1f} |" if columns is PROBES else ""
        print(f"| {name} | {len(rows)} | {per_seed} | " + " | ".join(cells) + " |" + dim)
    ref_name, ref = next(iter(groups.items()))
    print(f"\n| against {ref_name} | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, rows in list(groups.items())[1:]:
        cells = []
        for k in columns.values():
            if min(len(rows), len(ref)) < 2:  # a t-test needs two seeds a side
                diff = mean_std([100 * r[k] for r in rows])[0] - mean_std([100 * r[k] for r in ref])[0]
                cells.append(f"{diff:+.2f}, one seed: no test")
                continue
            diff, _, _, pval = welch([100 * r[k] for r in rows], [100 * r[k] for r in ref])
            cells.append(f"{diff:+.2f}, {pfmt(pval)}: {verdict(pval, diff)}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    metrics = args.metrics.split(",")
    missing = [m for m in metrics if any(m not in r for seeds in runs.values() for rows in seeds for r in rows)]
    if (args.plot or args.along_t) and missing:
        raise SystemExit(f"error: --metrics {','.join(missing)} is not in every probe.json; pick from "
                         f"{', '.join(k for k in ref[0] if k != 't')}")
    if args.plot:
        save_together({args.plot: plot(groups, metrics, args.xlabel)})
        print(f"wrote {args.plot}")
    if args.along_t:
        save_together({args.along_t: plot_along_t(runs, metrics)})
        print(f"wrote {args.along_t}")


def plot(groups, metrics, xlabel):
    """PNG bytes: one panel per metric, its mean ± std over the seeds against each group's number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [float(name) for name in groups]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        stats = [mean_std([r[metric] for r in rows]) for rows in groups.values()]
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3)
        seeds = sorted({len(rows) for rows in groups.values()})
        ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric}, mean ± std of {'/'.join(map(str, seeds))} seeds")
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def plot_along_t(runs, metrics):
    """PNG bytes: one panel per metric against t; each group's mean ± std over its seeds, at every t its
    probe.json files hold (a time-conditioned code) or as a horizontal band (a static code)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (name, seeds) in enumerate(runs.items()):
            colour, label = f"C{i}", f"{name} ({len(seeds)} seed{'s' * (len(seeds) != 1)})"
            ts = sorted({r["t"] for rows in seeds for r in rows if r["t"] is not None})
            if not ts:
                m, s = mean_std([rows[0][metric] for rows in seeds])
                ax.axhline(m, color=colour, ls="--", label=label)
                ax.axhspan(m - s, m + s, color=colour, alpha=0.15)
                continue
            stats = [mean_std([r[metric] for rows in seeds for r in rows if r["t"] == t]) for t in ts]
            ax.errorbar(ts, [m for m, _ in stats], yerr=[s for _, s in stats], color=colour, marker="o",
                        capsize=3, label=label)
        ax.set(xlabel="t", ylabel=metric, title=f"{metric} against t")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    return png_bytes(fig)


def png_bytes(fig):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return png.getvalue()


if __name__ == "__main__":
    main()
