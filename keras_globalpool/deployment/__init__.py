"""Export to every runtime Keras users ship to, each checked in that runtime."""

from keras_globalpool.deployment.formats import FORMATS, export
from keras_globalpool.deployment.runtimes import load_exported

__all__ = ["FORMATS", "export", "load_exported"]
