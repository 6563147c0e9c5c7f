"""Gaussian mixture models fitted by weighted EM: every sample counts in proportion to its weight."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class GaussianMixture:
    """Mixture weights (K,), means (K, D) and full covariances (K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def component_log_densities(self, samples: np.ndarray) -> np.ndarray:
        """log(weight_k * N(x | mean_k, cov_k)) for every component and sample, (K, N)."""
        samples = np.asarray(samples, dtype=np.float64)
        return self._log_densities(np.ascontiguousarray(samples.T), _outer_products(samples).T.copy())

    def _log_densities(self, samples_t: np.ndarray, outer_t: np.ndarray) -> np.ndarray:
        """As component_log_densities, from samples (D, N) and their outer products (D * D, N)."""
        # (x - m)^T P (x - m) = <x x^T, P> - 2 x^T P m + m^T P m: two BLAS products over all samples
        # instead of a per-sample solve (D is 3 for colours, so the tiny batched products would dominate).
        dims = samples_t.shape[0]
        precision = np.linalg.inv(self.covariances)  # (K, D, D)
        projected = np.einsum("kij,kj->ki", precision, self.means)  # P m, (K, D)
        # Contiguous right-hand sides: a transposed view sends numpy down a far slower product path.
        mahalanobis = (
            precision.reshape(len(precision), -1) @ outer_t
            - 2.0 * projected @ samples_t
            + (projected * self.means).sum(axis=1)[:, None]
        )
        _, log_det = np.linalg.slogdet(self.covariances)
        with np.errstate(divide="ignore"):
            log_weights = np.log(self.weights)
        log_norm = log_weights - 0.5 * (dims * _LOG_2PI + log_det)
        return log_norm[:, None] - 0.5 * np.maximum(mahalanobis, 0.0)

    def log_likelihood(self, samples: np.ndarray) -> np.ndarray:
        """log p(x) for each sample, (N,)."""
        return _logsumexp(self.component_log_densities(samples))


def _outer_products(samples: np.ndarray) -> np.ndarray:
    """Flattened x x^T per sample, (N, D * D)."""
    return (samples[:, :, None] * samples[:, None, :]).reshape(len(samples), -1)


def _logsumexp(values: np.ndarray) -> np.ndarray:
    """log sum_k exp(values[k]) over the components axis 0 of (K, N): reductions run along N."""
    top = values.max(axis=0)
    return top + np.log(np.exp(values - top).sum(axis=0))


def _weighted_kmeans_init(
    samples: np.ndarray, weights: np.ndarray, num_components: int, rng: np.random.Generator
) -> np.ndarray:
    """k-means++ seeding (a sample is drawn in proportion to weight x squared distance) + 10 Lloyd steps."""
    first = rng.choice(len(samples), p=weights / weights.sum())
    centres = [samples[first]]
    nearest = ((samples - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, num_components):
        mass = weights * nearest
        pick = rng.choice(len(samples), p=mass / mass.sum()) if mass.sum() > 0 else first
        centres.append(samples[pick])
        nearest = np.minimum(nearest, ((samples - samples[pick]) ** 2).sum(axis=1))
    centres = np.array(centres)
    for _ in range(10):
        assigned = ((samples[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        for k in range(num_components):
            mass = weights[assigned == k]
            if mass.sum() > 0:
                centres[k] = (samples[assigned == k] * mass[:, None]).sum(axis=0) / mass.sum()
    return centres


def fit_weighted_gmm(
    samples: np.ndarray,
    sample_weights: np.ndarray,
    num_components: int = 5,
    iterations: int = 20,
    tolerance: float = 1e-5,
    seed: int = 0,
) -> GaussianMixture:
    """Fit a full-covariance GMM to samples (N, D) by EM where sample n counts ``sample_weights[n]`` times.

    Zero-weight samples have no influence at all. Covariances get a small ridge (1e-4 of the weighted
    data variance) so a component on a handful of identical colours stays invertible. Deterministic
    for a given ``seed`` (k-means++ seeding).
    """
    samples = np.asarray(samples, dtype=np.float64)
    weights = np.asarray(sample_weights, dtype=np.float64)
    if samples.ndim != 2 or weights.shape != samples.shape[:1]:
        raise ValueError(f"expected samples (N, D) and weights (N,), got {samples.shape}, {weights.shape}")
    if np.any(weights < 0) or not weights.sum() > 0:
        raise ValueError("sample weights must be non-negative with a positive sum")
    keep = weights > 0
    samples, weights = samples[keep], weights[keep]
    dims = samples.shape[1]
    num_components = min(num_components, len(samples))
    total = weights.sum()
    spread = ((samples - (weights @ samples) / total) ** 2 * weights[:, None]).sum() / total / dims
    ridge = (1e-4 * spread + 1e-8) * np.eye(dims)

    means = _weighted_kmeans_init(samples, weights, num_components, np.random.default_rng(seed))
    gmm = GaussianMixture(
        weights=np.full(num_components, 1.0 / num_components),
        means=means,
        covariances=np.repeat((spread * np.eye(dims) + ridge)[None], num_components, axis=0),
    )
    previous = -np.inf
    outer = _outer_products(samples)
    samples_t, outer_t = np.ascontiguousarray(samples.T), np.ascontiguousarray(outer.T)
    for _ in range(iterations):
        log_dens = gmm._log_densities(samples_t, outer_t)
        log_px = _logsumexp(log_dens)
        mean_ll = float(weights @ log_px / total)
        resp = np.exp(log_dens - log_px) * weights  # weighted responsibilities (K, N)
        mass = resp.sum(axis=1) + 1e-12
        means = (resp @ samples) / mass[:, None]
        second_moments = (resp @ outer).reshape(-1, dims, dims) / mass[:, None, None]
        covariances = second_moments - means[:, :, None] * means[:, None, :] + ridge
        gmm = GaussianMixture(weights=mass / mass.sum(), means=means, covariances=covariances)
        if mean_ll - previous < tolerance * abs(mean_ll):
            break
        previous = mean_ll
    return gmm
