"""semisup.py: the graph, conjugate gradients and label propagation against known answers; the stage
end to end on a tiny run."""
import json

import pytest
import torch

import semisup


def test_knn_graph_matches_brute_force():
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    idx, sim = semisup.knn_graph(x, k=7, chunk=64)                      # several chunks
    f = torch.nn.functional.normalize(x, dim=1)
    full = f @ f.T
    full.fill_diagonal_(-float("inf"))
    expected = full.topk(7, dim=1)
    assert torch.equal(idx, expected.indices)
    assert torch.allclose(sim, expected.values, atol=1e-6)
    assert not (idx == torch.arange(300)[:, None]).any()               # a point is not its own neighbour


def test_conjugate_gradient_solves_spd_systems():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(20, 20, generator=g, dtype=torch.float64)
    A = m @ m.T + 20 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, 3, generator=g, dtype=torch.float64)
    x = semisup.conjugate_gradient(lambda v: A @ v, b, iters=50, tol=1e-12)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-8)


def test_label_propagation_two_clusters_one_label_each():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[5.0, 0.0, 1.0], [-5.0, 0.0, 1.0]])        # far apart in angle, too
    truth = torch.arange(2).repeat_interleave(200)
    x = centres[truth] + 0.5 * torch.randn(400, 3, generator=g)
    labeled = torch.tensor([0, 200])                                     # one label per cluster
    pseudo, certainty = semisup.propagate_labels(x, labeled, truth[labeled], n_classes=2, k=10)
    assert torch.equal(pseudo, truth)
    assert (certainty > 0).all() and (certainty <= 1 + 1e-6).all()


def test_balanced_subset_and_augment():
    labels = torch.arange(10).repeat(50)
    picked = semisup.balanced_subset(labels, 100, seed=3)
    assert len(picked.unique()) == 100 and torch.equal(torch.bincount(labels[picked]), torch.full((10,), 10))
    assert torch.equal(picked, semisup.balanced_subset(labels, 100, seed=3))
    x = torch.rand(6, 1, 28, 28)
    y = semisup.augment(x, pad=2, flip=True)
    assert y.shape == x.shape
    assert torch.equal(semisup.augment(x, pad=0, flip=False), x)        # no shift, no flip: the identity


def test_without_a_run_the_encoder_is_train_drl_s(tmp_path):
    """--init random --dataset NAME builds the encoder train_drl.py's cpu preset builds (one builder)."""
    import train_flags
    args = semisup.parse_args(["--init", "random", "--dataset", "shapes", "--device", "cpu"])
    _, config, _, _, _ = semisup.build_encoder(args)
    run = train_flags.net_config(train_flags.parse_args(["--dataset", "shapes"]), 0.3)["encoder"]
    assert {k: run[k] for k in config} == config and config["ch_mult"] == [1, 2] and config["num_res_blocks"] == 1


def test_stage_end_to_end(tmp_path, tiny_run):
    common = ["--ckpt", tiny_run("tc"), "--num-labeled", "20", "--epochs", "2", "--warmup-epochs", "1",
              "--max-train", "300", "--max-test", "100", "--device", "cpu", "--batch-size", "64"]
    result = semisup.main(common + ["--init", "drl", "--mixup", "--check-t", "--t-grid", "0.2,0.8", "--check-epochs", "1",
                                    "--out", str(tmp_path / "drl")])
    assert result["num_labeled"] == 20 and result["unlabeled"] == 280
    assert set(result["t_check"]) == {0.2, 0.8} and 0 < result["t"] < 1
    rows = [json.loads(line) for line in (tmp_path / "drl" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warm-up", "pseudo", "pseudo"] and "pseudo_label_acc" in rows[1]
    assert result["test_acc"] == rows[-1]["test_acc"]  # the result is the last epoch's test accuracy
    ckpt = torch.load(tmp_path / "drl" / "classifier.pt", weights_only=True)
    encoder = semisup.Encoder(**ckpt["encoder_config"])
    model = semisup.Classifier(encoder, ckpt["n_classes"])
    model.load_state_dict(ckpt["classifier"])                           # the classifier rebuilds from its dict
    sup = semisup.main(common + ["--init", "random", "--supervised-only", "--out", str(tmp_path / "sup")])
    assert sup["supervised_only"] and sup["init"] == "random"
    with pytest.raises(SystemExit, match="no encoder"):
        semisup.main(["--ckpt", tiny_run("score"), "--out", str(tmp_path / "x"), "--device", "cpu"])
