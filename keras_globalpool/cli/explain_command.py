"""The `explain` subcommand's arguments, on top of `kgp.viz.explain`."""

from keras_globalpool.viz.cam import METHODS
from keras_globalpool.viz.explain import explain


def add_explain_parser(subparsers):
    """Registers the `explain` subcommand on an argparse subparsers object.

    Args:
        subparsers: the object `ArgumentParser.add_subparsers()` returns.

    Returns:
        The subcommand's `ArgumentParser`. Its parsed arguments carry
        `func`, which runs the command and returns the exit status.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="keras-globalpool")
    >>> subparsers = parser.add_subparsers(dest="command", required=True)
    >>> add_explain_parser(subparsers).prog
    'keras-globalpool explain'
    >>> args = parser.parse_args(["explain", "m.keras", "a.png", "--out", "o"])
    >>> args.images, args.overwrite, args.func is run_explain
    (['a.png'], False, True)
    """
    parser = subparsers.add_parser(
        "explain",
        help="Write CAM / Grad-CAM and attention overlays for images.",
        description=(
            "Write one PNG per image with the class activation map (CAM for "
            "GAP -> Dense heads, Grad-CAM otherwise) over it, plus the "
            "attention map for models with attention pooling."
        ),
    )
    parser.add_argument("model", help="A saved .keras model.")
    parser.add_argument("images", nargs="+", help="Image files to explain.")
    parser.add_argument(
        "--out",
        required=True,
        help="Output directory. Each image gets its own names (a repeated name "
        "gets -1, -2, ...); existing files are refused unless --overwrite, and "
        "an input image is never overwritten.",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace output files that already exist.",
    )
    parser.add_argument(
        "--class-index",
        type=int,
        default=None,
        help="Explain this class instead of the predicted one.",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="auto: CAM where the head allows it, else Grad-CAM.",
    )
    parser.set_defaults(func=run_explain)
    return parser


def run_explain(args):
    """Runs `explain` for parsed arguments and prints the files written.

    Args:
        args: the `argparse.Namespace` of the `explain` subcommand.

    Returns:
        int. The exit status, 0.

    Example:

    >>> import argparse
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = kgp.GlobalAveragePooling(name="pooler")(keras.layers.Conv2D(4, 3)(inputs))
    >>> keras.Model(inputs, keras.layers.Dense(2)(x)).save("m.keras")
    >>> keras.utils.save_img("dog.png", np.zeros((8, 8, 3), "uint8"))
    >>> run_explain(argparse.Namespace(
    ...     model="m.keras", images=["dog.png"], out="o", class_index=None,
    ...     method="auto", overwrite=False))
    o/dog_cam.png
    0
    """
    for path in explain(
        args.model,
        args.images,
        args.out,
        args.class_index,
        args.method,
        overwrite=args.overwrite,
    ):
        print(path)
    return 0
