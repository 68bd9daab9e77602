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


@pytest.mark.parametrize("signame,says", [("SIGINT", "interrupted (Ctrl-C)"), ("SIGTERM", "interrupted (SIGTERM)")])
def test_a_signal_while_starting_is_one_line(tmp_path, signame, says):
    """Ctrl-C or SIGTERM while torch is imported or the data read: one line on stderr, exit 1."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    root = Path(__file__).parent.parent
    p = subprocess.Popen([sys.executable, str(root / "train_drl.py"), "--dataset", "shapes", "--out",
                          str(tmp_path / "o")], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    p.send_signal(getattr(signal, signame))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err.strip() == says


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
    assert [r["step"] for r in rows] == [2] and not list(out.glob("*.tmp"))
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
