"""benchmarks/sample_quality.py: the Fréchet distance against closed forms, and the measure on shapes."""
import shutil
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


def test_recon_samples_scored_end_to_end(tmp_path, tiny_run, scored_test_images):
    import sample
    sample.main(["--ckpt", tiny_run("tc"), "--mode", "recon", "--n", "6", "--per-code", "2", "--steps", "2",
                 "--save-tensor", "--out", str(tmp_path), "--device", "cpu"])
    q = with_classifier(scored_test_images, tmp_path / "q")
    args = [str(tmp_path / "recon.pt"), "--dataset", "shapes", "--out", str(q), "--epochs", "1"]
    first = sq.main(args)[0]
    assert first["n"] == 12 and 0.8 < first["classifier_test_accuracy"] and "class_agreement" in first
    assert first["fd"] > 0 and first["classifier_test_accuracy"] == scored_test_images[1]["classifier_test_accuracy"]
    assert sq.main(args)[0] == first  # the same numbers again
    assert len((tmp_path / "q" / "quality.jsonl").read_text().splitlines()) == 2


@pytest.fixture(scope="module")
def scored_test_images(tmp_path_factory):
    """The first half of the shapes test set, as samples with their labels, through the whole measure: the
    one classifier of this module is trained here (1 epoch) and cached in the returned folder."""
    folder = tmp_path_factory.mktemp("quality")
    test_images, test_labels = load_dataset("shapes", train=False)
    n = len(test_images) // 2
    torch.save(dict(samples=test_images[:n].float() / 255, labels=test_labels[:n]), folder / "test.pt")
    row = sq.main([str(folder / "test.pt"), "--dataset", "shapes", "--out", str(folder / "q"), "--epochs", "1"])[0]
    return folder / "q", row


def with_classifier(scored, folder):
    """folder, holding the module's trained classifier (so a test scores without training one)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(scored[0] / "classifier.pt", folder / "classifier.pt")
    return folder


def module_classifier(folder, n_classes):
    """The classifier folder/classifier.pt holds, in eval mode."""
    net = sq.Classifier(1, n_classes)
    net.load_state_dict(torch.load(folder / "classifier.pt")["classifier"])
    return net.eval()


def test_measure_on_shapes(scored_test_images):
    test_images, test_labels = load_dataset("shapes", train=False)
    net = module_classifier(scored_test_images[0], int(test_labels.max()) + 1)
    real = test_images.float() / 255
    f_real, classes = sq.features_and_classes(net, real)
    assert (classes == test_labels).float().mean().item() > 0.8
    half_a, half_b = f_real[:500], f_real[500:]
    g = torch.Generator().manual_seed(0)
    shuffled = real.flatten(1)[:, torch.randperm(28 * 28, generator=g)].view_as(real)[:500]
    f_shuffled, _ = sq.features_and_classes(net, shuffled)
    assert sq.frechet_distance(half_a, f_shuffled) > 10 * sq.frechet_distance(half_a, half_b)
    assert sq.saturation(torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0, 0.001, 0.998, 0.01])) == pytest.approx(5 / 8)
    assert sq.saturation(torch.tensor([-0.5, 0.0, 0.3, 1.0, 2.0, 0.999]), [255]) == pytest.approx(3 / 6)


def test_test_images_scored_as_samples(scored_test_images):
    """Through the whole measure: the first N test images, as samples with their labels, are at Fréchet
    distance 0 from themselves, their class agreement is the classifier's accuracy on them, and N other
    test images are at a small positive distance."""
    folder, row = scored_test_images
    test_images, test_labels = load_dataset("shapes", train=False)
    n = len(test_images) // 2
    net = module_classifier(folder, int(test_labels.max()) + 1)
    classes = sq.features_and_classes(net, test_images[:n].float() / 255)[1]
    assert row["class_agreement"] == (classes == test_labels[:n]).float().mean().item()
    assert row["fd"] == pytest.approx(0, abs=1e-6) and 0 < row["fd_test_vs_test"]
    assert row["saturation_samples"] == row["saturation_test_images"]


def test_wrong_samples_file_is_one_line_error(tmp_path):
    torch.save(dict(samples=torch.rand(4, 3, 8, 8)), tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_text("not a tensor file")
    for name, msg in (("bad.pt", "needs shape"), ("junk.pt", "not a samples file")):
        with pytest.raises(SystemExit, match=msg) as e:
            sq.main([str(tmp_path / name), "--dataset", "shapes", "--out", str(tmp_path / "q"), "--epochs", "1"])
        assert "\n" not in str(e.value) and not (tmp_path / "q").exists()  # refused before any work


def test_sampler_table_end_to_end(tmp_path, tiny_run, capsys, scored_test_images):
    import sampler_table
    argv = [f"tiny={tiny_run('tc')}", "--rows", "heun-10,heun-25-shuffled", "--n", "4", "--dataset", "shapes",
            "--out", str(tmp_path), "--epochs", "1"]
    with_classifier(scored_test_images, tmp_path)
    table = sampler_table.main(argv)
    assert [(r["row"], r["nfe"], r["n"]) for r in table] == [("heun-10", 19, 4), ("heun-25-shuffled", 49, 4)]
    assert "| tiny | heun-10 | 19 |" in capsys.readouterr().out
    sampled = (tmp_path / "tiny" / "heun-10" / "recon.pt").stat().st_mtime_ns
    again = sampler_table.main(argv)  # already sampled: scored again, not sampled again
    assert (tmp_path / "tiny" / "heun-10" / "recon.pt").stat().st_mtime_ns == sampled
    assert [r["fd"] for r in again] == [r["fd"] for r in table]
    assert len((tmp_path / "table.jsonl").read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="unknown rows"):
        sampler_table.main(argv[:1] + ["--rows", "heun-7", "--dataset", "shapes"])
