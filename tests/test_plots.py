"""The shared figures draw what they say: bars per class (never lines across classes), a dot per run, no moving
average wider than a tenth of the classes, learning curves, confusion matrices, image grids."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
from matplotlib.container import BarContainer

from ltcore.data.datasets import ArrayDataset
from ltcore.plots import plot_confusion_matrix, plot_image_grid, plot_learning_curves, plot_per_class_accuracy
from ltcore.train import History


def test_few_classes_are_bars_head_first_with_a_dot_per_run_and_no_line():
    counts = np.array([5, 50, 20])
    runs = np.array([[0.1, 0.9, 0.5], [0.3, 0.7, 0.5]])            # [runs, classes]
    fig = plot_per_class_accuracy({"model": runs, "other": np.array([1.0, 0.0, 0.5])}, counts,
                                  class_names=["a", "b", "c"])
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2
    np.testing.assert_allclose([b.get_height() for b in bars[0]], [80, 50, 20])   # means, head (b) first
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["b", "c", "a"]
    dots = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert len(dots) == 2                                                        # one row of dots per run
    assert not [line for line in ax.get_lines() if line.get_linestyle() != "None"]   # no line joins classes


def test_a_moving_average_wider_than_a_tenth_of_the_classes_is_refused():
    with pytest.raises(ValueError, match="at least 30 classes"):
        plot_per_class_accuracy({"m": np.zeros(10)}, np.arange(10, 0, -1), window=3)
    fig = plot_per_class_accuracy({"m": np.random.default_rng(0).random(40)}, np.arange(40, 0, -1), window=4)
    assert len(fig.axes[0].get_lines()) == 2                                     # the points and their average


def test_learning_curves_show_loss_and_validation_and_say_which_model_was_not_validated():
    validated = History([{"epoch": 1, "loss": 2.0, "val_top1": 0.5}, {"epoch": 2, "loss": 1.0, "val_top1": 0.6}], 1.0)
    not_validated = History([{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.5}], 1.0)
    fig = plot_learning_curves({"a": validated, "b": not_validated})
    loss_ax, val_ax = fig.axes
    assert len(loss_ax.get_lines()) == 2 and len(val_ax.get_lines()) == 1
    np.testing.assert_allclose(val_ax.get_lines()[0].get_ydata(), [50, 60])
    assert "b (not validated)" in [t.get_text() for t in loss_ax.get_legend().get_texts()]


def test_the_confusion_matrix_is_row_normalised_and_printed_in_its_cells():
    fig = plot_confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], ["x", "y"], class_counts=np.array([9, 3]))
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0", "100", "50", "50"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["x (9)", "y (3)"]


def test_the_image_grid_has_a_row_per_class_head_first_labelled_with_its_count():
    images = np.arange(7 * 8 * 8, dtype=np.uint8).reshape(7, 8, 8)   # [N, H, W] grey
    dataset = ArrayDataset(images, np.array([0, 1, 1, 1, 2, 2, 0]))
    fig = plot_image_grid(dataset, ["a", "b", "c"], np.array([2, 3, 2]), per_class=2)
    labels = [ax.get_ylabel() for ax in fig.axes[::2]]
    assert labels == ["b\n3 images", "a\n2 images", "c\n2 images"]


def test_a_bar_at_zero_is_labelled_so_it_does_not_read_as_missing():
    fig = plot_per_class_accuracy({"m": np.array([0.0, 0.5])}, np.array([10, 5]), class_names=["a", "b"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", ""]
