"""Seeds against seeds: mean ± std of each probe over the seeds of a group, and Welch's t-test of every
group against the first (the reference), with the word its p-value earns.

    python benchmarks/seeds_table.py ae='probes/ae-s*/probe.json' drl='probes/drl-s*/probe.json'
    python benchmarks/seeds_table.py ae='probes/ae-s*/probe.json' tc='probes/tc-s*/probe.json' --t 0.4

Each probe.json (probe.py) gives one seed: its first run's row (at --t for a time-conditioned code).
Prints two markdown tables: the groups' numbers, and each group minus the reference with its p-value
("ahead" / "behind" at p < 0.05, "level" otherwise).
"""
import argparse
import glob
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stats import mean_std, verdict, welch  # noqa: E402

pfmt = lambda p: "p < 0.001" if p < 0.001 else f"p = {p:.3f}"  # noqa: E731

PROBES = {"linear": "linear", "k-NN": "knn", "1-shot": "few_shot_1", "5-shot": "few_shot_5",
          "10-shot": "few_shot_10"}


def seed_row(path, t):
    results = json.loads(Path(path).read_text())["results"]
    name = next(k for k in results if k not in ("raw_pixels", "random_encoder"))
    rows = results[name]["per_t"]
    if t is not None:
        rows = [r for r in rows if r["t"] is not None and abs(r["t"] - t) < 1e-9] or rows
    if len(rows) != 1:
        raise SystemExit(f"error: {path} holds a time-conditioned code at several t; pass --t")
    return rows[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("groups", nargs="+", help="NAME=GLOB of probe.json files, one per seed; the first is the reference")
    p.add_argument("--t", type=float, default=None, help="the t to read of a time-conditioned code")
    args = p.parse_args(argv)
    groups = {}
    for spec in args.groups:
        name, pattern = spec.split("=", 1)
        paths = sorted(glob.glob(pattern))
        if len(paths) < 2:
            raise SystemExit(f"error: {pattern} matches {len(paths)} probe.json files; a t-test needs at least 2 seeds")
        groups[name] = [seed_row(path, args.t) for path in paths]
    print("| group | seeds | linear per seed | " + " | ".join(PROBES) + " | dim |")
    print("|---" * (len(PROBES) + 4) + "|")
    for name, rows in groups.items():
        cells = [f"{mean_std([100 * r[k] for r in rows])[0]:.2f} ± {mean_std([100 * r[k] for r in rows])[1]:.2f}"
                 for k in PROBES.values()]
        per_seed = " / ".join(f"{100 * r['linear']:.2f}" for r in rows)
        dim = mean_std([r["participation_ratio"] for r in rows])[0]
        print(f"| {name} | {len(rows)} | {per_seed} | " + " | ".join(cells) + f" | {dim:.1f} |")
    ref_name, ref = next(iter(groups.items()))
    print(f"\n| against {ref_name} | " + " | ".join(PROBES) + " |")
    print("|---" * (len(PROBES) + 1) + "|")
    for name, rows in list(groups.items())[1:]:
        cells = []
        for k in PROBES.values():
            diff, _, _, pval = welch([100 * r[k] for r in rows], [100 * r[k] for r in ref])
            cells.append(f"{diff:+.2f}, {pfmt(pval)}: {verdict(pval, diff)}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
