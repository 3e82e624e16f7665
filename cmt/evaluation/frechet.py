"""The Frechet distance between Gaussians fitted to feature sets: FID's formula (method.md 10), used for the offline
feature net's FD and for Inception FID alike."""

from __future__ import annotations

import numpy as np


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a feature set (rows are samples), as clean-fid and EDM compute them."""
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (method.md 10) for covariance matrices S1, S2.

    Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the two matrices are similar and the second is
    symmetric PSD, so two symmetric eigendecompositions replace scipy's ``sqrtm`` of the non-symmetric product
    (clean-fid, EDM): 11x faster at 2048 features on 2 cores, the same value to 3e-8 relative (tests/test_fid.py).
    """
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(w.clip(min=0))) @ v.T
    cross = np.sqrt(np.linalg.eigvalsh(root1 @ sigma2 @ root1).clip(min=0)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def feature_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FD between Gaussians fitted to two feature sets."""
    return frechet_distance(*statistics(f1), *statistics(f2))
