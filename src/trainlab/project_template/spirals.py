"""Your data. A dataset config names a loader by its dotpath (conf/dataset/spirals.yaml:
spirals.load); it returns numpy arrays x_train, y_train, x_test, y_test, and trainlab holds
out the validation split itself. Replace this one with a loader that reads your files."""

import numpy as np


def load(num_train: int, num_test: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    """Two interleaved spirals in the plane, one per class."""
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    labels = rng.integers(0, 2, size=n)
    angle = rng.uniform(0.25, 3.0, size=n) * np.pi
    x = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1) / np.pi
    x[labels == 1] *= -1
    x += noise * rng.normal(size=x.shape)
    x, labels = x.astype(np.float32), labels.astype(np.int64)
    return {"x_train": x[:num_train], "y_train": labels[:num_train],
            "x_test": x[num_train:], "y_test": labels[num_train:]}  # fmt: skip
