"""The benchmark suite's command line, and section 6 on a tiny map.

No test here asserts a time: the suite's figures are ratios taken in one
run (`docs/benchmarks.md`). These check that the command refuses what it
cannot run and that section 6 times every candidate on this backend.
"""

import keras
import pytest

from benchmarks import common, passes, run


def _error(capsys, argv):
    with pytest.raises(SystemExit) as raised:
        run.parse_args(argv)
    assert raised.value.code == 2
    return capsys.readouterr().err


def test_sections_default_to_what_the_backends_run():
    assert run.parse_args(["--backend", "tensorflow"]).sections == list(run.SECTIONS)
    assert run.parse_args(["--backend", "all"]).sections == ["6"]
    assert run.parse_args(["--backend", "all"]).backends == list(run.BACKENDS)
    assert run.parse_args(["--backend", "jax,torch"]).backends == ["jax", "torch"]


def test_tensorflow_only_sections_are_refused_on_other_backends(capsys):
    error = _error(capsys, ["--backend", "jax", "--sections", "1,6"])
    assert "run on tensorflow only" in error and "jax" in error


def test_unknown_backend_is_refused(capsys):
    error = _error(capsys, ["--backend", "numpy"])
    assert "'numpy'" in error and "tensorflow" in error


def test_each_backend_gets_its_own_options():
    argv = ["--repeats", "3", "--backend", "all", "--out=r.json", "--sections", "6"]
    assert run._without_backend(argv) == ["--repeats", "3"]
    assert run._backend_path("benchmarks/results.json", "jax") == (
        "benchmarks/results-jax.json"
    )


@pytest.mark.parametrize("step", passes.PASSES)
def test_section_6_times_every_candidate(step):
    # One round on a tiny map: the names the tables read, and real times.
    times = passes.measure_group((4, 3, 3, 8), "float32", step, repeats=1)
    expected = {*passes.PAIRS, *(f"keras_{p}" for p in passes.PAIRS), *passes.EXTRAS}
    expected.add(passes.CONTROL)
    assert set(times) == expected
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())


def test_section_6_fills_its_table(monkeypatch):
    monkeypatch.setattr(passes, "SHAPES", ((4, 3, 3, 8),))
    args = run.parse_args(["--repeats", "1", "--dtypes", "float32", "--sections", "6"])
    result = passes.run(args)
    assert [row["pass"] for row in result["rows"]] == list(passes.PASSES)
    for row in result["rows"]:
        assert all(row[column] != "" for column in result["columns"])
        assert row["mixed speed-up"] == pytest.approx(1 / row["mixed / keras"])
    table = common.format_table(result["title"], result["columns"], result["rows"])
    assert f"| {keras.backend.backend()} | forward | float32 |" in table


def test_scale_passes_the_gradient_through_the_pooling():
    # The training step must reach the map: Scale's gradient is the sum over
    # positions of x times the pooling's gradient, 0 if none flowed back.
    inputs = keras.Input((3, 3, 2))
    scale = passes.Scale()
    model = keras.Model(
        inputs, keras.layers.Dense(1)(passes.PAIRS["avg"](None)(scale(inputs)))
    )
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    before = keras.ops.convert_to_numpy(scale.scale).copy()
    x = keras.ops.ones((2, 3, 3, 2))
    model.train_on_batch(x, keras.ops.zeros((2, 1)) + 5.0)
    assert (keras.ops.convert_to_numpy(scale.scale) != before).all()


def test_section_7_refuses_sizes_it_cannot_split_into_classes(capsys):
    from benchmarks import streaming_cache

    with pytest.raises(SystemExit):
        streaming_cache.parse_args(["--sizes", "5000,10005"])
    assert "multiples of 10" in capsys.readouterr().err
    assert streaming_cache.parse_args(["--sizes", "20,40"]).sizes == (20, 40)


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="section 7 runs on tensorflow"
)
def test_section_7_fills_its_table(tmp_path):
    # Tiny folders: every part runs, a child process per memory case, and
    # each target gets its row and verdict.
    from benchmarks import streaming_cache

    argv = ["--sizes", "20,40", "--memory-epochs", "1", "--speed-size", "20"]
    argv += ["--speed-epochs", "2", "--speed-rounds", "1", "--fit-size", "20"]
    argv += ["--test-size", "20", "--epochs", "2", "--data-dir", str(tmp_path)]
    result = streaming_cache.run(streaming_cache.parse_args(argv))
    rows = result["rows"]
    memory = [r for r in rows if r["part"] == "1. memory" and "growth" not in r["case"]]
    assert [(r["images"], "failed" not in r.get("met", "")) for r in memory] == [
        (20, True),
        (20, True),
        (40, True),
        (40, True),
    ]
    assert all(r["VmHWM MiB"] >= r["peak RssAnon MiB"] > 0 for r in memory)
    verdicts = {r["part"]: r.get("met") for r in rows if r.get("met")}
    assert set(verdicts) == {
        "1. memory",
        "2. epoch time",
        "3. pooled vs maps",
        "4. vs model.fit",
    }
    speed = [r for r in rows if r["part"] == "2. epoch time"]
    assert all(r["seconds"] > 0 for r in speed)
    table = common.format_table(result["title"], result["columns"], rows)
    assert "| 4. vs model.fit |" in table
