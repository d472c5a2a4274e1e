"""Section 3: what a pooling head adds to backbone inference, in %.

The classifier is `kgp.build_classifier(backbone, 1000, weights=None)` on
224x224 images, batch 32, compiled in graph mode (the Keras default). The
backbone alone is the same model cut at the pooler's input (preprocessing
and backbone, the same layer objects). Two figures per head:

- measured: whole model over backbone alone, timed in turn, minus 1. It
  is what a user sees, but on a shared machine its noise is a few % of the
  backbone, more than the head costs;
- from parts: the head alone (pooler, dropout, dense), run on the
  backbone's feature maps, over the backbone alone, timed in turn. The
  model runs the two one after the other, so this is the head's share
  without the backbone's noise in it. The targets are checked on it.

Every pooling in `kgp.POOLINGS` is a head. With `"csra"` the pooler maps
the feature maps to the logits itself and "predictions" is an activation,
so its head is the pooler and the activation. The pooled size is what the
pooler outputs: the channels, twice them for mixed, dim * (dim + 1) / 2 for
covariance, the classes for CSRA.

The noise floor is the backbone timed twice per round: its "overhead" over
itself, which the measured figures cannot resolve below.
"""

import keras
import numpy as np

import keras_globalpool as kgp
from benchmarks.common import interleaved_times, paired_ratio, predict_runner, verdict

BACKBONES = ("ResNet50", "MobileNetV2")
HEADS = tuple(kgp.POOLINGS)
# Overhead limits in %: parameter-free and per-channel poolings 3, attention-
# type ones 10. Covariance (None) has none: it is reported as measured, with
# its pooled size, dim * (dim + 1) / 2, which its 1000-way dense multiplies.
# A pooling new to the registry needs an entry here.
TARGETS = {
    **dict.fromkeys(("avg", "max", "mixed", "gem", "lse"), 3.0),
    **dict.fromkeys(("attention", "gated_attention", "map", "simpool", "csra"), 10.0),
    "covariance": None,
}
BATCH = 32
IMAGE = (224, 224, 3)
CLASSES = 1000


def _split(model):
    """The model up to the pooler's input, and the model from it on."""
    maps = model.get_layer("pooler").input
    return keras.Model(model.inputs, maps), keras.Model(maps, model.outputs)


def measure_backbone(backbone, repeats, image=IMAGE, batch=BATCH):
    """Rows for one backbone: every head's overhead, measured and from parts."""
    images = np.random.default_rng(0).uniform(0, 255, (batch, *image)).astype("float32")
    models = {
        head: kgp.build_classifier(
            backbone, CLASSES, input_shape=image, pooling=head, weights=None
        )
        for head in HEADS
    }
    features, _ = _split(models[HEADS[0]])
    maps = features.predict_on_batch(images)
    runners = {
        "backbone": predict_runner(features, images, False),
        "backbone again": predict_runner(features, images, False),
    }
    heads = {head: _split(model)[1] for head, model in models.items()}
    for head, model in models.items():
        runners[head] = predict_runner(model, images, False)
        runners[f"{head} head"] = predict_runner(heads[head], maps, False)
    times = interleaved_times(runners, repeats)
    noise = 100 * (paired_ratio(times, "backbone again", "backbone") - 1)
    rows = []
    for head, model in models.items():
        measured = 100 * (paired_ratio(times, head, "backbone") - 1)
        parts = 100 * paired_ratio(times, f"{head} head", "backbone")
        target = TARGETS[head]
        rows.append(
            {
                "backbone": backbone,
                "head": head,
                "feature map": str(tuple(maps.shape)),
                "pooled size": model.get_layer("pooler").output.shape[-1],
                "head params (M)": heads[head].count_params() / 1e6,
                "backbone ms": 1e3 * float(np.median(times["backbone"])),
                "head ms": 1e3 * float(np.median(times[f"{head} head"])),
                "overhead % (from parts)": parts,
                "overhead % (measured)": measured,
                "noise floor %": noise,
                "target %": "" if target is None else target,
                "target met": "" if target is None else verdict(parts <= target),
            }
        )
        print(
            f"  {backbone:12} {head:15} from parts {parts:.2f}%  measured "
            f"{measured:+.1f}%",
            flush=True,
        )
    return rows


def run(args):
    repeats = max(3, args.repeats // 2)  # each call is a whole backbone
    rows = []
    for backbone in BACKBONES:
        rows.extend(measure_backbone(backbone, repeats))
    return {
        "title": "3. Head overhead on backbone inference (224x224, batch 32, "
        "graph mode)",
        "columns": [
            "backbone",
            "head",
            "pooled size",
            "head params (M)",
            "backbone ms",
            "head ms",
            "overhead % (from parts)",
            "overhead % (measured)",
            "noise floor %",
            "target %",
            "target met",
        ],
        "rows": rows,
        "targets": {
            head: "none: reported as measured" if limit is None else f"<= {limit}%"
            for head, limit in TARGETS.items()
        },
    }
