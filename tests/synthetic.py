"""Tiny synthetic images shared by the recipe tests (imported as ``from synthetic import class_images``)."""
import numpy as np


def class_images(counts, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images: class c is a bright 7x7 block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.integers(0, 60, size=(len(labels), 28, 28))
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, 4 + 14 * row: 11 + 14 * row, 4 + 14 * col: 11 + 14 * col] += 180
    return images.astype(np.uint8), labels
