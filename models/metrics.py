"""Quality, diversity and memorization metrics on feature vectors (N, F) or flattened pixels.

Everything here takes torch tensors or numpy arrays, computes in float64 on the tensor's device (the CPU for
numpy input) and returns Python floats, numpy arrays or small NamedTuples of them. Pairwise distances are
computed in ``chunk`` x ``chunk`` blocks with running reductions, so memory stays O(chunk^2 + N F) whatever the
number of images; results do not depend on the chunk size (ties resolve to the lowest index).

Set-level results carry the sample counts they were computed on: the caller reports them next to the value,
because every one of these estimators is biased or noisy at the small per-class counts this project works with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray

DEFAULT_CHUNK = 1024
DEFAULT_BLOCK = 16_384  # reference rows the streamed searches hold as float64 at once
# Matrix block of the streamed searches: 4096^2 float64 = 128 MiB, in return about 2.5x the speed of 1024 blocks
# on a 2-core CPU (fewer, larger matrix products), where these searches over 1e5 x 1e5 images spend minutes.
SEARCH_CHUNK = 4096


class KID(NamedTuple):
    """Kernel inception distance over random subsets: the mean and std of the unbiased MMD^2 estimates."""

    mean: float
    std: float
    subset_size: int
    subsets: int
    n_real: int
    n_fake: int


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float
    k: int
    n_real: int
    n_fake: int


class DensityCoverage(NamedTuple):
    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int


class Nearest(NamedTuple):
    """Per query row: the distance to its nearest reference row and that row's index."""

    distance: np.ndarray
    index: np.ndarray


class NearestCorrelation(NamedTuple):
    """Per query row: the highest Pearson correlation with any reference row and that row's index."""

    correlation: np.ndarray
    index: np.ndarray


class NearDuplicates(NamedTuple):
    """``is_duplicate[j]``: row j lies within the threshold of an earlier kept row, ``duplicate_of[j]`` (else -1)."""

    is_duplicate: np.ndarray
    duplicate_of: np.ndarray


# --------------------------------------------------------------------------------------------------- input handling


def _as_matrix(x: ArrayLike, name: str, *, min_rows: int = 1) -> torch.Tensor:
    """A float64 (N, F) tensor on ``x``'s device; raises on a wrong shape, too few rows or non-finite values."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, F), got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _as_pixels(x: ArrayLike, name: str, *, min_rows: int = 1) -> torch.Tensor:
    """Images (N, ...) flattened to a float64 (N, D) tensor; (N, D) passes through."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must be (N, ...) with at least 2 dimensions, got shape {tuple(x.shape)}")
    return _as_matrix(x.reshape(x.shape[0], -1), name, min_rows=min_rows)


def _pair(a: ArrayLike, b: ArrayLike, names: tuple[str, str], *, min_rows: tuple[int, int] = (1, 1),
          pixels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as float64 matrices with the same row size, on the first one's device."""
    convert = _as_pixels if pixels else _as_matrix
    ta, tb = convert(a, names[0], min_rows=min_rows[0]), convert(b, names[1], min_rows=min_rows[1])
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same feature size, "
                         f"got {ta.shape[1]} and {tb.shape[1]}")
    return ta, tb.to(ta.device)


def _check_chunk(chunk: int) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")


def _check_k(k: int, n: int, name: str) -> None:
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {name} rows - 1] = [1, {n - 1}], got k={k}")


def _radii(radii: ArrayLike, n: int, device: torch.device) -> torch.Tensor:
    r = torch.as_tensor(radii).detach().to(device=device, dtype=torch.float64)
    if r.shape != (n,):
        raise ValueError(f"real_radii must have shape ({n},) to match real, got {tuple(r.shape)}")
    return r


# --------------------------------------------------------------------------------------------- blocked distances


def _blocks(n: int, chunk: int) -> Iterator[slice]:
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))


def _distances(a: torch.Tensor, a_sq: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    # |a-b|^2 = |a|^2 + |b|^2 - 2ab: one matmul per block. In float64 the cancellation error is ~1e-8 |a|,
    # far below any threshold used on these distances.
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0).sqrt_()


def _distance_blocks(q: torch.Tensor, r: torch.Tensor, chunk: int) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """(query rows, reference rows, Euclidean distances) for every chunk x chunk block, query-major."""
    q_sq, r_sq = (q * q).sum(1), (r * r).sum(1)
    for qs in _blocks(q.shape[0], chunk):
        for rs in _blocks(r.shape[0], chunk):
            yield qs, rs, _distances(q[qs], q_sq[qs], r[rs], r_sq[rs])


def _nearest(q: torch.Tensor, r: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    best = torch.full((q.shape[0],), torch.inf, dtype=torch.float64, device=q.device)
    arg = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    r_sq = (r * r).sum(1)
    for qs in _blocks(q.shape[0], chunk):
        for rs in _blocks(r.shape[0], chunk):
            # argmin_j |q - r_j|^2 = argmin_j |r_j|^2 - 2 q.r_j: |q|^2, the clamp and the root change no ranking,
            # so one fused matmul per block finds the winner (the search's cost is this matmul).
            m, a = torch.addmm(r_sq[rs], q[qs], r[rs].T, alpha=-2.0).min(dim=1)  # first minimum within the block
            better = m < best[qs]  # strict: an earlier block keeps ties, so the lowest index wins
            best[qs] = torch.where(better, m, best[qs])
            arg[qs] = torch.where(better, a + rs.start, arg[qs])
    # Recompute the winners' distances directly: exact (0 for a copy), free of the matmul's cancellation.
    for qs in _blocks(q.shape[0], chunk):
        best[qs] = (q[qs] - r[arg[qs]]).norm(dim=1)
    return best, arg


def _inside_any_ball(centres: torch.Tensor, radii: torch.Tensor, points: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per point: lies in at least one closed ball B(centre_i, radius_i)."""
    inside = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for ps, cs, d in _distance_blocks(points, centres, chunk):
        inside[ps] |= (d <= radii[cs][None, :]).any(dim=1)
    return inside


def _knn_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float64, device=x.device)
    idx = torch.arange(n, device=x.device)
    kept: dict[int, torch.Tensor] = {}  # query block start -> running k smallest distances
    for qs, rs, d in _distance_blocks(x, x, chunk):
        if qs.start < rs.stop and rs.start < qs.stop:  # the block holds some self-distances: exclude them
            d = d.masked_fill(idx[qs][:, None] == idx[rs][None, :], torch.inf)
        prev = kept.get(qs.start)
        cand = d if prev is None else torch.cat([prev, d], dim=1)
        kept[qs.start] = cand.topk(min(k, cand.shape[1]), dim=1, largest=False).values
        if rs.stop == n:
            out[qs] = kept.pop(qs.start)[:, k - 1]
    return out


# ------------------------------------------------------------------------------------------- distribution metrics


def feature_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of features (N, F), N >= 2: the Gaussian summary FID compares.

    Args:
        feats: features (N, F).
    """
    x = _as_matrix(feats, "feats", min_rows=2)
    mu = x.mean(dim=0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    return mu.cpu().numpy(), sigma.cpu().numpy()


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(m)
    return (v * w.clamp_min(0.0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}). S1 S2 is not symmetric, but it is similar to
    S1^{1/2} S2 S1^{1/2}, which is symmetric PSD: its square root's trace comes from ``eigvalsh`` alone, stable
    even when the covariances are singular (fewer images than features).

    Args:
        mu1, sigma1: mean (F,) and covariance (F, F) of the first set (see ``feature_stats``).
        mu2, sigma2: the same for the second set.
    """
    m1, m2 = (torch.as_tensor(m).to(torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s).to(torch.float64).to(m1.device) for s in (sigma1, sigma2))
    m2 = m2.to(m1.device)
    f = m1.shape[0]
    for name, m in (("mu1", m1), ("mu2", m2)):
        if m.shape != (f,):
            raise ValueError(f"{name} must have shape ({f},), got {tuple(m.shape)}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (f, f):
            raise ValueError(f"{name} must have shape ({f}, {f}), got {tuple(s.shape)}")
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    middle = (middle + middle.T) / 2  # remove round-off asymmetry before eigvalsh
    tr_covmean = torch.linalg.eigvalsh(middle).clamp_min(0.0).sqrt().sum()
    diff = m1 - m2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * tr_covmean)


def fid(real_feats: ArrayLike, fake_feats: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (each N >= 2).

    Strongly biased upwards at small N (Chong & Forsyth 2020): compare values only at equal sample counts,
    and prefer KID for per-class comparisons of a few hundred images.

    Args:
        real_feats: reference features (N, F).
        fake_feats: features of the set under test (M, F).
    """
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), min_rows=(2, 2))
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def _poly_kernel_sum(a: torch.Tensor, b: torch.Tensor, chunk: int, *, skip_diagonal: bool) -> float:
    # Cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 of Bińkowski et al. 2018 (KID).
    d = a.shape[1]
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for as_ in _blocks(a.shape[0], chunk):
        for bs in _blocks(b.shape[0], chunk):
            k = (a[as_] @ b[bs].T / d + 1.0) ** 3
            if skip_diagonal and as_.start < bs.stop and bs.start < as_.stop:
                ia = torch.arange(as_.start, as_.stop, device=a.device)
                ib = torch.arange(bs.start, bs.stop, device=a.device)
                k = k.masked_fill(ia[:, None] == ib[None, :], 0.0)
            total += k.sum()
    return float(total)


def polynomial_mmd2(real_feats: ArrayLike, fake_feats: ArrayLike, *, chunk: int = DEFAULT_CHUNK) -> float:
    """Unbiased estimate of MMD^2 with the cubic polynomial kernel (Bińkowski et al. 2018, Gretton et al. 2012).

    Diagonal terms k(x_i, x_i) are left out of the within-set means, so the estimate is unbiased and can be
    slightly negative when the two sets come from the same distribution.

    Args:
        real_feats: features (N, F), N >= 2.
        fake_feats: features (M, F), M >= 2.
        chunk: block size of the kernel matrices.
    """
    _check_chunk(chunk)
    x, y = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), min_rows=(2, 2))
    n, m = x.shape[0], y.shape[0]
    kxx = _poly_kernel_sum(x, x, chunk, skip_diagonal=True) / (n * (n - 1))
    kyy = _poly_kernel_sum(y, y, chunk, skip_diagonal=True) / (m * (m - 1))
    kxy = _poly_kernel_sum(x, y, chunk, skip_diagonal=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


def kid(real_feats: ArrayLike, fake_feats: ArrayLike, *, subsets: int = 100, subset_size: int | None = None,
        seed: int = 0, chunk: int = DEFAULT_CHUNK) -> KID:
    """Kernel inception distance: unbiased polynomial-kernel MMD^2 averaged over random subsets.

    Unbiased at any sample count (Bińkowski et al. 2018), unlike FID, hence the better choice per class.
    Each subset draws ``subset_size`` rows without replacement from each set with one seeded generator.

    Args:
        real_feats: reference features (N, F).
        fake_feats: features under test (M, F).
        subsets: number of random subsets averaged.
        subset_size: rows drawn from each set per subset, in [2, min(N, M)]; None takes min(N, M, 1000).
        seed: seed of the subset draws.
        chunk: block size of the kernel matrices.
    """
    _check_chunk(chunk)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    x, y = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), min_rows=(2, 2))
    n, m = x.shape[0], y.shape[0]
    size = min(n, m, 1000) if subset_size is None else subset_size
    if not 2 <= size <= min(n, m):
        raise ValueError(f"subset_size must be in [2, min(N, M)] = [2, {min(n, m)}], got {subset_size}")
    rng = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        ix = torch.randperm(n, generator=rng)[:size].to(x.device)
        iy = torch.randperm(m, generator=rng)[:size].to(y.device)
        values.append(polynomial_mmd2(x[ix], y[iy], chunk=chunk))
    arr = np.asarray(values)
    return KID(mean=float(arr.mean()), std=float(arr.std()), subset_size=size, subsets=subsets, n_real=n, n_fake=m)


def knn_radii(feats: ArrayLike, k: int, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Distance from each row to its k-th nearest other row: the radius of its k-NN ball (N,).

    Args:
        feats: features (N, F), N > k.
        k: neighbour rank (the row itself does not count).
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    x = _as_matrix(feats, "feats")
    _check_k(k, x.shape[0], "feats")
    return _knn_radii(x, k, chunk).cpu().numpy()


def precision_recall(real_feats: ArrayLike, fake_feats: ArrayLike, *, k: int = 3,
                     chunk: int = DEFAULT_CHUNK) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of closed balls around its rows with radius the distance to the k-th
    nearest neighbour. Precision: share of fake rows inside the real manifold (fidelity). Recall: share of real
    rows inside the fake manifold (how much of the real variety the fakes cover).

    Args:
        real_feats: reference features (N, F), N > k.
        fake_feats: features under test (M, F), M > k.
        k: neighbour rank of the ball radii (3 in the paper).
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    _check_k(k, real.shape[0], "real_feats")
    _check_k(k, fake.shape[0], "fake_feats")
    precision = _inside_any_ball(real, _knn_radii(real, k, chunk), fake, chunk).double().mean()
    recall = _inside_any_ball(fake, _knn_radii(fake, k, chunk), real, chunk).double().mean()
    return PrecisionRecall(precision=float(precision), recall=float(recall), k=k,
                           n_real=real.shape[0], n_fake=fake.shape[0])


def density_coverage(real_feats: ArrayLike, fake_feats: ArrayLike, *, k: int = 5,
                     chunk: int = DEFAULT_CHUNK) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020): precision/recall made robust to outliers.

    Only real k-NN balls are used. Density: mean number of real balls holding each fake row, divided by k
    (about 1 when the two sets match; above 1 when fakes crowd dense real regions). Coverage: share of real
    rows whose ball holds at least one fake row.

    Args:
        real_feats: reference features (N, F), N > k.
        fake_feats: features under test (M, F).
        k: neighbour rank of the ball radii (5 in the paper).
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    _check_k(k, real.shape[0], "real_feats")
    radii = _knn_radii(real, k, chunk)
    count = torch.zeros((), dtype=torch.float64, device=real.device)
    for _, rs, d in _distance_blocks(fake, real, chunk):
        count += (d <= radii[rs][None, :]).sum()
    nearest_fake, _ = _nearest(real, fake, chunk)
    density = count / (k * fake.shape[0])
    coverage = (nearest_fake <= radii).double().mean()
    return DensityCoverage(density=float(density), coverage=float(coverage), k=k,
                           n_real=real.shape[0], n_fake=fake.shape[0])


def within_class_diversity(feats: ArrayLike, *, chunk: int = DEFAULT_CHUNK) -> float:
    """Mean Euclidean distance over all pairs of distinct rows (N >= 2); compare real and synthetic per class.

    Args:
        feats: features (N, F) of one class.
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    x = _as_matrix(feats, "feats", min_rows=2)
    n = x.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for _, _, d in _distance_blocks(x, x, chunk):
        total += d.sum()  # self-distances are 0 up to round-off; the mean is over the n(n-1) ordered pairs
    return float(total / (n * (n - 1)))


# ------------------------------------------------------------------------------------------- per-sample metrics


def realism_inside(real_feats: ArrayLike, real_radii: ArrayLike, fake_feats: ArrayLike, *,
                   chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per fake row: inside at least one real k-NN ball (the per-sample test behind precision). Bool (M,).

    Args:
        real_feats: reference features (N, F).
        real_radii: their k-NN radii (N,), from ``knn_radii``.
        fake_feats: features under test (M, F).
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    radii = _radii(real_radii, real.shape[0], real.device)
    return _inside_any_ball(real, radii, fake, chunk).cpu().numpy()


def realism_score(real_feats: ArrayLike, real_radii: ArrayLike, fake_feats: ArrayLike, *,
                  chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per fake row: max_i r_i / |fake - real_i| (Kynkäänniemi et al. 2019, realism score), float (M,).

    >= 1 exactly when the row is inside some real k-NN ball; a continuous score to store beside the boolean
    test. (The paper also drops the real rows with the largest radii first; pass a pruned real set for that.)
    An exact copy of a real row scores inf.

    Args:
        real_feats: reference features (N, F).
        real_radii: their k-NN radii (N,), from ``knn_radii``.
        fake_feats: features under test (M, F).
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"))
    radii = _radii(real_radii, real.shape[0], real.device)
    score = torch.zeros(fake.shape[0], dtype=torch.float64, device=fake.device)
    for fs, rs, d in _distance_blocks(fake, real, chunk):
        # d == 0 gives inf, and 0/0 (a copy of a real row whose radius is 0) is inside the closed ball too.
        ratio = torch.nan_to_num(radii[rs][None, :] / d, nan=torch.inf, posinf=torch.inf)
        score[fs] = torch.maximum(score[fs], ratio.max(dim=1).values)
    return score.cpu().numpy()


def nearest_distance(query: ArrayLike, reference: ArrayLike, *, chunk: int = DEFAULT_CHUNK) -> Nearest:
    """Euclidean distance from each query row to its nearest reference row, and that row's index.

    Use on features or on flattened pixels (memorization: synthetic -> training images).

    Args:
        query: (Q, F) features, or images (Q, ...) flattened here.
        reference: (R, F) or images (R, ...) with the same per-row size.
        chunk: block size of the distance matrices.
    """
    _check_chunk(chunk)
    q, r = _pair(query, reference, ("query", "reference"), pixels=True)
    best, arg = _nearest(q, r, chunk)
    return Nearest(distance=best.cpu().numpy(), index=arg.cpu().numpy())


def nearest_distance_streamed(query: ArrayLike, reference: ArrayLike, *, block: int = DEFAULT_BLOCK,
                              chunk: int = SEARCH_CHUNK) -> np.ndarray:
    """Per query row: the Euclidean distance to its nearest reference row, with the reference read ``block`` rows
    at a time (a numpy memmap stays on disk but for the block in use).

    ``nearest_distance`` holds both sets whole as float64; this holds one block of each: working memory
    O(block F + chunk^2) for any number Q of query and R of reference rows; time O(Q R F). It runs on the query's device
    (each block is copied there), so a CUDA query searches a host-memory reference on the GPU.

    Args:
        query: (Q, F) features, or images (Q, ...) flattened here.
        reference: (R, F) rows of any real dtype (a tensor, an array or a memmap), or images (R, ...).
        block: reference rows converted and searched at once; the result does not depend on it.
        chunk: block size of the distance matrices within a block.
    """
    return _best_over_blocks(query, reference, block, lambda q, r: nearest_distance(q, r, chunk=chunk).distance,
                             np.minimum)


def nearest_correlation_streamed(query_pixels: ArrayLike, reference_pixels: ArrayLike, *,
                                 block: int = DEFAULT_BLOCK, chunk: int = SEARCH_CHUNK) -> np.ndarray:
    """Per query image: the highest Pearson pixel correlation with any reference image, the reference read
    ``block`` images at a time; memory and time as ``nearest_distance_streamed`` with F the pixel count.

    A correlation does not change under an increasing affine map of either side, so reference images may be given
    as their 8-bit levels (uint8), an eighth of the memory of float64 values in [-1, 1].

    Args:
        query_pixels: images (Q, ...) or flattened (Q, D).
        reference_pixels: images (R, ...) or flattened (R, D), any real dtype.
        block: reference images converted and searched at once; the result does not depend on it.
        chunk: block size of the correlation matrices within a block.
    """
    return _best_over_blocks(query_pixels, reference_pixels, block,
                             lambda q, r: nearest_correlation(q, r, chunk=chunk).correlation, np.maximum)


def _best_over_blocks(query: ArrayLike, reference: ArrayLike, block: int, search, better) -> np.ndarray:
    """``search(query block, reference block)`` over every pair of ``block``-row blocks, reduced with ``better``
    across reference blocks (strict in both: the earliest block keeps a tie); both sides are converted a block at
    a time, so neither is ever held whole as float64."""
    _check_chunk(block)
    if len(reference) == 0:
        raise ValueError("reference needs at least 1 row, got 0")
    parts = []
    for qs in range(0, len(query), block):
        q = _block_rows(query[qs:qs + block])
        best = None
        for rs in range(0, len(reference), block):
            values = search(q, _block_rows(reference[rs:rs + block]))
            best = values if best is None else better(best, values)
        parts.append(best)
    return np.concatenate(parts) if parts else np.empty(0)


def _block_rows(rows: ArrayLike) -> ArrayLike:
    """A numpy block (a memmap slice is read here) as a float64 tensor; tensors pass through (converted later)."""
    if isinstance(rows, np.ndarray):
        return torch.from_numpy(np.asarray(rows, dtype=np.float64))
    return rows


def _standardize_rows(x: torch.Tensor) -> torch.Tensor:
    xc = x - x.mean(dim=1, keepdim=True)
    norm = xc.norm(dim=1, keepdim=True)
    # A constant row has no defined correlation: it becomes the zero vector (correlation 0 with everything);
    # the sanity filter rejects constant images on its own.
    return torch.where(norm > 0, xc / norm.clamp_min(1e-300), torch.zeros_like(xc))


def nearest_correlation(query_pixels: ArrayLike, reference_pixels: ArrayLike, *,
                        chunk: int = DEFAULT_CHUNK) -> NearestCorrelation:
    """Highest Pearson correlation of each query image with any reference image, and that image's index.

    Correlation of the flattened pixels ignores brightness and contrast changes, so a memorized training image
    that came back slightly shifted in intensity still scores near 1; an exact copy scores 1.

    Args:
        query_pixels: images (Q, ...) or flattened (Q, D).
        reference_pixels: images (R, ...) or flattened (R, D), same D.
        chunk: block size of the correlation matrices.
    """
    _check_chunk(chunk)
    q, r = _pair(query_pixels, reference_pixels, ("query_pixels", "reference_pixels"), pixels=True)
    q, r = _standardize_rows(q), _standardize_rows(r)
    best = torch.full((q.shape[0],), -torch.inf, dtype=torch.float64, device=q.device)
    arg = torch.zeros(q.shape[0], dtype=torch.int64, device=q.device)
    for qs in _blocks(q.shape[0], chunk):
        for rs in _blocks(r.shape[0], chunk):
            c = (q[qs] @ r[rs].T).clamp_(-1.0, 1.0)
            m, a = c.max(dim=1)
            better = m > best[qs]
            best[qs] = torch.where(better, m, best[qs])
            arg[qs] = torch.where(better, a + rs.start, arg[qs])
    return NearestCorrelation(correlation=best.cpu().numpy(), index=arg.cpu().numpy())


def pairwise_near_duplicates(feats: ArrayLike, threshold: float, *, chunk: int = DEFAULT_CHUNK) -> NearDuplicates:
    """Greedy de-duplication in row order: a row is a duplicate when an earlier *kept* row lies within
    ``threshold`` (Euclidean, inclusive); it is then marked with the nearest such kept row.

    Comparing with kept rows only (not with rows already marked) means every duplicate points at an image that
    stays, and a chain a~b~c with a and c far apart keeps a and c. The kept rows are pairwise farther apart than
    ``threshold``. Order the rows by priority (e.g. by seed) before calling.

    Args:
        feats: features (N, F) or images (N, ...) flattened here.
        threshold: distance at or below which two rows count as duplicates (>= 0).
        chunk: rows per block; the result does not depend on it.
    """
    _check_chunk(chunk)
    if not threshold >= 0.0:  # also rejects nan
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    x = _as_pixels(feats, "feats")
    n = x.shape[0]
    sq = (x * x).sum(1)
    is_dup = np.zeros(n, dtype=bool)
    dup_of = np.full(n, -1, dtype=np.int64)
    kept = torch.empty(0, dtype=torch.int64, device=x.device)  # global indices of kept rows, ascending
    for bs in _blocks(n, chunk):
        xb, sqb = x[bs], sq[bs]
        prev_d = torch.full((xb.shape[0],), torch.inf, dtype=torch.float64, device=x.device)
        prev_i = torch.full((xb.shape[0],), -1, dtype=torch.int64, device=x.device)
        for ks in _blocks(kept.shape[0], chunk):  # nearest kept row of the earlier blocks
            idx = kept[ks]
            m, a = _distances(xb, sqb, x[idx], sq[idx]).min(dim=1)
            better = m < prev_d
            prev_d = torch.where(better, m, prev_d)
            prev_i = torch.where(better, idx[a], prev_i)
        inner = _distances(xb, sqb, xb, sqb).cpu().numpy()
        prev_d_np, prev_i_np = prev_d.cpu().numpy(), prev_i.cpu().numpy()
        kept_here = np.zeros(xb.shape[0], dtype=bool)
        for j in range(xb.shape[0]):  # sequential within the block: row j sees the rows kept before it
            best_d, best_i = prev_d_np[j], prev_i_np[j]
            earlier = np.flatnonzero(kept_here[:j])
            if earlier.size:
                a = int(np.argmin(inner[j, earlier]))
                if inner[j, earlier[a]] < best_d:
                    best_d, best_i = inner[j, earlier[a]], bs.start + int(earlier[a])
            if best_d <= threshold:
                is_dup[bs.start + j], dup_of[bs.start + j] = True, best_i
            else:
                kept_here[j] = True
        new = torch.from_numpy(np.flatnonzero(kept_here) + bs.start).to(x.device)
        kept = torch.cat([kept, new])
    return NearDuplicates(is_duplicate=is_dup, duplicate_of=dup_of)
