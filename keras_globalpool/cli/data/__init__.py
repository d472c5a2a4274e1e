"""Image data for `keras-globalpool compare`: embedded digits, folders, `.npz`."""

from keras_globalpool.cli.data.dataset import (
    ImageDataset,
    check_enough_samples,
    stratified_split,
    stratified_subset,
)
from keras_globalpool.cli.data.digits import load_digits, load_translated_digits
from keras_globalpool.cli.data.directory import load_directory
from keras_globalpool.cli.data.npz import load_npz
from keras_globalpool.cli.data.sources import DATASETS, load
from keras_globalpool.cli.data.transforms import resize, to_rgb

__all__ = [
    "DATASETS",
    "ImageDataset",
    "check_enough_samples",
    "load",
    "load_digits",
    "load_directory",
    "load_npz",
    "load_translated_digits",
    "resize",
    "stratified_split",
    "stratified_subset",
    "to_rgb",
]
