"""train_drl.py end to end on `shapes`: checkpoint round trip, resume, and clear errors."""
import json

import pytest
import torch

import data
import train_drl
from checkpoint import CheckpointError, load_run
from data import load_dataset

TINY = ["--dataset", "shapes", "--preset", "cpu", "--ch", "8", "--batch-size", "8", "--eval-n", "16",
        "--log-every", "2", "--warmup", "2", "--device", "cpu", "--probe-n", "0"]


def run(tmp_path, name, *extra):
    out = tmp_path / name
    train_drl.main(TINY + ["--out", str(out), *extra])
    return out


@pytest.mark.parametrize("objective,extra", [("drl", []), ("vdrl", ["--latent-dim", "2"]),
                                             ("drl", ["--time-cond", "--t-sampling", "uniform"]),
                                             ("drl", ["--preset", "paper"]), ("score", [])])
def test_end_to_end_and_checkpoint_round_trip(tmp_path, objective, extra):
    out = run(tmp_path, objective, "--objective", objective, "--steps", "4", "--save-every", "4", *extra)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # plain tensors and primitives only
    assert ckpt["step"] == 4 and ckpt["kind"] == "drl_train"
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and "eval_loss" in rows[-1]
    assert json.loads((out / "config.json").read_text())["args"]["objective"] == objective

    score_net, encoder, sde, _ = load_run(out / "ckpt.pt")
    assert (encoder is None) == (objective == "score")
    for k, v in score_net.state_dict().items():
        assert torch.equal(v, ckpt["ema_score_net"][k])
    for net in ("score_net", "encoder") if objective != "score" else ("score_net",):  # both were trained
        assert not all(torch.equal(ckpt["ema_" + net][k], v) for k, v in ckpt[net].items())
    x = torch.rand(2, 1, 28, 28)
    t = torch.full((2,), 0.5)
    z = encoder(x, t)[0] if encoder is not None else None
    assert score_net(x, t, z).shape == x.shape


def test_resume_continues_exactly(tmp_path):
    """Bit-exact with the probe on: probing at a save must not draw from the training RNG."""
    probe = ["--probe-n", "100"]
    straight = run(tmp_path, "straight", "--steps", "6", "--save-every", "3", *probe)
    resumed = run(tmp_path, "resumed", "--steps", "3", "--save-every", "3", *probe)
    run(tmp_path, "resumed", "--steps", "6", "--save-every", "3", *probe)
    a = torch.load(straight / "ckpt.pt", weights_only=True)
    b = torch.load(resumed / "ckpt.pt", weights_only=True)
    assert b["step"] == 6
    for key in ("score_net", "encoder", "ema_score_net", "ema_encoder"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


def test_resume_with_other_networks_is_refused(tmp_path):
    out = run(tmp_path, "r", "--steps", "2", "--save-every", "2")
    for other, says in ((["--ch", "16"], "the networks differ"), (["--objective", "vdrl"], "--objective vdrl"),
                        (["--t-sampling", "uniform"], r"--t-sampling uniform \(saved: fixed\)")):
        with pytest.raises(SystemExit, match="holds another run.*" + says):
            train_drl.main(TINY + ["--out", str(out), "--steps", "4", *other])


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    out = run(tmp_path, "nan", "--steps", "2", "--save-every", "2")
    before = (out / "ckpt.pt").read_bytes()
    import sde
    real = sde.dsm_loss
    monkeypatch.setattr(sde, "dsm_loss", lambda *a: real(*a) * float("nan"))
    with pytest.raises(SystemExit, match="the loss became nan.*left intact"):
        run(tmp_path, "nan", "--steps", "6", "--save-every", "2")
    assert (out / "ckpt.pt").read_bytes() == before


def test_missing_data_set_gives_one_line_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(SystemExit) as e:
        train_drl.main(["--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "--dataset shapes" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg and "dataset-fashion-mnist" in msg


def write_idx(folder, images, labels, train=True):
    """MNIST-format IDX files, gzipped, as the data set's own files are."""
    import gzip
    import struct
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in zip(data.IDX_FILES[train], (images, labels)):
        header = struct.pack(">HBB", 0, 8, arr.dim()) + struct.pack(">" + "I" * arr.dim(), *arr.shape)
        with gzip.open(folder / (stem + ".gz"), "wb") as f:
            f.write(header + arr.numpy().tobytes())


def test_idx_folder_is_read(tmp_path):
    """MNIST-format IDX files (here gzipped) are read directly, no torchvision needed."""
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    labels = torch.arange(5, dtype=torch.uint8)
    write_idx(tmp_path, images, labels)
    x, y = load_dataset("fashion_mnist", str(tmp_path), train=True)
    assert x.shape == (5, 1, 28, 28) and torch.equal(x[:, 0], images) and torch.equal(y, labels.long())


def test_a_data_dir_given_is_the_only_place_looked_in(tmp_path, monkeypatch):
    """The system's copy is the fallback of the default --data-dir only; a folder the user names that
    holds no data set is an error naming where it looked, and the first line says which folder was used."""
    import torchvision
    system = tmp_path / "system"
    write_idx(system, torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))
    monkeypatch.setitem(data.SYSTEM_IDX_DIRS, "fashion_mnist", [str(system)])
    monkeypatch.chdir(tmp_path)  # ./data holds nothing
    assert len(load_dataset("fashion_mnist", None)[0]) == 3 and data.data_source("fashion_mnist") == str(system)

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(data.DataError, match="nonexistent") as e:
        load_dataset("fashion_mnist", str(tmp_path / "nonexistent"))
    assert str(system) not in str(e.value)


def test_shapes_factors():
    images, label, width = data.make_shapes(64, seed=3)
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8
    assert set(label.tolist()) == {0, 1, 2, 3} and set(width.tolist()) == {1, 2, 3}
    ink = images.float().flatten(1).sum(1)
    for shape in range(4):  # the fine factor is visible: thicker strokes, more ink
        rows = label == shape
        assert ink[rows & (width == 3)].mean() > 1.5 * ink[rows & (width == 1)].mean()


def test_load_run_rejects_wrong_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_run(tmp_path / "nothing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a train_drl.py checkpoint"):
        load_run(tmp_path / "other.pt")
    torch.save({"kind": "drl_train", "version": 2}, tmp_path / "old.pt")  # written before the U-Net took log sigma
    with pytest.raises(CheckpointError, match=r"older train_drl.py \(checkpoint version 2, this code reads 3\)"):
        load_run(tmp_path / "old.pt")


def test_benchmark_prints_images_per_second(capsys):
    train_drl.main(TINY + ["--benchmark", "2"])
    assert "images/s" in capsys.readouterr().out


@pytest.mark.parametrize("cost,says", [(lambda batch: 0.02, "launch-bound"),
                                       (lambda batch: 0.0025 * batch, "work-bound")])
def test_benchmark_says_what_bounds_the_step(monkeypatch, capsys, cost, says):
    """A step whose time does not grow with the batch is launch-bound; one that doubles with it is not.
    The steps' times are injected through a fake clock: the verdict never depends on this machine's load."""
    import speed
    clock = [0.0]
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(train_drl.Training, "train_step",
                        lambda self, x0: clock.__setitem__(0, clock[0] + cost(len(x0))))
    train_drl.main(TINY + ["--benchmark", "3"])
    out = capsys.readouterr().out
    assert f"bound: {says}" in out
    fixed_ms = {"launch-bound": 20.0, "work-bound": 0.0}[says]  # the intercept of the injected line
    assert f"so {fixed_ms:.1f} ms fixed" in out


@pytest.mark.parametrize("step,half,says", [(0.020, 0.019, "launch"), (0.020, 0.010, "work"),
                                            (0.020, 0.016, "launch"), (0.020, 0.014, "work")])
def test_what_bounds_reads_the_intercept(step, half, says):
    from speed import what_bounds
    fixed, bound = what_bounds(step, half)
    assert fixed == pytest.approx(max(0.0, 2 * half - step)) and bound.startswith(says)


def test_cpu_step_benchmark_times_the_rows_it_is_given(capsys):
    import sys
    sys.path.insert(0, "benchmarks")
    import cpu_step
    cpu_step.main(["--threads", "1", "--steps", "1", "--rounds", "1", "--rows", "base=", "narrow=--ch 4"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| base") or
            line.startswith("| narrow")]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
    with pytest.raises(SystemExit):
        cpu_step.main(["--rows", "no-equals-sign"])


def test_peer_benchmark_gives_each_network_a_time_limit():
    """benchmarks/peer.py times every network in a child process: a result comes back, a hang or a
    failure comes back as None, within the limit, and the missing peer package is one line."""
    import math
    import sys
    import time
    sys.path.insert(0, "benchmarks")
    import peer
    assert peer.limited(math.sqrt, (4.0,), 60) == 2.0
    start = time.monotonic()
    assert peer.limited(time.sleep, (60,), 1) is None and time.monotonic() - start < 20
    assert peer.limited(math.sqrt, (-1.0,), 60) is None  # raises in the child
    try:
        import denoising_diffusion_pytorch  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="pip install denoising-diffusion-pytorch"):
            peer.main(["--steps", "1"])


@pytest.mark.parametrize("objective", ["ae", "vae", "simclr_gauss"])
def test_baselines_train_the_same_encoder_and_save_the_same_format(tmp_path, objective):
    out = run(tmp_path, objective, "--objective", objective, "--steps", "4", "--save-every", "4", "--latent-dim", "8")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    head = {"ae": "decoder", "vae": "decoder", "simclr_gauss": "projector"}[objective]
    assert ckpt["score_net"] is None and ckpt[head] is not None
    assert ckpt["config"]["encoder"]["probabilistic"] == (objective == "vae")
    assert train_drl.make_loss(train_drl.parse_args(TINY + ["--objective", objective]), 0.3).__dict__.get("kl") == (
        1.0 if objective in ("ae", "vae") else None)  # vae: the ELBO's KL weight, whatever --kl says (vdrl's)
    for net in ("encoder", head):  # both were trained
        assert not all(torch.equal(ckpt["ema_" + net][k], v) for k, v in ckpt[net].items())
    score_net, encoder, _, _ = load_run(out / "ckpt.pt")
    assert score_net is None and encoder(torch.rand(3, 1, 28, 28))[0].shape == (3, 8)
    assert json.loads((out / "stats.jsonl").read_text().splitlines()[-1])["eval_loss"] > 0


def test_time_cond_needs_a_diffusion_objective(tmp_path):
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        run(tmp_path, "x", "--objective", "ae", "--time-cond")


def test_the_cpu_presets_levers_train_end_to_end(tmp_path):
    out = run(tmp_path, "edm", "--steps", "4", "--save-every", "4", "--t-sampling", "lognormal", "--p-mean", "0.5",
              "--t-uniform-share", "0.3", "--no-mid-attn")
    score_net, encoder, _, ckpt = load_run(out / "ckpt.pt")
    assert score_net.precond == "edm" and score_net.net.latent_norm is not None and len(score_net.net.mid) == 2
    assert score_net.net.code_map.in_features == encoder.latent_dim == 256  # the code map reads z itself
    assert 0.05 < score_net.sigma_data < 0.5  # measured from the images, not EDM's 0.5 for [-1, 1] data
    assert ckpt["args"]["t_uniform_share"] == 0.3
    x, t = torch.rand(2, 1, 28, 28), torch.full((2,), 0.7)
    z = encoder(x)[0]
    assert not torch.allclose(score_net(x, t, z), score_net(x, t, z.flip(0)))  # the code steers the score


def test_an_older_checkpoint_is_refused_with_its_version(tmp_path):
    out = run(tmp_path, "old", "--steps", "2", "--save-every", "2")
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    saved["version"] = 2
    torch.save(saved, out / "ckpt.pt")
    with pytest.raises(SystemExit, match=r"^error: .*checkpoint version 2, this code reads 3\); train it again"):
        run(tmp_path, "old", "--steps", "3", "--save-every", "3")


@pytest.mark.parametrize("share,trains,encoder_learns", [(1.0, "score-net", False), (0.5, "score-net", True),
                                                          (1.0, "both", True)])
def test_the_uniform_share_can_train_the_score_net_alone(tmp_path, share, trains, encoder_learns):
    """--share-trains score-net: the loss of the uniform-t draws reaches the score net but not the encoder."""
    args = train_drl.parse_args(TINY + ["--t-uniform-share", str(share), "--share-trains", trains])
    tr = train_drl.Training(args, tmp_path, torch.device("cpu"))
    tr.train_step(tr.next_batch())  # past the zero-initialised output layer, which passes no gradient back
    tr.opt.zero_grad()
    loss, _ = tr.compute_loss(tr.nets, tr.next_batch())
    loss.backward()
    grad = lambda name: sum(p.grad.abs().sum().item() for p in tr.nets[name].parameters() if p.grad is not None)
    assert grad("score_net") > 0 and (grad("encoder") > 0) == encoder_learns


def test_enc_lr_mult_scales_the_encoders_steps_alone(tmp_path):
    """--enc-lr-mult: the encoder's Adam step is the multiple of the score net's; a run resumes with it."""
    args = train_drl.parse_args(TINY + ["--enc-lr-mult", "4", "--warmup", "0"])
    tr = train_drl.Training(args, tmp_path, torch.device("cpu"))
    tr.train_step(tr.next_batch())
    lr_of = {id(p): g["lr"] for g in tr.opt.param_groups for p in g["params"]}
    by_net = {k: lr_of[id(next(m.parameters()))] for k, m in tr.nets.items()}
    assert by_net["score_net"] == pytest.approx(args.lr) and by_net["encoder"] == pytest.approx(4 * args.lr)
    # Adam's first step moves every weight by about lr: the encoder's four times as far
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in tr.nets.items()}
    tr.train_step(tr.next_batch())
    moved = {k: max((p - b).abs().max().item() for p, b in zip(m.parameters(), before[k])) for k, m in tr.nets.items()}
    assert moved["encoder"] > 2.5 * args.lr and moved["score_net"] < 1.5 * args.lr
    out = run(tmp_path, "m", "--steps", "2", "--save-every", "2", "--enc-lr-mult", "4")
    run(tmp_path, "m", "--steps", "3", "--save-every", "3", "--enc-lr-mult", "4")
    assert torch.load(out / "ckpt.pt", weights_only=False)["step"] == 3
    with pytest.raises(SystemExit):  # resuming with another multiple would train another run
        run(tmp_path, "m", "--steps", "4", "--enc-lr-mult", "2")


def test_linear_warmup_then_constant():
    import types
    lr = lambda step: train_drl.Training.learning_rate(
        types.SimpleNamespace(args=types.SimpleNamespace(lr=1e-3, warmup=10), step=step))
    assert lr(0) == pytest.approx(1e-4) and lr(9) == pytest.approx(1e-3) and lr(5000) == 1e-3


def test_minutes_budget_stops_and_saves(tmp_path):
    out = run(tmp_path, "m", "--steps", "100000", "--save-every", "100000", "--minutes", "0.01")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert 0 < ckpt["step"] < 100000 and ckpt["train_seconds"] >= 0.6
    assert rows[-1]["step"] == ckpt["step"] and "eval_loss" in rows[-1]


def test_probe_curve_is_the_linear_probe_of_the_ema_encoder(tmp_path):
    from codes import encode_images
    from linear_probe import linear_probe, participation_ratio
    out = run(tmp_path, "p", "--steps", "4", "--save-every", "2", "--probe-n", "200")
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    curve = [r for r in rows if "probe_linear" in r]
    assert [r["step"] for r in curve] == [2, 4]
    _, encoder, _, _ = load_run(out / "ckpt.pt")
    images, labels = load_dataset("shapes", train=True)
    test_images, test_labels = load_dataset("shapes", train=False)
    train = encode_images(encoder, images[:200], None, torch.device("cpu"))
    test = encode_images(encoder, test_images[:200], None, torch.device("cpu"))
    assert curve[-1]["probe_linear"] == pytest.approx(linear_probe(train, labels[:200], test, test_labels[:200])[0])
    assert curve[-1]["probe_pr"] == pytest.approx(participation_ratio(test), rel=1e-4)


def test_sigint_saves_and_the_run_resumes_exactly(tmp_path, monkeypatch):
    import os
    import signal
    straight = run(tmp_path, "straight", "--steps", "6", "--save-every", "100")
    real_step = train_drl.Training.train_step

    def step_then_interrupt(self, x0):
        result = real_step(self, x0)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: finish this step, save, exit
        return result

    monkeypatch.setattr(train_drl.Training, "train_step", step_then_interrupt)
    inherited = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under nohup
    out = run(tmp_path, "stopped", "--steps", "6", "--save-every", "100")
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(train_drl.Training, "train_step", real_step)
    assert signal.getsignal(signal.SIGINT) is inherited  # the handler is put back
    run(tmp_path, "stopped", "--steps", "6", "--save-every", "100")
    a, b = (torch.load(p / "ckpt.pt", weights_only=True) for p in (straight, out))
    assert b["step"] == 6 and all(torch.equal(a["ema_encoder"][k], v) for k, v in b["ema_encoder"].items())
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicate rows after the resume


@pytest.mark.parametrize("where", ["after_progress_line", "during_eval", "during_save"])
def test_a_stop_saves_the_step_it_names_wherever_the_signal_lands(tmp_path, monkeypatch, capsys, where):
    """SIGINT in a run that logs every 2 steps and saves every 4: right after the progress line of
    step 2 is written (no save due), during the eval before the save of step 4, or in that save."""
    import os
    import signal
    target = {"after_progress_line": (train_drl, "write_row"), "during_eval": (train_drl.Training, "eval_loss"),
              "during_save": (train_drl.Training, "save")}[where]
    real = getattr(*target)
    sent = []

    at = 2 if where == "after_progress_line" else 4

    def interrupt(*a, **k):
        step = getattr(a[0], "step", None) if where != "after_progress_line" else a[1]["step"]
        if step == at and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(*target, interrupt)
    out = run(tmp_path, where, "--steps", "20", "--save-every", "4", "--log-every", "2")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("stopped at step")]
    assert sent and len(said) == 1
    named = int(said[0].split()[3].rstrip(";"))
    assert named in (at, at + 1) and torch.load(out / "ckpt.pt", weights_only=True)["step"] == named
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps[-1] == named


def test_config_json_agrees_with_the_checkpoint_after_a_failed_resume(tmp_path):
    out = run(tmp_path, "agree", "--steps", "2", "--save-every", "2")
    with pytest.raises(SystemExit, match="became"):
        run(tmp_path, "agree", "--steps", "100", "--save-every", "50", "--lr", "1e2", "--warmup", "1")
    saved = torch.load(out / "ckpt.pt", weights_only=True)["args"]
    assert json.loads((out / "config.json").read_text())["args"] == saved and saved["lr"] == 1e-3


def test_every_saved_step_has_its_stats_row_when_the_save_is_killed(tmp_path, monkeypatch):
    """A kill -9 in the middle of a save (here: the save raises): the row of that step was written
    first, and the resumed run drops it with the lost checkpoint, so rows and saves agree."""
    out = tmp_path / "killed"
    real = train_drl.Training.save

    def die_at_step_4(self):
        if self.step == 4:
            raise KeyboardInterrupt("killed")
        real(self)

    monkeypatch.setattr(train_drl.Training, "save", die_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "killed", "--steps", "6", "--save-every", "2")
    rows = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert rows == [2, 4] and torch.load(out / "ckpt.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(train_drl.Training, "save", real)
    run(tmp_path, "killed", "--steps", "6", "--save-every", "2")
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6] and all("eval_loss" in r for r in rows)


def test_the_preset_layer_norms_only_codes_it_does_not_erase():
    """A layer norm maps a 2-d code to ±(1, -1): the score net layer-normalises codes of 8 dimensions or more."""
    from unet import UNet
    norm = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, latent_dim=2, latent_norm=True).latent_norm
    codes = torch.tensor([[3.0, -1.0], [0.5, 2.0], [-4.0, 7.0]])
    assert torch.allclose(norm(codes), torch.tensor([[1.0, -1.0], [-1.0, 1.0], [-1.0, 1.0]]), atol=1e-3)  # the reason
    for dim, on in ((2, False), (7, False), (8, True), (128, True)):
        args = train_drl.parse_args(TINY + ["--latent-dim", str(dim)])
        assert train_drl.net_config(args, 0.3)["score_net"]["latent_norm"] is on


def test_help_shows_every_default_and_what_the_presets_set(capsys):
    with pytest.raises(SystemExit):
        train_drl.parse_args(["--preset", "paper", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: mnist)" in text and "(default: 0.0002)" in text and "(default: 80000)" in text
    assert "cpu: --ch 8, --enc-ch 16" in text and "paper: --ch 32" in text
    assert text.split("options:")[0].count("Train a DRL model") == 1  # the stage's description, not the flags module's


def test_blow_up_after_a_good_save_keeps_the_good_checkpoint(tmp_path):
    """A run that diverges: lr 1e2 blows the weights up within a few steps."""
    out = tmp_path / "blow"
    with pytest.raises(SystemExit, match="became nan|became inf") as e:
        train_drl.main(TINY + ["--out", str(out), "--warmup", "1", "--save-every", "2", "--lr", "1e2",
                               "--steps", "100"])
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists():
        assert "left intact" in str(e.value)
        ckpt = torch.load(ckpt_path, weights_only=True)
        assert all(torch.isfinite(v).all() for k in ("score_net", "encoder", "ema_score_net", "ema_encoder")
                   for v in ckpt[k].values())
        try:  # the run is not lost: it resumes at the default lr (weights after lr 1e2 may blow up again)
            run(tmp_path, "blow", "--steps", str(ckpt["step"] + 2))
        except SystemExit as again:
            assert "left intact" in str(again)
        after = torch.load(ckpt_path, weights_only=True)
        assert after["step"] >= ckpt["step"] and all(torch.isfinite(v).all() for v in after["encoder"].values())
    else:
        assert "no checkpoint was written" in str(e.value)


@pytest.mark.parametrize("flags,says", [
    (["--steps", "-5"], "--steps must be a positive"), (["--batch-size", "0"], "--batch-size must be a positive"),
    (["--t-fixed", "-1"], "--t-fixed must lie in"),
    (["--t-sampling", "fixed", "--t-fixed", "2"], "--t-fixed must lie in"),
    (["--t-fixed", "0"], "--t-fixed must lie in"), (["--latent-dim", "0"], "--latent-dim must be a positive"),
    (["--lr", "nan"], "--lr must be a positive"), (["--save-every", "0"], "--save-every must be a positive"),
    (["--eval-n", "0"], "--eval-n must be a positive"), (["--sigma-min", "0"], "--sigma-min must be a positive"),
    (["--ema", "1"], "--ema must lie in (0, 1)"),
    (["--ch", "0"], "--ch must be a positive"), (["--minutes", "-1"], "--minutes must be a positive"),
    (["--ch-mult", "1,x"], "--ch-mult must be positive whole numbers"),
    (["--t-uniform-share", "1.5"], "--t-uniform-share must lie in [0, 1]"), (["--steps", "x"], "invalid int value")])
def test_bad_numbers_get_one_argparse_line(tmp_path, capsys, flags, says):
    with pytest.raises(SystemExit) as e:
        train_drl.main(TINY + ["--out", str(tmp_path / "x"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and says in err[0] and not (tmp_path / "x").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    lock = train_drl.RunFolderLock(tmp_path / "busy")
    (tmp_path / "busy" / "ckpt.pt.999999999.drl-tmp").write_text("stale")  # of a process that no longer runs
    with pytest.raises(SystemExit, match="in use by another train_drl.py run"):
        run(tmp_path, "busy", "--steps", "2")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["ckpt.pt.999999999.drl-tmp"]  # no lock file, no rows
    lock.release()  # as when the first run's process ends, however it ends
    run(tmp_path, "busy", "--steps", "2")
    assert not list((tmp_path / "busy").glob("*.drl-tmp"))


def test_progress_by_time_with_eta_and_a_cpu_hours_note(tmp_path, monkeypatch, capsys):
    """A clock that jumps 100 s per reading: every step is 'slow', so lines come by time (not by
    --log-every), saves come by SAVE_MINUTES, and the estimate of hours is said once."""
    import os
    import signal
    import types
    clock = [0.0]

    def tick():
        clock[0] += 100.0
        return clock[0]

    monkeypatch.setattr(train_drl, "time", types.SimpleNamespace(time=tick, perf_counter=tick))
    monkeypatch.setattr(train_drl, "SAVE_MINUTES", 1)
    real_step = train_drl.Training.train_step

    def step_then_interrupt(self, x0):  # a run of hours, stopped by Ctrl-C after 3 steps
        result = real_step(self, x0)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train_drl.Training, "train_step", step_then_interrupt)
    out = run(tmp_path, "slow", "--steps", "1000", "--log-every", "1000", "--save-every", "1000")
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("eval_loss" in r for r in rows)  # saved by time
    assert printed.count("ETA") == 3 and printed.count("needs about") == 1 and "--preset cpu" in printed


@pytest.mark.parametrize("flags", [["--weighting", "paper"], ["--t-fixed", "0.6"], ["--l1", "0.5"],
                                   ["--t-uniform-share", "0.5"], ["--share-trains", "both"]])
def test_every_flag_of_the_recipe_reaches_the_loss(tmp_path, flags):
    """The same nets, batch and seed: each flag of the recipe changes the loss, its regulariser or its
    gradients that train_drl.py computes, or it would be silently ignored (mutants of make_loss)."""
    results = []
    for extra in ([], flags):
        args = train_drl.parse_args(TINY + ["--ch", "4", *extra])
        torch.manual_seed(0)
        tr = train_drl.Training(args, tmp_path, torch.device("cpu"))
        tr.train_step(tr.next_batch())  # past the zero-initialised output layer
        torch.manual_seed(1)
        loss, reg = tr.compute_loss(tr.nets, tr.next_batch())
        (loss + reg).backward()
        grad = sum(p.grad.abs().sum().item() for p in tr.nets["encoder"].parameters())
        results.append((loss.item(), reg.item(), grad))
    assert results[0] != results[1]


def test_ema_update_records_no_autograd_history():
    """The EMA copies stay plain leaves: an update under autograd would chain a node onto them every step."""
    args = train_drl.parse_args(TINY + ["--steps", "3"])
    tr = train_drl.Training(args, "unused", torch.device("cpu"))
    for _ in range(3):
        tr.train_step(tr.next_batch())
    for ema in tr.emas.values():
        assert all(p.grad_fn is None and not p.requires_grad for p in ema.parameters())


def test_the_cpu_preset_codes_at_t_0_4_and_the_sampler_notes_one_level(tmp_path, capsys):
    """The cpu preset trains the code at t = 0.4 and the score net also at uniform t (30%, score net only);
    with no uniform share the score net learns one level, and sample.py says its samples are not images."""
    import sample
    cpu = train_drl.parse_args(["--preset", "cpu"])
    assert (cpu.t_sampling, cpu.t_fixed, cpu.t_uniform_share, cpu.share_trains) == ("fixed", 0.4, 0.3, "score-net")
    out = tmp_path / "one-level"
    train_drl.main(TINY + ["--t-uniform-share", "0", "--steps", "2", "--save-every", "2", "--out", str(out)])
    sample.main(["--ckpt", str(out / "ckpt.pt"), "--mode", "recon", "--steps", "1", "--n", "1", "--device", "cpu",
                 "--corrector-steps", "0", "--out", str(tmp_path / "samples")])
    assert "one noise level (t = 0.4" in capsys.readouterr().out


def test_the_cifar_preset_is_the_icml_papers_cifar_set_up():
    """Three resolutions of 32 channels, two residual blocks each, 90k iterations; the papers' recipe."""
    args = train_drl.parse_args(["--preset", "cifar", "--dataset", "cifar10"])
    assert (args.ch, args.ch_mult, args.num_res_blocks, args.steps) == (32, "1,1,1", 2, 90_000)
    assert (args.precond, args.weighting, args.t_sampling, args.lr) == ("paper", "paper", "uniform", 2e-4)
    from checkpoint import build_nets
    score_net = build_nets(train_drl.net_config(args, 0.25))["score_net"]
    x = torch.rand(2, 3, 32, 32)
    assert score_net(x, torch.rand(2), torch.randn(2, args.latent_dim)).shape == x.shape
    assert len(score_net.net.down) == 3 * args.num_res_blocks + 2  # two downsamplings: 32, 16, 8


def test_classes_keep_those_images_and_renumber_their_labels():
    from data import DataError, load_dataset
    images, labels = load_dataset("shapes", classes=[3, 1])
    all_images, all_labels = load_dataset("shapes")
    assert torch.equal(images, all_images[(all_labels == 3) | (all_labels == 1)])
    assert torch.equal(labels, (all_labels[(all_labels == 3) | (all_labels == 1)] == 1).long())
    with pytest.raises(DataError, match="has classes 0 ... 3"):
        load_dataset("shapes", classes=[0, 4])
    with pytest.raises(DataError, match="at most once"):
        load_dataset("shapes", classes=[1, 1])
