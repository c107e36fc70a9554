"""models.metrics against reference formulas, brute-force computations (scipy / scikit-learn) and the reference
libraries prdc and torchmetrics."""

from __future__ import annotations

import numpy as np
import prdc  # reference implementations (dev extra)
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist
from sklearn.metrics.pairwise import euclidean_distances
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from synthaug.models import metrics

CHUNKS = (1, 3, 7, 4096)




def _gauss(n: int, f: int, *, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, f))


# ------------------------------------------------------------------------------------------ brute-force references


def _ref_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _ref_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / d + 1.0) ** 3

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def _ref_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = euclidean_distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def _ref_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    d = euclidean_distances(real, fake)  # (N, M)
    precision = (d <= _ref_radii(real, k)[:, None]).any(axis=0).mean()
    d_fake_real = d.transpose()
    recall = (d_fake_real <= _ref_radii(fake, k)[:, None]).any(axis=0).mean()
    return float(precision), float(recall)


def _ref_density_coverage(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    d = euclidean_distances(real, fake)
    r = _ref_radii(real, k)
    density = (d <= r[:, None]).sum() / (k * fake.shape[0])
    coverage = (d.min(axis=1) <= r).mean()
    return float(density), float(coverage)


def _ref_greedy_duplicates(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    d = euclidean_distances(x, x)
    kept: list[int] = []
    is_dup = np.zeros(len(x), dtype=bool)
    dup_of = np.full(len(x), -1)
    for j in range(len(x)):
        if kept:
            i = kept[int(np.argmin(d[j, kept]))]
            if d[j, i] <= threshold:
                is_dup[j], dup_of[j] = True, i
                continue
        kept.append(j)
    return is_dup, dup_of


# -------------------------------------------------------------------------------------------------------- FID / KID


def test_fid_matches_scipy_sqrtm_reference() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    b = rng.normal(0.3, 1.0, size=(300, 8)) @ rng.normal(size=(8, 8))
    ref = _ref_fid(a, b)
    assert metrics.fid(a, b) == pytest.approx(ref, rel=1e-8)
    assert metrics.fid(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(ref, rel=1e-5)
    mu1, s1 = metrics.feature_stats(a)
    mu2, s2 = metrics.feature_stats(b)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_zero_for_identical_sets_and_grows_with_shift() -> None:
    a = _gauss(500, 16, seed=1)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-8)
    # Fewer images than features: singular covariances must still give ~0, not NaN.
    few = _gauss(10, 32, seed=2)
    assert metrics.fid(few, few) == pytest.approx(0.0, abs=1e-6)
    values = [metrics.fid(a, _gauss(500, 16, seed=3, shift=s)) for s in (0.0, 0.5, 2.0)]
    assert values[0] < 0.5 < values[1] < values[2]
    assert values[2] == pytest.approx(16 * 2.0**2, rel=0.1)  # |mu1 - mu2|^2 dominates


def test_polynomial_mmd2_matches_quadratic_reference() -> None:
    x, y = _gauss(30, 5, seed=4), _gauss(23, 5, seed=5, shift=0.4)
    ref = _ref_mmd2(x, y)
    for chunk in CHUNKS:
        assert metrics.polynomial_mmd2(x, y, chunk=chunk) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_kid_single_full_subset_equals_mmd2_and_is_seeded() -> None:
    x, y = _gauss(25, 4, seed=6), _gauss(25, 4, seed=7, shift=0.5)
    full = metrics.kid(x, y, subsets=1, subset_size=25, seed=3)
    assert full.mean == pytest.approx(_ref_mmd2(x, y), rel=1e-10)
    assert full.std == 0.0
    assert (full.subset_size, full.subsets, full.n_real, full.n_fake) == (25, 1, 25, 25)
    a = metrics.kid(x, y, subsets=20, subset_size=10, seed=3)
    b = metrics.kid(x, y, subsets=20, subset_size=10, seed=3)
    c = metrics.kid(x, y, subsets=20, subset_size=10, seed=4)
    assert a == b and a.mean != c.mean and a.std > 0


def test_kid_near_zero_for_same_distribution_and_larger_when_shifted() -> None:
    real = _gauss(400, 16, seed=8)
    same = metrics.kid(real, _gauss(400, 16, seed=9), subsets=20, subset_size=200)
    shifted = metrics.kid(real, _gauss(400, 16, seed=9, shift=1.0), subsets=20, subset_size=200)
    assert abs(same.mean) < 0.05
    assert shifted.mean > 10 * max(abs(same.mean), 0.01)
    assert metrics.kid(real, real[:50], subsets=2).subset_size == 50  # None -> min(N, M, 1000)


# ---------------------------------------------------------------------------- precision / recall, density / coverage


def test_knn_radii_match_brute_force_for_every_chunk() -> None:
    x = _gauss(40, 6, seed=10)
    for k in (1, 3, 5):
        ref = _ref_radii(x, k)
        for chunk in CHUNKS:
            np.testing.assert_allclose(metrics.knn_radii(x, k, chunk=chunk), ref, rtol=1e-9)


def test_precision_recall_match_brute_force() -> None:
    real, fake = _gauss(60, 3, seed=11), _gauss(45, 3, seed=12, shift=0.8, scale=0.7)
    ref = _ref_precision_recall(real, fake, 3)
    assert 0.05 < ref[0] < 0.95 and 0.05 < ref[1] < 0.95  # a case where both are informative
    for chunk in CHUNKS:
        got = metrics.precision_recall(real, fake, k=3, chunk=chunk)
        assert (got.precision, got.recall) == pytest.approx(ref, abs=1e-12)
        assert (got.k, got.n_real, got.n_fake) == (3, 60, 45)


def test_precision_recall_same_distribution_near_one_disjoint_zero() -> None:
    real = _gauss(500, 4, seed=13)
    copy = metrics.precision_recall(real, real)
    assert copy.precision == 1.0 and copy.recall == 1.0
    same = metrics.precision_recall(real, _gauss(500, 4, seed=14))
    assert same.precision > 0.85 and same.recall > 0.85
    far = metrics.precision_recall(real, _gauss(500, 4, seed=14, shift=50.0))
    assert far.precision == 0.0 and far.recall == 0.0


def test_density_coverage_match_brute_force() -> None:
    real, fake = _gauss(70, 3, seed=15), _gauss(50, 3, seed=16, shift=0.5)
    ref = _ref_density_coverage(real, fake, 5)
    for chunk in CHUNKS:
        got = metrics.density_coverage(real, fake, k=5, chunk=chunk)
        assert (got.density, got.coverage) == pytest.approx(ref, abs=1e-12)
        assert (got.k, got.n_real, got.n_fake) == (5, 70, 50)


def test_density_coverage_same_distribution_near_one_disjoint_zero() -> None:
    real = _gauss(600, 4, seed=17)
    same = metrics.density_coverage(real, _gauss(600, 4, seed=18))
    assert 0.8 < same.density < 1.2 and same.coverage > 0.9
    assert metrics.density_coverage(real, real).coverage == 1.0
    far = metrics.density_coverage(real, _gauss(600, 4, seed=18, shift=50.0))
    assert far.density == 0.0 and far.coverage == 0.0


def test_balls_are_closed() -> None:
    # Integer points: every distance is exact, so the fake at 4 sits exactly on the 1-NN ball of the real 3.
    real, fake = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([[4.0], [4.5]])
    radii = metrics.knn_radii(real, 1)
    assert radii.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert metrics.realism_inside(real, radii, fake).tolist() == [True, False]
    assert metrics.precision_recall(real, fake, k=1).precision == 0.5
    assert metrics.density_coverage(real, fake, k=1).density == 0.5


# ----------------------------------------------------------------------------------------------- per-sample tests


def test_realism_inside_and_score_match_brute_force() -> None:
    real, fake = _gauss(50, 3, seed=19), _gauss(40, 3, seed=20, shift=1.0)
    radii = metrics.knn_radii(real, 3)
    d = euclidean_distances(fake, real)
    ref_inside = (d <= radii[None, :]).any(axis=1)
    ref_score = (radii[None, :] / d).max(axis=1)
    assert 0 < ref_inside.sum() < len(fake)
    for chunk in CHUNKS:
        inside = metrics.realism_inside(real, radii, fake, chunk=chunk)
        assert inside.dtype == bool and np.array_equal(inside, ref_inside)
        score = metrics.realism_score(real, radii, fake, chunk=chunk)
        np.testing.assert_allclose(score, ref_score, rtol=1e-9)
        assert np.array_equal(score >= 1.0, inside)
    assert np.isinf(metrics.realism_score(real, radii, real[:2])).all()  # exact copies


def test_nearest_distance_matches_brute_force_on_features_and_pixels() -> None:
    q, r = _gauss(33, 10, seed=21), _gauss(57, 10, seed=22)
    d = euclidean_distances(q, r)
    for chunk in CHUNKS:
        got = metrics.nearest_distance(q, r, chunk=chunk)
        np.testing.assert_allclose(got.distance, d.min(axis=1), rtol=1e-10)
        assert np.array_equal(got.index, d.argmin(axis=1))
    # Ties go to the lowest reference index whatever the chunking.
    dup = np.concatenate([r[:10], r[3:4], r[10:], r[3:4]])
    for chunk in CHUNKS:
        assert metrics.nearest_distance(r[3:4], dup, chunk=chunk).index.tolist() == [3]
        assert metrics.nearest_correlation(r[3:4], dup, chunk=chunk).index.tolist() == [3]
    # Images (N, C, H, W) are flattened; an exact copy is at distance exactly 0.
    imgs = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    got = metrics.nearest_distance(imgs[[5, 2]], imgs, chunk=5)
    assert np.array_equal(got.index, [5, 2]) and np.array_equal(got.distance, [0.0, 0.0])


def test_streamed_searches_equal_brute_force_for_every_block_and_dtype() -> None:
    """The reference read a block at a time (any block size) gives the whole search's answer; uint8 reference
    pixels (a memmap of stored levels) give the correlations of the decoded images."""
    g = torch.Generator().manual_seed(3)
    q, r = torch.randn(13, 5, generator=g, dtype=torch.float64), torch.randn(37, 5, generator=g, dtype=torch.float64)
    brute = torch.cdist(q, r).min(dim=1).values.numpy()
    levels = torch.randint(0, 256, (37, 16), generator=g, dtype=torch.uint8).numpy()
    decoded = levels.astype(np.float64) / 127.5 - 1.0
    query = decoded[:9] + 0.05 * torch.randn(9, 16, generator=g, dtype=torch.float64).numpy()
    brute_corr = np.corrcoef(np.concatenate([query, decoded]))[:9, 9:].max(axis=1)
    for block in (1, 4, 36, 37, 1000):
        np.testing.assert_allclose(metrics.nearest_distance_streamed(q, r, block=block, chunk=3), brute, rtol=1e-12)
        for reference in (levels, decoded):
            got = metrics.nearest_correlation_streamed(query, reference, block=block, chunk=5)
            np.testing.assert_allclose(got, brute_corr, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 1 row"):
        metrics.nearest_distance_streamed(q, r[:0])


def test_nearest_correlation_matches_brute_force_and_finds_copies() -> None:
    q, r = _gauss(21, 16, seed=23), _gauss(34, 16, seed=24)
    corr = np.corrcoef(q, r)[: len(q), len(q):]
    for chunk in CHUNKS:
        got = metrics.nearest_correlation(q, r, chunk=chunk)
        np.testing.assert_allclose(got.correlation, corr.max(axis=1), atol=1e-12)
        assert np.array_equal(got.index, corr.argmax(axis=1))
    imgs = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    copies = torch.stack([imgs[7], 0.5 * imgs[3] + 0.2])  # exact copy, and a copy with new contrast/brightness
    got = metrics.nearest_correlation(copies, imgs, chunk=4)
    assert np.array_equal(got.index, [7, 3])
    np.testing.assert_allclose(got.correlation, [1.0, 1.0], atol=1e-12)
    # A constant image has no correlation with anything (it is the sanity filter's job).
    assert metrics.nearest_correlation(torch.zeros(1, 1, 8, 8), imgs).correlation[0] == 0.0


def test_near_duplicates_on_a_constructed_chain() -> None:
    points = np.array([[0.0], [0.05], [1.0], [1.08], [1.16], [5.0], [0.0]])
    for chunk in (1, 2, 3, 100):
        got = metrics.pairwise_near_duplicates(points, 0.1, chunk=chunk)
        # 1.16 is within 0.1 of 1.08 only, which is itself a duplicate: 1.16 stays (greedy over kept rows).
        assert got.is_duplicate.tolist() == [False, True, False, True, False, False, True]
        assert got.duplicate_of.tolist() == [-1, 0, -1, 2, -1, -1, 0]
    assert not metrics.pairwise_near_duplicates(points, 0.0).is_duplicate[:6].any()
    assert metrics.pairwise_near_duplicates(points, 0.0).is_duplicate[6]  # an exact copy at threshold 0


def test_near_duplicates_match_greedy_brute_force() -> None:
    x = _gauss(80, 2, seed=25)
    ref_dup, ref_of = _ref_greedy_duplicates(x, 0.25)
    assert 5 < ref_dup.sum() < 75
    for chunk in CHUNKS:
        got = metrics.pairwise_near_duplicates(x, 0.25, chunk=chunk)
        assert np.array_equal(got.is_duplicate, ref_dup) and np.array_equal(got.duplicate_of, ref_of)
    kept = x[~ref_dup]
    assert pdist(kept).min() > 0.25


def test_within_class_diversity_is_mean_pairwise_distance() -> None:
    x = _gauss(31, 5, seed=26)
    for chunk in CHUNKS:
        assert metrics.within_class_diversity(x, chunk=chunk) == pytest.approx(pdist(x).mean(), rel=1e-9)
    assert metrics.within_class_diversity(np.ones((4, 3))) == 0.0
    assert metrics.within_class_diversity(x) > metrics.within_class_diversity(0.1 * x)


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.fid(np.zeros((5, 3)), np.zeros((5, 4))), "same feature size"),
        (lambda: metrics.fid(np.zeros((1, 3)), np.zeros((5, 3))), "at least 2 rows"),
        (lambda: metrics.fid(np.full((5, 3), np.nan), np.zeros((5, 3))), "NaN"),
        (lambda: metrics.fid(np.zeros(5), np.zeros(5)), "2-D"),
        (lambda: metrics.knn_radii(np.zeros((3, 2)), 3), "k=3"),
        (lambda: metrics.precision_recall(np.zeros((10, 2)), np.zeros((3, 2)), k=3), "k=3"),
        (lambda: metrics.kid(np.zeros((10, 2)), np.zeros((8, 2)), subset_size=9), "got 9"),
        (lambda: metrics.kid(np.zeros((10, 2)), np.zeros((8, 2)), subsets=0), "got 0"),
        (lambda: metrics.nearest_distance(np.zeros((3, 2)), np.zeros((3, 2)), chunk=0), "chunk"),
        (lambda: metrics.pairwise_near_duplicates(np.zeros((3, 2)), -1.0), "-1.0"),
        (lambda: metrics.realism_inside(np.zeros((4, 2)), np.zeros(3), np.zeros((2, 2))), r"\(4,\)"),
    ],
)
def test_bad_input_raises_value_error_naming_it(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- against the reference libraries
# prdc (Naeem et al.'s own code) and torchmetrics' FID/KID pieces, on the same feature vectors. prdc's balls are
# open (<) and ours closed (<=): on continuous random features no distance equals a radius, so the values agree.


@pytest.mark.parametrize(("n_real", "n_fake", "dim", "shift", "k"), [(80, 60, 4, 0.6, 3), (120, 120, 16, 0.0, 5),
                                                                      (50, 90, 8, 1.5, 5)])
def test_prdc_matches_the_prdc_package(n_real: int, n_fake: int, dim: int, shift: float, k: int) -> None:
    real = _gauss(n_real, dim, seed=n_real + dim)
    fake = _gauss(n_fake, dim, seed=n_fake + dim + 1, shift=shift, scale=0.8)
    ref = prdc.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    assert 0.0 < ref["precision"] < 1.0 or 0.0 < ref["coverage"] < 1.0  # an informative case, not all-or-nothing
    pr = metrics.precision_recall(real, fake, k=k)
    dc = metrics.density_coverage(real, fake, k=k)
    assert pr.precision == pytest.approx(ref["precision"], abs=1e-12)
    assert pr.recall == pytest.approx(ref["recall"], abs=1e-12)
    assert dc.density == pytest.approx(ref["density"], abs=1e-12)
    assert dc.coverage == pytest.approx(ref["coverage"], abs=1e-12)


@pytest.mark.parametrize(("n", "dim", "shift"), [(200, 6, 0.0), (300, 12, 0.4), (150, 4, 2.0)])
def test_fid_matches_torchmetrics(n: int, dim: int, shift: float) -> None:
    rng = np.random.default_rng(dim)
    real = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    fake = rng.normal(shift, 1.0, size=(n + 37, dim)) @ rng.normal(size=(dim, dim))
    r, f = torch.from_numpy(real), torch.from_numpy(fake)
    # torchmetrics' FrechetInceptionDistance summarises each set by its mean and unbiased covariance.
    ref = float(_compute_fid(r.mean(0), torch.cov(r.T), f.mean(0), torch.cov(f.T)))
    assert metrics.fid(real, fake) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(("n", "dim", "shift"), [(40, 8, 0.0), (64, 16, 0.3), (30, 5, 1.0)])
def test_kid_matches_torchmetrics(n: int, dim: int, shift: float) -> None:
    real, fake = _gauss(n, dim, seed=dim), _gauss(n, dim, seed=dim + 1, shift=shift)
    ref = float(poly_mmd(torch.from_numpy(real), torch.from_numpy(fake)))  # cubic kernel, gamma 1/d, coef 1
    assert metrics.polynomial_mmd2(real, fake) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # One subset of every row: a permutation of both sets, so KID's mean is the same unbiased MMD^2.
    one = metrics.kid(real, fake, subsets=1, subset_size=n)
    assert one.mean == pytest.approx(ref, rel=1e-9, abs=1e-12)
