"""trajectory_clf.py: models that must combine two points of a trajectory, MINE against a closed form,
attention weights, and the stage end to end on a tiny time-conditioned run."""
import json
import math

import pytest
import torch

import trajectory_clf as tc

TS = [k / 10 for k in range(11)]


def xor_trajectories(n, seed, dim=4):
    """Noise trajectories (n, 11, dim) whose label is the XOR of the signs of coordinate 0 at t = 0.2
    and at t = 0.8: each point alone says nothing about the label."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(TS), dim, generator=g)
    a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    x[:, 2, 0] = 2 * (2 * a - 1) + 0.3 * x[:, 2, 0]
    x[:, 8, 0] = 2 * (2 * b - 1) + 0.3 * x[:, 8, 0]
    return x, a ^ b


@pytest.fixture(scope="module")
def xor_data():
    x_train, y_train = xor_trajectories(2000, seed=0)
    x_val, y_val = xor_trajectories(500, seed=1)
    x_test, y_test = xor_trajectories(1000, seed=2)
    return x_train, y_train, x_val, y_val, x_test, y_test


def test_single_points_fail_where_trajectory_models_succeed(xor_data):
    single = tc.compare(xor_data, TS, lrs=(3e-3,), seeds=1, epochs=10, models=["mlp@2", "mlp@5", "mlp@8"], log=None)
    assert all(abs(r["test_mean"] - 0.5) < 0.07 for r in single)  # chance
    gru, = tc.compare(xor_data, TS, lrs=(1e-2,), seeds=1, epochs=8, models=["gru"], log=None)
    tsf, = tc.compare(xor_data, TS, lrs=(1e-3,), seeds=1, epochs=15, models=["transformer"], log=None)
    assert gru["test_mean"] > 0.95 and tsf["test_mean"] > 0.95
    attention = torch.tensor(tsf["attention_mean"])
    assert attention.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert attention[2] + attention[8] > 0.4  # uniform attention would give 2/11 to the informative points


def test_attention_weights_sum_to_one_over_t():
    model = tc.TrajectoryTransformer(dim=5, n_classes=3, ts=TS)
    logits = model(torch.randn(7, len(TS), 5))
    assert logits.shape == (7, 3) and model.attention.shape == (7, len(TS))
    assert torch.allclose(model.attention.sum(1), torch.ones(7), atol=1e-6)
    assert (model.attention >= 0).all()


def test_mine_recovers_gaussian_mutual_information():
    # 2-D Gaussians with per-coordinate correlation rho: I(A; B) = -(d/2) log(1 - rho^2) = 1.02 nats
    g = torch.Generator().manual_seed(0)
    n, d, rho = 5000, 2, 0.8
    a = torch.randn(n, d, generator=g)
    b = rho * a + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)
    exact = -d / 2 * math.log(1 - rho ** 2)
    assert tc.mine(a, b, steps=400, lr=3e-3, hidden=64) == pytest.approx(exact, abs=0.15)
    assert abs(tc.mine(a, torch.randn(n, d, generator=g), steps=400, lr=3e-3, hidden=64)) < 0.05


def test_stage_end_to_end(tmp_path, tiny_run):
    args = ["--ckpt", tiny_run("tc"), "--out", str(tmp_path / "traj"), "--points", "3",
            "--epochs", "1", "--seeds", "2", "--lrs", "1e-3", "--max-train", "200", "--max-test", "100",
            "--device", "cpu", "--nmi", "--nmi-steps", "5", "--nmi-n", "100"]
    result = tc.main(args)
    assert [r["model"] for r in result["models"]] == ["mlp@0", "mlp@1", "mlp@2", "concat", "gru", "transformer"]
    assert result["ts"] == [0.0, 0.5, 1.0] and len(result["nmi"]) == 3
    saved = json.loads((tmp_path / "traj" / "trajectory.json").read_text())
    assert saved["train_images"] == 180 and saved["val_images"] == 20 and saved["test_images"] == 100
    for name in ("accuracy.png", "attention.png", "nmi.png"):
        assert (tmp_path / "traj" / name).stat().st_size > 0
    assert len(list((tmp_path / "traj" / "cache").iterdir())) == 2 * 3  # train and test codes at 3 t
    with pytest.raises(SystemExit, match="a static encoder.*drop --nmi"):
        tc.main(["--ckpt", tiny_run("drl"), "--out", str(tmp_path / "x"), "--device", "cpu", "--nmi"])


def test_a_static_code_gets_the_same_mlp_for_comparison(tmp_path, tiny_run):
    """The AE's (or a static DRL) code: one point, the MLP alone, same split and seeds as a trajectory."""
    result = tc.main(["--ckpt", tiny_run("ae"), "--out", str(tmp_path / "ae"), "--epochs", "1", "--seeds", "1",
                      "--lrs", "1e-3", "--max-train", "200", "--max-test", "100", "--device", "cpu"])
    assert [r["model"] for r in result["models"]] == ["mlp@0"] and result["time_cond"] is False
    assert 0 <= result["models"][0]["test_mean"] <= 1
