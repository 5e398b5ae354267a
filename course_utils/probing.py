"""Linear probes on the residual stream, the baselines that give their accuracy a meaning, and steering:
adding a direction to the residual stream with a hook.

    X_train, y_train = probe_data(cache["resid_post", 0], in_string, valid, train_rows, seed=0)   # balanced
    w, b = train_probe(X_train, y_train)                        # logistic regression, a second or two
    probe_accuracy(X_test, y_test, w, b)                        # chance is 0.5: the classes are balanced
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_pre", steering_hook(w / w.norm(), 5.0))])

A probe says where a concept can be *read*; steering tests whether the model *uses* that direction.
"""

from __future__ import annotations

from typing import Callable

import torch

Hook = Callable[[torch.Tensor, object], torch.Tensor]


def split_rows(n_rows: int, test_fraction: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (whole windows of text) for training and testing, so no test token has a neighbour in training."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * n_rows))
    return order[n_test:], order[:n_test]


def probe_data(acts: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced examples for a probe: as many negatives as positives, drawn at random.

    acts [batch, pos, d], labels [batch, pos] bool, valid [batch, pos] bool (False for the start token);
    rows: which batch rows to use. Returns X [n, d] (float32) and y [n] bool, positives first."""
    X = acts[rows][valid[rows]].float()
    y = labels[rows][valid[rows]]
    pos, neg = y.nonzero()[:, 0], (~y).nonzero()[:, 0]
    n = min(len(pos), len(neg))
    g = torch.Generator().manual_seed(seed)
    keep = torch.cat([pos[torch.randperm(len(pos), generator=g)[:n]], neg[torch.randperm(len(neg), generator=g)[:n]]])
    return X[keep], y[keep]


def probe_loss(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               weight_decay: float = 1e-3) -> torch.Tensor:
    """Logistic regression's loss: mean binary cross-entropy of the logits X @ w + b against y, plus
    weight_decay · ‖w‖² (the bias is not penalised). X [n, d], y [n] bool, w [d], b [] -> scalar."""
    logits = X @ w + b                                                        # [n]
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y.to(logits.dtype)) + weight_decay * (w ** 2).sum()


def train_probe(X: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 0.05, weight_decay: float = 1e-3,
                loss_fn: Callable = probe_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit a linear probe with Adam on the whole set at once (full batch).

    Features are centred and scaled for the optimiser, and the returned (w [d], b []) act on the raw
    activations: the probe's prediction is X @ w + b > 0, and w's direction lives in the model's space."""
    X = X.float()
    mean, scale = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = (X - mean) / scale
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = loss_fn(Z, y, w, b, weight_decay)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w_raw = (w / scale).detach()
    return w_raw, (b - (mean * w_raw).sum()).detach()


def probe_accuracy(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor | float) -> float:
    """Fraction of examples the probe gets right: prediction X @ w + b > 0 against y."""
    return ((X.float() @ w + b > 0) == y).float().mean().item()


def direction_accuracy(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
                       direction: torch.Tensor) -> float:
    """The best one can do with a fixed direction: project, choose the threshold and the sign that do
    best on the training set, and score that rule on the test set."""
    p_train, p_test = X_train.float() @ direction, X_test.float() @ direction
    thresholds = p_train.quantile(torch.linspace(0.02, 0.98, 49))
    train_acc = ((p_train[:, None] > thresholds) == y_train[:, None]).float().mean(0)          # [49]
    scores = torch.maximum(train_acc, 1 - train_acc)
    best = int(scores.argmax())
    sign = 1.0 if train_acc[best] >= 0.5 else -1.0
    return (((sign * (p_test - thresholds[best])) > 0) == y_test).float().mean().item()


def random_direction_accuracy(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor,
                              y_test: torch.Tensor, n: int = 5, seed: int = 0) -> float:
    """The baseline for a probe: `direction_accuracy` of n random directions, averaged."""
    g = torch.Generator().manual_seed(seed)
    accs = [direction_accuracy(X_train, y_train, X_test, y_test, torch.randn(X_train.shape[1], generator=g))
            for _ in range(n)]
    return sum(accs) / n


def best_single_unit_accuracy(X_train: torch.Tensor, y_train: torch.Tensor, X_test: torch.Tensor,
                              y_test: torch.Tensor) -> tuple[float, int]:
    """The best probe that reads one coordinate (one neuron) alone: for each unit, threshold halfway
    between the two classes' means (on the side the positives lie); pick the unit that does best on the
    training set and return its test accuracy and its index."""
    pos, neg = X_train[y_train].mean(0), X_train[~y_train].mean(0)          # [d]
    threshold, sign = (pos + neg) / 2, torch.where(pos >= neg, 1.0, -1.0)
    train_acc = ((sign * (X_train - threshold) > 0) == y_train[:, None]).float().mean(0)
    best = int(train_acc.argmax())
    test_acc = ((sign[best] * (X_test[:, best] - threshold[best]) > 0) == y_test).float().mean().item()
    return test_acc, best


def steering_hook(direction: torch.Tensor, scale: float) -> Hook:
    """A hook that adds scale · direction to the activation at every position: fn(activation, hook)."""
    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        return activation + scale * direction.to(activation)
    return hook


def token_rates(tokens: torch.Tensor, mask: torch.Tensor, d_vocab: int, prior: float = 5.0) -> torch.Tensor:
    """For every token of the vocabulary, the share of its occurrences where `mask` holds, pulled towards
    the overall share for rare tokens (as if `prior` extra occurrences at the overall rate).
    tokens [batch, pos], mask [batch, pos] bool -> [d_vocab]."""
    tokens, mask = tokens.flatten(), mask.flatten().float()
    counts = torch.zeros(d_vocab).index_add_(0, tokens, torch.ones_like(mask))
    hits = torch.zeros(d_vocab).index_add_(0, tokens, mask)
    return (hits + prior * mask.mean()) / (counts + prior)
