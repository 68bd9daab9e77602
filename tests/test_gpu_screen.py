"""benchmarks/gpu_screen.py: runs side by side end as train_drl.py checkpoints that probe.py reads
(on a CPU the runs of a group take eager steps in turn; the CUDA path is tests/test_cuda_graph.py's)."""
import json
import sys

import pytest

from checkpoint import load_run

sys.path.insert(0, "benchmarks")
import gpu_screen  # noqa: E402

ROW = "--ch 4 --enc-ch 8 --latent-dim 8 --batch-size 8 --eval-n 8 --warmup 2 --t-uniform-share 0"


def test_screen_trains_each_row_to_its_steps_and_saves_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "gs"
    gpu_screen.main(["--dataset", "shapes", "--device", "cpu", "--out", str(out), "--group", "2", "--rows",
                     f"a={ROW} --steps 3 --seed 0", f"b={ROW} --steps 5 --seed 1 --objective ae",
                     f"c={ROW} --steps 2 --seed 2"])
    rows = [json.loads(line) for line in open(out / "screen.jsonl")]
    assert [(r["name"], r["steps"], r["runs_in_group"]) for r in rows] == [("a", 3, 2), ("b", 5, 2), ("c", 2, 1)]
    for name, steps, objective in [("a", 3, "drl"), ("b", 5, "ae"), ("c", 2, "drl")]:
        score_net, encoder, _, ckpt = load_run(out / name / "ckpt.pt")
        assert ckpt["step"] == steps and ckpt["args"]["objective"] == objective and encoder is not None
        assert (score_net is None) == (objective == "ae")
    a, c = (load_run(out / n / "ckpt.pt")[3]["ema_encoder"] for n in "ac")
    assert any((a[k] != c[k]).any() for k in a)  # each row's seed sets its own initialisation
    with pytest.raises(SystemExit, match="exists"):  # a finished run is never overwritten
        gpu_screen.main(["--dataset", "shapes", "--device", "cpu", "--out", str(out), "--rows", f"a={ROW} --steps 1"])
    with pytest.raises(SystemExit, match="NAME=FLAGS"):
        gpu_screen.main(["--device", "cpu", "--rows", "no-equals-sign"])


@pytest.mark.parametrize("screen, rows", [("levers", 30), ("seeds", 24)])
def test_every_row_of_the_gpu_call_parses(tmp_path, screen, rows):
    """benchmarks/gpu_screen.sh with DRY=1 parses its rows with train_drl.py's parser and trains nothing:
    a row with a wrong flag fails here, not on a lent GPU."""
    import os
    import subprocess
    env = dict(os.environ, DRY="1", SCREEN=screen, OUT=str(tmp_path))
    done = subprocess.run(["bash", "benchmarks/gpu_screen.sh"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{rows} rows parsed" in done.stdout
