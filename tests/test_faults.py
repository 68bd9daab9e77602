"""Every bad input gets one line that says what to do, before any work starts, and leaves nothing behind."""
import pytest

import probe
import sample
import semisup
import train_drl
import trajectory_clf

TINY = ["--dataset", "shapes", "--ch", "8", "--batch-size", "8", "--eval-n", "8", "--device", "cpu", "--probe-n", "0"]


@pytest.mark.parametrize("stage,argv,says", [
    (sample, ["--t-init", "3"], "--t-init must be in (0, 1]"),
    (sample, ["--steps", "0"], "--steps must be a positive"),
    (sample, ["--n", "0"], "--n must be a positive"),
    (probe, ["--ts", "5"], "--ts values must lie in [0, 1]"),
    (probe, ["--ts", "abc"], "--ts must be a comma list"),
    (semisup, ["--num-labeled", "0"], "--num-labeled must be a positive"),
    (trajectory_clf, ["--epochs", "0"], "--epochs must be a positive"),
])
def test_bad_numbers_in_every_stage(tmp_path, capsys, stage, argv, says):
    ckpt = ["--ckpt", str(tmp_path / "any.pt")]
    with pytest.raises(SystemExit) as e:
        stage.main(ckpt + argv + ["--out", str(tmp_path / "o")])
    assert e.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_output_path_that_is_a_file_fails_before_any_work(tmp_path, tiny_run):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for stage, extra in ((sample, ["--steps", "2"]), (probe, []), (trajectory_clf, []),
                         (semisup, ["--epochs", "1"])):
        with pytest.raises(SystemExit, match="is a file; pass a folder"):
            stage.main(["--ckpt", tiny_run("tc"), "--out", str(blocker), "--device", "cpu", *extra])
    with pytest.raises(SystemExit, match="is a file; pass a folder"):
        train_drl.main(TINY + ["--out", str(blocker)])


def test_resuming_onto_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path, tiny_run):
    out = tmp_path / "run"
    out.mkdir()
    good = open(tiny_run("drl"), "rb").read()
    (out / "ckpt.pt").write_bytes(good[: len(good) // 2])  # a copy cut short
    with pytest.raises(SystemExit, match="not a readable checkpoint.*delete it to start afresh"):
        train_drl.main(TINY + ["--out", str(out), "--steps", "4"])
    import torch
    torch.save({"weights": torch.zeros(2)}, out / "ckpt.pt")  # someone else's file
    with pytest.raises(SystemExit, match="not a train_drl.py checkpoint"):
        train_drl.main(TINY + ["--out", str(out), "--steps", "4"])


@pytest.mark.parametrize("stage", [sample, probe, semisup, trajectory_clf])
def test_a_missing_checkpoint_leaves_no_folder_behind(tmp_path, stage):
    with pytest.raises(SystemExit, match="no such checkpoint"):
        stage.main(["--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("stage", [probe, semisup, trajectory_clf, sample])
def test_help_descriptions_are_whole_sentences(stage, capsys):
    with pytest.raises(SystemExit):
        stage.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    first = " ".join(stage.__doc__.split("\n\n")[0].split())
    assert first in text and first.endswith((".", "?", ")"))


def signalled(argv, signame, ready=lambda: True):
    """Start a stage, wait until ready() (at most 60 s), send the signal; (exit code, stderr). The child gets
    Ctrl-C's default action whatever this process inherited (a job started in the background, under nohup
    or by a CI runner ignores SIGINT, and so would the stage: the convention a stage keeps), and is killed
    if it outlives the test."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    p = subprocess.Popen([sys.executable, str(Path(__file__).parent.parent / argv[0]), *argv[1:]],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for _ in range(600):
            if ready():
                break
            time.sleep(0.1)
        time.sleep(0.5)
        p.send_signal(getattr(signal, signame))
        _, err = p.communicate(timeout=60)  # reads the pipes while waiting: a full pipe cannot stall the child
        return p.returncode, err
    finally:
        p.kill()
        p.communicate()


@pytest.mark.parametrize("signame,says", [("SIGINT", "interrupted (Ctrl-C)"), ("SIGTERM", "interrupted (SIGTERM)")])
def test_a_signal_while_starting_is_one_line(tmp_path, signame, says):
    """Ctrl-C or SIGTERM while torch is imported or the data read: one line on stderr, exit 1."""
    code, err = signalled(["train_drl.py", "--dataset", "shapes", "--out", str(tmp_path / "o")], signame)
    assert code == 1 and err.strip() == says


def test_sigterm_names_itself(capsys):
    import os
    import signal
    from runtime import StopRequest
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    finally:
        stop.restore()
    out = capsys.readouterr().out
    assert "SIGTERM again to quit at once" in out and "Ctrl-C" not in out


def test_device_that_is_not_here_is_one_line(tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as e:
        train_drl.main(TINY + ["--device", "cuda", "--out", str(tmp_path / "o")])
    assert str(e.value) == "error: --device cuda: this machine has no CUDA GPU; use --device cpu (or leave it out)"
    assert not (tmp_path / "o").exists()


def test_a_data_dir_without_data_is_not_written_to(tmp_path, monkeypatch):
    """An explicit --data-dir that holds no data (empty or missing): one line, and the folders the
    failed download made are gone again."""
    import torchvision

    def offline(root, **kwargs):
        (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True)  # as torchvision does before downloading
        raise RuntimeError("no network")

    from pathlib import Path
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    for folder in (empty, missing):
        with pytest.raises(SystemExit, match="not found in"):
            train_drl.main(["--dataset", "fashion_mnist", "--data-dir", str(folder), "--out", str(tmp_path / "o")])
        with pytest.raises(SystemExit, match="not found in"):
            semisup.main(["--init", "random", "--dataset", "fashion_mnist", "--data-dir", str(folder),
                          "--out", str(tmp_path / "s")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not any(empty.iterdir())


@pytest.mark.parametrize("run,mode,says", [("ae", "recon", "no score net"), ("drl", "grid", "needs a 2-D code"),
                                           ("drl", "uncond", "needs a plain score model"),
                                           ("drl", "prior", "needs a VDRL run")])
def test_a_checkpoint_that_cannot_sample_the_mode_leaves_no_folder(tmp_path, tiny_run, run, mode, says):
    with pytest.raises(SystemExit, match=says):
        sample.main(["--ckpt", tiny_run(run), "--mode", mode, "--out", str(tmp_path / "x"), "--device", "cpu"])
    assert not (tmp_path / "x").exists()


def test_another_runs_folder_is_left_as_it_was(tmp_path, tiny_run):
    """A second train_drl.py into a folder holding another run is refused and leaves no file there."""
    from pathlib import Path
    folder = Path(tiny_run("drl")).parent
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(SystemExit, match="holds another run"):
        train_drl.main(TINY + ["--out", str(folder), "--latent-dim", "64", "--steps", "4"])
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_plain_pickle_is_one_line_without_torchs_warning(tmp_path, capsys):
    import pickle
    import warnings
    (tmp_path / "x.pt").write_bytes(pickle.dumps({"a": 1}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for stage in (sample, probe):
            with pytest.raises(SystemExit, match="^error: .*not a readable checkpoint"):
                stage.main(["--ckpt", str(tmp_path / "x.pt"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert not caught and capsys.readouterr().err == ""


def test_the_nan_message_offers_amp_only_where_amp_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"became (nan|inf).*: lower --lr$"):
        train_drl.main(TINY + ["--out", str(tmp_path / "nan"), "--lr", "1e4", "--warmup", "1", "--steps", "60",
                               "--save-every", "2", "--log-every", "2"])


def full_disk(monkeypatch, after=0):
    """Every file write from now (after `after` more succeed) fails as on a full disk: the staged
    writes of checkpoint.save_together and the appended stats rows."""
    import builtins
    import errno
    from pathlib import Path
    left = [after]
    real_write_bytes, real_open = Path.write_bytes, builtins.open

    def check():
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        left[0] -= 1

    def write_bytes(self, data):
        check()
        return real_write_bytes(self, data)

    def open_(file, mode="r", *a, **k):
        if "a" in mode:
            check()
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(builtins, "open", open_)


def test_a_full_disk_stops_training_with_one_line_and_a_resumable_folder(tmp_path, monkeypatch):
    import json
    import torch
    out = tmp_path / "run"
    train_drl.main(TINY + ["--out", str(out), "--steps", "2", "--save-every", "2", "--log-every", "2"])
    with monkeypatch.context() as m:
        full_disk(m, after=1)  # the stats row of step 4 is written, its checkpoint is not
        with pytest.raises(SystemExit) as e:
            train_drl.main(TINY + ["--out", str(out), "--steps", "6", "--save-every", "4", "--log-every", "2",
                                   "--lr", "2e-3"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("error: cannot write") and "No space left" in msg and "free" in msg
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert ckpt["step"] == 2 and config["args"] == ckpt["args"] and ckpt["args"]["lr"] == 1e-3
    assert [r["step"] for r in rows] == [2] and not list(out.glob("*.drl-tmp"))
    train_drl.main(TINY + ["--out", str(out), "--steps", "4", "--save-every", "4", "--log-every", "2"])
    assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 4  # resumed


def test_a_full_disk_before_the_first_row_leaves_nothing(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    with pytest.raises(SystemExit, match="^error: cannot write .*stats.jsonl"):
        train_drl.main(TINY + ["--out", str(tmp_path / "run"), "--steps", "2", "--save-every", "2", "--log-every", "2"])
    assert not (tmp_path / "run").exists()


def test_a_full_disk_in_sample_is_one_line_and_no_partial_file(tmp_path, tiny_run, monkeypatch):
    full_disk(monkeypatch)
    with pytest.raises(SystemExit, match=r"^error: cannot write .*recon.png \(No space left on device\)"):
        sample.main(["--ckpt", tiny_run("drl"), "--steps", "2", "--n", "2", "--per-code", "1", "--out",
                     str(tmp_path / "s"), "--device", "cpu"])
    assert not (tmp_path / "s").exists()


# ---- what a stage may delete: only the temporary files it wrote ----

def test_training_removes_only_its_own_dead_temporary_files(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "X"
    out.mkdir()
    (out / "notes.tmp").write_text("my notes")  # a user's file, whatever its name
    (out / "ckpt.pt.x.drl-tmp").write_text("no pid in its name")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f"ckpt.pt.{dead.stdout.strip()}.drl-tmp").write_text("left by a killed run")
    (out / f"stats.jsonl.{os.getpid()}.drl-tmp").write_text("a live process's")
    train_drl.main(TINY + ["--steps", "2", "--save-every", "2", "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert "notes.tmp" in names and (out / "notes.tmp").read_text() == "my notes"
    assert f"ckpt.pt.{dead.stdout.strip()}.drl-tmp" not in names
    assert "ckpt.pt.x.drl-tmp" in names and f"stats.jsonl.{os.getpid()}.drl-tmp" in names


# ---- damaged data and run files: one line ----

def idx_bytes(array):
    import struct
    return struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def write_fashion(folder, images=None, labels=None, gz=False):
    """Valid IDX files of 20 training and 10 test images, with the training images' or labels' bytes replaced."""
    import gzip
    import numpy as np
    folder.mkdir(exist_ok=True)
    for split, n in (("train", 20), ("t10k", 10)):
        files = {"images-idx3-ubyte": idx_bytes(np.zeros((n, 28, 28), np.uint8)),
                 "labels-idx1-ubyte": idx_bytes(np.arange(n, dtype=np.uint8) % 10)}
        if split == "train":
            files["images-idx3-ubyte"] = images if images is not None else files["images-idx3-ubyte"]
            files["labels-idx1-ubyte"] = labels if labels is not None else files["labels-idx1-ubyte"]
        for name, data in files.items():
            path = folder / f"{split}-{name}" if not gz else folder / f"{split}-{name}.gz"
            path.write_bytes(gzip.compress(data) if gz and data[:2] != b"RB" else data)


def damaged():
    import gzip
    import numpy as np
    good_images = idx_bytes(np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8))
    return {
        "images cut to half": dict(images=good_images[: len(good_images) // 2]),
        "zero-byte labels": dict(labels=b""),
        "an ndim byte of 5": dict(images=good_images[:3] + b"\x05" + good_images[4:]),
        "magic bytes ff ff": dict(images=b"\xff\xff" + good_images[2:]),
        "100 labels for 20 images": dict(labels=idx_bytes(np.zeros(100, np.uint8))),
        "a .gz cut to half": dict(images=b"RB" + gzip.compress(good_images)[:5000], gz=True),
        "a .gz of random bytes": dict(images=b"RB" + bytes(range(256)) * 4, gz=True),
    }


@pytest.mark.parametrize("case", list(damaged()))
def test_damaged_data_files_are_one_line_and_leave_nothing(tmp_path, case):
    from data import DataError, load_dataset
    spec = dict(damaged()[case])
    if spec.get("gz"):  # the "RB" prefix marks bytes to write as they are (already gzip, or not gzip at all)
        spec = {k: (v[2:] if isinstance(v, bytes) else v) for k, v in spec.items()}
        write_fashion(tmp_path / "d", gz=True)
        (tmp_path / "d" / "train-images-idx3-ubyte.gz").write_bytes(spec["images"])
    else:
        write_fashion(tmp_path / "d", **spec)
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", tmp_path / "d", train=True)
    assert "\n" not in str(e.value) and "again" in str(e.value)
    with pytest.raises(SystemExit, match="^error: .*train-"):
        train_drl.main(["--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_checkpoint_without_its_keys_is_one_line(tmp_path):
    import torch
    torch.save({"kind": "drl_train", "version": 3}, tmp_path / "ckpt.pt")
    for stage in (sample, probe):
        with pytest.raises(SystemExit, match="^error: .*a damaged checkpoint"):
            stage.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert not (tmp_path / "o").exists()


def test_a_damaged_probe_cache_is_encoded_again(tmp_path, tiny_run):
    out = tmp_path / "p"
    argv = ["--ckpt", tiny_run("drl"), "--out", str(out), "--device", "cpu", "--max-train", "200", "--max-test", "100",
            "--no-baselines"]
    first = probe.main(argv)
    for f in (out / "cache").iterdir():
        f.write_bytes(b"random bytes, not a tensor")
    again = probe.main(argv)
    key = next(iter(first))
    assert again[key]["per_t"][0]["linear"] == first[key]["per_t"][0]["linear"]


def test_a_torn_stats_row_is_cut_and_the_resume_is_bit_exact(tmp_path):
    """A kill while a stats row is written leaves half a row: the resume cuts it and finishes as an unbroken
    run would; a garbage row elsewhere is one line naming the file; a deleted config.json is written again."""
    import torch
    flags = TINY + ["--save-every", "2", "--log-every", "1", "--seed", "3"]
    train_drl.main(flags + ["--steps", "4", "--out", str(tmp_path / "whole")])
    train_drl.main(flags + ["--steps", "2", "--out", str(tmp_path / "torn")])
    stats = tmp_path / "torn" / "stats.jsonl"
    stats.write_text(stats.read_text() + '{"step": 3, "lo')
    (tmp_path / "torn" / "config.json").unlink()
    train_drl.main(flags + ["--steps", "4", "--out", str(tmp_path / "torn")])
    assert (tmp_path / "torn" / "config.json").is_file()
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("whole", "torn"))
    assert all(torch.equal(a["ema_encoder"][k], b["ema_encoder"][k]) for k in a["ema_encoder"])
    losses = [[__import__("json").loads(r)["loss"] for r in (tmp_path / d / "stats.jsonl").read_text().splitlines()]
              for d in ("whole", "torn")]
    assert losses[0] == losses[1]
    stats.write_text("garbage\n" + stats.read_text())
    with pytest.raises(SystemExit, match=r"^error: .*stats.jsonl: line 1 is not a stats row"):
        train_drl.main(flags + ["--steps", "6", "--out", str(tmp_path / "torn")])


def test_resuming_with_another_seed_is_refused(tmp_path, tiny_run):
    from pathlib import Path
    with pytest.raises(SystemExit, match=r"holds another run \(--seed 7 \(saved: 0\)\)"):
        train_drl.main(TINY + ["--latent-dim", "4", "--out", str(Path(tiny_run("drl")).parent), "--seed", "7",
                               "--steps", "4"])


def test_the_full_disk_line_gives_the_space_free_before_the_attempt(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple
    from pathlib import Path
    from checkpoint import save_atomic
    from runtime import WriteError
    usage = namedtuple("usage", "total used free")
    free = [4_800_000]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - free[0], free[0]))

    def fill(self, data):
        free[0] = 0  # the partial file took what was left
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", fill)
    with pytest.raises(WriteError, match=r"needs 6.0 MB and 4.8 MB are free"):
        save_atomic(b"x" * 6_000_000, tmp_path / "big.bin")


# ---- the instruments themselves: mutants of the EMA, the clip and the probe fail these ----

def test_the_ema_copy_after_one_step_is_its_closed_form():
    import torch
    args = train_drl.parse_args(TINY + ["--latent-dim", "4"])
    tr = train_drl.Training(args, "unused", torch.device("cpu"))
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in tr.emas.items()}
    tr.train_step(tr.next_batch())
    w = 1 - min(args.ema, 1 / 10)  # step 0 of TensorFlow's warm-up: the copy moves 0.9 of the way
    for k in tr.nets:
        for e0, e1, p1 in zip(before[k], tr.emas[k].parameters(), tr.nets[k].parameters()):
            assert torch.allclose(e1, e0 + w * (p1 - e0), atol=1e-6)


def test_the_optimiser_receives_clipped_gradients(monkeypatch):
    import torch
    args = train_drl.parse_args(TINY + ["--latent-dim", "4", "--lr", "1e-3"])
    tr = train_drl.Training(args, "unused", torch.device("cpu"))
    norms, raw = [], []
    real_step, real_clip = tr.opt.step, torch.nn.utils.clip_grad_norm_

    def step(*a, **k):
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in tr.params if p.grad is not None])))
        return real_step(*a, **k)

    def clip(*a, **k):
        raw.append(real_clip(*a, **k))
        return raw[-1]
    monkeypatch.setattr(tr.opt, "step", step)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    tr.train_step(tr.next_batch())
    assert raw and raw[0] > 10 * train_drl.GRAD_CLIP  # the raw gradient is far above the clip ...
    assert norms and norms[0] <= train_drl.GRAD_CLIP * (1 + 1e-4)  # ... and AdamW sees it clipped


def test_the_probe_learns_nothing_from_the_test_codes():
    """Whitening, scaling and weights come from the training codes alone: a test code's prediction does not
    change when other test codes are added or shifted (a probe fitted partly on the test codes would leak)."""
    import torch
    from linear_probe import fit_linear_probe, linear_probe
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g) * torch.linspace(0.1, 3, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    test = torch.randn(100, 8, generator=g)
    predict, _ = fit_linear_probe(x, y, 2)
    alone = predict(test).argmax(1)
    shifted = torch.cat([test, torch.randn(300, 8, generator=g) * 5 + 3])
    assert torch.equal(predict(shifted)[:100].argmax(1), alone)
    labels = (test[:, 0] + test[:, 1] > 0).long()
    acc_alone = linear_probe(x, y, test, labels)[0]
    acc_with_others = linear_probe(x, y, shifted, torch.cat([labels, torch.zeros(300, dtype=torch.long)]))[0]
    correct_first = acc_with_others * 400 - (predict(shifted)[100:].argmax(1) == 0).sum().item()
    assert correct_first == pytest.approx(acc_alone * 100, abs=1e-3)


def test_a_failed_run_into_a_nested_path_leaves_none_of_its_folders(tmp_path):
    with pytest.raises(SystemExit, match="became (nan|inf)"):
        train_drl.main(TINY + ["--out", str(tmp_path / "X" / "a" / "b" / "c"), "--lr", "1e4", "--warmup", "1",
                               "--steps", "60", "--save-every", "100", "--log-every", "60"])
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize("stage", ["sample", "probe"])
def test_ctrl_c_in_a_stage_leaves_no_folder_and_no_temporary_file(tmp_path, tiny_run, stage):
    """Ctrl-C while a stage works: one line, exit 1, and its new --out (nested) is gone."""
    out = tmp_path / "a" / "b"
    extra = ["--steps", "100000", "--n", "64"] if stage == "sample" else ["--mlp", "--mlp-epochs", "100000"]
    code, err = signalled([f"{stage}.py", "--ckpt", tiny_run("drl"), "--out", str(out), "--device", "cpu", *extra],
                          "SIGINT",  # once the stage has made its folder and works (probe: has written its cache)
                          ready=lambda: out.is_dir() and (stage == "sample" or bool(list(out.glob("cache/*.pt")))))
    assert code == 1 and err.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("stage,argv,says", [
    ("sample", ["--mode", "swap", "--n", "600"], "needs 1200 test images"),
    ("sample", ["--per-code", "1000000000000"], "over this stage's"),
    ("sample", ["--steps", "1000000000000"], "--steps 1000000000000 is over"),
    ("sample", ["--seed", "100000000000000000000000"], "--seed must be a whole number from 0"),
    ("probe", ["--max-train", "5"], "too few to probe"),
    ("probe", ["--knn", "100000"], "--knn 100000 needs more"),
    ("probe", ["--max-test", "1"], "a probe needs at least 2"),
    ("probe", ["--weight-decays", "inf"], "--weight-decays values must lie in"),
    ("trajectory_clf", ["--val-frac", "1"], "--val-frac must be below 1"),
    ("trajectory_clf", ["--max-train", "5"], "give no validation image"),
    ("trajectory_clf", ["--models", "foo"], "'foo' is not one of"),
    ("trajectory_clf", ["--models", "mlp@50"], "'mlp@50' is not one of"),
    ("trajectory_clf", ["--nmi", "--nmi-n", "1"], "--nmi-n must be at least"),
    ("semisup", ["--batch-size", "1000000000000"], "is more than the"),
])
def test_every_size_is_checked_before_any_work(tmp_path, tiny_run, capsys, stage, argv, says):
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(stage).main(["--ckpt", tiny_run("tc2" if stage == "trajectory_clf" else "drl"),
                                             "--out", str(tmp_path / "a" / "b"), "--device", "cpu", *argv])
    message = str(e.value) if e.value.code not in (1, 2) else capsys.readouterr().err.strip().splitlines()[-1]
    assert says in message and "\n" not in message
    assert not (tmp_path / "a").exists()


def test_training_sizes_and_a_grid_of_a_time_conditioned_code_are_refused_at_once(tmp_path, tiny_run, capsys):
    with pytest.raises(SystemExit, match="--batch-size 1000000000000 is more than the 6000 training images"):
        train_drl.main(TINY + ["--batch-size", "1000000000000", "--out", str(tmp_path / "a" / "b")])
    with pytest.raises(SystemExit):
        train_drl.main(TINY + ["--probe-n", "1", "--out", str(tmp_path / "a" / "b")])
    assert "--probe-n must be 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--mode grid lays out codes z of a static encoder"):
        sample.main(["--ckpt", tiny_run("tc2"), "--mode", "grid", "--out", str(tmp_path / "a" / "b"), "--device", "cpu"])
    assert not (tmp_path / "a").exists()


def test_out_of_memory_is_one_line_naming_the_flag():
    import torch
    from runtime import memory_line
    for error in (torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("DefaultCPUAllocator: can't allocate memory")):
        with pytest.raises(SystemExit, match=r"^error: out of memory \(\w+\); lower --batch-size$"):
            with memory_line("--batch-size"):
                raise error
    with pytest.raises(RuntimeError, match="other"):  # other errors pass through
        with memory_line("--batch-size"):
            raise RuntimeError("other")


def test_probe_writes_its_numbers_and_figure_together_or_neither(tmp_path, tiny_run, monkeypatch):
    import errno
    from pathlib import Path
    real = Path.write_bytes

    def full_at_the_figure(self, data):
        if self.name.startswith("probe.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)
    monkeypatch.setattr(Path, "write_bytes", full_at_the_figure)
    with pytest.raises(SystemExit, match="^error: cannot write .*probe.png"):
        probe.main(["--ckpt", tiny_run("drl"), "--out", str(tmp_path / "p"), "--device", "cpu", "--max-train", "200",
                    "--max-test", "100", "--no-baselines"])
    assert not (tmp_path / "p" / "probe.json").exists()
