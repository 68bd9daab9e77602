"""Classify with the whole curve t -> E(x0, t) of a time-conditioned encoder ("From points to
functions", Mittal et al.), and see what each t holds. A static code (the AE's) gets the same MLP, for
comparison.

    python trajectory_clf.py --ckpt runs/fmnist-tc/ckpt.pt --out traj/fmnist
    python trajectory_clf.py --ckpt runs/fmnist-tc/ckpt.pt --out traj/fmnist --nmi   # + MINE NMI map

The frozen EMA encoder codes every image at K points t = 0, 1/(K-1), ..., 1 (the trajectory, shape
(K, D)); codes are standardised per (t, dimension) with training statistics and cached. Then, on one
split and the same seeds, four downstream models are trained and compared:
- mlp@t: the follow-up paper's MLP probe, Linear(D, 512)-ReLU-Dropout(0.25)-Linear, at each single t;
- concat: the same MLP on the whole trajectory, flattened (K * D inputs);
- gru: a GRU (256 hidden) reading the trajectory from t = 0 to 1, dropout 0.25, linear head;
- transformer: one attention layer in which a learned query (the CLS token) attends over the K points,
  each a linear embedding of its code plus a sinusoidal encoding of t (4 heads, 256-d); its attention
  weights over t are saved (paper Fig. 3).
The learning rate of each model comes from --lrs by validation accuracy on --val-frac of the
training images (seed 0); then every seed trains with it, and a run's test accuracy is read at its
best validation epoch. Reports mean +- std over seeds.

--nmi estimates the mutual information between the codes at every pair of points with MINE (the
Donsker-Varadhan bound, moving-average gradient correction) and normalises it as
NMI(i, j) = I(i; j) / sqrt(I(i; i) I(j; j)) (paper Fig. 2). A continuous code's information with
itself is infinite; MINE's finite estimate of I(i; i) is only a proxy, so the map is relative.

Writes OUT/trajectory.json, OUT/accuracy.png, OUT/attention.png and, with --nmi, OUT/nmi.png.
"""
if __name__ == "__main__":
    import interrupts
    interrupts.quiet_until_ready()

import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import CheckpointError, WriteError, load_run, save_atomic, save_figure
from codes import cached_codes, checkpoint_key, encode_images
from data import DataError, load_dataset
from runtime import Parser, check_numbers, exit_on, float_list, pick_device, prepare_out


# ---- the downstream models: each maps a trajectory batch (B, K, D) to class logits ----

class PointMLP(nn.Module):
    """The follow-up paper's MLP probe on the code at one point k of the trajectory."""

    def __init__(self, dim, n_classes, k, hidden=512):
        super().__init__()
        self.k = k
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.25), nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.net(x[:, self.k])


class ConcatMLP(nn.Module):
    """The same MLP on the flattened trajectory."""

    def __init__(self, dim, n_classes, points, hidden=512):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(points * dim, hidden), nn.ReLU(), nn.Dropout(0.25),
                                 nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.net(x)


class TrajectoryGRU(nn.Module):
    """A GRU over t = 0 ... 1; its last hidden state, after dropout, feeds a linear head."""

    def __init__(self, dim, n_classes, hidden=256):
        super().__init__()
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(hidden, n_classes))

    def forward(self, x):
        return self.head(self.gru(x)[1][-1])


def sinusoidal(t, dim):
    """Transformer position encoding of real times t (K,) in [0, 1]: (K, dim) sines and cosines of
    t * 1000 at geometric frequencies (the position of a point on the trajectory is its t)."""
    freqs = torch.exp(-math.log(10_000) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TrajectoryTransformer(nn.Module):
    """One attention layer: a learned query (CLS) attends over the K embedded points of the
    trajectory, then a residual MLP and a linear head. `attention` holds the last batch's weights
    (B, K), averaged over heads; they sum to one over t."""

    def __init__(self, dim, n_classes, ts, width=256, heads=4):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(dim, width)
        self.register_buffer("pos", sinusoidal(torch.as_tensor(ts, dtype=torch.float32), width))
        self.cls = nn.Parameter(torch.randn(width) * 0.02)
        self.norm_kv, self.norm_q = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.kv, self.proj = nn.Linear(width, width), nn.Linear(width, 2 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Dropout(0.25), nn.Linear(width, n_classes))
        self.attention = None

    def forward(self, x):
        B, K, _ = x.shape
        h = self.norm_kv(self.embed(x) + self.pos)                            # (B, K, W)
        q = self.q(self.norm_q(self.cls)).view(self.heads, -1)                 # (H, W/H)
        k, v = self.kv(h).view(B, K, 2, self.heads, -1).unbind(2)             # (B, K, H, W/H) each
        attn = torch.einsum("hc,bkhc->bhk", q, k).div(math.sqrt(q.shape[-1])).softmax(-1)  # over t
        self.attention = attn.mean(1).detach()
        out = self.cls + self.proj(torch.einsum("bhk,bkhc->bhc", attn, v).reshape(B, -1))
        out = out + self.mlp(out)
        return self.head(out)


def make_model(name, dim, n_classes, ts):
    """'mlp@k' (k = index into ts), 'concat', 'gru' or 'transformer'."""
    if name.startswith("mlp@"):
        return PointMLP(dim, n_classes, int(name[4:]))
    return {"concat": lambda: ConcatMLP(dim, n_classes, len(ts)),
            "gru": lambda: TrajectoryGRU(dim, n_classes),
            "transformer": lambda: TrajectoryTransformer(dim, n_classes, ts)}[name]()


# ---- training with model selection ----

@torch.no_grad()
def evaluate(model, x, y, batch_size=1000):
    """Accuracy, and the transformer's mean attention over t (None for other models)."""
    model.eval()
    correct, attention = torch.zeros((), device=x.device), []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        correct += (model(xb).argmax(1) == yb).sum()
        if isinstance(model, TrajectoryTransformer):
            attention.append(model.attention)
    model.train()
    return correct.item() / len(x), (torch.cat(attention).mean(0).tolist() if attention else None)


def train_model(name, data, ts, lr, seed, epochs, batch_size=256):
    """Adam (weight decay 1e-5) for `epochs`; returns the validation-best epoch's numbers:
    dict(val, test, epoch, attention)."""
    x_train, y_train, x_val, y_val, x_test, y_test = data
    torch.manual_seed(seed)
    n_classes = int(y_train.max()) + 1
    model = make_model(name, x_train.shape[2], n_classes, ts).to(x_train.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    best = dict(val=-1.0)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(x_train), device=x_train.device).split(batch_size):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val, _ = evaluate(model, x_val, y_val)
        if val > best["val"]:
            test, attention = evaluate(model, x_test, y_test)
            best = dict(val=val, test=test, epoch=epoch, attention=attention)
    return best


def select_and_train(name, data, ts, lrs, seeds, epochs):
    """The lr with the best validation accuracy at seed 0, then every seed with it."""
    by_lr = {lr: train_model(name, data, ts, lr, 0, epochs) for lr in lrs}
    lr = max(lrs, key=lambda lr: by_lr[lr]["val"])
    runs = [by_lr[lr]] + [train_model(name, data, ts, lr, s, epochs) for s in range(1, seeds)]
    tests = torch.tensor([r["test"] for r in runs])
    row = dict(model=name, lr=lr, test_mean=tests.mean().item(), test_std=tests.std().item() if seeds > 1 else 0.0,
               val_by_lr={str(k): v["val"] for k, v in by_lr.items()}, runs=runs)
    if runs[0]["attention"] is not None:
        att = torch.tensor([r["attention"] for r in runs])
        row["attention_mean"], row["attention_std"] = att.mean(0).tolist(), att.std(0).tolist() if seeds > 1 else None
    return row


def compare(data, ts, lrs=(1e-3, 2.5e-4), seeds=3, epochs=30, models=None, log=print):
    """Every downstream model on trajectories data = (x_train, y_train, x_val, y_val, x_test, y_test),
    x of shape (N, K, D) at times ts. Returns a list of result rows."""
    models = models or [f"mlp@{k}" for k in range(len(ts))] + ["concat", "gru", "transformer"]
    log = log or (lambda line: None)
    rows = []
    for name in models:
        t0 = time.perf_counter()
        row = select_and_train(name, data, ts, lrs, seeds, epochs)
        row["t"] = ts[int(name[4:])] if name.startswith("mlp@") else None
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log(f"{name:>12}  lr {row['lr']:.1e}  test {100 * row['test_mean']:5.1f} +- {100 * row['test_std']:3.1f}  "
            f"({row['seconds']:.0f} s)")
    return rows


# ---- mutual information along the trajectory (MINE, Belghazi et al. 2018) ----

def mine(a, b, steps=2000, batch_size=256, lr=1e-4, hidden=256, ema_rate=0.01, seed=0):
    """Estimate I(A; B) in nats from paired samples a (N, Da), b (N, Db) with the Donsker-Varadhan bound
    I >= E_joint[T] - log E_marginal[e^T]; marginal pairs shuffle b. The gradient of the log term is
    biased in a mini-batch, so it uses a moving average of E[e^T] in the denominator (MINE, sec. 3.2).
    T is trained on the first 80% of the pairs; the bound is evaluated on the other 20%."""
    g = torch.Generator(device=a.device).manual_seed(seed)
    torch.manual_seed(seed)
    n_fit = int(0.8 * len(a))
    T = nn.Sequential(nn.Linear(a.shape[1] + b.shape[1], hidden), nn.ELU(), nn.Linear(hidden, hidden), nn.ELU(),
                      nn.Linear(hidden, 1)).to(a.device)
    opt = torch.optim.Adam(T.parameters(), lr=lr)
    moving = None
    for _ in range(steps):
        i = torch.randint(0, n_fit, (batch_size,), generator=g, device=a.device)
        j = torch.randint(0, n_fit, (batch_size,), generator=g, device=a.device)
        joint = T(torch.cat([a[i], b[i]], 1)).mean()
        exp_marginal = T(torch.cat([a[i], b[j]], 1)).exp().mean()
        moving = exp_marginal.detach() if moving is None else (1 - ema_rate) * moving + ema_rate * exp_marginal.detach()
        loss = -(joint - exp_marginal / moving)   # gradient: grad E[T] - grad E[e^T] / moving average
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        a_ev, b_ev = a[n_fit:], b[n_fit:]
        joint = T(torch.cat([a_ev, b_ev], 1)).mean()
        marg = torch.cat([T(torch.cat([a_ev, b_ev[torch.randperm(len(b_ev), generator=g, device=a.device)]], 1))
                          for _ in range(10)]).squeeze(1)
        return (joint - (torch.logsumexp(marg, 0) - math.log(len(marg)))).item()


def nmi_matrix(x, steps=2000, lr=1e-4, log=print):
    """(K, K) NMI(i, j) = I(i; j) / sqrt(I(i; i) I(j; j)) and the raw MI estimates, from codes x (N, K, D)."""
    K = x.shape[1]
    mi = torch.zeros(K, K)
    for i in range(K):
        for j in range(i, K):
            mi[i, j] = mi[j, i] = mine(x[:, i], x[:, j], steps=steps, lr=lr, seed=i * K + j)
        log(f"MINE row {i}: " + " ".join(f"{v:5.2f}" for v in mi[i, i:].tolist()))
    diag = mi.diag().clamp(min=1e-6)
    return mi / (diag[:, None] * diag[None, :]).sqrt(), mi


# ---- the stage ----

def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a train_drl.py run with a time-conditioned encoder (--time-cond)")
    p.add_argument("--out", default="trajectory",
                   help="folder of trajectory.json, accuracy.png, attention.png (and nmi.png)")
    p.add_argument("--points", type=int, default=11, help="K points t = 0, 1/(K-1), ..., 1")
    p.add_argument("--epochs", type=int, default=30, help="per model and seed (the paper: 100)")
    p.add_argument("--lrs", default="1e-3,2.5e-4", help="learning rates tried on the validation split")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per model")
    p.add_argument("--val-frac", type=float, default=0.1, help="of the training images, for model selection")
    p.add_argument("--max-train", type=int, default=None,
                   help="use this many training images, drawn at random with --seed (probe.py takes the first N)")
    p.add_argument("--max-test", type=int, default=None, help="use the first this many test images")
    p.add_argument("--models", default=None, help="comma list of mlp@K, concat, gru, transformer (default: all)")
    p.add_argument("--nmi", action="store_true", help="also the MINE mutual-information map")
    p.add_argument("--nmi-steps", type=int, default=2000, help="--nmi: MINE steps per pair of times")
    p.add_argument("--nmi-lr", type=float, default=1e-4, help="--nmi: MINE learning rate")
    p.add_argument("--nmi-n", type=int, default=10000, help="training codes used by MINE")
    p.add_argument("--data-dir", default=None, help="default: the run's --data-dir")
    p.add_argument("--device", default=None, help="cpu, cuda or mps; default cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0, help="picks the --max-train subset and the validation split")
    args = p.parse_args(argv)
    try:
        args.device = str(pick_device(args.device))
    except ValueError as e:
        p.error(str(e))
    check_numbers(p, args, positive=("epochs", "seeds", "nmi_steps", "nmi_lr", "nmi_n", "max_train", "max_test"),
                  in_unit=("val_frac",))
    args.lrs = float_list(p, args.lrs, "--lrs", 1e-12)
    if args.points < 2:
        p.error("--points must be at least 2")
    if args.val_frac >= 1:
        p.error(f"--val-frac must be below 1 (the rest trains), not {args.val_frac}")
    if args.nmi and args.nmi_n < MIN_NMI_CODES:
        p.error(f"--nmi-n must be at least {MIN_NMI_CODES} (MINE's batches), not {args.nmi_n}")
    args.models = parse_models(p, args.models, args.points)
    return args


MIN_NMI_CODES = 64


def parse_models(p, text, points):
    """--models as a list of names (spaces trimmed), each one of mlp@K (K < --points), concat, gru,
    transformer; None for all."""
    if text is None:
        return None
    models = [m.strip() for m in text.split(",") if m.strip()]
    for m in models:
        k = m[4:] if m.startswith("mlp@") else None
        if m not in ("concat", "gru", "transformer") and not (k is not None and k.isdigit() and int(k) < points):
            p.error(f"--models: {m!r} is not one of mlp@K (K = 0 ... {points - 1}), concat, gru, transformer")
    return models or None


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    with exit_on(DataError, CheckpointError):
        _, encoder, _, ckpt = load_run(args.ckpt, device)
        if encoder is None:
            raise CheckpointError(f"{args.ckpt} is a plain score model with no encoder; pass a run with one "
                                  f"(a time-conditioned one: `python train_drl.py --objective drl --time-cond`)")
        if not encoder.time_cond and args.nmi:
            raise CheckpointError(f"{args.ckpt} has a static encoder: one code per image, no map between points "
                                  f"of a trajectory; drop --nmi")
        run = ckpt["args"]
        data = (run["dataset"], args.data_dir or run["data_dir"])
        images, y_train = load_dataset(*data, train=True, classes=run.get("classes"))
        test_images, y_test = load_dataset(*data, train=False, classes=run.get("classes"))
        n_train = min(len(images), args.max_train or len(images))
        if int(args.val_frac * n_train) < 1 or n_train - int(args.val_frac * n_train) < 1:
            raise DataError(f"{n_train} training images give no validation image at --val-frac {args.val_frac} "
                            f"(or none to train on); raise --max-train or --val-frac")
    out = prepare_out(args.out)  # after the checkpoint and the data: bad input leaves no folder behind
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.max_train]
    images, y_train = images[perm], y_train[perm]
    test_images, y_test = test_images[: args.max_test], y_test[: args.max_test]
    ts = [k / (args.points - 1) for k in range(args.points)]
    models = args.models
    if not encoder.time_cond:  # a static code (the AE's, say): the same MLP on its one code, for comparison
        ts, models = [0.0], ["mlp@0"]
        print(f"{args.ckpt}: a static encoder, so one code per image: only the MLP on it", flush=True)

    t0 = time.perf_counter()
    subset = f"{run['dataset']}|{len(images)}|{args.seed}|{len(test_images)}"

    def trajectories(imgs, split):  # (N, K, D), one cached code set per t
        return torch.stack([cached_codes(out / "cache", f"{checkpoint_key(args.ckpt)}|{t}|{subset}|{split}",
                                         lambda: encode_images(encoder, imgs, t, device)) for t in ts], 1)

    x_train, x_test = trajectories(images, "train").to(device), trajectories(test_images, "test").to(device)
    encode_seconds = time.perf_counter() - t0
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)      # per (t, dimension)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = y_train.to(device), y_test.to(device)
    n_val = int(args.val_frac * len(x_train))
    data = (x_train[n_val:], y_train[n_val:], x_train[:n_val], y_train[:n_val], x_test, y_test)
    print(f"{run['dataset']}: trajectories of {len(x_train)} training (of them {n_val} for validation) and "
          f"{len(x_test)} test images at {args.points} points, {x_train.shape[2]}-d codes "
          f"({encode_seconds:.0f} s to encode or load)", flush=True)

    rows = compare(data, ts, args.lrs, args.seeds, args.epochs, models)
    result = dict(ckpt=str(args.ckpt), dataset=run["dataset"], ts=ts, train_images=len(x_train) - n_val,
                  val_images=n_val, test_images=len(x_test), epochs=args.epochs, seeds=args.seeds,
                  time_cond=encoder.time_cond,
                  device=str(device), models=rows)
    if args.nmi:
        x = x_train[: args.nmi_n]
        nmi, mi = nmi_matrix(x, args.nmi_steps, args.nmi_lr)
        result.update(nmi=nmi.tolist(), mi=mi.tolist(), nmi_steps=args.nmi_steps, nmi_codes=len(x))

    with exit_on(WriteError):
        save_atomic(json.dumps(result, indent=2), out / "trajectory.json")
        plot(out, result)
    print_table(rows)
    print(f"wrote {out / 'trajectory.json'} and the figures in {out}")
    return result


def print_table(rows):
    points = [r for r in rows if r["t"] is not None]
    best = max(points, key=lambda r: r["test_mean"]) if points else None
    print(f"\n{'model':>12}  {'test accuracy (%)':>18}")
    for r in rows:
        name = r["model"] if r["t"] is None else f"mlp t={r['t']:.2f}"
        mark = "  <- best single t" if r is best else ""
        print(f"{name:>12}  {100 * r['test_mean']:8.2f} +- {100 * r['test_std']:4.2f}{mark}")


def plot(out, result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result["models"]
    points = [r for r in rows if r["t"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.errorbar([r["t"] for r in points], [100 * r["test_mean"] for r in points],
                    yerr=[100 * r["test_std"] for r in points], fmt="o-", color="k", capsize=3, label="MLP at one t")
    for i, r in enumerate(r for r in rows if r["t"] is None):
        ax.axhline(100 * r["test_mean"], color=f"C{i}", ls="--", label=f"{r['model']} (whole trajectory)")
    ax.set(xlabel="t", ylabel="test accuracy (%)", title=f"{result['dataset']}: one point vs the trajectory")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "accuracy.png")
    plt.close(fig)

    tsf = next((r for r in rows if r["model"] == "transformer"), None)
    if tsf:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(result["ts"], tsf["attention_mean"], width=0.8 / (len(result["ts"]) - 1),
               yerr=tsf["attention_std"], capsize=2)
        ax.set(xlabel="t", ylabel="attention of the CLS query", title="where the transformer looks (test mean)")
        fig.tight_layout()
        save_figure(fig, out / "attention.png")
        plt.close(fig)

    if "nmi" in result:
        fig, ax = plt.subplots(figsize=(5, 4.2))
        im = ax.imshow(result["nmi"], cmap="viridis", origin="lower",
                       extent=[-0.05, 1.05, -0.05, 1.05])
        fig.colorbar(im, ax=ax, label="NMI (relative)")
        ax.set(xlabel="t", ylabel="t", title="MINE mutual information between points")
        fig.tight_layout()
        save_figure(fig, out / "nmi.png")
        plt.close(fig)


if __name__ == "__main__":
    main()
