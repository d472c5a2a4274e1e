"""`export`: convert a saved `.keras` model into a TF Serving SavedModel."""

import pathlib

import keras

from keras_globalpool.export import export_saved_model


def export_keras_file(model_path, out_dir, version=None, threshold=0.5):
    """Loads a `.keras` file safely and exports it for TF Serving.

    Args:
        model_path: path of a `.keras` file, such as one `compare` saved.
        out_dir: the model's base folder; the export goes to
            `out_dir/<version>/`.
        version: optional int. Defaults to the next free version number.
        threshold: float in (0, 1). The decision threshold of a sigmoid or
            single-logit head, as in `kgp.export_saved_model`. Defaults to
            `0.5`.

    Returns:
        The version folder, as a string.

    Example:

    >>> import os
    >>> model = kgp.build_classifier(
    ...     "MobileNetV2", 3, input_shape=(32, 32, 3), weights=None)
    >>> model.save("flowers.keras")
    >>> os.path.basename(export_keras_file("flowers.keras", "served/flowers"))
    '1'
    """
    path = pathlib.Path(model_path)
    if path.suffix != ".keras" or not path.is_file():
        raise ValueError(
            "`model` must be an existing .keras file. "
            f"Received: model={str(model_path)!r}"
        )
    # keras_globalpool is imported, so its layers load without custom_objects.
    model = keras.models.load_model(path, safe_mode=True)
    return export_saved_model(model, out_dir, version=version, threshold=threshold)
