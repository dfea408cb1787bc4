"""Rank of the gradient space: PCA of a stack of per-epoch gradients (Azam et al., section 2).

A stack holds i gradients of p parameters as an (i x p) tensor, one row per epoch. PCA treats the
rows as i samples and centres them across epochs (the mean gradient is removed), so N95 / N99 count
the directions along which the gradient *changes* from epoch to epoch; i samples therefore have at
most i - 1 components. (The paper describes the stack as a (p x i) matrix; a PCA fitted in that
orientation would centre each gradient over its own parameters instead. Here the epochs are the
samples, the textbook convention.)

p may be many millions, so nothing p x p is ever formed: everything comes from the i x i Gram
matrix G = X X^T, accumulated in float64 over column chunks of X, and centred afterwards as
H G H with H = I - 11^T / i (identical to the Gram matrix of the centred rows). Its eigenvalues are
the PCA variances; its eigenvectors give the principal directions V = Xc^T U / sqrt(lambda).

All functions leave their arguments unchanged and work on any device; the small i x i
eigenproblems are solved on the CPU.
"""

from collections.abc import Sequence

import torch

from lbgm_mpi.models.layout import Layout

LEVELS = (0.95, 0.99)  # variance levels reported as N95 and N99
_CHUNK_BYTES = 1 << 26  # float64 working set per column chunk (64 MiB)
_RANK_RTOL = 1e-12  # variances below this fraction of the rows' total squared norm count as zero


def _cross_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b^T in float64, over column chunks so that no float64 copy of a or b is made whole."""
    rows = a.shape[0] + b.shape[0]
    step = max(1, _CHUNK_BYTES // (8 * max(rows, 1)))
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for start in range(0, a.shape[1], step):
        ac = a[:, start:start + step].to(torch.float64)
        bc = b[:, start:start + step].to(device=a.device, dtype=torch.float64)
        out += ac @ bc.T
    return out


def _pca(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA variances (descending) and eigenvectors (columns, CPU) from an uncentred Gram matrix.

    Centring is H G H with H = I - 11^T / i. Variances below _RANK_RTOL x trace(G) are rounding
    noise of the centring (rows that do not change would otherwise get random ratios) and are set
    to 0, as are negative ones.
    """
    gram = gram.cpu()
    i = gram.shape[0]
    h = torch.eye(i, dtype=gram.dtype) - 1.0 / i
    lam, u = torch.linalg.eigh(h @ gram @ h)
    lam = lam.flip(0)
    return torch.where(lam > _RANK_RTOL * gram.trace(), lam, torch.zeros_like(lam)), u.flip(1)


def _ratios(lam: torch.Tensor) -> torch.Tensor:
    total = lam.sum()
    return lam / total if total > 0 else torch.zeros_like(lam)


def explained_variance(grads: torch.Tensor) -> torch.Tensor:
    """Explained-variance ratios of the PCA of the rows of ``grads`` (i x p), largest first.

    Returns i float64 values on the CPU that sum to 1. A stack without variance (all rows equal,
    e.g. all zero) returns zeros, never NaN. A single gradient spans one direction: [1.0], or [0.0]
    when it is zero.
    """
    gram = _cross_gram(grads, grads)
    if grads.shape[0] == 1:
        return (gram.cpu().reshape(1) > 0).to(torch.float64)
    return _ratios(_pca(gram)[0])


def n_components(ratios: torch.Tensor | Sequence[float], level: float) -> int:
    """Smallest n whose first n ratios add up to ``level`` (in (0, 1]) or more; 0 if all are 0."""
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level}")
    cum = torch.cumsum(torch.as_tensor(ratios, dtype=torch.float64).cpu(), 0)
    if cum.numel() == 0 or cum[-1] <= 0:
        return 0
    # rounding may leave the full sum a hair below 1: compare against level x (actual sum)
    short = cum < level * cum[-1] * (1.0 - _RANK_RTOL)
    return min(int(short.sum()) + 1, cum.numel())


def principal_directions(grads: torch.Tensor, k: int) -> torch.Tensor:
    """The first k principal directions of the rows of ``grads`` (i x p), as unit rows (k' x p).

    Only components with non-zero variance are returned, so k' = min(k, rank) may be below k.
    The result has the dtype and device of ``grads``.
    """
    lam, u = _pca(_cross_gram(grads, grads))
    keep = min(k, int((lam > 0).sum()))
    # Xc^T U / sqrt(lambda) with Xc = H X: weigh the uncentred rows by H U / sqrt(lambda)
    w = u[:, :keep] - u[:, :keep].mean(0, keepdim=True)
    w = (w / lam[:keep].sqrt()).to(grads.device)
    out = torch.empty(keep, grads.shape[1], dtype=grads.dtype, device=grads.device)
    step = max(1, _CHUNK_BYTES // (8 * (grads.shape[0] + keep)))
    for start in range(0, grads.shape[1], step):
        chunk = grads[:, start:start + step].to(torch.float64)
        out[:, start:start + step] = (w.T @ chunk).to(grads.dtype)
    return out


def overlap(vectors: torch.Tensor,
            directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How much of each vector lies along the given directions.

    ``vectors`` is (m x p) or (p,), ``directions`` (k x p). Returns |cosine| of every vector with
    every direction (m x k), and the fraction of each vector's squared norm inside the span of the
    directions (m,), both float64 on the CPU. Zero vectors and zero directions give 0, not NaN.
    """
    vectors = vectors.reshape(-1, vectors.shape[-1])
    dots = _cross_gram(vectors, directions).cpu()
    v_sq = _cross_gram(vectors, vectors).cpu().diagonal()
    d_gram = _cross_gram(directions, directions).cpu()
    norms = torch.outer(v_sq.sqrt(), d_gram.diagonal().sqrt())
    cos = torch.where(norms > 0, dots.abs() / norms.clamp_min(1e-300), torch.zeros_like(dots))
    # ||P v||^2 = c^T D^+ c, with c = directions @ v and D the directions' Gram matrix
    inside = ((dots @ torch.linalg.pinv(d_gram, hermitian=True)) * dots).sum(1)
    fraction = torch.where(v_sq > 0, inside / v_sq.clamp_min(1e-300), torch.zeros_like(v_sq))
    return cos, fraction.clamp(0.0, 1.0)


class SubspaceTracker:
    """Collects one gradient per epoch and reports N95 / N99 per layer and for the whole model.

    The stack (epochs x d, float32) lives on the device of the first gradient added; its capacity
    doubles when full, so it holds at most 2 x epochs rows (3 x while growing). Each layer's
    uncentred Gram matrix is extended as gradients arrive, so ``report`` only solves small
    eigenproblems: the stack of the first i epochs has Gram matrix G[:i, :i], and the whole model's
    Gram matrix is the sum of the layers'.
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self._rows: torch.Tensor | None = None  # capacity x d, first self.epochs rows filled
        self.epochs = 0
        self._grams: list[torch.Tensor] = []  # per layer: epochs x epochs, float64, CPU

    @property
    def stack(self) -> torch.Tensor:
        """The gradients added so far, epochs x d (a view, not a copy)."""
        if self._rows is None:
            raise ValueError("no gradient has been added yet")
        return self._rows[:self.epochs]

    def add(self, grad: torch.Tensor) -> None:
        """Append one epoch's flat gradient (d values) as a float32 copy; ``grad`` is unchanged."""
        if grad.numel() != self.layout.size:
            raise ValueError(f"gradient has {grad.numel()} values, "
                             f"the layout has {self.layout.size}")
        self._reserve(grad.device)
        self._rows[self.epochs] = grad.reshape(-1)
        self.epochs += 1
        self._grams = [self._extend(l) for l in range(len(self.layout.names))]

    def _reserve(self, device: torch.device) -> None:
        if self._rows is None:
            self._rows = torch.empty(4, self.layout.size, dtype=torch.float32, device=device)
        elif self.epochs == self._rows.shape[0]:
            self._rows = torch.cat([self._rows, torch.empty_like(self._rows)])

    def _extend(self, layer: int) -> torch.Tensor:
        """Layer's Gram matrix grown by the newest row's dot products with every stored row."""
        lo, hi = self.layout.bounds[layer], self.layout.bounds[layer + 1]
        seg = self.stack[:, lo:hi]
        col = _cross_gram(seg, seg[-1:]).cpu().reshape(-1)
        i = self.epochs
        gram = torch.zeros(i, i, dtype=torch.float64)
        if i > 1:
            gram[:-1, :-1] = self._grams[layer]
        gram[-1, :] = col
        gram[:, -1] = col
        return gram

    def report(self) -> dict:
        """N95 / N99 after each epoch i = 2..n, per layer, for the whole model, and over layers.

        "layer_stats" holds the mean, min and max over the layers whose gradients vary at that
        epoch (a tensor that never changes, such as a frozen one, would otherwise count as 0);
        None where no layer varies. Plain Python values only, ready for json.dump.
        """
        epochs = list(range(2, self.epochs + 1))
        model_gram = sum(self._grams) if self._grams else torch.zeros(0, 0)
        layers = {name: _levels_by_epoch(g, epochs)
                  for name, g in zip(self.layout.names, self._grams)}
        return {
            "levels": list(LEVELS),
            "epochs": epochs,
            "num_params": {n: hi - lo for n, lo, hi in
                           zip(self.layout.names, self.layout.bounds, self.layout.bounds[1:])},
            "model": _levels_by_epoch(model_gram, epochs),
            "layers": layers,
            "layer_stats": _layer_stats(list(layers.values()), len(epochs)),
        }


def _level_key(level: float) -> str:
    return f"n{round(level * 100)}"


def _levels_by_epoch(gram: torch.Tensor, epochs: list[int]) -> dict[str, list[int]]:
    """N at each level for the first i epochs, i in ``epochs``."""
    ratios = [_ratios(_pca(gram[:i, :i])[0]) for i in epochs]
    return {_level_key(lv): [n_components(r, lv) for r in ratios] for lv in LEVELS}


def _layer_stats(layers: list[dict[str, list[int]]], n_epochs: int) -> dict:
    """Mean, min and max over the layers with N > 0, epoch by epoch."""
    stats = {}
    for key in map(_level_key, LEVELS):
        columns = [[layer[key][e] for layer in layers if layer[key][e] > 0]
                   for e in range(n_epochs)]
        stats[key] = {
            "mean": [sum(c) / len(c) if c else None for c in columns],
            "min": [min(c) if c else None for c in columns],
            "max": [max(c) if c else None for c in columns],
        }
    return stats
