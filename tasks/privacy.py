"""The ``privacy`` step: the gate an anonymized release (``synthaug anonymize``) has to pass.

The release is the filter's *accepted* synthetic images and nothing else. Three checks, all on real images the
pipeline already has (the real ``train`` split: the records to protect; ``val``, ``test`` and ``heldback``: real
images no model was trained on):

(a) **Memorization.** Every released image is compared again with *every* training image: its highest Pearson
    pixel correlation and its smallest feature distance (the filter's feature space: the judge's, or
    ``filter.extractor``'s). The thresholds are calibrated exactly as the filter's
    (``tasks.core.scoring.rules.memorization_thresholds`` on the real val -> train nearest distances), at
    ``privacy.memorization_quantile``. No released image may lie within either threshold. With
    ``privacy.memorization_quantile <= filter.memorization_quantile`` the filter has already rejected every image
    this check would flag; the gate holds the line when the filter is loosened, and re-measures the files actually
    released.
(b) **Membership inference.** A distance-based attack (the "distance to closest record" attack of GAN-Leaks, Chen et
    al. 2020): it scores each real image by how close it is to the release (highest pixel correlation, or minus the
    smallest feature distance, to any released image) and guesses "trained on" for the closest. Members are the
    real train images, non-members the held-out real ones. Its AUC is computed within each class and pooled over
    same-class (member, non-member) pairs (the Mann-Whitney U identity, AUC = U / (n_members n_non_members)), so the
    different class mix of members, non-members and release cannot pass for leakage; classes without released
    images are left out. A stratified bootstrap (``scipy.stats.bootstrap``, percentile) gives its confidence
    interval. The release fails when the interval's lower bound is above ``privacy.max_attack_auc`` (0.5: the
    attack does clearly better than a coin), in either space. The attacks' feature space is not the judge's
    (``attack_embedding``): the judge was trained on the members, and in its space a scarce class's members sit
    closer to any release of their class than unseen images do, so releases of real unseen images failed
    (``python -m bench.privacy_null``); a network trained on the released images alone has seen neither side.
(c) **Distance-to-closest-record distributions**: released -> train against held-out real -> train, in both
    spaces, as summary statistics in ``privacy.json`` and a histogram (``dcr.png``) for the card and the report.

``<out_dir>/privacy.json`` holds every number, the thresholds, the params and ``passed`` with one line per failed
check (what, measured value, threshold). A failed gate raises ``PrivacyGateError`` with those lines; the release
step refuses to assemble anything unless ``privacy.json`` passed for the very filter manifest it releases.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from synthaug.models.common import pick_device
from synthaug.models.judge import Judge, train_judge
from synthaug.models.metrics import nearest_correlation_streamed, nearest_distance_streamed
from synthaug.tasks.core.errors import UserError
from synthaug.tasks.core.io.files import file_sha256, write_atomic
from synthaug.tasks.core.io.images import load_images
from synthaug.tasks.core.io.results import FILTER_SUMMARY, real_rows, synthetic_rows
from synthaug.tasks.core.labels import natural_key
from synthaug.tasks.core.params.filter import FilterParams
from synthaug.tasks.core.params.model import DP_FAMILIES
from synthaug.tasks.core.params.privacy import PrivacyParams
from synthaug.tasks.core.privacy.dp import dp_claim
from synthaug.tasks.core.privacy.record import (
    ATTACKS,
    DCR_PLOT,
    PRIVACY_FILE,
    REFERENCE_FOLDS,
    SPACES,
    PrivacyGateError,
)
from synthaug.tasks.core.scoring.features import embed, load_judge_step
from synthaug.tasks.core.scoring.rules import MemorizationThresholds, memorization_thresholds

log = logging.getLogger("synthaug.privacy")  # tasks/core/logs.py: reaches the Prefect run log

FORMAT = "synthaug-privacy/1"
HOLDOUT_SPLITS = ("val", "test", "heldback")  # real images no generator, judge or filter threshold trained on
MIN_PER_CLASS = 2  # members and non-members a class needs for its attack AUC to have a bootstrap interval
LOG_FLOOR = 1e-12  # distances below this count as 0 (a copy) in the density-ratio attack's log distances
MIN_FOLD = 2  # held-out images per fold at least (fewer held-out images: fewer folds, down to 2)
QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "p95": 0.95, "max": 1.0}


@dataclass(frozen=True)
class Records:
    """One set of images as the gate compares them.

    pixels: (N, C, H, W) in [-1, 1] (or already flattened (N, D)).
    feats: (N, F) features in the filter's feature space.
    labels: (N,) class names.
    """

    pixels: torch.Tensor
    feats: torch.Tensor
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ------------------------------------------------------------------------------------------------- the checks


def closeness(query: Records, reference: Records) -> dict[str, np.ndarray]:
    """Per query image, how close its nearest reference image is: ``pixel`` (highest Pearson correlation) and
    ``feature`` (smallest Euclidean feature distance). The same measures as the filter's memorization scores."""
    # The streamed searches: working memory bounded by their blocks whatever the sizes (README "Scaling out").
    return {"pixel": nearest_correlation_streamed(query.pixels, reference.pixels),
            "feature": nearest_distance_streamed(query.feats, reference.feats)}


def memorization_check(release_to_train: Mapping[str, np.ndarray], thresholds: MemorizationThresholds) -> dict:
    """Check (a): how many released images lie within the memorization thresholds of a training image.

    Args:
        release_to_train: ``closeness(release, train)``.
        thresholds: from ``tasks.core.scoring.rules.memorization_thresholds`` (inclusive, as the filter applies them).
    """
    corr, dist = release_to_train["pixel"], release_to_train["feature"]
    pixel_within = int((corr >= thresholds.pixel_correlation).sum())
    feature_within = int((dist <= thresholds.feature_distance).sum())
    return {
        "thresholds": {"pixel_correlation": thresholds.pixel_correlation,
                       "feature_distance": thresholds.feature_distance, "quantile": thresholds.quantile,
                       "calibration": "real val -> train nearest distances", "n_calibration": thresholds.n_holdout},
        "pixel": {"within": pixel_within, "highest_correlation": _stat(corr, np.max), "passed": pixel_within == 0},
        "feature": {"within": feature_within, "smallest_distance": _stat(dist, np.min),
                    "passed": feature_within == 0},
        "released": int(corr.shape[0]),
    }


def _stat(values: np.ndarray, fn) -> float | None:
    return float(fn(values)) if values.size else None


def _pooled_auc(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC over same-class pairs: ``samples`` are (members, non-members) score arrays per class, in turn.

    Sum over classes of the Mann-Whitney U of members vs non-members (pairs where the member scores higher, ties
    half) over the sum of pair counts: the probability that a member outscores a non-member of its class.
    """
    wins, pairs = 0.0, 0
    for members, non_members in zip(samples[::2], samples[1::2], strict=True):
        wins = wins + stats.mannwhitneyu(members, non_members, axis=axis, method="asymptotic").statistic
        pairs += members.shape[axis] * non_members.shape[axis]
    return np.asarray(wins) / pairs


def _interval(samples: Sequence[np.ndarray], confidence: float, bootstrap: int, seed: int) -> list[float]:
    """Stratified percentile bootstrap interval of ``_pooled_auc`` over (members, non-members) pairs of classes."""
    boot = stats.bootstrap(tuple(samples), _pooled_auc, n_resamples=bootstrap, confidence_level=confidence,
                           method="percentile", vectorized=True, paired=False, rng=np.random.default_rng(seed),
                           batch=max(1, 2**22 // max(s.size for s in samples)))  # bounded memory per batch
    return [float(boot.confidence_interval.low), float(boot.confidence_interval.high)]


def membership_attack(member_scores: np.ndarray, member_labels: np.ndarray, non_member_scores: np.ndarray,
                      non_member_labels: np.ndarray, classes: Sequence[str], *, confidence: float = 0.95,
                      bootstrap: int = 1000, seed: int = 0, families: int = 1) -> dict:
    """Check (b): AUC of "higher score = trained on" with a stratified bootstrap interval, pooled and per class.

    Args:
        member_scores: attack score of each real train image (higher: closer to the release).
        member_labels: their class names.
        non_member_scores: the same for held-out real images.
        non_member_labels: their class names.
        classes: the classes attacked (those with released images); a class with fewer than
            ``MIN_PER_CLASS`` members or non-members cannot be measured: it is skipped and named in ``skipped``.
        confidence: the family-wise level of the gate: a release that leaks nothing fails any of its attack
            checks with probability at most ``1 - confidence``. Half of that error goes to the pooled checks, half
            to the per-class ones, each half split evenly (Bonferroni): the pooled interval is at
            ``1 - (1 - confidence) / families`` (``pooled_confidence``; the gate reads its lower bound, one-sided at
            half that error) and each class's at ``1 - (1 - confidence) / (2 * classes measured * families)``
            (``class_confidence``), so that an honest release with many classes does not fail by chance in one of
            them. Each class also gets the one-sided
            Mann-Whitney U test of "members score higher" (``p_value``; exact for a class of 8 or fewer members,
            where the percentile bootstrap interval is too narrow; see ``class_flagged``).
        bootstrap: resamples; members and non-members are resampled within each class.
        seed: seed of the resampling.
        families: how many such attacks the gate runs (attacks x spaces): the per-class correction covers them all.

    Returns ``{"auc", "ci", "per_class", "pooled_confidence", "class_confidence", "members", "non_members",
    "skipped"}``; ``auc`` is None
    (with ``reason``) when no class can be measured. ``per_class[c]`` has ``auc``, ``ci``, ``p_value``,
    ``members``, ``non_members``.
    """
    measured: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    for c in classes:
        m, n = member_scores[member_labels == c], non_member_scores[non_member_labels == c]
        if min(m.size, n.size) < MIN_PER_CLASS:
            skipped[c] = f"{m.size} members, {n.size} non-members"
            continue
        measured[c] = (m, n)
    # Calibrated on releases of real unseen images (bench/privacy_null.py): with the whole error in each of the
    # per-class and the pooled checks, 8% of such releases failed where 5% was stated.
    pooled_confidence = 1 - (1 - confidence) / families
    class_confidence = 1 - (1 - confidence) / (2 * max(len(measured), 1) * families)
    per_class = {c: {"auc": float(_pooled_auc(m, n)), "ci": _interval((m, n), class_confidence, bootstrap, seed),
                     "p_value": float(stats.mannwhitneyu(m, n, alternative="greater").pvalue),
                     "members": int(m.size), "non_members": int(n.size)} for c, (m, n) in measured.items()}
    out: dict[str, Any] = {"members": sum(v["members"] for v in per_class.values()),
                           "non_members": sum(v["non_members"] for v in per_class.values()),
                           "per_class": per_class, "pooled_confidence": pooled_confidence,
                           "class_confidence": class_confidence, "skipped": skipped}
    if not measured:
        return {**out, "auc": None, "ci": None,
                "reason": f"no released class has {MIN_PER_CLASS} or more real train and held-out real images"}
    samples = [a for pair in measured.values() for a in pair]
    return {**out, "auc": float(_pooled_auc(*samples)),
            "ci": _interval(samples, pooled_confidence, bootstrap, seed)}


def class_flagged(result: Mapping[str, Any], cls: str, max_auc: float) -> bool:
    """Whether the attack ``result`` (``membership_attack``'s) flags class ``cls``: its members beat its
    non-members in the one-sided Mann-Whitney U test at the Bonferroni level (``p_value`` below
    ``1 - class_confidence``) *and* its bootstrap interval lies wholly above ``max_auc``.

    The test is exact where the classes are small (8 or fewer members, no ties), valid under the null that the
    release tells a class's members from its non-members no better than chance. The percentile bootstrap alone is
    not: resampling 6 members gives an interval far too narrow. On scores with no signal for 3 classes of 6 members
    under 4 attacks (family-wise level 5%), it failed 24 of 100 runs (1000 resamples) where the exact test fails 8
    (README "What the gate checks"); that is how honest releases of the bundled example failed the gate. The
    interval keeps ``max_auc`` above 0.5 meaningful.
    """
    v = result["per_class"][cls]
    return v["p_value"] < 1 - result["class_confidence"] and v["ci"][0] > max_auc


def density_ratio_scores(release: Records, members: Records, non_members: Records, *, seed: int = 0,
                         folds: int = REFERENCE_FOLDS) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The density-ratio attack's scores (DOMIAS, van Breugel et al. 2023), per space: log p_release(x) -
    log p_reference(x), higher = more likely trained on.

    A generator that overfits puts more density near its training records than the population has there; the
    population's density is estimated from held-out real images. Both densities are nearest-neighbour estimates
    (p(x) ~ 1 / d(x)^D, with d the distance to the closest image of the set: ``closeness``, 1 - correlation in
    pixel space), so the score is log d_reference(x) - log d_release(x): the distance attack's distance calibrated
    by how crowded the population is around x. It adapts its bandwidth to the local density, which the Gaussian
    KDEs it replaces (8 whitened principal components, Scott's bandwidth) did not: they were weaker than the
    distance attack on every leak measured (README "What the gate checks"). The reference is cross-fitted: the
    held-out images are split in ``folds`` folds (fewer when there are fewer than ``MIN_FOLD`` images per fold), a
    non-member is measured against the folds it is not in, and
    each member against all folds but one drawn at random, so no image is measured against itself and both sides
    see references of the same size. (Two folds, half the reference each, lost power: 0.900 against 0.925 for the
    distance attack on the planted small-class leak of the tests.)

    Returns ``{space: (member scores, non-member scores)}``; None with fewer than 2 folds of ``MIN_FOLD``
    held-out images.
    """
    folds = min(folds, len(non_members) // MIN_FOLD)
    if folds < 2:
        return None
    rng = np.random.default_rng(seed)
    fold = rng.permutation(len(non_members)) % folds
    member_fold = rng.integers(0, folds, len(members))
    to_release = {"members": _log_distances(closeness(members, release)),
                  "non_members": _log_distances(closeness(non_members, release))}
    scores = {side: {space: np.empty(len(records)) for space in SPACES}
              for side, records in (("members", members), ("non_members", non_members))}
    for f in range(folds):
        reference = subset(non_members, np.flatnonzero(fold != f))
        for side, records, mask in (("members", members, member_fold == f), ("non_members", non_members, fold == f)):
            if mask.any():
                to_reference = _log_distances(closeness(subset(records, np.flatnonzero(mask)), reference))
                for space in SPACES:
                    scores[side][space][mask] = to_reference[space] - to_release[side][space][mask]
    return {space: (scores["members"][space], scores["non_members"][space]) for space in SPACES}


def _log_distances(near: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``closeness`` as log distances: pixel 1 - correlation, feature the Euclidean distance (floored at
    ``LOG_FLOOR``: a copy)."""
    return {"pixel": np.log(np.maximum(1.0 - near["pixel"], LOG_FLOOR)),
            "feature": np.log(np.maximum(near["feature"], LOG_FLOOR))}


def subset(records: Records, rows: np.ndarray) -> Records:
    """The records at row indices ``rows``, in that order."""
    return Records(records.pixels[torch.from_numpy(rows)], records.feats[torch.from_numpy(rows)], records.labels[rows])


def attack_scores(closeness_to_release: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Higher = closer to the release: the pixel correlation as it is, minus the feature distance."""
    return {"pixel": closeness_to_release["pixel"], "feature": -closeness_to_release["feature"]}


def summarize(values: np.ndarray) -> dict[str, float | int | None]:
    """Count, mean and quantiles (min, p05, p25, median, p75, p95, max) of one distance distribution."""
    if values.size == 0:
        return {"n": 0, "mean": None, **dict.fromkeys(QUANTILES)}
    qs = np.quantile(values, list(QUANTILES.values()))
    return {"n": int(values.size), "mean": float(values.mean()), **{k: float(q) for k, q in zip(QUANTILES, qs,
                                                                                                 strict=True)}}


Embed = Callable[[torch.Tensor], torch.Tensor]  # images (N, C, H, W) -> features (N, F) float64
RELEASE_SPACE = "a network trained on the released images alone (privacy.attack_network)"


def attack_embedding(release: Records, params: PrivacyParams, extractor: str | None,
                     device: torch.device) -> tuple[Embed | None, str | None]:
    """The membership attacks' feature space and its name: with ``privacy.attack_features: release`` and no
    ``filter.extractor``, a network of ``privacy.attack_network`` trained on the released images and their labels
    alone (seed ``privacy.seed``): it has seen no real image, so with no leak members and non-members are alike to
    it. Otherwise, or with fewer than two classes released (nothing to classify), None: the gate's feature space."""
    classes = sorted(set(release.labels.tolist()), key=natural_key)
    if extractor is not None or params.attack_features == "judge" or len(classes) < 2:
        return None, None
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[c] for c in release.labels.tolist()])
    config = replace(params.attack_network, seed=params.seed)
    net = train_judge(release.pixels, labels, num_classes=len(classes), config=config, device=device)
    return (lambda x: net.embed(x).double()), RELEASE_SPACE


def audit(release: Records, train: Records, holdout: Records, calibration: Records, params: PrivacyParams,
          *, feature_space: str = "judge", attack_embed: Embed | None = None,
          attack_space: str | None = None) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """All three checks on tensors.

    Args:
        release: the images to be released (accepted synthetic); at least one.
        train: the real training images (the members; every released image is compared with all of them).
        holdout: real images no model trained on (the non-members; the DCR reference).
        calibration: the real images the memorization thresholds are calibrated on (the filter's: val).
        params: the ``privacy`` section.
        feature_space: what the features are, for the record.
        attack_embed: the membership attacks' feature space (``attack_embedding``), from pixels; None: the records'
            own features, as memorization uses them.
        attack_space: what ``attack_embed`` is, for the record; None: ``feature_space``.

    Returns the body of ``privacy.json`` (``passed`` and ``failures`` included) and the DCR distributions
    (``{"released" | "holdout": {"pixel" | "feature": values}}``) for the histogram.
    """
    if len(release) == 0:
        raise ValueError("release is empty: there is nothing to audit")
    thresholds = memorization_thresholds(calibration.feats, train.feats, calibration.pixels, train.pixels,
                                         params.memorization_quantile)
    distributions = {"released": closeness(release, train),
                     "holdout": closeness(holdout, train) if len(holdout) else {s: np.zeros(0) for s in SPACES}}
    memorization = memorization_check(distributions["released"], thresholds)
    failures: list[str] = []
    pixel, feature = memorization["pixel"], memorization["feature"]
    if not pixel["passed"]:
        failures.append(f"memorization (pixel): {pixel['within']} of {len(release)} released images correlate with a "
                        f"training image at or above the threshold {thresholds.pixel_correlation:.4g} (highest "
                        f"{pixel['highest_correlation']:.4g})")
    if not feature["passed"]:
        failures.append(f"memorization (feature): {feature['within']} of {len(release)} released images lie within "
                        f"the threshold feature distance {thresholds.feature_distance:.4g} of a training image "
                        f"(nearest {feature['smallest_distance']:.4g})")

    classes = sorted(set(release.labels.tolist()), key=natural_key)
    empty = {s: np.zeros(0) for s in SPACES}
    if attack_embed is not None:
        release, train, holdout = (Records(r.pixels, attack_embed(r.pixels), r.labels) for r in (release, train,
                                                                                                 holdout))
    scores = {"attack": (attack_scores(closeness(train, release)),
                         attack_scores(closeness(holdout, release)) if len(holdout) else empty)}
    density = density_ratio_scores(release, train, holdout, seed=params.seed)
    scores["density_attack"] = ({s: empty[s] if density is None else density[s][0] for s in SPACES},
                                {s: empty[s] if density is None else density[s][1] for s in SPACES})
    attacks: dict[str, dict[str, Any]] = {}
    for key, (name, method) in ATTACKS.items():
        block: dict[str, Any] = {"method": method, "members": "real train",
                                 "non_members": "real " + ", ".join(HOLDOUT_SPLITS), "classes": classes,
                                 "max_auc": params.max_attack_auc, "confidence": params.confidence,
                                 "bootstrap": params.bootstrap}
        member, non_member = scores[key]
        for space in SPACES:
            unmeasured = key == "density_attack" and density is None
            labels = (np.zeros(0, dtype=str),) * 2 if unmeasured else (train.labels, holdout.labels)
            result = membership_attack(member[space], labels[0], non_member[space], labels[1], classes,
                                       confidence=params.confidence, bootstrap=params.bootstrap, seed=params.seed,
                                       families=len(ATTACKS) * len(SPACES))
            if unmeasured:
                result["reason"] = (f"fewer than {2 * MIN_FOLD} held-out real images: no reference density to "
                                    "estimate")
            failures += _attack_failures(f"{name} ({space})", result, params)
            # Fail closed: a released class the audit cannot measure (too few real train or held-out images of
            # it) is typically the scarce one, the class most at risk of being memorized.
            result["passed"] = (result["auc"] is not None and result["ci"][0] <= params.max_attack_auc
                                and not result["skipped"]
                                and not any(class_flagged(result, c, params.max_attack_auc)
                                            for c in result["per_class"]))
            block[space] = result
        attacks[key] = block
    dcr = {space: {"released_to_train": summarize(distributions["released"][space]),
                   "holdout_to_train": summarize(distributions["holdout"][space])} for space in SPACES}
    report = {"format": FORMAT, "passed": not failures, "failures": failures, "feature_space": feature_space,
              "attack_feature_space": attack_space or feature_space, "memorization": memorization, **attacks,
              "dcr": {"measures": {"pixel": "highest Pearson correlation with a training image (1: a copy)",
                                   "feature": "smallest Euclidean feature distance to a training image (0: a copy)"},
                      **dcr}}
    return report, distributions


def _attack_failures(name: str, result: Mapping[str, Any], params: PrivacyParams) -> list[str]:
    """One line per way the attack ``result`` fails the gate: unmeasurable, a class unmeasurable, the pooled
    interval above ``max_attack_auc``, a class's interval above it."""
    if result["auc"] is None:
        return [f"{name}: cannot be measured: {result['reason']}"]
    lines = []
    if result["skipped"]:
        lines.append(f"{name}: released classes without {MIN_PER_CLASS} or more real train and held-out real "
                     "images cannot be audited: " + ", ".join(f"{c} ({why})" for c, why in result["skipped"].items())
                     + "; give them val/test images (data.val_fraction, data.test_fraction) or leave them out of "
                       "the release")
    lo, hi = result["ci"]
    if lo > params.max_attack_auc:
        lines.append(f"{name}: AUC {result['auc']:.3f}, {result['pooled_confidence']:.2%} CI [{lo:.3f}, {hi:.3f}], "
                     f"wholly above privacy.max_attack_auc={params.max_attack_auc}")
    for c, v in result["per_class"].items():
        if class_flagged(result, c, params.max_attack_auc):
            lines.append(f"{name}, class {c}: AUC {v['auc']:.3f}, {result['class_confidence']:.2%} CI "
                         f"[{v['ci'][0]:.3f}, {v['ci'][1]:.3f}], one-sided p {v['p_value']:.2g} < "
                         f"{1 - result['class_confidence']:.2g} ({v['members']} members, {v['non_members']} "
                         f"non-members), wholly above privacy.max_attack_auc={params.max_attack_auc}")
    return lines


# ------------------------------------------------------------------------------------------------------ the step


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: list[str]  # one line per failed check: what, the measured value, the threshold
    advice: list[str]
    path: Path  # privacy.json
    report: dict[str, Any]

    def raise_if_failed(self, report: Path | None = None) -> None:
        """Raise PrivacyGateError naming each failed check and what to change (``report``: the page showing them)."""
        if not self.passed:
            lines = "\n".join(f"- {f}" for f in self.failures + [f"to change: {a}" for a in self.advice])
            where = f"report: {report}; details: {self.path}" if report is not None else f"details: {self.path}"
            raise PrivacyGateError(f"privacy gate failed, nothing was published:\n{lines}\n{where}")


def load_records(root: Path, rows: pd.DataFrame, judge: Judge, extractor: str | None) -> Records:
    """The images of manifest ``rows`` (paths under ``root``) as the gate compares them: pixels, features in the
    judge's space (or ``extractor``'s) and labels."""
    labels = rows["label"].astype(str).to_numpy()
    if rows.empty:
        return Records(torch.empty(0, *judge.image_shape), torch.empty(0, 1, dtype=torch.float64), labels)
    x = load_images(root, list(rows["path"]), judge.image_shape[0])
    return Records(x, embed(x, judge, extractor=extractor).double(), labels)


def privacy_gate(ingest_dir: Path, filter_dir: Path, judge_dir: Path, params: PrivacyParams,
                 filter_params: FilterParams, out_dir: Path, *, checkpoint_dir: Path | None = None) -> GateResult:
    """Run the gate on the filter's accepted images; write ``privacy.json`` (and ``dcr.png``) into ``out_dir``.

    Args:
        ingest_dir: the ingest step's folder (real images and their splits).
        filter_dir: the filter step's folder (the synthetic rows; the accepted ones are the release).
        judge_dir: the judge step's folder (the feature space, unless ``filter.extractor`` names another).
        params: the ``privacy`` section.
        filter_params: the ``filter`` section: its feature extractor and device, and its memorization quantile
            (for the advice when the gate is stricter than the filter).
        out_dir: where ``privacy.json`` and ``dcr.png`` go.
        checkpoint_dir: the generator checkpoint the images came from; its ``dp.json`` (``tasks.core.privacy.dp``)
            decides whether the release may claim differential privacy (``dp`` in ``privacy.json``). None: no claim.

    Returns the verdict; ``raise_if_failed()`` turns a failure into a ``PrivacyGateError``.

    Raises:
        UserError: a missing input, or no real val images to calibrate the thresholds on.
    """
    judge, class_names = load_judge_step(judge_dir, device=pick_device(filter_params.device))
    real = real_rows(ingest_dir)
    real = real[real["label"].isin(class_names)]
    synthetic = synthetic_rows(filter_dir)
    accepted = synthetic[synthetic["accepted"].astype(bool)]
    extractor = filter_params.extractor
    sets = {name: load_records(ingest_dir, real[real["split"].isin(splits)], judge, extractor)
            for name, splits in (("train", ("train",)), ("calibration", ("val",)), ("holdout", HOLDOUT_SPLITS))}
    if len(sets["calibration"]) == 0:
        raise UserError(f"{ingest_dir / 'manifest.parquet'}: no real val images; the memorization thresholds are "
                        "calibrated on real val -> train distances, so the source needs a val split")
    rejected = Counter(synthetic["reject_reason"].dropna().astype(str))
    advice: list[str] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DCR_PLOT).unlink(missing_ok=True)
    if accepted.empty:
        detail = ", ".join(f"{r}: {n}" for r, n in rejected.most_common()) or "nothing was generated"
        report: dict[str, Any] = {"format": FORMAT, "passed": False, "feature_space": extractor or "judge",
                                  "failures": [f"release: no synthetic image to release: the filter accepted none "
                                               f"of the {len(synthetic)} generated ({detail})"]}
    else:
        release = load_records(filter_dir, accepted, judge, extractor)
        embed_attack, attack_space = attack_embedding(release, params, extractor, judge.temperature.device)
        report, distributions = audit(release, sets["train"], sets["holdout"], sets["calibration"], params,
                                      feature_space=extractor or "judge", attack_embed=embed_attack,
                                      attack_space=attack_space)
        report["dcr"]["plot"] = plot_dcr(distributions, report["memorization"]["thresholds"],
                                         out_dir / DCR_PLOT).name
        memorized = any(f.startswith("memorization") for f in report["failures"])
        if memorized and params.memorization_quantile > filter_params.memorization_quantile:
            advice.append(
                f"the filter rejects only within its own, looser thresholds (filter.memorization_quantile="
                f"{filter_params.memorization_quantile} < privacy.memorization_quantile="
                f"{params.memorization_quantile}); set -S filter.memorization_quantile={params.memorization_quantile}")
    summary_path = filter_dir / FILTER_SUMMARY
    classes = json.loads(summary_path.read_text())["classes"] if summary_path.is_file() else {}
    report["release"] = {"images": len(accepted), "per_class": dict(Counter(accepted["label"].tolist())),
                         "planned_per_class": {c: v["needed"] for c, v in classes.items()},
                         "real_train_per_class": dict(Counter(real[real["split"] == "train"]["label"].tolist())),
                         "shortfall": {c: v["shortfall"] for c, v in classes.items() if v["shortfall"]},
                         "generated": len(synthetic), "rejected_by_filter": dict(rejected),
                         "filter_manifest_sha256": file_sha256(filter_dir / "manifest.parquet")}
    report["dp"] = (dp_claim(checkpoint_dir, accepted) if checkpoint_dir is not None else
                    {"claimed": False, "reason": "no generator checkpoint was given to the gate"})
    if not report["passed"] and not advice:
        advice = gate_advice(report["failures"], filter_params)
    report["advice"] = advice
    report["params"] = params.model_dump(mode="json")
    path = out_dir / PRIVACY_FILE
    write_atomic(json.dumps(report, indent=2, allow_nan=False), path)
    if report["passed"]:
        log.info("privacy gate passed: %d synthetic images; no memorization within the thresholds, no membership "
                 "attack above privacy.max_attack_auc=%s", len(accepted), params.max_attack_auc)
    else:
        log.warning("privacy gate failed, nothing will be released: %s. To change: %s", "; ".join(report["failures"]),
                    "; ".join(advice))
    return GateResult(passed=report["passed"], failures=report["failures"], advice=advice, path=path, report=report)


def gate_advice(failures: Sequence[str], filter_params: FilterParams) -> list[str]:
    """What to change, one line per kind of failed check (the check lines themselves name the numbers)."""
    advice = []
    if any(f.startswith("release:") for f in failures):
        advice.append(f"the filter accepted nothing: train the generator longer (model.<family>.steps), lower "
                      f"filter.min_confidence (now {filter_params.min_confidence}) or generate more "
                      "(plan.overgenerate)")
    if any(f.startswith("memorization") for f in failures):
        advice.append("released images sit too close to training images: train fewer steps or on more real images, "
                      f"make the filter stricter (filter.memorization_quantile, now "
                      f"{filter_params.memorization_quantile}), or train with differential privacy "
                      f"(model.dp.epsilon, for model.family {' or '.join(DP_FAMILIES)})")
    if any("AUC" in f and "wholly above" in f for f in failures):
        advice.append("a membership attack tells training images apart: train with differential privacy "
                      f"(model.dp.epsilon, for model.family {' or '.join(DP_FAMILIES)}), train fewer steps, or release "
                      "fewer images (privacy.release_per_class)")
    if any("cannot be measured" in f or "cannot be audited" in f for f in failures):
        advice.append("the attack needs real val/test images of every released class: raise data.val_fraction / "
                      "data.test_fraction, or leave the class out of the release")
    return advice or ["see the failed checks above; report.html shows them (the DCR histogram, the closest images)"]


# ------------------------------------------------------------------------------------------------- presentation


def plot_dcr(distributions: Mapping[str, Mapping[str, np.ndarray]], thresholds: Mapping[str, Any],
             path: Path) -> Path:
    """Histograms of the closest-training-record distances, released vs held-out real, with the thresholds."""
    from matplotlib.figure import Figure  # object API: no pyplot state

    fig = Figure(figsize=(9.0, 3.4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, space, limit, label in ((axes[0], "pixel", thresholds["pixel_correlation"],
                                     "highest pixel correlation with a training image"),
                                    (axes[1], "feature", thresholds["feature_distance"],
                                     "feature distance to the closest training image")):
        released, holdout = distributions["released"][space], distributions["holdout"][space]
        values = np.concatenate([released, holdout])
        bins = np.linspace(values.min(), values.max(), 31) if values.size and np.ptp(values) > 0 else 10
        for data, name, colour in ((holdout, "held-out real -> train", "#4C72B0"),
                                   (released, "released synthetic -> train", "#DD8452")):
            if data.size:
                ax.hist(data, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={data.size})")
        ax.axvline(limit, color="#b42318", linestyle="--", label="memorization threshold")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle("Distance to the closest training record")
    fig.savefig(path)
    return path
