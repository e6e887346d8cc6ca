"""Bootstrap intervals (refusion/evaluation/statistics.py) against cases with a known answer."""
import numpy as np
import pytest
import scipy.stats

from refusion.evaluation import statistics
from refusion.evaluation.statistics import add_intervals, bootstrap_means, mean_interval, paired_difference


def test_constant_data_gives_a_zero_width_interval_at_the_value():
    interval = mean_interval([2.5] * 40)
    assert (interval.mean, interval.low, interval.high, interval.n) == (2.5, 2.5, 2.5, 40)


def test_large_normal_sample_matches_the_normal_theory_interval():
    values = np.random.default_rng(7).normal(30.0, 2.0, size=4000)
    interval = mean_interval(values)
    half = 1.96 * values.std() / np.sqrt(values.size)   # the bootstrap resamples the sample: its sd, ddof 0
    assert interval.mean == pytest.approx(values.mean(), abs=1e-12)
    assert interval.low == pytest.approx(values.mean() - half, abs=0.05 * half)
    assert interval.high == pytest.approx(values.mean() + half, abs=0.05 * half)


def test_confidence_level_and_seed_are_honoured():
    values = np.random.default_rng(1).exponential(size=50)
    wide, narrow = mean_interval(values, confidence=0.99), mean_interval(values, confidence=0.5)
    assert wide.low < narrow.low < narrow.high < wide.high
    assert mean_interval(values) == mean_interval(values)
    assert mean_interval(values, seed=1) != mean_interval(values, seed=2)


def test_one_image_or_a_non_finite_value_leaves_the_interval_undefined():
    one = mean_interval([31.2])
    assert (one.mean, one.low, one.high, one.defined) == (31.2, None, None, False)
    exact = mean_interval([30.0, float("inf")])      # PSNR of an exact match
    assert exact.mean == float("inf") and not exact.defined


def test_rows_of_a_2d_input_share_the_resampled_images():
    values = np.random.default_rng(2).normal(size=(3, 25))
    means = bootstrap_means(values, resamples=500)
    assert means.shape == (3, 500)
    for row in range(3):
        np.testing.assert_allclose(means[row], bootstrap_means(values[row], resamples=500), rtol=0, atol=1e-12)


def test_paired_difference_of_a_constant_shift_is_exact_while_the_rows_vary_widely():
    a = np.random.default_rng(3).normal(28.0, 3.0, size=30)
    diff = paired_difference(a, a - 0.5)
    assert diff.mean == pytest.approx(0.5) and diff.low == pytest.approx(0.5) and diff.high == pytest.approx(0.5)
    row = mean_interval(a)
    assert row.high - row.low > 1.0                   # unpaired intervals would never resolve 0.5 dB


def test_paired_difference_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(4)
    image_difficulty = rng.normal(28.0, 3.0, size=200)
    a = image_difficulty + rng.normal(0.3, 0.4, size=200)
    b = image_difficulty + rng.normal(0.0, 0.4, size=200)
    ours = paired_difference(a, b)
    theirs = scipy.stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True,
                                   n_resamples=statistics.RESAMPLES, confidence_level=0.95, method="percentile",
                                   rng=np.random.default_rng(99)).confidence_interval
    width = theirs.high - theirs.low
    assert ours.mean == pytest.approx(a.mean() - b.mean())
    assert ours.low == pytest.approx(theirs.low, abs=0.05 * width)
    assert ours.high == pytest.approx(theirs.high, abs=0.05 * width)
    assert ours.high - ours.low < 0.2 * (mean_interval(a).high - mean_interval(a).low)


def test_paired_difference_needs_one_value_per_image_in_both_rows():
    with pytest.raises(ValueError, match="3 and 2"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])


def _row(method, psnr, images=("a", "b", "c", "d")):
    return {"method": method, "per_image": [{"image": n, "psnr": p, "ssim": 0.5 + p / 100, "lpips": None}
                                            for n, p in zip(images, psnr)]}


def test_add_intervals_fills_intervals_and_differences_to_the_reference():
    rows = [_row("input (LQ)", [20.0, 22.0, 21.0, 25.0]), _row("nafnet", [27.0, 29.5, 28.0, 31.0])]
    add_intervals(rows, reference="input (LQ)")
    assert rows[0]["difference"] is None and rows[1]["difference"]["reference"] == "input (LQ)"
    assert rows[1]["psnr_ci"] == [mean_interval([27.0, 29.5, 28.0, 31.0]).low,
                                  mean_interval([27.0, 29.5, 28.0, 31.0]).high]
    want = paired_difference([27.0, 29.5, 28.0, 31.0], [20.0, 22.0, 21.0, 25.0]).as_dict()
    assert rows[1]["difference"]["psnr"] == want and want["mean"] == pytest.approx(6.875)
    assert rows[1]["lpips_ci"] is None and "lpips" not in rows[1]["difference"]   # LPIPS unavailable


def test_add_intervals_refuses_an_unknown_reference_or_unpaired_rows():
    rows = [_row("input (LQ)", [20.0] * 4), _row("nafnet", [27.0] * 4)]
    with pytest.raises(ValueError, match=r"'sde' is not a row; rows: input \(LQ\), nafnet"):
        add_intervals(rows, reference="sde")
    rows.append(_row("other", [1.0] * 4, images=("a", "b", "c", "e")))
    with pytest.raises(ValueError, match="different images"):
        add_intervals(rows, reference="nafnet")


def test_grouped_images_are_resampled_together():
    scenes = np.random.default_rng(5).normal(25.0, 3.0, size=40)
    views, labels = np.repeat(scenes, 2), np.repeat([f"s{i:02d}" for i in range(40)], 2)   # two equal views a scene
    grouped, alone = mean_interval(views, groups=labels), mean_interval(scenes)
    assert grouped.n == 80 and grouped.mean == pytest.approx(alone.mean)
    assert (grouped.low, grouped.high) == pytest.approx((alone.low, alone.high), abs=1e-9)
    naive = mean_interval(views)                     # views as independent images: too narrow by about sqrt(2)
    assert (naive.high - naive.low) < 0.8 * (grouped.high - grouped.low)
    assert not mean_interval([1.0, 2.0], groups=["a", "a"]).defined     # one scene: nothing to resample
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        mean_interval([1.0, 2.0], groups=["a", "b", "c"])


def test_add_intervals_resamples_the_groups_it_is_given():
    rows = [_row("input (LQ)", [20.0, 22.0, 21.0, 25.0]), _row("nafnet", [27.0, 29.5, 28.0, 31.0])]
    groups = {"a": "x", "b": "x", "c": "y", "d": "y"}
    add_intervals(rows, reference="input (LQ)", groups=groups)
    want = paired_difference([27.0, 29.5, 28.0, 31.0], [20.0, 22.0, 21.0, 25.0], groups=["x", "x", "y", "y"])
    assert rows[1]["difference"]["psnr"] == want.as_dict()
    assert rows[1]["psnr_ci"] == [mean_interval([27.0, 29.5, 28.0, 31.0], groups=["x", "x", "y", "y"]).low,
                                  mean_interval([27.0, 29.5, 28.0, 31.0], groups=["x", "x", "y", "y"]).high]
    independent = mean_interval([27.0, 29.5, 28.0, 31.0])
    assert rows[1]["psnr_ci"] != [independent.low, independent.high]


def test_every_image_can_be_drawn_and_each_as_often():
    # one-hot rows: the resampled mean of row k is (times image k was drawn) / n, so a row whose
    # means are all zero is an image the resampling never draws; on average each is drawn once a set
    n = 5
    means = bootstrap_means(np.eye(n), resamples=4000)
    assert (means.max(axis=1) > 0).all()
    np.testing.assert_allclose(means.mean(axis=1), 1 / n, atol=0.02)   # sd of the average: 0.003
    # two images: each resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4
    pairs = bootstrap_means([0.0, 1.0], resamples=4000)
    assert set(np.unique(pairs)) == {0.0, 0.5, 1.0}
    np.testing.assert_allclose([np.mean(pairs == v) for v in (0.0, 0.5, 1.0)], [0.25, 0.5, 0.25], atol=0.03)


def test_grouped_resampling_draws_every_group():
    labels = ["a", "a", "b", "c", "c"]                   # three groups; the mean of group g's images is 1
    means = bootstrap_means(np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=float),
                            resamples=2000, groups=labels)
    assert (means.max(axis=1) > 0).all()


def test_95_percent_intervals_cover_a_known_mean_about_95_percent_of_the_time():
    # Percentile bootstrap of the mean of n normal values: the interval is about mean +- z * s_0 / sqrt(n)
    # with s_0 the sample sd with ddof 0, so it covers the true mean with probability close to
    # P(|t_{n-1}| < z * sqrt((n - 1) / n)), 94.5% for n = 80, with each tail missed about 2.7% of the
    # time. 800 trials: sd of the coverage rate 0.8%, of each tail's rate 0.6%.
    n, trials, true_mean = 80, 800, 3.0
    expected = 1 - 2 * scipy.stats.t.sf(1.959964 * np.sqrt((n - 1) / n), df=n - 1)
    rng = np.random.default_rng(11)
    below = above = 0
    for trial in range(trials):
        interval = mean_interval(rng.normal(true_mean, 2.0, size=n), resamples=500, seed=trial)
        below += interval.high < true_mean
        above += interval.low > true_mean
    coverage = 1 - (below + above) / trials
    assert 0.93 <= coverage <= 0.97 and abs(coverage - expected) < 0.025, (coverage, expected)
    assert 0.01 <= below / trials <= 0.045 and 0.01 <= above / trials <= 0.045, (below, above)   # both tails


def test_paired_difference_is_a_minus_b():
    a, b = [3.0, 5.0, 4.0, 6.0], [1.0, 2.0, 2.0, 3.0]      # a beats b on every image, by 2, 3, 2, 3
    diff = paired_difference(a, b)
    assert diff.mean == pytest.approx(2.5)
    # every resampled mean of the per-image differences lies between the smallest and largest difference
    assert 2.0 <= diff.low <= diff.mean <= diff.high <= 3.0
    reverse = paired_difference(b, a)
    assert (reverse.mean, reverse.low, reverse.high) == pytest.approx((-diff.mean, -diff.high, -diff.low))
