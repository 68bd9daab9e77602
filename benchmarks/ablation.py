"""Screen training configurations: run several train_drl.py runs side by side, table their probes.

    python benchmarks/ablation.py --grid levers --parallel 12 --out runs/ablation -- --dataset fashion_mnist
    python benchmarks/ablation.py --grid levers --only base,edm --parallel 2 --out runs/abl -- --dataset fashion_mnist

Each row of a grid is a set of train_drl.py flags added to the common flags after `--`. The runs
use the `cpu` preset's networks and batch; their step counts are the images that 15 minutes buy on
a 2-core CPU for each objective (train_drl.py --benchmark, README), so the rows compare equal
wall-clock on that machine wherever the runs themselves execute. Every run writes its probe curve
(linear probe of the EMA encoder on --probe-n images, and the code's participation ratio) to its
stats.jsonl; this script collects the last row of each into OUT/ablation.json and prints a table.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# steps that 15 minutes of training buy on this project's 2-core CPU, batch 64, cpu preset networks:
# drl 315 images/s, ae 1096, vae 1089, simclr_gauss 1242 (train_drl.py --benchmark 30, README)
STEPS_15_MIN = dict(drl=4400, ae=15400, vae=15300, simclr_gauss=17500)
EDM = ["--precond", "edm", "--weighting", "edm"]
# every row starts from the papers' loss at the cpu preset's size (the state before this ablation),
# so the rows stay the same whatever the cpu preset's defaults become; later flags override earlier
PAPER_LOSS = ["--precond", "paper", "--weighting", "paper", "--t-sampling", "uniform", "--no-latent-norm",
              "--no-code-map", "--lr", "2e-4", "--l1", "1e-5"]
GRIDS = {
    "space": {  # round 2: how the code enters the score net (the cpu preset's networks)
        "norm_lr": ["--latent-norm", "--lr", "1e-3"],
        "map_norm_lr": ["--code-map", "--latent-norm", "--lr", "1e-3"],
        "edm_map_norm_lr": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3"],
        "edm_ln0_map_norm_lr": EDM + ["--t-sampling", "lognormal", "--p-mean", "0", "--code-map", "--latent-norm",
                                      "--lr", "1e-3"],
        "edm_ln1_map_norm_lr": EDM + ["--t-sampling", "lognormal", "--p-mean", "1", "--code-map", "--latent-norm",
                                      "--lr", "1e-3"],
        "edm_sigma_map_norm_lr": EDM + ["--t-sampling", "sigma", "--code-map", "--latent-norm", "--lr", "1e-3"],
        "norm_lr_decorr": ["--latent-norm", "--lr", "1e-3", "--decorr", "1"],
        "map_norm_lr_decorr": ["--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "1"],
        "edm_map_norm_lr_decorr": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "1"],
        "ae": ["--objective", "ae"],
    },
    "winner": {  # the cpu preset: round 3's best without the unstable decorrelation term and L1
        "winner": EDM + ["--t-sampling", "sigma", "--code-map", "--latent-norm", "--lr", "1e-3", "--l1", "0"],
        "winner_uniform": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3", "--l1", "0"],
    },
    "combine": {  # round 3: the best of round 2 at the full budget, and its neighbours
        "best": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "1"],
        "best_decorr0.3": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "0.3"],
        "best_decorr3": EDM + ["--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "3"],
        "best_ln1": EDM + ["--t-sampling", "lognormal", "--p-mean", "1", "--code-map", "--latent-norm", "--lr", "1e-3",
                           "--decorr", "1"],
        "best_sigma": EDM + ["--t-sampling", "sigma", "--code-map", "--latent-norm", "--lr", "1e-3", "--decorr", "1"],
        "best_lr2e-3": EDM + ["--code-map", "--latent-norm", "--lr", "2e-3", "--decorr", "1"],
        "ae": ["--objective", "ae"],
    },
    "levers": {
        "base": [],                                     # today's paper set-up at the cpu size
        "lr1e-3": ["--lr", "1e-3"],
        "latent_norm": ["--latent-norm"],
        "sigma": ["--t-sampling", "sigma"],
        "edm_precond": ["--precond", "edm"],
        "edm": EDM,
        "edm_ln-1.2": EDM + ["--t-sampling", "lognormal", "--p-mean", "-1.2"],
        "edm_ln0": EDM + ["--t-sampling", "lognormal", "--p-mean", "0"],
        "edm_ln1": EDM + ["--t-sampling", "lognormal", "--p-mean", "1"],
        "edm_ln0_std2": EDM + ["--t-sampling", "lognormal", "--p-mean", "0", "--p-std", "2"],
        "edm_sigma": EDM + ["--t-sampling", "sigma"],
        "edm_lr1e-3": EDM + ["--lr", "1e-3"],
        "edm_norm": EDM + ["--latent-norm"],
        "edm_norm_lr1e-3": EDM + ["--latent-norm", "--lr", "1e-3"],
        "edm_ln0_norm_lr1e-3": EDM + ["--t-sampling", "lognormal", "--p-mean", "0", "--latent-norm", "--lr", "1e-3"],
        "latent32": ["--latent-dim", "32"],
        "ae": ["--objective", "ae"],
        "vae": ["--objective", "vae"],
        "simclr_gauss": ["--objective", "simclr_gauss"],
    },
}


def steps_for(flags):
    objective = flags[flags.index("--objective") + 1] if "--objective" in flags else "drl"
    return STEPS_15_MIN.get(objective, STEPS_15_MIN["drl"])


def main():
    argv = sys.argv[1:]
    common = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=GRIDS, default="levers")
    p.add_argument("--only", default=None, help="comma list of row names")
    p.add_argument("--seeds", default="0", help="comma list of seeds; each row runs once per seed")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args(argv)
    rows = GRIDS[args.grid]
    names = args.only.split(",") if args.only else list(rows)
    jobs = [(f"{n}-s{s}", PAPER_LOSS + rows[n] + ["--seed", s]) for n in names for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    running, results, t0 = [], {}, time.time()
    while jobs or running:
        while jobs and len(running) < args.parallel:
            name, flags = jobs.pop(0)
            cmd = [sys.executable, str(ROOT / "train_drl.py"), "--preset", "cpu", "--probe-n", "10000",
                   "--steps", str(steps_for(flags)), "--save-every", "1100", *common, *flags, "--out", str(out / name)]
            log = open(out / f"{name}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        for job in list(running):
            name, proc, log = job
            if proc.poll() is not None:
                running.remove(job)
                log.close()
                stats = [json.loads(r) for r in (out / name / "stats.jsonl").read_text().splitlines()] \
                    if (out / name / "stats.jsonl").exists() else []
                saved = [r for r in stats if "probe_linear" in r]
                results[name] = dict(rc=proc.returncode, curve=saved, last=saved[-1] if saved else None)
                last = results[name]["last"] or {}
                print(f"{time.time() - t0:6.0f}s {name:>24}: rc {proc.returncode}  step {last.get('step')}  "
                      f"linear {100 * last.get('probe_linear', float('nan')):.1f}  "
                      f"dim {last.get('probe_pr', float('nan')):.1f}  eval {last.get('eval_loss', float('nan')):.2f}",
                      flush=True)
                (out / "ablation.json").write_text(json.dumps(dict(common=common, results=results), indent=2))
        time.sleep(1)


if __name__ == "__main__":
    main()
