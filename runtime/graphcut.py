"""Exact minimisation of binary energies with Potts pairwise terms by a single s-t min cut (PyMaxflow)."""

from __future__ import annotations

import maxflow
import numpy as np


def binary_energy(labels: np.ndarray, unary: np.ndarray, edges: np.ndarray, weights: np.ndarray) -> float:
    """E(l) = sum_i unary[i, l_i] + sum_e weights[e] [l_{edges[e,0]} != l_{edges[e,1]}]."""
    labels = np.asarray(labels, dtype=np.int64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    data = unary[np.arange(len(labels)), labels].sum()
    cut = labels[edges[:, 0]] != labels[edges[:, 1]]
    return float(data + weights[cut].sum())


def solve_binary_energy(unary: np.ndarray, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The labelling (N,) bool minimising ``binary_energy``: True where label 1 is chosen.

    ``unary`` (N, 2) holds the cost of label 0 and label 1 per node (any real values), ``edges`` (E, 2)
    node index pairs, ``weights`` (E,) non-negative Potts weights. Nodes on the sink side of the cut take
    label 1: the cut severs a node's source link (cost of label 1) or its sink link (cost of label 0).
    """
    unary = np.asarray(unary, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    weights = np.asarray(weights, dtype=np.float64)
    if unary.ndim != 2 or unary.shape[1] != 2:
        raise ValueError(f"unary must be (N, 2), got {unary.shape}")
    if weights.shape != (len(edges),) or np.any(weights < 0):
        raise ValueError("pairwise weights must be non-negative, one per edge")
    num_nodes = len(unary)
    graph = maxflow.Graph[float](num_nodes, len(edges))
    nodes = graph.add_nodes(num_nodes)
    # Only the difference between the two costs matters; shift each node so both are >= 0.
    shifted = unary - unary.min(axis=1, keepdims=True)
    graph.add_grid_tedges(np.asarray(nodes), shifted[:, 1], shifted[:, 0])
    if len(edges):
        graph.add_edges(edges[:, 0], edges[:, 1], weights, weights)
    graph.maxflow()
    return graph.get_grid_segments(np.asarray(nodes)).astype(bool)
