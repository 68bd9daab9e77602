"""Probe frozen codes: how much does a code tell about the class, at every t? (TMLR paper Fig. 4,
ICML workshop paper Fig. 4)

    python probe.py --ckpt runs/fmnist-drl/ckpt.pt runs/fmnist-ae/ckpt.pt --out probes/fmnist
    python probe.py --ckpt runs/fmnist-tc/ckpt.pt --ts 0,0.5,1 --max-train 5000   # a quick check

For every checkpoint and every t (one point for an encoder without t), the EMA encoder codes the
training and test images (the mean, for a probabilistic encoder), and the frozen codes are probed:
- linear: multinomial logistic regression on whitened codes (full-batch L-BFGS to convergence), its
  weight decay picked from --weight-decays on a held-out 10% of the training codes;
- mlp (--mlp): the follow-up paper's Linear(d, 512)-ReLU-Dropout(0.25)-Linear, Adam, weight decay 1e-5;
- knn: majority vote of the k nearest training codes (euclidean, standardised);
- few-shot: nearest class mean of 1, 5 and 10 labelled training codes per class, averaged over draws;
- silhouette: of the test codes with respect to the class labels (euclidean, codes as they are);
  on `shapes` also with respect to the fine factor, the stroke width (silhouette_fine);
- distance_to_last_t (a time-conditioned encoder at several t): how far the test codes at t lie from
  those at the last t, over their spread; near 0 the encoder has learned to ignore t.
Baselines computed here: raw pixels and a randomly initialised encoder of the first checkpoint's
architecture. Writes OUT/probe.json (every number), OUT/probe.png (accuracy and silhouette vs t),
OUT/scatter_NAME.png for 2-D codes (and scatter_all.png with one column per run when several runs
have 2-D codes without t), and caches codes in OUT/cache (a second run only probes).
"""
if __name__ == "__main__":
    import interrupts
    interrupts.quiet_until_ready()

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import (CheckpointError, WriteError, build_nets, load_run, png_bytes, run_name, save_figure,
                        save_together)
from codes import cached_codes, checkpoint_key, encode_images
from data import MADE_IN_CODE, DataError, load_dataset, shapes_fine_factor
from linear_probe import accuracy, linear_probe, participation_ratio, standardise
from runtime import Parser, check_numbers, exit_on, float_list, pick_device, prepare_out

FEW_SHOTS = (1, 5, 10)


# ---- probes beyond the linear one (linear_probe.py): each takes codes (N, D) and int labels ----

def mlp_probe(x_train, y_train, x_test, y_test, epochs=20, lr=1e-3, seed=0):
    """The follow-up paper's MLP probe: Linear(d, 512), ReLU, dropout 0.25, Linear; Adam, weight
    decay 1e-5, batch 256. Test accuracy after `epochs`."""
    torch.manual_seed(seed)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    x_train, x_test = standardise(x_train, x_test)
    net = nn.Sequential(nn.Linear(x_train.shape[1], 512), nn.ReLU(), nn.Dropout(0.25),
                        nn.Linear(512, n_classes)).to(x_train.device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    for _ in range(epochs):
        for idx in torch.randperm(len(x_train), device=x_train.device).split(256):
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return accuracy(net(x_test), y_test)


@torch.no_grad()
def knn_accuracy(x_train, y_train, x_test, y_test, k=10):
    """Majority vote of the k nearest standardised training codes (ties go to the lower label)."""
    x_train, x_test = standardise(x_train, x_test)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    correct = 0
    for xs, ys in zip(x_test.split(1000), y_test.split(1000)):
        nearest = torch.cdist(xs, x_train).topk(k, largest=False).indices
        votes = F.one_hot(y_train[nearest], n_classes).sum(1)
        correct += (votes.argmax(1) == ys).sum().item()
    return correct / len(x_test)


@torch.no_grad()
def few_shot_accuracy(x_train, y_train, x_test, y_test, shots, draws=10, seed=0):
    """Nearest class mean of `shots` random labelled training codes per class (standardised with
    all training codes, which need no labels). Returns (mean, std) of the accuracy over draws."""
    x_train, x_test = standardise(x_train, x_test)
    g = torch.Generator().manual_seed(seed)
    classes = y_train.unique()
    accs = []
    for _ in range(draws):
        means = []
        for c in classes:
            members = (y_train == c).nonzero().squeeze(1).cpu()
            pick = members[torch.randperm(len(members), generator=g)[:shots]]
            means.append(x_train[pick.to(x_train.device)].mean(0))
        nearest = torch.cdist(x_test, torch.stack(means)).argmin(1)
        accs.append((classes[nearest] == y_test).float().mean().item())
    accs = torch.tensor(accs)
    return accs.mean().item(), accs.std().item() if draws > 1 else 0.0


@torch.no_grad()
def silhouette(x, y):
    """Mean silhouette (Rousseeuw 1987), euclidean: for each point, a = mean distance to the other
    members of its class, b = the smallest mean distance to another class, s = (b - a) / max(a, b);
    s = 0 for a point alone in its class."""
    classes, y = y.unique(return_inverse=True)
    onehot = F.one_hot(y, len(classes)).to(x.dtype)
    counts = onehot.sum(0)
    scores = []
    for xs, ys in zip(x.split(1000), y.split(1000)):
        sums = torch.cdist(xs, x) @ onehot  # (chunk, classes): summed distance to each class
        own = counts[ys]
        a = sums.gather(1, ys[:, None]).squeeze(1) / (own - 1).clamp(min=1)
        other = (sums / counts).scatter(1, ys[:, None], float("inf"))
        b = other.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp(min=1e-12)
        scores.append(torch.where(own > 1, s, torch.zeros_like(s)))
    return torch.cat(scores).mean().item()


@torch.no_grad()
def distance_along_t(codes, reference):
    """How far a time-conditioned code moves: the mean distance ||E(x, t) - E(x, t_ref)|| between the
    codes of the same images at t and at a reference t, over the mean spread ||E(x, t_ref) - mean|| of
    the reference codes. Near 0: the encoder ignores t."""
    spread = (reference - reference.mean(0)).norm(dim=1).mean().clamp(min=1e-12)
    return ((codes - reference).norm(dim=1).mean() / spread).item()


# ---- the stage ----

def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", nargs="+", required=True, help="train_drl.py checkpoints with an encoder")
    p.add_argument("--out", default="probes", help="folder of probe.json, its figure and the cached codes")
    p.add_argument("--ts", default=",".join(f"{i / 10:g}" for i in range(11)), help="times for E(x0, t)")
    p.add_argument("--max-train", type=int, default=None,
                   help="use the first this many training images (as train_drl.py --probe-n does; "
                        "trajectory_clf.py and semisup.py draw theirs at random)")
    p.add_argument("--max-test", type=int, default=None, help="use the first this many test images")
    p.add_argument("--silhouette-n", type=int, default=5000, help="test codes in the silhouette")
    p.add_argument("--knn", type=int, default=10, help="k of the k-NN probe")
    p.add_argument("--draws", type=int, default=10, help="random draws per few-shot setting")
    p.add_argument("--weight-decays", default="0,1e-4,1e-3,1e-2", help="linear probe: candidates")
    p.add_argument("--mlp", action="store_true", help="also the MLP probe (slower)")
    p.add_argument("--mlp-epochs", type=int, default=20, help="--mlp: training epochs")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="raw pixels and a random encoder")
    p.add_argument("--data-dir", default=None, help="default: the first run's --data-dir")
    p.add_argument("--device", default=None, help="cpu, cuda or mps; default cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the few-shot draws and the MLP")
    args = p.parse_args(argv)
    try:
        args.device = str(pick_device(args.device))
    except ValueError as e:
        p.error(str(e))
    check_numbers(p, args, positive=("max_train", "max_test", "silhouette_n", "knn", "draws", "mlp_epochs"))
    args.ts = float_list(p, args.ts, "--ts", 0, 1)
    args.weight_decays = float_list(p, args.weight_decays, "--weight-decays", 0, 1e6)
    return args


MIN_TRAIN = 100  # a probe's fewest training codes: its held-out 10% must hold some of every class


def check_sizes(args, n_train, n_test, n_classes):
    """--max-train, --max-test and --knn against the data, before any code is encoded."""
    n_train, n_test = min(n_train, args.max_train or n_train), min(n_test, args.max_test or n_test)
    least = max(MIN_TRAIN, 10 * n_classes)
    if n_train < least:
        raise DataError(f"{n_train} training images are too few to probe {n_classes} classes (the few-shot probes "
                        f"take 10 a class, the linear probe holds out 10%); pass --max-train {least} or more")
    if n_test < 2:
        raise DataError(f"{n_test} test image(s): a probe needs at least 2; raise --max-test")
    if args.knn >= n_train:
        raise DataError(f"--knn {args.knn} needs more than {args.knn} training codes and there are {n_train}; lower it")


def probe_codes(args, train, y_train, test, y_test, fine=None):
    """Every probe on one set of codes: a dict of numbers."""
    t0 = time.perf_counter()
    row = {}
    row["linear"], row["linear_weight_decay"] = linear_probe(train, y_train, test, y_test, args.weight_decays, args.seed)
    if args.mlp:
        row["mlp"] = mlp_probe(train, y_train, test, y_test, args.mlp_epochs, seed=args.seed)
    row["knn"] = knn_accuracy(train, y_train, test, y_test, args.knn)
    for shots in FEW_SHOTS:
        row[f"few_shot_{shots}"], row[f"few_shot_{shots}_std"] = few_shot_accuracy(
            train, y_train, test, y_test, shots, args.draws, args.seed)
    n = min(args.silhouette_n, len(test))
    row["silhouette"] = silhouette(test[:n], y_test[:n])
    row["participation_ratio"] = participation_ratio(test)
    if fine is not None:
        row["silhouette_fine"] = silhouette(test[:n], fine[:n])
    row["probe_seconds"] = time.perf_counter() - t0
    return row


def load_runs(args, device):
    """The runs' encoders (path, encoder, ckpt) and their data set's images, or one line that says why not."""
    runs = []
    with exit_on(DataError, CheckpointError):
        for path in args.ckpt:
            _, encoder, _, ckpt = load_run(path, device)
            if encoder is None:
                raise CheckpointError(f"{path} is a plain score model with no encoder; probe a drl, vdrl, ae, "
                                      f"vae or simclr_gauss run")
            runs.append((path, encoder, ckpt))
        dataset = runs[0][2]["args"]["dataset"]
        if any(ckpt["args"]["dataset"] != dataset for _, _, ckpt in runs):
            raise CheckpointError("the checkpoints were trained on different data sets; probe one data set at a time")
        classes = runs[0][2]["args"].get("classes")
        if any(ckpt["args"].get("classes") != classes for _, _, ckpt in runs):
            raise CheckpointError("the checkpoints were trained on different --classes; probe one set at a time")
        data_dir = args.data_dir or runs[0][2]["args"]["data_dir"]
        images, y_train = load_dataset(dataset, data_dir, train=True, classes=classes)
        test_images, y_test = load_dataset(dataset, data_dir, train=False, classes=classes)
    return runs, dataset, classes, images, y_train, test_images, y_test


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    runs, dataset, classes, images, y_train, test_images, y_test = load_runs(args, device)
    with exit_on(DataError):
        check_sizes(args, len(images), len(test_images), int(y_train.max()) + 1)
    out = prepare_out(args.out)  # after the checkpoints, data and sizes: bad input leaves no folder behind
    images, y_train = images[: args.max_train], y_train[: args.max_train]
    test_images, y_test = test_images[: args.max_test], y_test[: args.max_test]
    fine = (shapes_fine_factor(dataset, False, classes)[: args.max_test].to(device) if dataset in MADE_IN_CODE
            else None)
    y_train, y_test = y_train.to(device), y_test.to(device)
    subset = f"{dataset}|{len(images)}|{args.seed}|{len(test_images)}"
    torch.manual_seed(args.seed)

    results, names, flat_2d = {}, [], {}  # flat_2d: the 2-D codes of runs without t, drawn side by side
    for path, encoder, ckpt in runs:
        name = run_name(path)
        name = name if name not in names else f"{name}_{len(names)}"  # the same file given twice
        names.append(name)
        ts = args.ts if encoder.time_cond else [None]
        rows, test_codes = [], {}
        for t in ts:
            key = f"{checkpoint_key(path)}|{t}|{subset}"
            train = cached_codes(out / "cache", key + "|train", lambda: encode_images(encoder, images, t, device))
            test = test_codes[t] = cached_codes(out / "cache", key + "|test",
                                                lambda: encode_images(encoder, test_images, t, device))
            rows.append(dict(t=t, **probe_codes(args, train.to(device), y_train, test.to(device), y_test, fine)))
            print(f"{name:>24} t={'-' if t is None else f'{t:.2f}'}: " + fmt(rows[-1]), flush=True)
        if len(ts) > 1:  # does the code move with t at all? (an encoder can learn to ignore it)
            last = test_codes[ts[-1]].to(device)
            for t, row in zip(ts, rows):
                row["distance_to_last_t"] = distance_along_t(test_codes[t].to(device), last)
            print(f"{name:>24} distance from the code at t={ts[-1]:g}, over its spread: "
                  + "  ".join(f"t={t:g} {row['distance_to_last_t']:.3f}" for t, row in zip(ts, rows)), flush=True)
        results[name] = dict(ckpt=str(path), objective=ckpt["args"]["objective"], latent_dim=encoder.latent_dim,
                             time_cond=encoder.time_cond, step=ckpt["step"], per_t=rows)
        if encoder.latent_dim == 2:
            panels = {name if t is None else f"{name} t={t:g}": codes for t, codes in test_codes.items()}
            scatter(out / f"scatter_{name}.png", panels, y_test, fine)
            if not encoder.time_cond:
                flat_2d[name] = test_codes[None]
    if len(flat_2d) > 1:  # e.g. the granularity experiment: one column per run
        scatter(out / "scatter_all.png", flat_2d, y_test, fine)

    if args.baselines:
        results.update(probe_baselines(args, runs[0][2]["config"]["encoder"], names[0], images, y_train,
                                       test_images, y_test, fine, device))
    meta = dict(dataset=dataset, train_images=len(images), test_images=len(test_images), knn_k=args.knn,
                few_shot_draws=args.draws, device=str(device))
    with exit_on(WriteError):
        save_together({out / "probe.json": json.dumps(dict(meta=meta, results=results), indent=2),  # both or neither
                       out / "probe.png": plot(results, dataset)})
    print(f"wrote {out / 'probe.json'} and {out / 'probe.png'}")
    return results


def probe_baselines(args, encoder_config, name, images, y_train, test_images, y_test, fine, device):
    """The same probes on raw pixels and on an untrained copy of the first run's encoder."""
    flat = lambda x: x.flatten(1).float().to(device) / 255
    results = dict(raw_pixels=dict(per_t=[dict(t=None, **probe_codes(args, flat(images), y_train,
                                                                      flat(test_images), y_test, fine))]))
    print(f"{'raw_pixels':>24} t=-: " + fmt(results["raw_pixels"]["per_t"][0]), flush=True)
    torch.manual_seed(args.seed)
    random_encoder = build_nets({"encoder": encoder_config})["encoder"].to(device).eval()
    t = 0.5 if random_encoder.time_cond else None
    rows = [dict(t=t, **probe_codes(args, encode_images(random_encoder, images, t, device), y_train,
                                    encode_images(random_encoder, test_images, t, device), y_test, fine))]
    results["random_encoder"] = dict(architecture_of=name, per_t=rows)
    print(f"{'random_encoder':>24} t=-: " + fmt(rows[0]), flush=True)
    return results


def fmt(row):
    mlp = f"  mlp {100 * row['mlp']:5.1f}" if "mlp" in row else ""
    shots = " ".join(f"{100 * row[f'few_shot_{k}']:5.1f}" for k in FEW_SHOTS)
    return (f"linear {100 * row['linear']:5.1f}{mlp}  knn {100 * row['knn']:5.1f}  "
            f"few-shot 1/5/10 {shots}  silhouette {row['silhouette']:+.3f}  dim {row['participation_ratio']:.1f}"
            + (f" (fine {row['silhouette_fine']:+.3f})" if "silhouette_fine" in row else ""))


def plot(results, dataset):
    """PNG bytes of the linear probe and the silhouette against t, a line per run (a code without t: flat)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, r) in enumerate(results.items()):
        rows, color = r["per_t"], f"C{i % 10}"
        for ax, key in zip(axes, ("linear", "silhouette")):
            scale = 100 if key == "linear" else 1
            if len(rows) == 1:  # a code without t: one number, drawn as a horizontal line
                ax.axhline(scale * rows[0][key], ls="--", lw=1, label=name, color=color)
            else:
                ax.plot([row["t"] for row in rows], [scale * row[key] for row in rows], "o-", label=name, color=color)
    axes[0].set(xlabel="t", ylabel="linear probe accuracy (%)", title=f"{dataset}: linear probe")
    axes[1].set(xlabel="t", ylabel="silhouette (class labels)", title=f"{dataset}: silhouette")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    png = png_bytes(fig)
    plt.close(fig)
    return png


def scatter(path, panels, labels, fine=None, n=2000):
    """The first n 2-D test codes, one column per panel (panels: title -> codes (N, 2)), coloured by
    class (paper Fig. 2/3); with a fine factor, a second row coloured by it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colourings = [("class", labels, "tab10")] + ([("stroke width", fine, "viridis")] if fine is not None else [])
    fig, axes = plt.subplots(len(colourings), len(panels), figsize=(3 * len(panels), 3 * len(colourings)),
                             squeeze=False)
    for col, (title, codes) in enumerate(panels.items()):
        z = codes[:n].cpu()
        for row, (what, colour, cmap) in enumerate(colourings):
            ax = axes[row, col]
            ax.scatter(z[:, 0], z[:, 1], c=colour[:n].cpu(), cmap=cmap, s=2)
            ax.set_title(f"{title}: {what}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
