"""Every bad input gets one line that says what to do, before any work starts (issue: every fault)."""
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


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    """SIGINT while torch is imported or the data read: one line on stderr, no traceback."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    root = Path(__file__).parent.parent
    p = subprocess.Popen([sys.executable, str(root / "train_drl.py"), "--dataset", "shapes", "--out",
                          str(tmp_path / "o")], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and err.strip() == "interrupted (Ctrl-C)"


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
    assert e.value.code == 2 and "no CUDA GPU; use --device cpu" in capsys.readouterr().err
