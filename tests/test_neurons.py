"""Neuron helpers (course_utils.neurons) on small inputs with known answers."""

from __future__ import annotations

import torch

from course_utils import neurons


def test_top_activations_never_returns_the_start_token():
    acts = torch.zeros(2, 4, 3)
    acts[:, 0, 1] = 100.0                                              # the start token: huge, and left out
    acts[1, 2, 1], acts[0, 3, 1] = 5.0, 4.0
    values, rows, positions = neurons.top_activations(acts, neuron=1, k=2)
    assert values.tolist() == [5.0, 4.0] and rows.tolist() == [1, 0] and positions.tolist() == [2, 3]


def test_precision_recall_with_overlapping_concepts():
    fires = torch.tensor([[True], [True], [False], [False]])
    concepts = torch.tensor([[1, 1], [0, 1], [1, 0], [0, 0]]).bool()    # concept 0 and 1 overlap on token 0
    precision, recall = neurons.precision_recall(fires, concepts)
    assert precision.tolist() == [[0.5, 1.0]] and recall.tolist() == [[0.5, 1.0]]


def test_context_marks_the_token_and_shows_newlines():
    texts = [["def", " f", "():", "\n", "    return", " 1"]]
    assert neurons.context(texts, 0, 4, before=2, after=1) == "():⏎⟦    return⟧ 1"
