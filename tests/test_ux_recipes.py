"""#19/#23: the data sets the input shape and classes; a preset only the architecture and schedule, and says when
it cannot take the data. The tabular recipe scales with the table."""

import pytest
import torch

from dblocks.shared.data import DataError, Dataset
from dblocks.shared.presets import get_preset
from dblocks.shared.recipes import MAX_EPOCHS, MIN_EPOCHS, fit_preset, recipe_for, tabular_recipe


def _table(n, f, k):
    return Dataset(torch.randn(n, f), torch.arange(n) % k, "tabular", k, "t", [f"c{i}" for i in range(k)])


def _images(n, c, s, k):
    return Dataset(torch.rand(n, c, s, s) * 2 - 1, torch.arange(n) % k, "image", k, "i", [str(i) for i in range(k)])


def test_tabular_recipe_scales_with_rows():
    small, large = tabular_recipe(150, 13, 3), tabular_recipe(5000, 30, 2)
    assert small.preset.arch.width == 32 and small.blocks == 2 and large.preset.arch.width == 64 and large.blocks == 4
    assert small.preset.train.epochs > large.preset.train.epochs  # about the same number of updates
    assert MIN_EPOCHS <= large.preset.train.epochs and small.preset.train.epochs <= MAX_EPOCHS
    assert small.preset.total_layers % small.blocks == 0 and large.preset.total_layers % large.blocks == 0


def test_recipe_and_fitted_presets_take_the_shape_and_classes_from_the_data():
    plan = recipe_for(_table(178, 13, 3))
    assert plan.preset.arch.num_features == 13 and plan.preset.arch.num_classes == 3
    plan = recipe_for(_images(90, 3, 12, 3))
    assert plan.preset.arch.image_size == 12 and plan.preset.arch.image_channels == 3
    assert 12 % plan.preset.arch.patch_size == 0
    fitted = fit_preset(get_preset("breast_cancer"), _table(178, 13, 3)).preset  # issue #19: IndexError before
    assert fitted.arch.num_classes == 3 and fitted.arch.num_features == 13 and fitted.arch.width == 32
    fitted = fit_preset(get_preset("mnist"), _images(40, 1, 16, 5)).preset
    assert fitted.arch.image_size == 16 and fitted.arch.num_classes == 5 and 16 % fitted.arch.patch_size == 0


def test_a_preset_that_cannot_take_the_data_says_so():
    with pytest.raises(DataError, match="preset 'mnist' is for image data, but t is tabular"):
        fit_preset(get_preset("mnist"), _table(100, 13, 3))
    with pytest.raises(DataError, match="preset 'breast_cancer' is for tabular data"):
        fit_preset(get_preset("breast_cancer"), _images(10, 1, 8, 2))
    with pytest.raises(DataError, match="is a generator"):
        fit_preset(get_preset("mnist-gen"), _images(10, 1, 14, 2))
