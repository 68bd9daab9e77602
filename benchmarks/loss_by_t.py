"""Where does the code help? The DSM loss of trained runs on test images, one noise level at a time.

    python benchmarks/loss_by_t.py runs/score/ckpt.pt runs/drl/ckpt.pt [--n 1000]

Prints lambda(t)-weighted DSM loss (summed over pixels, averaged over images) at t = 0.05, 0.1, ..., 1
with the same images and noise for every run, and the average over those t. A DRL run's gain over the
plain score model shows where its code carries what the denoiser cannot guess from x_t.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import CheckpointError, load_run  # noqa: E402
from data import DataError, load_dataset  # noqa: E402
from runtime import exit_on, pick_device  # noqa: E402
from sde import dsm_loss  # noqa: E402


@torch.no_grad()
def loss_by_t(score_net, encoder, sde, x0, ts, seed=0):
    rows = []
    for t_value in ts:
        g = torch.Generator(device=x0.device).manual_seed(seed)
        total = 0.0
        for x in x0.split(250):
            t = torch.full((len(x),), t_value, device=x.device)
            noise = torch.randn(x.shape, generator=g, device=x.device)
            z = encoder(x, t)[0] if encoder is not None else None
            score = score_net(sde.perturb(x, t, noise), t, z)
            total += dsm_loss(score, noise, sde.marginal_std(t)).sum().item()
        rows.append(total / len(x0))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--n", type=int, default=1000, help="test images")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    args = p.parse_args()
    args.device = pick_device(args.device)
    ts = [round(0.05 * i, 2) for i in range(1, 21)]
    table = {}
    with exit_on(DataError, CheckpointError):
        for path in args.ckpts:
            score_net, encoder, sde, ckpt = load_run(path, args.device)
            run = ckpt["args"]
            images, _ = load_dataset(run["dataset"], args.data_dir or run["data_dir"], train=False)
            x0 = images[: args.n].to(args.device).float() / 255
            table[path] = loss_by_t(score_net, encoder, sde, x0, ts)
    names = [Path(c).parent.name for c in args.ckpts]
    print(f"{'t':>5} {'sigma':>7} " + " ".join(f"{n:>20}" for n in names))
    for i, t in enumerate(ts):
        print(f"{t:5.2f} {sde.sigma(torch.tensor(t)).item():7.3f} "
              + " ".join(f"{table[c][i]:20.3f}" for c in args.ckpts))
    print(f"{'mean':>13} " + " ".join(f"{sum(table[c]) / len(ts):20.3f}" for c in args.ckpts))


if __name__ == "__main__":
    main()
