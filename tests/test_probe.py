"""probe.py: each probe against cases with a known answer, caching, and the stage end to end."""
import json

import pytest
import torch

import probe
from linear_probe import whiten


def blobs(n_per_class=100, classes=4, dim=8, spread=0.3, seed=0):
    """Linearly separable codes: one well separated cluster per class (the same centres for every seed)."""
    centres = 3 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_linear_probe_separable_codes_and_random_labels():
    x, y = blobs()
    xt, yt = blobs(seed=1)
    acc, wd = probe.linear_probe(x, y, xt, yt)
    assert acc > 0.99 and wd in (0.0, 1e-4, 1e-3, 1e-2)
    g = torch.Generator().manual_seed(2)
    x_noise, xt_noise = torch.randn(2000, 8, generator=g), torch.randn(2000, 8, generator=g)
    y_noise, yt_noise = torch.randint(4, (2000,), generator=g), torch.randint(4, (2000,), generator=g)
    acc, _ = probe.linear_probe(x_noise, y_noise, xt_noise, yt_noise)
    assert abs(acc - 0.25) < 0.04  # chance: 4 classes


def test_linear_probe_reaches_the_same_optimum_on_an_ill_conditioned_copy_of_the_codes():
    # overlapping classes in 8-d, then the same codes seen through an invertible but badly
    # conditioned linear map into 32-d: every feature shares one large direction, and the class
    # lives in directions 1 to 300 times smaller. A linear classifier can express the same functions
    # of both, so a probe that reaches its optimum scores both the same (on per-feature
    # standardised codes 100 L-BFGS iterations scored them 86.3% and 83.7%)
    def overlapping(seed):
        centres = 1.5 * torch.randn(4, 8, generator=torch.Generator().manual_seed(123))
        y = torch.arange(4).repeat_interleave(500)
        return centres[y] + 1.5 * torch.randn(len(y), 8, generator=torch.Generator().manual_seed(seed)), y
    (x, y), (xt, yt) = overlapping(0), overlapping(1)
    g = torch.Generator().manual_seed(5)
    mix = torch.randn(8, 32, generator=g) * torch.logspace(0, -2.5, 8)[:, None] + torch.randn(1, 32, generator=g)
    acc, wd = probe.linear_probe(x, y, xt, yt)
    assert 0.8 < acc < 0.95  # not separable: the optimum, not any separating plane, decides the score
    assert probe.linear_probe(x @ mix, y, xt @ mix, yt) == pytest.approx((acc, wd), abs=2e-3)
    white, _ = whiten(x @ mix, xt @ mix)
    assert white.shape == (2000, 8)  # the 24 directions without variance are dropped
    assert torch.allclose(torch.cov(white.T), torch.eye(8), atol=1e-3)


def test_knn_few_shot_and_mlp_on_separable_codes():
    x, y = blobs()
    xt, yt = blobs(seed=1)
    assert probe.knn_accuracy(x, y, xt, yt, k=5) > 0.99
    mean, std = probe.few_shot_accuracy(x, y, xt, yt, shots=1, draws=3)
    assert mean > 0.95 and std >= 0
    assert probe.mlp_probe(x, y, xt, yt, epochs=5) > 0.99


def test_silhouette_matches_hand_computed_example():
    # 1-D points: class 0 at {0, 1}, class 1 at {4, 5}, class 2 at {10} (a singleton scores 0).
    # point 0: a = 1, b = min(4.5, 10) -> 3.5/4.5;  point 1: a = 1, b = min(3.5, 9) -> 2.5/3.5;
    # point 4: a = 1, b = min(3.5, 6) -> 2.5/3.5;  point 5: a = 1, b = min(4.5, 5) -> 3.5/4.5
    x = torch.tensor([[0.0], [1.0], [4.0], [5.0], [10.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    expected = (2 * 7 / 9 + 2 * 5 / 7) / 5
    assert probe.silhouette(x, y) == pytest.approx(expected, abs=1e-6)
    # labels in any order and with gaps give the same number; chunking does not change it
    assert probe.silhouette(x, torch.tensor([7, 7, 3, 3, 9])) == pytest.approx(expected, abs=1e-6)
    xb, yb = blobs(n_per_class=400)
    assert probe.silhouette(xb, yb) > 0.8  # 1600 points: two chunks


@pytest.fixture(scope="module")
def runs(tiny_run):
    return {name: tiny_run(name) for name in ('tc2', 'ae', 'score')}


def test_stage_end_to_end_and_cache(tmp_path, runs):
    args = ["--ckpt", runs["tc2"], runs["ae"], "--out", str(tmp_path), "--ts", "0,1", "--max-train", "300",
            "--max-test", "200", "--draws", "2", "--device", "cpu", "--mlp", "--mlp-epochs", "1"]
    first = probe.main(args)
    assert [row["t"] for row in first["tc2"]["per_t"]] == [0.0, 1.0]
    assert [row["t"] for row in first["ae"]["per_t"]] == [None]
    keys = {"linear", "knn", "few_shot_1", "few_shot_10", "mlp", "silhouette", "silhouette_fine", "participation_ratio"}
    for name in ("tc2", "ae", "raw_pixels", "random_encoder"):
        for row in first[name]["per_t"]:
            assert keys <= set(row)  # shapes: the stroke-width silhouette too
    # the raw-pixel row is the linear probe of the pixels themselves, and shapes are easy to tell apart
    from data import load_dataset
    from linear_probe import linear_probe
    images, labels = load_dataset("shapes", train=True)
    test_images, test_labels = load_dataset("shapes", train=False)
    keep = slice(0, 300)  # --max-train: the first images
    flat = lambda x: x.flatten(1).float() / 255
    expected, _ = linear_probe(flat(images[keep]), labels[keep], flat(test_images[:200]), test_labels[:200])
    assert first["raw_pixels"]["per_t"][0]["linear"] == pytest.approx(expected) and expected > 0.6
    distances = [row["distance_to_last_t"] for row in first["tc2"]["per_t"]]
    assert distances[1] == 0 and distances[0] > 0 and "distance_to_last_t" not in first["ae"]["per_t"][0]
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert saved["meta"]["train_images"] == 300 and saved["results"]["tc2"]["per_t"][1]["t"] == 1.0
    assert (tmp_path / "probe.png").stat().st_size > 0 and (tmp_path / "scatter_tc2.png").stat().st_size > 0
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 2 * 3  # train and test codes for tc2 at two t, and for ae
    mtimes = [p.stat().st_mtime_ns for p in cached]
    second = probe.main(args)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").iterdir())] == mtimes  # read, not rewritten
    for name in ("tc2", "ae"):
        for a, b in zip(first[name]["per_t"], second[name]["per_t"]):
            assert {k: v for k, v in a.items() if k != "probe_seconds"} == \
                   {k: v for k, v in b.items() if k != "probe_seconds"}


def test_score_run_and_mixed_data_are_one_line_errors(tmp_path, runs):
    with pytest.raises(SystemExit, match="no encoder"):
        probe.main(["--ckpt", runs["score"], "--out", str(tmp_path), "--device", "cpu"])
    with pytest.raises(SystemExit, match="no such checkpoint"):
        probe.main(["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path), "--device", "cpu"])


def test_participation_ratio():
    from linear_probe import participation_ratio
    torch.manual_seed(0)
    assert participation_ratio(torch.randn(20000, 8)) == pytest.approx(8, rel=0.02)       # isotropic: D
    line = torch.randn(5000, 1) * torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    assert participation_ratio(line) == pytest.approx(1, abs=1e-6)                        # one direction
    two = torch.cat([torch.randn(20000, 2), 1e-4 * torch.randn(20000, 30)], 1)            # near-copies of 2
    assert participation_ratio(two) == pytest.approx(2, rel=0.03)
    wide = torch.randn(40, 300, dtype=torch.float64) * torch.linspace(0.1, 3, 300)     # fewer codes than features
    eig = torch.linalg.eigvalsh(torch.cov(wide.T)).clamp(min=0)
    assert participation_ratio(wide) == pytest.approx((eig.sum() ** 2 / eig.square().sum()).item(), rel=1e-9)


@pytest.mark.parametrize("n", [40, 900])  # fewer codes than features (the SVD), and more (the covariance)
def test_whitening_gives_identity_covariance_on_the_training_codes_alone(n):
    from linear_probe import whitening
    g = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(120, 120, generator=g, dtype=torch.float64))[0]
    train = torch.randn(n, 120, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 120) @ rotation + 3
    mean, w = whitening(train)
    white = (train - mean) @ w
    assert w.shape == (120, min(n - 1, 120))  # the centred codes span n - 1 directions
    assert torch.allclose(white.mean(0), torch.zeros(w.shape[1], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(torch.cov(white.T), torch.eye(w.shape[1], dtype=torch.float64), atol=1e-6)


def test_distance_along_t_is_zero_for_an_encoder_that_ignores_t():
    ref = torch.randn(500, 16) * 3
    assert probe.distance_along_t(ref, ref) == 0
    shift = (ref - ref.mean(0)).norm(dim=1).mean()  # moving every code by one spread reads 1
    assert probe.distance_along_t(ref + shift * torch.eye(16)[0], ref) == pytest.approx(1, rel=1e-5)
    from encoder import Encoder
    from codes import encode_images
    torch.manual_seed(0)
    encoder = Encoder(ch=8, ch_mult=(1, 2), num_res_blocks=1, latent_dim=16, time_cond=True).eval()
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    cpu = torch.device("cpu")
    codes = lambda t: encode_images(encoder, images, t, cpu)
    films = [block for block in encoder.modules() if getattr(block, "film", None) is not None]
    assert films and probe.distance_along_t(codes(0.0), codes(1.0)) == 0  # each block's last conv starts at zero
    for block in films:  # as after some training: the FiLM-modulated path reaches the code
        torch.nn.init.normal_(block.conv2.weight, std=0.1)
    assert probe.distance_along_t(codes(0.0), codes(1.0)) > 0.05
    for block in films:
        torch.nn.init.zeros_(block.film.weight), torch.nn.init.zeros_(block.film.bias)
    assert probe.distance_along_t(codes(0.0), codes(1.0)) < 1e-6  # no path from t: the same code at every t
