"""How much a frozen code tells: a linear read-out of the class, and the code's effective dimension.

Shared by probe.py (every probe, every t) and train_drl.py (the probe curve written while training).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def standardise(train, *others):
    """Zero mean, unit variance per feature, with the training codes' statistics."""
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return [(x - mean) / std for x in (train, *others)]


def whitening(train, rel_eps=1e-6):
    """(mean, W) of PCA whitening fitted to the training codes alone: (x - mean) @ W has zero mean and
    identity covariance over them; directions whose variance is below rel_eps of the largest are dropped.
    A linear classifier can express the same functions of whitened codes as of the raw ones (the map is
    invertible on what is kept), but its loss is far better conditioned: on codes whose variance lies in a
    few correlated directions, L-BFGS on per-feature standardised codes was still gaining a point of test
    accuracy after 1000 iterations, on whitened ones it is done within a few hundred (RESULTS.md, "The
    linear probe")."""
    mean = train.mean(0)
    x = (train - mean).double()
    if len(x) < x.shape[1]:  # fewer codes than features (few-shot, pixels): the same eigenpairs from the codes' SVD
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        eig, vec = (s.square() / max(len(x) - 1, 1)).flip(0), vh.flip(0).T  # ascending, as eigh's
    else:
        eig, vec = torch.linalg.eigh(torch.cov(x.T))  # ascending
    keep = eig > rel_eps * eig[-1]
    keep[-1] = True  # constant codes keep one (zero) feature
    return mean, (vec[:, keep] / eig[keep].clamp(min=1e-30).sqrt()).to(train.dtype)


def whiten(train, *others, rel_eps=1e-6):
    """train and others whitened with the training codes' statistics (`whitening`)."""
    mean, w = whitening(train, rel_eps)
    return [(x - mean) @ w for x in (train, *others)]


def fit_logistic(x, y, n_classes, weight_decay, max_iter=500):
    """Multinomial logistic regression: minimise cross-entropy + weight_decay / 2 * ||W||^2 by L-BFGS,
    until the loss stops changing (or max_iter iterations)."""
    # built without drawing from the global RNG (then zeroed): probing a run mid-training must not
    # change its random stream, or a resumed run would not repeat an unbroken one
    layer = nn.utils.skip_init(nn.Linear, x.shape[1], n_classes, device=x.device)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=max_iter, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(layer(x), y) + 0.5 * weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer


def accuracy(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


def fit_linear_probe(x_train, y_train, n_classes, weight_decays=(0.0, 1e-4, 1e-3, 1e-2), seed=0):
    """A linear classifier of whitened codes, fitted to convergence, everything learned from the training
    codes alone (the whitening too); the weight decay is the one that does best on a held-out 10% of them.
    Returns (predict: codes -> logits, weight decay)."""
    mean, w = whitening(x_train)
    x_train = (x_train - mean) @ w
    perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed)).to(x_train.device)
    held, fit = perm[: len(perm) // 10], perm[len(perm) // 10:]
    best = max(weight_decays, key=lambda wd: accuracy(
        fit_logistic(x_train[fit], y_train[fit], n_classes, wd)(x_train[held]), y_train[held]))
    layer = fit_logistic(x_train, y_train, n_classes, best)
    return (lambda x: layer((x - mean) @ w)), best


def linear_probe(x_train, y_train, x_test, y_test, weight_decays=(0.0, 1e-4, 1e-3, 1e-2), seed=0):
    """Test accuracy of `fit_linear_probe`'s classifier. Returns (accuracy, weight decay)."""
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    predict, best = fit_linear_probe(x_train, y_train, n_classes, weight_decays, seed)
    with torch.no_grad():
        return accuracy(predict(x_test), y_test), best


@torch.no_grad()
def participation_ratio(codes):
    """Effective dimension of codes (N, D): (sum of the covariance's eigenvalues)^2 / sum of their
    squares. D for isotropic codes, 1 when all variance lies on one direction. That is trace(C)^2 / ||C||_F^2,
    and the Gram matrix of the centred codes (N x N, or D x D) has C's nonzero eigenvalues up to a scale."""
    x = (codes - codes.mean(0)).double()
    gram = x @ x.T if len(x) < x.shape[1] else x.T @ x
    return (gram.trace() ** 2 / gram.square().sum().clamp(min=1e-300)).item()
