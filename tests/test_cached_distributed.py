"""Cached training distributed: TensorFlow strategies and jax `DataParallel`.

A distribution must be set up before its backend initialises (logical
devices, collective ops, XLA's host device count), so each distributed run
is a subprocess of `tests/distributed_worker.py`, compared with a
single-device run of the same model and data.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_globalpool as kgp

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
TIMEOUT = 150


def _env(**extra):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("TF_CONFIG", "XLA_FLAGS", "KERAS_BACKEND")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def _start(scenario, out, env):
    return subprocess.Popen(
        [sys.executable, str(WORKER), scenario, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait(processes, timeout=TIMEOUT):
    """`(returncode, stderr)` of each process; all are killed at the timeout."""
    deadline = time.monotonic() + timeout
    finished = []
    for process in processes:
        try:
            _, stderr = process.communicate(
                timeout=max(1.0, deadline - time.monotonic())
            )
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            tails = "\n".join(
                f"--- process {i} stderr tail:\n{other.communicate()[1][-3000:]}"
                for i, other in enumerate(processes)
            )
            pytest.fail(f"distributed run passed {timeout} s:\n{tails}")
        finished.append((process.returncode, stderr))
    return finished


def _check_exits(finished):
    failed = [
        f"--- process {i} exited {code}, stderr tail:\n{stderr[-4000:]}"
        for i, (code, stderr) in enumerate(finished)
        if code != 0
    ]
    if failed:
        pytest.fail("\n".join(failed))


def _run(scenario, tmp_path, **env):
    out = tmp_path / f"{scenario}.json"
    _check_exits(_wait([_start(scenario, out, _env(**env))]))
    return json.loads(out.read_text())


def _free_ports(count):
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _multi_worker_run(tmp_path, workers=2):
    """Results of each worker and of the single-process reference."""
    for attempt in range(2):
        outs = [tmp_path / f"worker-{attempt}-{i}.json" for i in range(workers)]
        reference_out = tmp_path / f"single-{attempt}.json"
        cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(workers)]}
        processes = [
            _start(
                "multi_worker",
                out,
                _env(
                    KERAS_BACKEND="tensorflow",
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": i}}
                    ),
                ),
            )
            for i, out in enumerate(outs)
        ]
        processes.append(
            _start("multi_worker", reference_out, _env(KERAS_BACKEND="tensorflow"))
        )
        finished = _wait(processes)
        in_use = any(
            code != 0 and "address already in use" in stderr.lower()
            for code, stderr in finished
        )
        if in_use and attempt == 0:
            continue  # Another process took a port between close and bind.
        _check_exits(finished)
        return (
            [json.loads(out.read_text()) for out in outs],
            json.loads(reference_out.read_text()),
        )


def _assert_weights_close(actual, expected, rtol=1e-5, atol=1e-5):
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=rtol, atol=atol)


def _tiny_classifier():
    backbone = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu")]
    )
    return kgp.build_classifier(backbone, 3, input_shape=(8, 8, 3), dropout=0.0)


def _batches(x, y, batch_size):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


@pytest.mark.parametrize("kind", ["arrays", "dataset", "generator"])
def test_shards_follow_the_block_rule(kind):
    # 20 samples in batches of 8 over 2 workers: blocks of 4 rows, sample i
    # on worker (i // 4) % 2; the last, partial batch all on worker 0.
    model = _tiny_classifier()
    x = np.random.default_rng(0).random((20, 8, 8, 3)) * 255
    y = np.arange(20)
    whole = kgp.cache_features(model, x, y, batch_size=8)
    for index in range(2):
        if kind == "arrays":
            inputs = (x, y)
        elif kind == "dataset":
            import tensorflow as tf

            inputs = (tf.data.Dataset.from_tensor_slices((x, y)).batch(8),)
        else:
            inputs = (_batches(x, y, 8),)
        shard = kgp.cache_features(model, *inputs, batch_size=8, shard=(index, 2))
        expected = [i for i in range(20) if (i // 4) % 2 == index]
        assert shard.y.tolist() == expected
        np.testing.assert_array_equal(shard.maps, whole.maps[expected])


@pytest.mark.parametrize(
    "shard, batch_size, message",
    [
        ((2, 2), 8, r"Received: shard=\(2, 2\)"),
        ((-1, 2), 8, r"Received: shard=\(-1, 2\)"),
        ((0, 0), 8, r"Received: shard=\(0, 0\)"),
        ((0, 2, 1), 8, r"Received: shard=\(0, 2, 1\)"),
        ("0/2", 8, r"Received: shard='0/2'"),
        ((0, 2), 7, r"Received: batch_size=7 .*2 shards"),
    ],
)
def test_invalid_shard_is_refused(shard, batch_size, message):
    model = _tiny_classifier()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.zeros((14, 8, 8, 3)), np.arange(14) % 3
    with pytest.raises(ValueError, match=message):
        kgp.cache_features(model, x, y, batch_size=batch_size, shard=shard)
    with pytest.raises(ValueError, match=message):
        kgp.fit_cached(model, x, y, batch_size=batch_size, shard=shard, verbose=0)


@pytest.mark.slow
def test_mirrored_strategy_trains_the_head_on_both_replicas(tmp_path):
    runs = _run("mirrored", tmp_path, KERAS_BACKEND="tensorflow")
    single, mirrored = runs["single"], runs["mirrored"]
    assert mirrored["num_replicas_in_sync"] == 2
    # The backbone pass and the head's training steps ran in a replica
    # context of 2 replicas, the reference's in one of 1.
    assert mirrored["replicas"] == {"backbone": [2], "head": [2]}
    assert single["replicas"] == {"backbone": [1], "head": [1]}
    np.testing.assert_allclose(
        np.array(mirrored["maps"]), np.array(single["maps"]), rtol=1e-6
    )
    assert mirrored["iterations"] == single["iterations"] == 4
    _assert_weights_close(mirrored["weights"], single["weights"])
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=1e-5)


@pytest.mark.slow
def test_multi_worker_strategy_trains_as_one_process(tmp_path):
    workers, single = _multi_worker_run(tmp_path)
    # Each worker cached its own block-interleaved half: with batches of 8
    # over 2 workers, sample i on worker (i // 4) % 2.
    for index, worker in enumerate(workers):
        assert worker["cached_rows"] == [i for i in range(16) if (i // 4) % 2 == index]
        assert worker["num_replicas_in_sync"] == 2
        assert worker["iterations"] == single["iterations"] == 4
        _assert_weights_close(worker["weights"], single["weights"])
        for key, values in single["history"].items():
            np.testing.assert_allclose(
                worker["history"][key], values, rtol=1e-5, err_msg=key
            )
    assert single["cached_rows"] == list(range(16))
    assert single["num_replicas_in_sync"] == 1
    assert set(single["history"]) >= {"loss", "val_loss"}


@pytest.mark.slow
def test_jax_data_parallel_equals_one_device(tmp_path):
    runs = _run(
        "jax",
        tmp_path,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    assert runs["devices"] == 2
    single, parallel = runs["single"], runs["parallel"]
    for pooling, outputs in single["poolings"].items():
        np.testing.assert_allclose(
            parallel["poolings"][pooling], outputs, rtol=1e-5, atol=1e-6,
            err_msg=pooling,
        )  # fmt: skip
    for how in ("fit", "fit_cached"):
        _assert_weights_close(parallel[how]["weights"], single[how]["weights"])
        np.testing.assert_allclose(
            parallel[how]["loss"], single[how]["loss"], rtol=1e-5, err_msg=how
        )
        np.testing.assert_allclose(
            parallel[how]["predictions"], single[how]["predictions"], atol=1e-5
        )
    # fit_cached trains what model.fit trains, on one device or two, up to
    # the float16 rounding of the cached maps (2**-11 relative).
    _assert_weights_close(
        parallel["fit_cached"]["weights"], single["fit"]["weights"], rtol=2e-3
    )
    # A batch of 3 does not split over 2 devices; one device takes it.
    assert single["errors"] == {"fit_cached": None, "cache_features": None}
    for call, message in parallel["errors"].items():
        assert message is not None, call
        assert "Received: batch_size=3" in message, message
        assert "2 devices" in message, message
