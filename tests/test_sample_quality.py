"""benchmarks/sample_quality.py: the Fréchet distance against closed forms, and the measure on shapes."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sample_quality as sq  # noqa: E402

from data import load_dataset  # noqa: E402


def test_frechet_distance_closed_forms():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 8, generator=g, dtype=torch.float64)
    assert sq.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)            # identical sets
    shift = torch.tensor([1.0, -2.0] + [0.0] * 6, dtype=torch.float64)
    b = torch.randn(20000, 8, generator=g, dtype=torch.float64)
    assert sq.frechet_distance(a, b + shift) == pytest.approx(5.0, abs=0.05)   # ||mu1 - mu2||^2
    assert sq.frechet_distance(a, 2 * b) == pytest.approx(8 * (1 + 4 - 2 * 2), abs=0.2)  # D (1 + s^2 - 2 s)


def test_measure_on_shapes():
    images, labels = load_dataset("shapes", train=True)
    test_images, test_labels = load_dataset("shapes", train=False)
    net = sq.train_classifier(images, labels, epochs=1)
    real = test_images.float() / 255
    f_real, classes = sq.features_and_classes(net, real)
    accuracy = (classes == test_labels).float().mean().item()
    assert accuracy > 0.8
    # class agreement of the test images with their own labels is the classifier's accuracy
    assert (sq.features_and_classes(net, real)[1] == test_labels).float().mean().item() == accuracy
    half_a, half_b = f_real[:500], f_real[500:]
    g = torch.Generator().manual_seed(0)
    shuffled = real.flatten(1)[:, torch.randperm(28 * 28, generator=g)].view_as(real)[:500]
    f_shuffled, _ = sq.features_and_classes(net, shuffled)
    assert sq.frechet_distance(half_a, f_shuffled) > 10 * sq.frechet_distance(half_a, half_b)
    assert sq.saturation(torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0])) == pytest.approx(0.8)


def test_recon_samples_scored_end_to_end(tmp_path, tiny_run):
    import sample
    sample.main(["--ckpt", tiny_run("tc"), "--mode", "recon", "--n", "6", "--per-code", "2", "--steps", "2",
                 "--save-tensor", "--out", str(tmp_path), "--device", "cpu"])
    args = [str(tmp_path / "recon.pt"), "--dataset", "shapes", "--out", str(tmp_path / "q"), "--epochs", "1"]
    first = sq.main(args)
    assert first["n"] == 12 and 0.8 < first["classifier_test_accuracy"] and "class_agreement" in first
    assert first["fd"] > 0 and (tmp_path / "q" / "classifier.pt").exists()
    assert sq.main(args) == first  # the cached classifier gives the same numbers
