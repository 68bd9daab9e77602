"""Semi-supervised classification, LaplaceNet-style, with the DRL encoder as pretraining (TMLR paper,
Table 1; LaplaceNet: Sellars et al. 2021; label propagation: Iscen et al. 2019).

    python semisup.py --ckpt runs/fmnist-drl/ckpt.pt --init drl --num-labeled 100 --epochs 20 --out ssl/drl-100
    python semisup.py --ckpt runs/fmnist-drl/ckpt.pt --init random --num-labeled 100 --epochs 20 --out ssl/rand-100
    python semisup.py --ckpt runs/fmnist-drl/ckpt.pt --init drl --num-labeled 100 --supervised-only ...

The classifier is the encoder (its code, the mean for a probabilistic encoder) plus a batch-norm and
linear head, fine-tuned whole. `--init drl` starts from the run's EMA encoder, `--init random` from
fresh weights of the same architecture. A time-conditioned encoder E(x0, t) gets a learnable t =
sigmoid(logit), initialised at --t-init; --check-t first tries t on a grid (a few supervised epochs on
half the labelled images, scored on the other half) and starts from the best.

A class-balanced labelled subset of --num-labeled images is drawn with --label-seed; every other
training image is unlabelled. The loop:
1. --warmup-epochs supervised epochs on the labelled images;
2. then each epoch: (a) embed every training image, (b) build the k-NN graph of the L2-normalised codes,
   (c) propagate the labels by solving (I - alpha S) Z = Y with conjugate gradients, S the
   symmetrically normalised affinity matrix, (d) pseudo-label every unlabelled image with argmax Z,
   weighted by its certainty 1 - H(z)/log C and by the inverse size of its pseudo-class, (e) train on
   labelled + weighted pseudo-labelled batches, with mixup (alpha 1) under --mixup.
--supervised-only skips 2(a-d) and trains on the labelled images alone for the same number of steps.
SGD with Nesterov momentum 0.9, weight decay 5e-4, cosine learning rate; augmentation: random
translation by up to 2 pixels (4 for 32x32) and horizontal flips (not for MNIST).

Writes OUT/log.jsonl (test accuracy, and the pseudo-labels' accuracy, per epoch), OUT/result.json
and OUT/classifier.pt (one dict, written atomically).
"""
if __name__ == "__main__":
    import interrupts
    interrupts.quiet_until_ready()

import argparse
import copy
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import CheckpointError, WriteError, encoder_config, load_run, save_atomic, save_together
from data import DATASETS, IMAGE_SHAPE, DataError, load_dataset
from runtime import (Parser, autocast, check_numbers, exit_on, float_list, int_list, memory_line, pick_device,
                     prepare_out)
from encoder import Encoder


# ---- the graph and label propagation ----

@torch.no_grad()
def knn_graph(features, k, chunk=2048):
    """The k nearest neighbours of every row of `features` (N, D) by cosine similarity, itself
    excluded: (indices (N, k), similarities (N, k)). Chunked, so memory is O(chunk * N)."""
    f = F.normalize(features.float(), dim=1)
    idx, sim = [], []
    for start in range(0, len(f), chunk):
        s = f[start:start + chunk] @ f.T
        rows = torch.arange(start, start + len(s), device=f.device)
        s[torch.arange(len(s), device=f.device), rows] = -float("inf")
        top = s.topk(k, dim=1)
        idx.append(top.indices)
        sim.append(top.values)
    return torch.cat(idx), torch.cat(sim)


def conjugate_gradient(matvec, b, iters=30, tol=1e-6):
    """Solve A x = b for a symmetric positive definite A given as matvec, one system per column of b."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(0)
    for _ in range(iters):
        Ap = matvec(p)
        step = rr / (p * Ap).sum(0).clamp(min=1e-30)
        x = x + step * p
        r = r - step * Ap
        rr_new = (r * r).sum(0)
        if (rr_new.sqrt() <= tol * b.norm(dim=0).clamp(min=1e-30)).all():
            break
        p = r + (rr_new / rr.clamp(min=1e-30)) * p
        rr = rr_new
    return x


@torch.no_grad()
def propagate_labels(features, labeled_idx, labels, n_classes, k=50, alpha=0.99, gamma=3.0, iters=30):
    """Label propagation on the k-NN graph (Iscen et al. 2019): affinities w_ij = max(cos, 0)^gamma on
    the k nearest neighbours, W = W + W^T, S = D^-1/2 W D^-1/2; solve (I - alpha S) Z = Y with Y the
    labelled images' one-hot rows scaled by 1 / (class size). Returns (pseudo-labels (N,), certainty
    weights 1 - H(z_i) / log C (N,)) for every point, the labelled ones included."""
    N = len(features)
    idx, sim = knn_graph(features, min(k, N - 1))
    rows = torch.arange(N, device=idx.device).repeat_interleave(idx.shape[1])
    w = sim.flatten().clamp(min=0) ** gamma
    W = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, idx.flatten()]), torch.cat([idx.flatten(), rows])]),
                                torch.cat([w, w]), (N, N), check_invariants=True).coalesce()
    d = torch.sparse.sum(W, 1).to_dense().clamp(min=1e-12).rsqrt()
    Y = torch.zeros(N, n_classes, device=features.device)
    Y[labeled_idx, labels] = 1.0 / torch.bincount(labels, minlength=n_classes).clamp(min=1)[labels].float()
    matvec = lambda v: v - alpha * d[:, None] * torch.sparse.mm(W, d[:, None] * v)   # (I - alpha S) v
    Z = conjugate_gradient(matvec, Y, iters).clamp(min=0)
    p = Z / Z.sum(1, keepdim=True).clamp(min=1e-12)
    entropy = -(p * p.clamp(min=1e-12).log()).sum(1)
    return Z.argmax(1), 1 - entropy / math.log(n_classes)


# ---- the classifier ----

class Classifier(nn.Module):
    """The encoder's code, batch-normalised, then a linear layer. A time-conditioned encoder reads a
    learnable t = sigmoid(t_logit)."""

    def __init__(self, encoder, n_classes, t_init=0.5):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.BatchNorm1d(encoder.latent_dim), nn.Linear(encoder.latent_dim, n_classes))
        self.t_logit = nn.Parameter(torch.logit(torch.tensor(float(t_init)))) if encoder.time_cond else None

    @property
    def t(self):
        return None if self.t_logit is None else torch.sigmoid(self.t_logit).item()

    def features(self, x):
        t = None if self.t_logit is None else torch.sigmoid(self.t_logit).expand(len(x))
        return self.encoder(x, t)[0]

    def forward(self, x):
        return self.head(self.features(x))


def augment(x, pad, flip):
    """Random translation by up to `pad` pixels (reflect padding) and, if flip, horizontal flips."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad,) * 4, mode="reflect")
    dy, dx = (torch.randint(0, 2 * pad + 1, (B,), device=x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]
    x = xp[torch.arange(B, device=x.device)[:, None, None, None], torch.arange(C, device=x.device)[None, :, None, None],
           rows, cols]
    if flip:
        x = torch.where(torch.rand(B, 1, 1, 1, device=x.device) < 0.5, x.flip(3), x)
    return x


@torch.no_grad()
def predict(model, images, device, batch_size=1000, features=False):
    """Logits (or codes) of uint8 images, in eval mode."""
    model.eval()
    out = []
    for x in images.split(batch_size):
        with autocast(device):
            x = x.to(device).float() / 255
            out.append((model.features(x) if features else model(x)).float())
    model.train()
    return torch.cat(out)


def train_steps(model, opt, sched, draw, images, targets, weights, steps, args, device):
    """`steps` SGD steps; draw() gives a batch's indices into (images, targets, weights). Mixup (alpha 1)
    mixes images and their weighted losses if args.mixup."""
    model.train()
    for _ in range(steps):
        i = draw()
        x = augment(images[i].to(device).float() / 255, args.pad, args.flip)
        y, w = targets[i].to(device), weights[i].to(device)
        with autocast(device):
            if args.mixup:
                lam = torch.distributions.Beta(1.0, 1.0).sample().to(device)
                j = torch.randperm(len(i), device=device)
                logits = model(lam * x + (1 - lam) * x[j]).float()
                loss = (lam * w * F.cross_entropy(logits, y, reduction="none")
                        + (1 - lam) * w[j] * F.cross_entropy(logits, y[j], reduction="none")).mean()
            else:
                loss = (w * F.cross_entropy(model(x).float(), y, reduction="none")).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def sampler(pool, n):
    """draw() for train_steps: n random indices from `pool`, with replacement."""
    return lambda: pool[torch.randint(0, len(pool), (n,), device=pool.device)]


def make_optimizer(model, args, total_steps):
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    return opt, sched


def balanced_subset(labels, n, seed):
    """n indices, n / C per class (the first classes get one more where C does not divide n)."""
    classes = labels.unique()
    g = torch.Generator().manual_seed(seed)
    per = [n // len(classes) + (c < n % len(classes)) for c in range(len(classes))]
    picks = []
    for c, k in zip(classes, per):
        members = (labels == c).nonzero().squeeze(1)
        if k > len(members):
            raise DataError(f"--num-labeled {n} asks for {k} images of class {c.item()}, which has {len(members)}")
        picks.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picks)


# ---- the stage ----

def parse_args(argv=None):
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=None, help="train_drl.py run: its encoder (--init drl) or architecture")
    p.add_argument("--init", choices=["drl", "random"], default="drl", help="start from the run's encoder, or fresh")
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the run's; needed without --ckpt")
    p.add_argument("--classes", type=int_list, default=None,
                   help="without --ckpt: only these classes, e.g. 0,1,2 (a run's own are used with --ckpt)")
    p.add_argument("--ch", type=int, default=16, help="architecture without --ckpt")
    p.add_argument("--latent-dim", type=int, default=256, help="architecture without --ckpt (the cpu preset's)")
    p.add_argument("--num-labeled", type=int, default=100, help="labelled training images, balanced over classes")
    p.add_argument("--label-seed", type=int, default=0, help="which images are labelled")
    p.add_argument("--epochs", type=int, default=20, help="pseudo-labelling epochs, after the warm-up")
    p.add_argument("--warmup-epochs", type=int, default=10, help="supervised epochs on the labelled images")
    p.add_argument("--supervised-only", action="store_true", help="no pseudo-labels: the labelled images alone")
    p.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=False,
                   help="mixup (alpha 1) of each batch")
    p.add_argument("--k", type=int, default=50, help="neighbours in the graph")
    p.add_argument("--alpha", type=float, default=0.99, help="label propagation's alpha")
    p.add_argument("--cg-iters", type=int, default=30, help="conjugate-gradient iterations of label propagation")
    p.add_argument("--t-init", type=float, default=0.5, help="time-conditioned encoders: the starting t")
    p.add_argument("--check-t", action="store_true", help="pick t_init from --t-grid first")
    p.add_argument("--t-grid", default="0.1,0.3,0.5,0.7,0.9", help="--check-t: the candidates")
    p.add_argument("--check-epochs", type=int, default=3, help="--check-t: supervised epochs per candidate")
    p.add_argument("--batch-size", type=int, default=128, help="images per SGD step")
    p.add_argument("--labeled-batch", type=int, default=32, help="labelled images in each pseudo-label batch")
    p.add_argument("--lr", type=float, default=0.03, help="SGD (Nesterov) learning rate, cosine schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    p.add_argument("--max-train", type=int, default=None,
                   help="use this many training images, drawn at random with --seed (probe.py takes the first N)")
    p.add_argument("--max-test", type=int, default=None, help="use the first this many test images")
    p.add_argument("--out", default="semisup", help="folder of log.jsonl, result.json and classifier.pt")
    p.add_argument("--data-dir", default=None, help="default: the run's --data-dir")
    p.add_argument("--device", default=None, help="cpu, cuda or mps; default cuda, then mps, then cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and batches")
    args = p.parse_args(argv)
    try:
        args.device = str(pick_device(args.device))
    except ValueError as e:
        p.error(str(e))
    check_numbers(p, args, positive=("ch", "latent_dim", "num_labeled", "epochs", "k", "cg_iters", "check_epochs",
                                     "batch_size", "lr", "max_train", "max_test"),
                  non_negative=("warmup_epochs", "weight_decay"), in_unit=("alpha",))
    args.t_grid = float_list(p, args.t_grid, "--t-grid", 1e-6, 1 - 1e-6)
    if args.ckpt is None and (args.init == "drl" or args.dataset is None):
        p.error("pass --ckpt RUN/ckpt.pt (or --init random --dataset NAME to build the default architecture)")
    if not 0 < args.labeled_batch < args.batch_size:
        p.error("--labeled-batch must be positive and smaller than --batch-size")
    if not 0 < args.t_init < 1:
        p.error("--t-init must lie in (0, 1)")
    return args


def build_encoder(args):
    """(encoder, its constructor arguments, dataset, data_dir, classes): the run's EMA encoder, or fresh
    weights of its architecture (of --ch and --latent-dim without --ckpt); the run's data set and classes."""
    if args.ckpt is None:
        in_ch, size, _ = IMAGE_SHAPE[args.dataset]
        config = encoder_config(in_ch, size, args.ch, args.latent_dim)  # train_drl.py's cpu-preset encoder
        return Encoder(**config), config, args.dataset, args.data_dir, args.classes
    _, encoder, _, ckpt = load_run(args.ckpt, device="cpu")
    if encoder is None:
        raise CheckpointError(f"{args.ckpt} is a plain score model with no encoder; pass a drl, vdrl (or baseline) run")
    run, config = ckpt["args"], ckpt["config"]["encoder"]
    if args.dataset and args.dataset != run["dataset"]:
        raise CheckpointError(f"{args.ckpt} was trained on {run['dataset']}, not {args.dataset}; drop --dataset")
    if args.init == "random":
        encoder = Encoder(**config)
    if args.classes is not None and args.classes != run.get("classes"):
        raise CheckpointError(f"{args.ckpt} was trained on --classes {run.get('classes')}; drop --classes")
    return encoder, config, run["dataset"], args.data_dir or run["data_dir"], run.get("classes")


def check_t(base, images, labels, labeled, args, device):
    """Train a copy from each t of the grid for a few supervised epochs on half the labelled images;
    return the t whose copy is most accurate on the other half (ties: the earlier t)."""
    g = torch.Generator().manual_seed(args.seed)
    perm = labeled[torch.randperm(len(labeled), generator=g).to(labeled.device)]
    fit, held = perm[: len(perm) // 2], perm[len(perm) // 2:]
    steps = args.check_epochs * math.ceil(len(images) / args.batch_size)
    scores = {}
    for t in args.t_grid:
        torch.manual_seed(args.seed)
        model = copy.deepcopy(base).to(device)
        with torch.no_grad():
            model.t_logit.fill_(math.log(t / (1 - t)))
        opt, sched = make_optimizer(model, args, steps)
        ones = torch.ones(len(images), device=images.device)
        train_steps(model, opt, sched, sampler(fit, args.batch_size), images, labels, ones, steps, args, device)
        scores[t] = (predict(model, images[held], device).argmax(1) == labels[held].to(device)).float().mean().item()
        print(f"check t={t:.2f}: held-out labelled accuracy {100 * scores[t]:.1f}", flush=True)
    return max(args.t_grid, key=lambda t: scores[t]), scores


def load_data(args):
    """The encoder to start from and the data: (encoder, encoder_config, dataset, images, labels,
    test_images, test_labels, labeled indices), or one line that says what is wrong."""
    with exit_on(DataError, CheckpointError):
        encoder, config, dataset, data_dir, classes = build_encoder(args)
        images, labels = load_dataset(dataset, data_dir, train=True, classes=classes)
        test_images, test_labels = load_dataset(dataset, data_dir, train=False, classes=classes)
        if args.max_train and args.max_train < len(images):
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))[: args.max_train]
            images, labels = images[keep], labels[keep]
        test_images, test_labels = test_images[: args.max_test], test_labels[: args.max_test]
        if args.batch_size > len(images):
            raise DataError(f"--batch-size {args.batch_size} is more than the {len(images)} training images; lower it")
        labeled = balanced_subset(labels, args.num_labeled, args.label_seed)
    return encoder, config, dataset, images, labels, test_images, test_labels, labeled


def record(model, test_images, test_labels, device, log, epoch, phase, t0, **extra):
    """Test accuracy after an epoch: a printed line and a row of log.jsonl (rewritten whole each time)."""
    acc = (predict(model, test_images, device).argmax(1).cpu() == test_labels).float().mean().item()
    row = dict(epoch=epoch, phase=phase, test_acc=acc, t=model.t, seconds=time.perf_counter() - t0, **extra)
    log["rows"].append(row)
    save_atomic("".join(json.dumps(r) + "\n" for r in log["rows"]), log["path"])
    extra_txt = "".join(f"  {k.replace('_', ' ')} {100 * v:.1f}" for k, v in extra.items())
    print(f"epoch {epoch:3d} {phase:>10}  test {100 * acc:5.2f}{extra_txt}"
          f"{'' if model.t is None else f'  t {model.t:.3f}'}  ({row['seconds']:.0f} s)", flush=True)
    return acc


def pseudo_label_epoch(model, opt, sched, images, labels, labeled, unlabeled, n_classes, steps, args, device):
    """LaplaceNet's epoch: label propagation on the model's features, then training on the pseudo-labels
    weighted by certainty and class balance. Returns the pseudo-labels' accuracy on the unlabelled images."""
    store = images.device
    features = predict(model, images, device, features=True)
    pseudo, certainty = propagate_labels(features, labeled.to(device), labels[labeled].to(device), n_classes,
                                         args.k, args.alpha, args.cg_iters)
    pseudo, certainty = pseudo.to(store), certainty.to(store)
    counts = torch.bincount(pseudo[unlabeled], minlength=n_classes).clamp(min=1).float()
    weights = certainty * (len(unlabeled) / (n_classes * counts))[pseudo]    # certainty x class balance
    is_unlabeled = torch.ones(len(images), dtype=torch.bool, device=store)
    is_unlabeled[labeled] = False
    targets = torch.where(is_unlabeled, pseudo, labels)
    weights[labeled] = 1.0
    draw_l, draw_u = sampler(labeled, args.labeled_batch), sampler(unlabeled, args.batch_size - args.labeled_batch)
    train_steps(model, opt, sched, lambda: torch.cat([draw_l(), draw_u()]), images, targets, weights, steps, args,
                device)
    return (pseudo[unlabeled] == labels[unlabeled]).float().mean().item()


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    encoder, config, dataset, images, labels, test_images, test_labels, labeled = load_data(args)
    out = prepare_out(args.out)  # after the checkpoint and the data: bad input leaves no folder behind
    n_classes = int(labels.max()) + 1
    args.pad, args.flip = (4 if images.shape[-1] == 32 else 2), dataset != "mnist"
    store = device if device.type == "cuda" else torch.device("cpu")   # where the training set lives
    images, labels, labeled = images.to(store), labels.to(store), labeled.to(store)
    is_unlabeled = torch.ones(len(images), dtype=torch.bool, device=store)
    is_unlabeled[labeled] = False
    unlabeled = is_unlabeled.nonzero().squeeze(1)

    model = Classifier(encoder, n_classes, args.t_init)
    t_scores = None
    if args.check_t and model.t_logit is not None:
        best_t, t_scores = check_t(model, images, labels, labeled, args, device)
        with torch.no_grad():
            model.t_logit.fill_(math.log(best_t / (1 - best_t)))
    model.to(device)
    steps = math.ceil(len(images) / args.batch_size)  # per epoch
    opt, sched = make_optimizer(model, args, steps * (args.warmup_epochs + args.epochs))
    print(f"{dataset}: {len(labeled)} labelled and {len(unlabeled)} unlabelled training images, {len(test_images)} "
          f"test; init {args.init}, {'supervised only' if args.supervised_only else 'pseudo-labels'}, "
          f"mixup {'on' if args.mixup else 'off'}, {steps} steps per epoch, {device}", flush=True)
    ones, supervised = torch.ones(len(images), device=store), sampler(labeled, args.batch_size)
    log, acc = dict(path=out / "log.jsonl", rows=[]), None
    with exit_on(WriteError), memory_line("--batch-size (or --max-train)"):
        for epoch in range(1, args.warmup_epochs + args.epochs + 1):
            t0 = time.perf_counter()
            if epoch <= args.warmup_epochs or args.supervised_only:
                train_steps(model, opt, sched, supervised, images, labels, ones, steps, args, device)
                phase, extra = "warm-up" if epoch <= args.warmup_epochs else "supervised", {}
            else:
                phase, extra = "pseudo", dict(pseudo_label_acc=pseudo_label_epoch(
                    model, opt, sched, images, labels, labeled, unlabeled, n_classes, steps, args, device))
            acc = record(model, test_images, test_labels, device, log, epoch, phase, t0, **extra)
        result = dict(dataset=dataset, init=args.init, ckpt=args.ckpt, num_labeled=len(labeled),
                      unlabeled=len(unlabeled), test_images=len(test_images), supervised_only=args.supervised_only,
                      mixup=args.mixup, epochs=args.epochs, warmup_epochs=args.warmup_epochs, test_acc=acc,
                      t=model.t, t_check=t_scores, steps=steps * (args.warmup_epochs + args.epochs),
                      device=str(device), args=vars(args))
        save_together({out / "result.json": json.dumps(result, indent=2),
                       out / "classifier.pt": dict(kind="semisup_classifier", classifier=model.state_dict(),
                                                   n_classes=n_classes, encoder_config=config,
                                                   args=vars(args), test_acc=acc)})
    print(f"test accuracy {100 * acc:.2f}%  (wrote {out / 'result.json'}, {out / 'classifier.pt'})")
    return result


if __name__ == "__main__":
    main()
