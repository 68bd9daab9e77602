"""The samplers against a score known in closed form, samplers.py copied on its own, and every
sample.py mode end to end."""
import json

import pytest
import torch

import sample
from sde import VESDE

sde = VESDE(0.01, 50.0)
MU, S = 1.5, 0.4  # data N(MU, S^2 I): p_t = N(MU, (S^2 + std(t)^2) I), its score is exact


def gaussian_score(x, t):
    return -(x - MU) / (S ** 2 + sde.marginal_std(t) ** 2)[:, None]


def test_the_samplers_work_copied_beside_sde_py_alone(tmp_path):
    """samplers.py and sde.py in an empty folder, no other file of this project importable."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    for name in ("samplers.py", "sde.py"):
        shutil.copy(root / name, tmp_path / name)
    code = ("import torch; from sde import VESDE; from samplers import pc_sample, heun_sample\n"
            "sde = VESDE(); torch.manual_seed(0)\n"
            "score = lambda x, t: -(x - 1.5) / (0.16 + sde.marginal_std(t) ** 2)[:, None]\n"
            "for x, _ in (pc_sample(sde, score, (2000, 4), steps=200), heun_sample(sde, score, (2000, 4), steps=30)):\n"
            "    assert abs(x.mean().item() - 1.5) < 0.05 and abs(x.var().item() / 0.16 - 1) < 0.15\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the folder itself is importable
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "euler_maruyama", "probability_flow"])
@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_pc_sampler_recovers_gaussian(predictor, corrector_steps):
    torch.manual_seed(0)
    x, nfe = sample.pc_sample(sde, gaussian_score, (4000, 4), steps=400, predictor=predictor,
                              corrector_steps=corrector_steps)
    assert nfe == 400 * (1 + corrector_steps)
    # tolerance: sampling error of 16000 numbers plus the discretisation bias of 400 steps
    assert abs(x.mean().item() - MU) < 0.03
    assert abs(x.var().item() / S ** 2 - 1) < 0.08


@pytest.mark.parametrize("churn", [0.0, 10.0])
def test_heun_recovers_gaussian_in_few_steps(churn):
    torch.manual_seed(0)
    x, nfe = sample.heun_sample(sde, gaussian_score, (8000, 4), steps=40, churn=churn)
    assert nfe == 79  # 2N - 1: the last step, to std = 0, is Euler
    # tolerance: sampling error of 32000 numbers, the prior's neglected data mean (1.5 * 0.4 / 50), and
    # the discretisation of 40 steps (at 18 steps the variance is still 10% high on this Gaussian)
    assert abs(x.mean().item() - MU) < 0.03
    assert abs(x.var().item() / S ** 2 - 1) < 0.07


def test_heun_churn_stays_in_its_window_and_never_beyond_t_1():
    """EDM's churn raises std by 1 + gamma only where S_tmin <= std <= S_tmax, and never asks the net
    about a std beyond std(t = 1): the first step (std = 50) is not churned past it."""
    def levels(**churn):
        seen = []

        def recording_score(x, t):
            seen.append(t.max().item())
            return gaussian_score(x, t)
        torch.manual_seed(0)
        sample.heun_sample(sde, recording_score, (10, 4), steps=10, **churn)
        return seen, {round(sde.marginal_std(torch.tensor(t)).item(), 5) for t in seen}

    seen, churned = levels(churn=40.0, s_tmin=0.05, s_tmax=5.0)  # gamma = min(40 / 10, sqrt 2 - 1)
    _, plain = levels()
    assert max(seen) <= 1.0 + 1e-6
    raised = churned - plain
    in_window = [s for s in plain if 0.05 <= s <= 5.0]
    assert len(raised) == len(in_window) > 0
    assert sorted(raised) == pytest.approx(sorted(s * 2 ** 0.5 for s in in_window), rel=1e-3)


def test_heun_is_second_order():
    """Deterministic: the error against a fine run falls ~4x when the steps double (Euler: ~2x)."""
    x_init = sde.prior_sampling((2000, 4), generator=torch.Generator().manual_seed(0))
    run = lambda n: sample.heun_sample(sde, gaussian_score, x_init.shape, steps=n, x_init=x_init.clone())[0]
    ref = run(400)
    e1, e2 = (run(10) - ref).abs().mean().item(), (run(20) - ref).abs().mean().item()
    assert e1 / e2 > 3


def test_t_init_starts_from_smaller_prior():
    torch.manual_seed(0)
    seen = []

    def recording_score(x, t):
        seen.append((t[0].item(), x.std().item()))
        return gaussian_score(x, t)

    x, nfe = sample.pc_sample(sde, recording_score, (4000, 4), steps=200, t_init=0.6, corrector_steps=1)
    std_06 = sde.marginal_std(torch.tensor(0.6)).item()  # 1.66, not sigma_max = 50
    assert seen[0][0] == pytest.approx(0.6) and seen[0][1] == pytest.approx(std_06, rel=0.03)
    assert nfe == 400 and abs(x.mean().item() - MU) < 0.05 and abs(x.var().item() / S ** 2 - 1) < 0.1


def test_sampler_is_deterministic_under_a_seed():
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(sample.pc_sample(sde, gaussian_score, (5, 4), steps=20)[0])
    assert torch.equal(*runs)


@pytest.fixture(scope="module")
def runs(tiny_run):
    return {name: tiny_run(name) for name in ('vdrl2', 'tc', 'score')}


@pytest.mark.parametrize("mode,run", [("grid", "vdrl2"), ("recon", "tc"), ("prior", "vdrl2"), ("swap", "tc"),
                                      ("diversity", "vdrl2"), ("uncond", "score")])
def test_every_mode_end_to_end(tmp_path, runs, mode, run):
    sample.main(["--ckpt", str(runs[run]), "--mode", mode, "--steps", "3", "--n", "3", "--out", str(tmp_path),
                 "--device", "cpu"])
    info = json.loads((tmp_path / f"{mode}.json").read_text())
    assert info["mode"] == mode and info["nfe_per_image"] == 6 and (tmp_path / f"{mode}.png").stat().st_size > 0


def test_diversity_is_the_pixel_std_among_one_codes_samples(tmp_path, runs):
    sample.main(["--ckpt", str(runs["vdrl2"]), "--mode", "recon", "--n", "2", "--per-code", "3", "--steps", "3",
                 "--save-tensor", "--out", str(tmp_path), "--device", "cpu"])
    x = torch.load(tmp_path / "recon.pt")["samples"].clamp(0, 1)  # sources' samples in order: 3 of code 0, 3 of 1
    by_hand = [x[3 * i: 3 * i + 3].std(0).mean().item() for i in range(2)]  # per pixel over samples, then the mean
    assert json.loads((tmp_path / "recon.json").read_text())["per_code_pixel_std"] == pytest.approx(sum(by_hand) / 2)


def test_nn_eval_reports_both_pairings(tmp_path, runs):
    sample.main(["--ckpt", str(runs["tc"]), "--mode", "recon", "--nn-eval", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path), "--device", "cpu", "--corrector-steps", "0"])
    info = json.loads((tmp_path / "recon.json").read_text())
    assert info["nn_candidates"] == 100
    for key in ("nn_is_source", "nn_same_class"):  # fractions of the 100 candidates
        for pairing in ("own_code", "shuffled_codes"):
            assert info[f"{key}_{pairing}"] * 100 == pytest.approx(round(info[f"{key}_{pairing}"] * 100))
    assert info["nn_same_class_own_code"] >= info["nn_is_source_own_code"]  # its source has its class


def test_grid_spans_the_codes_unless_given_a_range(tmp_path, runs):
    import checkpoint
    import data
    score_net, encoder, sde, ckpt = checkpoint.load_run(runs["vdrl2"])
    images, _ = data.load_dataset("shapes", ckpt["args"]["data_dir"], train=False)
    codes = encoder(images[:2000].float() / 255)[0].detach()
    args = ["--ckpt", str(runs["vdrl2"]), "--mode", "grid", "--steps", "1", "--n", "2", "--out", str(tmp_path),
            "--device", "cpu", "--corrector-steps", "0"]
    sample.main(args)
    lo, hi = json.loads((tmp_path / "grid.json").read_text())["range"]
    for i in range(2):
        inside = ((codes[:, i] >= lo[i]) & (codes[:, i] <= hi[i])).float().mean().item()
        assert abs(inside - 0.96) < 0.01
    sample.main(args + ["--range", "3"])
    assert "range" not in json.loads((tmp_path / "grid.json").read_text())


@pytest.mark.parametrize("mode,run,msg", [("grid", "tc", "a 2-D code"), ("prior", "tc", "VDRL"),
                                          ("uncond", "vdrl2", "plain score model"), ("recon", "score", "encoder")])
def test_wrong_checkpoint_kind_is_one_line_error(tmp_path, runs, mode, run, msg):
    with pytest.raises(SystemExit, match=msg) as e:
        sample.main(["--ckpt", str(runs[run]), "--mode", mode, "--out", str(tmp_path), "--device", "cpu"])
    assert "\n" not in str(e.value)


def test_baseline_without_score_net_is_one_line_error(tmp_path, tiny_run):
    with pytest.raises(SystemExit, match="no score net"):
        sample.main(["--ckpt", tiny_run("ae"), "--mode", "recon", "--out", str(tmp_path), "--device", "cpu"])


def test_shuffled_codes_change_only_the_code(tmp_path, runs, monkeypatch):
    """--shuffle-codes conditions source i on another source's code and keeps source i's label: with the
    derangement replaced by the identity the samples are those of the sources' own codes."""
    def recon(name, *extra):
        sample.main(["--ckpt", str(runs["tc"]), "--mode", "recon", "--sampler", "heun", "--steps", "3", "--n", "4",
                     "--per-code", "2", "--save-tensor", "--out", str(tmp_path / name), "--device", "cpu", *extra])
        return torch.load(tmp_path / name / "recon.pt")
    own, shuffled = recon("own"), recon("shuffled", "--shuffle-codes")
    assert torch.equal(own["labels"], shuffled["labels"]) and not torch.allclose(own["samples"], shuffled["samples"])
    assert json.loads((tmp_path / "shuffled" / "recon.json").read_text())["shuffle_codes"] is True
    monkeypatch.setattr(sample, "derangement", lambda n, device: torch.arange(n, device=device))
    assert torch.equal(recon("identity", "--shuffle-codes")["samples"], own["samples"])
    with pytest.raises(SystemExit):
        sample.main(["--ckpt", str(runs["tc"]), "--mode", "swap", "--shuffle-codes", "--out", str(tmp_path)])


def test_heun_sampler_in_the_stage(tmp_path, runs):
    sample.main(["--ckpt", str(runs["tc"]), "--mode", "swap", "--sampler", "heun", "--steps", "3", "--n", "2",
                 "--out", str(tmp_path), "--device", "cpu"])
    info = json.loads((tmp_path / "swap.json").read_text())
    assert info["sampler"] == "heun" and info["nfe_per_image"] == 5


@pytest.mark.parametrize("precond", ["paper", "edm"])
def test_sampler_through_either_parametrisation(precond):
    """The exact Gaussian score passed through a network output F and back (unet.precondition), in
    float32 down to t = 1e-5 (std 1.3e-4): the sampler still recovers the data."""
    from unet import network_target, precondition

    def score_via_f(x, t):
        std = sde.marginal_std(t)[:, None]
        f = network_target(gaussian_score(x, t), x, std, precond, sigma_data=0.35).float()
        return precondition(f, x, std, precond, sigma_data=0.35)

    torch.manual_seed(0)
    x, _ = sample.pc_sample(sde, score_via_f, (4000, 4), steps=400, corrector_steps=1)
    assert abs(x.mean().item() - MU) < 0.03 and abs(x.var().item() / S ** 2 - 1) < 0.08
