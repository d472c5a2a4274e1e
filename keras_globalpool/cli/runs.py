"""One training of `compare`: a head, a seed, its model, score and costs."""

import dataclasses
import time

import keras

from keras_globalpool.cli.backbones import bag_classifier, build_model
from keras_globalpool.cli.data.stream import sample_shape
from keras_globalpool.cli.data.tasks import BagDataset
from keras_globalpool.cli.measure import memory_meter
from keras_globalpool.cli.training import TRAINERS


@dataclasses.dataclass
class RunResult:
    """What one training measured.

    Args:
        head: string. The head trained.
        seed: int. The seed of its initialization and batch order.
        accuracy: float. Test accuracy.
        seconds: float. Wall-clock time of the training.
        peak_memory_mib: float. The memory meter's peak during the training.
        memory_rise_mib: float. That peak less the reading at its start.
        model: the trained `keras.Model`, or `None` once it went elsewhere.
    """

    head: str
    seed: int
    accuracy: float
    seconds: float
    peak_memory_mib: float
    memory_rise_mib: float
    model: object = None


class RunContext:
    """Builds and trains the models of one comparison, one seed at a time.

    Every head of a seed starts from `keras.utils.set_random_seed(seed)`, so
    heads are paired by seed: the same split, the same backbone
    initialization and the same batch order.

    Args:
        settings: `CompareSettings`.
        train: `ImageDataset` or `FileImageDataset` to train on.
        test: the same kind, to score on.
        jit_compile: bool. Passed to `model.compile`.
    """

    def __init__(self, settings, train, test, jit_compile=False):
        self.settings, self.train, self.test = settings, train, test
        self.jit_compile = jit_compile
        self.trainer = TRAINERS[settings.frozen](train, test, settings)
        self.meter = memory_meter()
        # Bags of instances get an instance encoder, not a CNN backbone.
        self.bags = isinstance(train, BagDataset)

    def model(self, head, seed):
        """A new compiled model of `head`, initialized from `seed`."""
        keras.utils.set_random_seed(seed)
        input_shape = sample_shape(self.train)
        if self.bags:
            model = bag_classifier(head, input_shape, self.train.num_classes)
        else:
            model = build_model(
                self.settings.backbone,
                head,
                input_shape,
                self.train.num_classes,
                self.settings.weights,
            )
        model.compile(
            optimizer=keras.optimizers.Adam(self.settings.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=self.jit_compile,
        )
        return model

    def run(self, head, seed, callbacks=()):
        """Trains and scores `head` from `seed`.

        Args:
            head: string. A head of `settings.heads`.
            seed: int.
            callbacks: Keras callbacks for `fit`.

        Returns:
            `RunResult`, with the trained model.
        """
        start_memory = self.meter.reset()
        model = self.model(head, seed)
        start = time.perf_counter()
        self.trainer.fit(model, list(callbacks))
        seconds = time.perf_counter() - start
        peak = self.meter.peak()
        return RunResult(
            head=head,
            seed=seed,
            accuracy=self.trainer.accuracy(model),
            seconds=seconds,
            peak_memory_mib=peak,
            memory_rise_mib=max(peak - start_memory, 0.0),
            model=model,
        )
