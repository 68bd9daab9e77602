"""Sample quality without a download: a small classifier of the data set scores samples.

    python sample.py --ckpt RUN/ckpt.pt --mode recon --n 100 --per-code 1 --save-tensor --out samples
    python benchmarks/sample_quality.py samples/recon.pt --dataset fashion_mnist --out quality

A small CNN is trained once on the data set's training split (a few minutes on a CPU; its test
accuracy is printed and saved) and cached as OUT/classifier.pt. From it, for a tensor of samples:
- fd: the Fréchet distance between Gaussians fitted to the classifier's penultimate features of the
  samples and of as many test images, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)); biased upward
  at small N, so compare rows only at equal N;
- class agreement (recon samples, which carry their source's label): how often the classifier's
  class of a sample is its source image's class;
- saturation: the fraction of pixels at exactly 0 or 1 after clipping, for samples and test images.
Writes OUT/quality.json.
"""
import argparse
import json
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
    """conv 32 - pool - conv 64 - pool - dense 128 (the features) - dense classes."""

    def __init__(self, in_ch=1, n_classes=10, feature_dim=128):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(in_ch, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x):
        """(features, logits) of images x in [0, 1]."""
        f = self.trunk(x)
        return f, self.head(f)


def train_classifier(images, labels, epochs=2, batch_size=128, seed=0, device="cpu"):
    """Adam 1e-3 on uint8 images (N, C, H, W); returns the classifier in eval mode."""
    torch.manual_seed(seed)
    net = Classifier(images.shape[1], int(labels.max()) + 1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(images)).split(batch_size):
            x, y = images[idx].to(device).float() / 255, labels[idx].to(device)
            loss = F.cross_entropy(net(x)[1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
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


def saturation(x):
    """Fraction of pixels at exactly 0 or 1 after clipping to [0, 1]."""
    x = x.clamp(0, 1)
    return ((x == 0) | (x == 1)).float().mean().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("samples", help="a .pt file from sample.py --save-tensor: samples (N, C, H, W), optional labels")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--out", default="quality", help="folder of the cached classifier and quality.json")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    out, device = prepare_out(args.out), pick_device(args.device)
    with exit_on(DataError):
        images, labels = load_dataset(args.dataset, args.data_dir, train=True)
        test_images, test_labels = load_dataset(args.dataset, args.data_dir, train=False)
    cached = out / "classifier.pt"
    net = Classifier(images.shape[1], int(labels.max()) + 1).to(device).eval()
    if cached.exists():
        state = torch.load(cached, weights_only=True)
        net.load_state_dict(state["classifier"])
        accuracy = state["test_accuracy"]
    else:
        net = train_classifier(images, labels, args.epochs, device=device)
        accuracy = (features_and_classes(net, test_images.to(device).float() / 255)[1].cpu() == test_labels).float()
        accuracy = accuracy.mean().item()
        save_atomic(dict(classifier=net.state_dict(), test_accuracy=accuracy, dataset=args.dataset), cached)
    saved = torch.load(args.samples, weights_only=True)
    x = saved["samples"].to(device).float()
    n = len(x)
    real = test_images[:n].to(device).float() / 255
    f_samples, c_samples = features_and_classes(net, x)
    f_real, _ = features_and_classes(net, real)
    result = dict(samples=args.samples, n=n, classifier_test_accuracy=accuracy, fd=frechet_distance(f_samples, f_real),
                  saturation_samples=saturation(x), saturation_test_images=saturation(real))
    if "labels" in saved:
        result["class_agreement"] = (c_samples.cpu() == saved["labels"].cpu()).float().mean().item()
    (out / "quality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
