"""Face verification and identification metrics for an embedding model.

Verification follows the LFW protocol: cosine scores on labelled pairs split into k folds; each fold is
scored with the threshold that maximises accuracy on the other folds. ROC AUC, EER and TAR at fixed FAR
use all pairs; rank-1 identification is leave-one-out nearest neighbour over every image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data.normalize import normalize

if TYPE_CHECKING:
    import keras

    from .data import FaceSet, Pairs

FAR_LEVELS = (1e-1, 1e-2, 1e-3)


def far_key(far: float) -> str:
    """Key of a FAR level in ``tar_at_far`` ("1e-01", "1e-02", ...)."""
    return f"{far:.0e}"


def embed(model: keras.Model, images_uint8: np.ndarray, batch_size: int = 64,
          normalization: dict | None = None, flip: bool = False) -> np.ndarray:
    """L2-normalised embeddings of uint8 (N,H,W,3) images, computed in inference mode.

    With ``flip`` each embedding is the sum of those of the image and its mirror image (flip test-time
    augmentation, as in the LFW protocol), so it no longer depends on which way the face was mirrored.
    """
    images = np.asarray(images_uint8)
    want = tuple(model.input_shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images have shape {images.shape[1:]} but the model takes {want}; "
                         f"load the data at the model's input size ({want[0]})")
    if len(images) == 0:
        raise ValueError("no images to embed")
    out = []
    for start in range(0, len(images), batch_size):
        batch = normalize(images[start:start + batch_size], normalization)
        e = np.asarray(model(batch, training=False), np.float64)
        if flip:
            e += np.asarray(model(np.ascontiguousarray(batch[:, :, ::-1]), training=False), np.float64)
        out.append(e)
    emb = np.concatenate(out)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def pair_scores(embeddings: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (embeddings already L2-normalised)."""
    return np.sum(embeddings[np.asarray(left)] * embeddings[np.asarray(right)], axis=1)


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold (score > t means same) maximising accuracy, and that accuracy.

    Candidates are midpoints between consecutive distinct scores, plus one below and one above all.
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], issame[order].astype(np.int64)
    n = len(s)
    # Splitting before index i predicts "same" for s[i:]: correct = negatives below + positives above.
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])
    pos_above = y.sum() - np.concatenate([[0], np.cumsum(y)])
    correct = neg_below + pos_above
    valid = np.ones(n + 1, bool)
    valid[1:n] = s[1:] > s[:-1]  # a split between tied scores is not realisable
    i = int(np.argmax(np.where(valid, correct, -1)))
    if i == 0:
        t = s[0] - 1e-6
    elif i == n:
        t = s[-1] + 1e-6
    else:
        t = (s[i - 1] + s[i]) / 2
    return float(t), float(correct[i] / n)


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, thresholds) with the threshold sweeping from above every score down to the lowest."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], issame[order].astype(bool)
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    far = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    tar = np.r_[0.0, tp / max(int(y.sum()), 1)]
    return far, tar, np.r_[np.inf, s[last_of_tie]]


def roc_auc(scores: np.ndarray, issame: np.ndarray) -> float:
    """Probability that a genuine pair outscores an impostor pair (ties count half)."""
    far, tar, _ = roc_curve(scores, issame)
    return float(np.sum((far[1:] - far[:-1]) * (tar[1:] + tar[:-1]) / 2))


def equal_error_rate(scores: np.ndarray, issame: np.ndarray) -> float:
    """The rate where false accepts equal false rejects, interpolated along the ROC."""
    far, tar, _ = roc_curve(scores, issame)
    frr = 1.0 - tar
    i = int(np.argmax(far >= frr))  # the first point is (0, 1), so i >= 1
    d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(far[i - 1] + t * (far[i] - far[i - 1]))


def tar_at_far(scores: np.ndarray, issame: np.ndarray, levels=FAR_LEVELS) -> dict[str, float]:
    """Genuine accept rate at each FAR level that the number of impostor pairs can resolve."""
    impostor = np.sort(scores[~issame])[::-1]
    genuine = scores[issame]
    out = {}
    for far in levels:
        if len(impostor) * far < 1:
            continue  # fewer impostors than 1/FAR: the level is not measurable
        # At most floor(far * n) impostors may score above the threshold.
        threshold = impostor[int(np.floor(far * len(impostor)))]
        out[far_key(far)] = float(np.mean(genuine > threshold))
    return out


def verification_metrics(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray) -> dict:
    """k-fold verification accuracy (threshold from the other folds), ROC AUC, EER and TAR@FAR."""
    scores = np.asarray(scores, np.float64)
    issame = np.asarray(issame, bool)
    folds = np.asarray(folds)
    if not (len(scores) == len(issame) == len(folds)):
        raise ValueError(f"scores, issame and folds differ in length: "
                         f"{len(scores)}, {len(issame)}, {len(folds)}")
    if issame.all() or not issame.any():
        raise ValueError("verification needs both genuine and impostor pairs")
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("k-fold verification needs at least 2 folds")
    accs, thresholds = [], []
    for f in fold_ids:
        test = folds == f
        t, _ = best_threshold(scores[~test], issame[~test])
        accs.append(float(np.mean((scores[test] > t) == issame[test])))
        thresholds.append(t)
    return {
        "verification_accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "fold_accuracies": accs,
        "roc_auc": roc_auc(scores, issame),
        "eer": equal_error_rate(scores, issame),
        "tar_at_far": tar_at_far(scores, issame),
        "pairs": int(len(scores)),
        "genuine_pairs": int(issame.sum()),
        "impostor_pairs": int((~issame).sum()),
        "folds": int(len(fold_ids)),
        "threshold": float(np.median(thresholds)),
    }


def rank1_accuracy(embeddings: np.ndarray, labels: np.ndarray) -> float | None:
    """Leave-one-out nearest-neighbour identification over images whose identity has another image."""
    labels = np.asarray(labels)
    sim = embeddings @ embeddings.T
    np.fill_diagonal(sim, -np.inf)
    counts = np.bincount(labels)
    queries = counts[labels] >= 2
    if not queries.any():
        return None
    nearest = np.argmax(sim[queries], axis=1)
    return float(np.mean(labels[nearest] == labels[queries]))


def evaluate_model(model: keras.Model, faceset: FaceSet, pairs: Pairs | None = None, n_folds: int = 10,
                   seed: int = 0, normalization: dict | None = None, batch_size: int = 64,
                   roc_png: str | os.PathLike | None = None, flip: bool = False) -> dict:
    """Verification metrics on ``pairs`` (made from the labels when None) plus rank-1 identification.

    ``flip`` scores flip test-time-augmented embeddings (see `embed`); the result records it as ``flip_tta``.
    """
    from .data import make_pairs

    if pairs is None:
        pairs = make_pairs(faceset.labels, n_folds=n_folds, seed=seed)
    emb = embed(model, faceset.images, batch_size=batch_size, normalization=normalization, flip=flip)
    scores = pair_scores(emb, pairs.left, pairs.right)
    issame = np.asarray(pairs.issame, bool)
    result = verification_metrics(scores, issame, pairs.fold)
    result["rank1"] = rank1_accuracy(emb, faceset.labels)
    result["flip_tta"] = bool(flip)
    result["identities"] = len(faceset.names)
    result["images"] = int(len(faceset.labels))
    if roc_png is not None:
        result["roc_png"] = str(save_roc_plot(scores, issame, roc_png, title=model.name))
    return result


def save_roc_plot(scores: np.ndarray, issame: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """ROC curve (log-scale FAR) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import atomic

    far, tar, _ = roc_curve(np.asarray(scores, np.float64), np.asarray(issame, bool))
    auc, eer = roc_auc(scores, issame), equal_error_rate(scores, issame)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    floor = 1.0 / max(int((~np.asarray(issame, bool)).sum()), 1)
    ax.plot(np.maximum(far, floor / 2), tar, lw=2, label=f"AUC {auc:.4f}, EER {eer:.2%}")
    ax.set_xscale("log")
    ax.set_xlim(floor / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC {title}".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def format_table(result: dict) -> str:
    """A human-readable table of an evaluation result."""
    rows = [("verification accuracy",
             f"{result['verification_accuracy']:.2%} ± {result['accuracy_std']:.2%} "
             f"({result['folds']} folds)"),
            ("ROC AUC", f"{result['roc_auc']:.4f}"),
            ("EER", f"{result['eer']:.2%}")]
    for key, value in result.get("tar_at_far", {}).items():
        rows.append((f"TAR @ FAR {key}", f"{value:.2%}"))
    if result.get("rank1") is not None:
        rows.append(("rank-1 identification", f"{result['rank1']:.2%}"))
    rows.append(("pairs", f"{result['pairs']} ({result['genuine_pairs']} genuine, "
                          f"{result['impostor_pairs']} impostor)"))
    if "identities" in result:
        rows.append(("identities / images", f"{result['identities']} / {result['images']}"))
    rows.append(("threshold (cosine)", f"{result['threshold']:.4f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
