"""Bootstrap intervals over rows and seeds, and paired differences, on cases whose answer is known."""

import numpy as np
import pytest

from lare.eval.stats import bootstrap_ci, paired_diff_ci


def test_interval_holds_the_mean_and_shrinks_with_more_rows():
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.random((3, 100)) < 0.6, n_boot=500)
    large = bootstrap_ci(rng.random((3, 2000)) < 0.6, n_boot=500)
    assert small["lo"] < small["acc"] < small["hi"] and large["lo"] < 60 < large["hi"]
    assert large["hi"] - large["lo"] < 0.5 * (small["hi"] - small["lo"])
    assert bootstrap_ci(np.ones((2, 10)))["lo"] == bootstrap_ci(np.ones((2, 10)))["hi"] == 100


def test_seed_spread_widens_the_interval():
    rows = np.random.default_rng(1).random(500) < 0.5
    same = np.stack([rows, rows, rows])
    spread = np.stack([rows, rows | (np.arange(500) < 150), rows & (np.arange(500) >= 150)])
    assert bootstrap_ci(spread, n_boot=500)["hi"] - bootstrap_ci(spread, n_boot=500)["lo"] > \
        bootstrap_ci(same, n_boot=500)["hi"] - bootstrap_ci(same, n_boot=500)["lo"]


def test_paired_difference_sees_a_consistent_gain_that_unpaired_spread_would_hide():
    rng = np.random.default_rng(2)
    base = rng.random((3, 400)) < 0.5
    better = base | (rng.random((3, 400)) < 0.1)  # right wherever the baseline is, and on some more rows
    d = paired_diff_ci(better, base, n_boot=500)
    assert d["lo"] > 0 and d["p_le_0"] == 0
    assert paired_diff_ci(base, base)["diff"] == 0
    with pytest.raises(ValueError, match="same seeds and rows"):
        paired_diff_ci(base, base[:, :10])
