import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the stages are flat top-level scripts

# Tiny train_drl.py runs on `shapes` (2 steps) that the downstream stages' tests read; each is
# trained once per test session, when a test first asks for it.
TINY = ["--dataset", "shapes", "--preset", "cpu", "--ch", "8", "--batch-size", "8", "--eval-n", "8",
        "--steps", "2", "--save-every", "2", "--log-every", "2", "--device", "cpu", "--probe-n", "0"]
TINY_RUNS = {"vdrl2": ["--objective", "vdrl", "--latent-dim", "2"],
             "tc": ["--objective", "drl", "--time-cond", "--latent-dim", "4"],
             "tc2": ["--objective", "drl", "--time-cond", "--latent-dim", "2"],
             "drl": ["--objective", "drl", "--latent-dim", "4"],
             "ae": ["--objective", "ae", "--latent-dim", "4"],
             "score": ["--objective", "score"]}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """tiny_run(name) -> path (str) of that run's ckpt.pt."""
    import train_drl
    root, made = tmp_path_factory.mktemp("tiny_runs"), {}

    def get(name):
        if name not in made:
            train_drl.main(TINY + ["--out", str(root / name), *TINY_RUNS[name]])
            made[name] = str(root / name / "ckpt.pt")
        return made[name]
    return get
