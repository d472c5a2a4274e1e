"""The README and the guides in `docs/` run as written, and their links resolve.

Every ```python block of `README.md` and `docs/*.md` runs. The blocks of one
page run in order in one namespace, in a fresh temporary folder (so exports
and saved files land there, never in the repository), and later blocks use
the names earlier ones defined. The pages show real usage; this machine has
no internet and two cores, so the test adapts each block with stand-ins
instead of the pages carrying toy code:

- `SUBSTITUTIONS`, textual replacements applied to every block: no ImageNet
  weights, small images, one epoch, a shallow backbone;
- `prelude`, the names a page leaves to the reader (their data set: images,
  labels, `tf.data` pipelines), as tiny arrays of the substituted image shape;
- `write_stand_in_files`, files a page reads from the reader's disk (the
  CIFAR-10 batches), as tiny files of the same format.

Code that must not run here (shell commands, servers) is not tagged
`python`; an untagged or unknown fence fails `test_every_code_block_is_tagged`
so nothing escapes. Under the jax and torch backends only the blocks without
TensorFlow-only features (`TENSORFLOW_ONLY`) run; on TensorFlow, every block.
"""

import collections
import linecache
import pathlib
import pickle
import re

import keras
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The image shape every substituted `input_shape` becomes, and the prelude's.
IMAGE_SHAPE = (64, 64, 3)
# Labels 0..2 suit every page's `num_classes` (3 or more).
NUM_LABELS = 3

# (pattern, replacement, why): applied in order to every python block.
SUBSTITUTIONS = (
    (
        r'weights="imagenet"',
        "weights=imagenet_stand_in()",
        "no internet to download weights: a seeded initialization stands in, the"
        " same each time as the pretrained weights (one cache serves two models)",
    ),
    (
        r"\((?:224, 224|96, 96), 3\)",
        repr(IMAGE_SHAPE),
        "small images keep the backbones fast on two cores",
    ),
    (
        r"image_size=\((?:224, 224|96, 96)\)",
        f"image_size={IMAGE_SHAPE[:2]!r}",
        "a folder's images at the substituted size",
    ),
    (r"\bepochs=\d+", "epochs=1", "one epoch shows that training runs"),
    (
        r'"(?:ResNet50|MobileNetV2)"',
        '"VGG16"',
        "a backbone of 19 layers traces faster than ResNet50's 175",
    ),
)

# A block needs TensorFlow if it matches one of these (pattern: why).
TENSORFLOW_ONLY = {
    r"\bexport_saved_model\b": "SavedModel export",
    r"\bkgp\.export\(|\bload_exported\b": "export runs on TensorFlow",
    r"\bimport tensorflow\b|\btf\.": "the TensorFlow API",
    r"\b(?:train|val)_ds\b": "a tf.data pipeline",
    r"\bclass_activation_maps\b|\boverlay_grid\b": "Grad-CAM uses tf.GradientTape",
}

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
FENCE = re.compile(r"^```(.*)$", re.M)
# Fence tags allowed besides python: none of them is run.
OTHER_TAGS = {"bash", "console", "text", "json"}


def python_blocks(page):
    """`(line, source)` of each python block of `page`, in order."""
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in PYTHON_BLOCK.finditer(text)
    ]


def adapt(source):
    for pattern, replacement, _ in SUBSTITUTIONS:
        source = re.sub(pattern, replacement, source)
    return source


def needs_tensorflow(source):
    return any(re.search(pattern, source) for pattern in TENSORFLOW_ONLY)


def applicable_blocks(page):
    blocks = python_blocks(page)
    if keras.backend.backend() == "tensorflow":
        return blocks
    return [(line, source) for line, source in blocks if not needs_tensorflow(source)]


def prelude():
    """The reader's data, as tiny stand-ins: raw images (0-255) and labels."""
    rng = np.random.default_rng(0)

    def images(count):
        return rng.integers(0, 256, (count, *IMAGE_SHAPE)).astype("float32")

    def labels(count):
        return np.arange(count) % NUM_LABELS

    def imagenet_stand_in():
        keras.utils.set_random_seed(0)
        return None

    names = {
        "imagenet_stand_in": imagenet_stand_in,
        "x_train": images(8),
        "y_train": labels(8),
        "x_val": images(4),
        "y_val": labels(4),
        "x_test": images(4),
        "y_test": labels(4),
        "images": images(4),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        for split in ("train", "val"):
            pairs = (names[f"x_{split}"], names[f"y_{split}"])
            names[f"{split}_ds"] = tf.data.Dataset.from_tensor_slices(pairs).batch(4)
    return names


def write_stand_in_files(folder):
    """CIFAR-10's Python batches, two images each, in the real format; and a
    folder of class subfolders of JPEG photos, two per class."""
    rng = np.random.default_rng(0)
    from PIL import Image

    for label in ("cats", "dogs"):
        (folder / "photos" / "train" / label).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, (80, 80, 3)).astype("uint8")
            path = folder / "photos" / "train" / label / f"{index}.jpg"
            Image.fromarray(pixels).save(path)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (2, 3 * 32 * 32)).astype("uint8"),
            b"labels": [0, 1],
        }
        (batches / name).write_bytes(pickle.dumps(batch))


def page_id(page):
    return page.relative_to(ROOT).as_posix()


RUNNABLE = [page for page in PAGES if applicable_blocks(page)]


# Markdown files that are not guides: the changelog and a folder's note.
NOT_GUIDES = {"CHANGELOG.md", "saved_models/README.md"}


def test_every_page_is_collected():
    """Every Markdown page of the repository is checked; those with code run."""
    found = {
        page_id(page)
        for page in ROOT.rglob("*.md")
        if not any(part.startswith(".") for part in page.relative_to(ROOT).parts)
        and ".egg-info" not in page.as_posix()
    }
    assert found - NOT_GUIDES == {page_id(page) for page in PAGES}
    with_code = [page for page in PAGES if python_blocks(page)]
    if keras.backend.backend() == "tensorflow":
        assert RUNNABLE == with_code
    assert ROOT / "README.md" in RUNNABLE


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_code_block_is_tagged(page):
    """Each fence is python (run) or a known tag (not run), so none escapes."""
    tags = FENCE.findall(page.read_text(encoding="utf-8"))[::2]
    unknown = [tag for tag in tags if tag != "python" and tag not in OTHER_TAGS]
    assert unknown == [], f"{page_id(page)}: untagged or unknown fences {unknown}"


@pytest.mark.parametrize(("pattern", "replacement", "why"), SUBSTITUTIONS)
def test_every_substitution_is_used(pattern, replacement, why):
    """A stand-in that matches no block is dead and should go."""
    sources = [source for page in PAGES for _, source in python_blocks(page)]
    assert any(re.search(pattern, source) for source in sources), (pattern, why)


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stand_in_files(tmp_path)
    keras.backend.clear_session()
    namespace = {"__name__": "__main__", **prelude()}
    for line, source in applicable_blocks(page):
        code = adapt(source)
        # Tracebacks name the page and line of the block and show its code.
        filename = f"{page_id(page)}, block at line {line}"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        exec(compile(code, filename, "exec"), namespace)


# === Links ===

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
FENCED = re.compile(r"^```.*?^```$", re.M | re.S)
CODE = re.compile(r"^```.*?^```$|`[^`\n]*`", re.M | re.S)


def anchors(page):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to -."""
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    seen = collections.Counter()
    slugs = set()
    for heading in HEADING.findall(text):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        # A repeated heading gets -1, -2, ... as on GitHub.
        slugs.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return slugs


def links(page):
    return LINK.findall(CODE.sub("", page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    """Every relative link names an existing file, and its anchor a heading."""
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: outside the repository
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(target)
    assert broken == [], f"{page_id(page)}: broken links {broken}"


def test_readme_links_every_page():
    """The README's link list reaches every guide in docs/."""
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in links(ROOT / "README.md")
    }
    missing = [page_id(page) for page in PAGES[1:] if page not in linked]
    assert missing == []
