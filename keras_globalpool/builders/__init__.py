"""Transfer-learning builders: `keras.applications` backbones with pooling heads.

The public names are exported from `keras_globalpool`; this package imports
nothing itself, so `keras_globalpool.registry` can import the layers defined
here without an import cycle.
"""
