"""Welch's t-test against closed forms and tables, and benchmarks/seeds_table.py on made-up probe.json files."""
import json
import math
import sys
from pathlib import Path

import pytest

import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import seeds_table  # noqa: E402


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 12.0])
def test_t_tail_equals_its_closed_forms(t):
    assert stats.student_t_sf2(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-9)  # Cauchy
    assert stats.student_t_sf2(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert stats.student_t_sf2(-t, 2) == stats.student_t_sf2(t, 2)


@pytest.mark.parametrize("t,df,p", [(2.228, 10, 0.05), (2.776, 4, 0.05), (3.355, 8, 0.01), (1.96, 1e6, 0.05)])
def test_t_tail_matches_the_tables(t, df, p):
    assert stats.student_t_sf2(t, df) == pytest.approx(p, abs=2e-4)


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]  # variances 5/3 and 4, so va = 5/12 and vb = 4/3
    va, vb = 5 / 12, 4 / 3
    diff, t, df, p = stats.welch(a, b)
    assert diff == pytest.approx(-1.5) and t == pytest.approx(-1.5 / math.sqrt(va + vb))
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2))
    assert p == pytest.approx(stats.student_t_sf2(t, df)) and stats.verdict(p, diff) == "level"
    assert stats.verdict(0.01, -1.0) == "behind" and stats.verdict(0.01, 1.0) == "ahead"
    assert stats.welch_from_stats(2.5, stats.mean_std(a)[1], 4, 4.0, 2.0, 3) == pytest.approx((diff, t, df, p))


def write_probe(path, linear, silhouette):
    row = dict(t=None, linear=linear, knn=linear, few_shot_1=0.4, few_shot_5=0.6, few_shot_10=0.7,
               silhouette=silhouette, participation_ratio=3.0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(meta={}, results={"raw_pixels": {}, "run": {"per_t": [row]}})))


def test_seeds_table_prints_the_welch_row_and_draws_the_curve(tmp_path, capsys):
    for name, linears in (("0.2", (0.80, 0.82, 0.81)), ("0.5", (0.90, 0.91, 0.92))):
        for seed, linear in enumerate(linears):
            write_probe(tmp_path / f"t{name}-s{seed}" / "probe.json", linear, silhouette=linear - 0.5)
    groups = [f"{name}={tmp_path}/t{name}-s*/probe.json" for name in ("0.2", "0.5")]
    seeds_table.main(groups + ["--plot", str(tmp_path / "curve.png"), "--metrics", "linear,silhouette"])
    out = capsys.readouterr().out
    diff, _, _, p = stats.welch([90, 91, 92], [80, 82, 81])
    assert "| 0.5 | 3 | 90.00 / 91.00 / 92.00 |" in out and f"{diff:+.2f}, {seeds_table.pfmt(p)}: ahead" in out
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seeds_table.main([groups[0], f"0.9={tmp_path}/t0.5-s0/probe.json"])  # one seed: its difference, no test
    assert "| 0.9 | +9.00, one seed: no test |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="name each group by a number"):
        seeds_table.main([f"wide={tmp_path}/t0.2-s*/probe.json", groups[1], "--plot", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="not in every probe.json"):
        seeds_table.main(groups + ["--plot", str(tmp_path / "x.png"), "--metrics", "silhouette_fine"])


def test_seeds_table_draws_a_time_conditioned_code_along_t(tmp_path, capsys):
    for seed in range(2):
        write_probe(tmp_path / f"ae-s{seed}" / "probe.json", 0.85 + seed / 100, silhouette=0.1)
        rows = [dict(t=t, linear=0.8 + t / 10, knn=0.8, few_shot_1=0.4, few_shot_5=0.6, few_shot_10=0.7,
                     silhouette=0.2, participation_ratio=4.0) for t in (0.0, 0.5, 1.0)]
        path = tmp_path / f"tc-s{seed}" / "probe.json"
        path.parent.mkdir()
        path.write_text(json.dumps(dict(meta={}, results={"tc": {"per_t": rows}})))
    groups = [f"ae={tmp_path}/ae-s*/probe.json", f"tc={tmp_path}/tc-s*/probe.json"]
    with pytest.raises(SystemExit, match="pass --t"):
        seeds_table.main(groups)
    seeds_table.main(groups + ["--t", "0.5", "--along-t", str(tmp_path / "fig4.png"), "--metrics", "linear,knn"])
    assert "| tc | 2 | 85.00 / 85.00 |" in capsys.readouterr().out  # the row at t = 0.5 of each seed
    assert (tmp_path / "fig4.png").read_bytes()[:4] == b"\x89PNG"


def test_seeds_table_reads_semisup_results(tmp_path, capsys):
    for name, accs in (("random", (0.70, 0.72, 0.71)), ("drl", (0.75, 0.77, 0.76))):
        for seed, acc in enumerate(accs):
            (tmp_path / f"{name}-s{seed}").mkdir()
            (tmp_path / f"{name}-s{seed}" / "result.json").write_text(json.dumps(dict(test_acc=acc, num_labeled=100)))
    groups = [f"{name}={tmp_path}/{name}-s*/result.json" for name in ("random", "drl")]
    seeds_table.main(groups)
    out = capsys.readouterr().out
    diff, _, _, p = stats.welch([75, 77, 76], [70, 72, 71])
    assert "| group | seeds | test accuracy per seed | test accuracy |\n" in out
    assert "| drl | 3 | 75.00 / 77.00 / 76.00 | 76.00 ± 1.00 |\n" in out
    assert f"| drl | {diff:+.2f}, {seeds_table.pfmt(p)}: ahead |" in out
    write_probe(tmp_path / "ae-s0" / "probe.json", 0.8, silhouette=0.1)
    with pytest.raises(SystemExit, match="compare like with like"):
        seeds_table.main(groups + [f"ae={tmp_path}/ae-s*/probe.json"])
