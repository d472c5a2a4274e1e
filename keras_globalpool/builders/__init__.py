"""Transfer-learning builders: `keras.applications` backbones with pooling heads.

The public names are exported from `keras_globalpool`.
"""
