"""Losses and training metrics in ``keras.ops`` (backend-independent, registered for safe loading).

Targets are integer label maps (batch, rows, cols) or (batch, slices, rows, cols); predictions are
softmax probabilities over classes ("separate") or one sigmoid bone channel ("merged").
"""

import keras
from keras import ops

_EPS = 1e-6


def _one_hot_pair(y_true, y_pred):
    """(targets, predictions) as float one-hot/probability tensors of the same shape."""
    n_classes = y_pred.shape[-1]
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, -1)
    if n_classes == 1:  # merged bone: any non-zero label is bone
        return ops.expand_dims(ops.cast(y_true > 0, y_pred.dtype), -1), y_pred
    return ops.one_hot(y_true, n_classes, dtype=y_pred.dtype), y_pred


def _foreground(t):
    """Drop the background channel of a softmax output (keep a single sigmoid channel)."""
    return t if t.shape[-1] == 1 else t[..., 1:]


def soft_fbeta(y_true, y_pred, beta=1.0):
    """Soft F-beta per foreground class, pooled over the batch: shape (classes,)."""
    t, p = _one_hot_pair(y_true, y_pred)
    t, p = _foreground(t), _foreground(p)
    axes = tuple(range(len(t.shape) - 1))
    tp = ops.sum(t * p, axis=axes)
    fp = ops.sum((1 - t) * p, axis=axes)
    fn = ops.sum(t * (1 - p), axis=axes)
    b2 = beta * beta
    return ((1 + b2) * tp + _EPS) / ((1 + b2) * tp + b2 * fn + fp + _EPS)


@keras.saving.register_keras_serializable(package="kneeseg")
class SoftFBetaLoss(keras.losses.Loss):
    """1 - soft F-beta (F1 = soft Dice for beta=1), averaged over foreground classes.

    ``class_weights`` (one per foreground class) let a rare bone such as the fibula weigh more.
    """

    def __init__(self, beta=1.0, class_weights=None, name="soft_fbeta", **kwargs):
        super().__init__(name=name, **kwargs)
        self.beta = float(beta)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        scores = soft_fbeta(y_true, y_pred, self.beta)
        if self.class_weights is None:
            return 1.0 - ops.mean(scores)
        w = ops.convert_to_tensor(self.class_weights, dtype=scores.dtype)
        return 1.0 - ops.sum(w * scores) / ops.sum(w)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="kneeseg")
class CrossEntropyLoss(keras.losses.Loss):
    """Categorical (or, for one channel, binary) cross-entropy on integer targets."""

    def __init__(self, name="cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        t, p = _one_hot_pair(y_true, y_pred)
        p = ops.clip(p, _EPS, 1 - _EPS)
        if p.shape[-1] == 1:
            return -ops.mean(t * ops.log(p) + (1 - t) * ops.log(1 - p))
        return -ops.mean(ops.sum(t * ops.log(p), axis=-1))


@keras.saving.register_keras_serializable(package="kneeseg")
class CombinedLoss(keras.losses.Loss):
    """Soft F-beta loss + cross-entropy (each weight 1 by default)."""

    def __init__(self, beta=1.0, class_weights=None, ce_weight=1.0, name="fbeta_plus_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.fbeta = SoftFBetaLoss(beta, class_weights)
        self.ce = CrossEntropyLoss()
        self.ce_weight = float(ce_weight)

    def call(self, y_true, y_pred):
        return self.fbeta.call(y_true, y_pred) + self.ce_weight * self.ce.call(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "beta": self.fbeta.beta, "class_weights": self.fbeta.class_weights,
                "ce_weight": self.ce_weight}


LOSSES = {"dice": SoftFBetaLoss, "fbeta": SoftFBetaLoss, "ce": CrossEntropyLoss, "dice+ce": CombinedLoss}


def make_loss(name: str, class_weights=None, beta=1.0):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name == "ce":
        return CrossEntropyLoss()
    return LOSSES[name](beta=beta, class_weights=class_weights)


@keras.saving.register_keras_serializable(package="kneeseg")
class ClassConfusion(keras.metrics.Metric):
    """Hard (argmax / 0.5-threshold) confusion counts of one class, accumulated over an epoch.

    ``kind`` picks the score reported: dice, iou, precision, recall or accuracy. ``class_id`` is a
    label value; ``None`` pools all foreground classes (the "mean" over voxels of any bone).
    """

    KINDS = ("dice", "iou", "precision", "recall", "accuracy")

    def __init__(self, kind="dice", class_id=None, name=None, **kwargs):
        if kind not in self.KINDS:
            raise ValueError(f"unknown metric kind {kind!r}")
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.class_id = kind, class_id
        self.counts = self.add_weight(shape=(4,), initializer="zeros", name="counts")  # tp fp fn tn

    def update_state(self, y_true, y_pred, sample_weight=None):
        t = ops.cast(y_true, "int32")
        if len(t.shape) == len(y_pred.shape):
            t = ops.squeeze(t, -1)
        if y_pred.shape[-1] == 1:
            pred = ops.cast(ops.squeeze(y_pred, -1) > 0.5, "int32")
            t = ops.cast(t > 0, "int32")
        else:
            pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        if self.class_id is None:
            tt, pp = t > 0, pred > 0
        else:
            tt, pp = ops.equal(t, self.class_id), ops.equal(pred, self.class_id)
        tt, pp = ops.cast(tt, "float32"), ops.cast(pp, "float32")
        counts = ops.stack([ops.sum(tt * pp), ops.sum((1 - tt) * pp), ops.sum(tt * (1 - pp)),
                            ops.sum((1 - tt) * (1 - pp))])
        self.counts.assign_add(counts)

    def result(self):
        tp, fp, fn, tn = (self.counts[i] for i in range(4))
        eps = _EPS
        return {
            "dice": (2 * tp + eps) / (2 * tp + fp + fn + eps),
            "iou": (tp + eps) / (tp + fp + fn + eps),
            "precision": (tp + eps) / (tp + fp + eps),
            "recall": (tp + eps) / (tp + fn + eps),
            "accuracy": (tp + tn) / ops.maximum(tp + fp + fn + tn, 1.0),
        }[self.kind]

    def reset_state(self):
        self.counts.assign(ops.zeros((4,)))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="kneeseg")
class MeanDice(keras.metrics.Metric):
    """Hard Dice averaged over the foreground classes, each accumulated over the epoch.

    Monitored for early stopping: unlike pooled Dice it is not dominated by the big bones, so a
    model that loses the fibula scores worse. Only classes present in the targets count.
    """

    def __init__(self, n_classes, name="mean_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_classes = int(n_classes)
        self.n_fg = max(self.n_classes - 1, 1)
        self.counts = self.add_weight(shape=(self.n_fg, 3), initializer="zeros", name="counts")  # tp fp fn

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p = _one_hot_pair(y_true, y_pred)
        if p.shape[-1] == 1:
            p = ops.cast(p > 0.5, p.dtype)
        else:
            p = ops.one_hot(ops.argmax(p, axis=-1), self.n_classes, dtype=p.dtype)
        t, p = _foreground(t), _foreground(p)
        axes = tuple(range(len(t.shape) - 1))
        counts = ops.stack([ops.sum(t * p, axis=axes), ops.sum((1 - t) * p, axis=axes),
                            ops.sum(t * (1 - p), axis=axes)], axis=-1)
        self.counts.assign_add(ops.cast(counts, "float32"))

    def result(self):
        tp, fp, fn = self.counts[:, 0], self.counts[:, 1], self.counts[:, 2]
        dice = (2 * tp + _EPS) / (2 * tp + fp + fn + _EPS)
        # Average over the classes present in the targets: a bone missing from the validation data
        # would otherwise swing the score between 1 (never predicted) and 0 (one false voxel).
        present = ops.cast(tp + fn > 0, dice.dtype)
        n_present = ops.sum(present)
        return ops.where(n_present > 0, ops.sum(dice * present) / ops.maximum(n_present, 1.0), ops.mean(dice))

    def reset_state(self):
        self.counts.assign(ops.zeros((self.n_fg, 3)))

    def get_config(self):
        return {**super().get_config(), "n_classes": self.n_classes}


def training_metrics(labels):
    """The metrics logged per epoch: mean per-bone Dice (monitored), pooled scores, per-bone Dice."""
    n_classes = 1 if len(labels) == 1 else len(labels) + 1
    metrics = [MeanDice(n_classes, name="mean_dice"), ClassConfusion("dice", None, name="dice"),
               ClassConfusion("iou", None, name="iou"),
               ClassConfusion("precision", None, name="precision"), ClassConfusion("recall", None, name="recall"),
               ClassConfusion("accuracy", None, name="accuracy")]
    if len(labels) > 1:
        metrics += [ClassConfusion("dice", label.value, name=f"dice_{label.name.lower()}") for label in labels]
    return metrics
