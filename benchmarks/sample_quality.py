"""Sample quality without a download: a small classifier of the data set scores samples.

    python sample.py --ckpt RUN/ckpt.pt --mode recon --n 100 --per-code 1 --save-tensor --out samples
    python benchmarks/sample_quality.py samples/recon.pt --dataset fashion_mnist --out quality

A small CNN is trained once on the data set's training split (8 epochs, ~10 minutes on one CPU core; its test
accuracy is printed and saved) and cached as OUT/classifier.pt. From it, for a tensor of samples:
- fd: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of the first N test images (a recon sample's sources), ||mu1 - mu2||^2 + Tr(S1 + S2 -
  2 (S1 S2)^(1/2)); biased upward at small N, so compare rows only at equal N; fd_independent: the same
  against the next N test images, which no sample was drawn from;
- class agreement (recon samples, which carry their source's label): how often the classifier's
  class of a sample is its source image's class;
- saturation: the fraction of pixels at 0 or 255 after clipping and rounding to 8 bits, for samples
  and test images (which are stored that way); and white: the fraction at 255 alone.
The Fréchet distance between two sets of N test images (fd_test_vs_test) is the level of an
independent set at that N; recon samples, drawn from the reference images' codes, can come closer.
Appends a JSON line per samples file to OUT/quality.jsonl.
"""
import argparse
import json
import math
import pickle
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from checkpoint import save_atomic  # noqa: E402
from data import DATASETS, DataError, load_dataset  # noqa: E402
from runtime import exit_on, pick_device, prepare_out  # noqa: E402


class Classifier(nn.Module):
    """Two stages of (conv 3x3 - batch norm - ReLU) x 2 and a 2x2 max-pool, 32 then 64 channels; a dense
    layer of 128 (the features, after ReLU); a dense layer to the classes."""

    def __init__(self, in_ch=1, n_classes=10, feature_dim=128, image_size=28):
        super().__init__()
        block = lambda cin, cout: [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.trunk = nn.Sequential(
            *block(in_ch, 32), *block(32, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x):
        """(features, logits) of images x in [0, 1]."""
        f = self.trunk(x)
        return f, self.head(f)


def train_classifier(images, labels, epochs=8, batch_size=128, seed=0, device="cpu"):
    """Adam 1e-3, cosine-decayed to 0, half the images mirrored left-right, on uint8 images (N, C, H, W);
    returns the classifier in eval mode."""
    torch.manual_seed(seed)
    net = Classifier(images.shape[1], int(labels.max()) + 1, image_size=images.shape[-1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    total = epochs * math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    for _ in range(epochs):
        for idx in torch.randperm(len(images)).split(batch_size):
            x, y = images[idx].to(device).float() / 255, labels[idx].to(device)
            x = torch.where(torch.rand(len(x), 1, 1, 1, device=device) < 0.5, x.flip(-1), x)  # mirror half
            loss = F.cross_entropy(net(x)[1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def features_and_classes(net, x, batch_size=500):
    """Penultimate features (N, D) float64 and predicted classes (N,) of images x in [0, 1]."""
    feats, classes = [], []
    for xb in x.split(batch_size):
        f, logits = net(xb.clamp(0, 1))
        feats.append(f.double())
        classes.append(logits.argmax(1))
    return torch.cat(feats), torch.cat(classes)


def frechet_distance(f1, f2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of Gaussians fitted to features (N, D). The
    trace of the matrix square root is the sum of the square roots of the eigenvalues of
    S1^(1/2) S2 S1^(1/2), which is symmetric, so eigh suffices."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = torch.cov(f1.T), torch.cov(f2.T)
    e, v = torch.linalg.eigh(s1)
    root1 = v @ torch.diag(e.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * cross).item()


def saturation(x, levels=(0, 255)):
    """Fraction of pixels at one of `levels` once x in [0, 1] is clipped and rounded to 8 bits (as saved
    to a PNG and as the data set's images are stored)."""
    x = (x.clamp(0, 1) * 255).round()
    return sum((x == level) for level in levels).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("samples", nargs="+",
                   help=".pt files from sample.py --save-tensor: samples (N, C, H, W), optional labels")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-dir", default=None, help="default: ./data, then the system's copy")
    p.add_argument("--out", default="quality", help="folder of the cached classifier and quality.jsonl")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    with exit_on(DataError):
        test_images, test_labels = load_dataset(args.dataset, args.data_dir, train=False)
    loaded = [read_samples(path, test_images, args.dataset) for path in args.samples]  # every file checked first
    out = prepare_out(args.out)
    with exit_on(DataError):
        net, accuracy = cached_classifier(out / "classifier.pt", args, test_images, test_labels, device)
    rows = []
    for path, saved in zip(args.samples, loaded):
        x = saved["samples"].to(device).float()
        n = len(x)
        real = test_images[:2 * n].to(device).float() / 255
        f_samples, c_samples = features_and_classes(net, x)
        f_real, _ = features_and_classes(net, real)
        row = dict(samples=str(path), n=n, classifier_test_accuracy=accuracy,
                   fd=frechet_distance(f_samples, f_real[:n]),  # the N images recon samples were drawn from
                   fd_independent=frechet_distance(f_samples, f_real[n:]),  # N images they were not drawn from
                   fd_test_vs_test=frechet_distance(f_real[n:], f_real[:n]),  # N independent images
                   saturation_samples=saturation(x), saturation_test_images=saturation(real[:n]),
                   white_samples=saturation(x, [255]), white_test_images=saturation(real[:n], [255]))
        if "labels" in saved:
            row["class_agreement"] = (c_samples.cpu() == saved["labels"].cpu()).float().mean().item()
        rows.append(row)
        print(json.dumps(row))
    with open(out / "quality.jsonl", "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def read_samples(path, test_images, dataset):
    """The dict sample.py --save-tensor wrote (samples, optional labels), checked against the test set."""
    try:
        saved = torch.load(path, weights_only=True)
        shape = tuple(saved["samples"].shape)
    except (OSError, RuntimeError, KeyError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as e:
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        raise SystemExit(f"error: {path} is not a samples file from sample.py --save-tensor "
                         f"({type(e).__name__}: {first_line})")
    if shape[1:] != test_images.shape[1:] or 2 * shape[0] > len(test_images):
        raise SystemExit(f"error: {path} holds {shape} samples; {dataset} needs shape "
                         f"{tuple(test_images.shape[1:])} and at most {len(test_images) // 2} samples")
    return saved


def cached_classifier(path, args, test_images, test_labels, device):
    """The classifier of path, or one trained now on the training split and saved there; and its test accuracy."""
    net = Classifier(test_images.shape[1], int(test_labels.max()) + 1, image_size=test_images.shape[-1])
    net = net.to(device).eval()
    if path.exists():
        state = torch.load(path, weights_only=True)
        if state.get("dataset") != args.dataset:
            raise SystemExit(f"error: {path} is a classifier of {state.get('dataset')}, not {args.dataset}; "
                             f"pass another --out")
        net.load_state_dict(state["classifier"])
        return net, state["test_accuracy"]
    images, labels = load_dataset(args.dataset, args.data_dir, train=True)
    net = train_classifier(images, labels, args.epochs, device=device)
    classes = features_and_classes(net, test_images.to(device).float() / 255)[1].cpu()
    accuracy = (classes == test_labels).float().mean().item()
    save_atomic(dict(classifier=net.state_dict(), test_accuracy=accuracy, dataset=args.dataset), path)
    print(f"classifier: {args.epochs} epochs on the {args.dataset} training split, test accuracy {accuracy:.4f}, "
          f"saved to {path}")
    return net, accuracy


if __name__ == "__main__":
    main()
