"""Property-based tests: every loader of untrusted files fails cleanly.

Random bytes, truncated files, wrong-shaped or wrong-typed arrays and JSON of the
wrong types go to every loader (checkpoints, models, ``.npy``/``.npz``/``.csv``, image
folders, configs, logs). Each call must either succeed or raise ``ValueError`` (whose
message is not empty) -- never another exception type, a crash, or a hang (each call
runs under a 20 s alarm).

``SCOREKIT_FUZZ_EXAMPLES`` raises the number of examples per test (default 25, the
``make test`` budget of about 20 s in all); ``make fuzz`` runs with 5000.
"""

import io
import json
import os
import signal
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorekit import VE, ScoreModel
from scorekit.core.processes import from_config as process_from_config
from scorekit.nets import MLP, build_net
from scorekit.train.checkpoint import build_model, load_checkpoint, load_model, save_checkpoint
from scorekit.train.data import Normalizer, load_data, load_file
from scorekit.train.trainer import TrainConfig, Trainer

EXAMPLES = int(os.environ.get("SCOREKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 100,  # make test: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


class Hang(Exception):
    pass


@contextmanager
def _alarm(seconds: int = 20):
    def handler(signum, frame):
        raise Hang(f"no answer in {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def clean(fn, *args, **kwargs):
    """Call ``fn``; success and ``ValueError`` pass, anything else fails the test."""
    with _alarm():
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            assert str(e).strip(), f"{type(e).__name__} without a message"
            return e


class _Quiet(tuple):
    """A tuple with a short repr (hypothesis prints the arguments of a failing example)."""

    def __repr__(self):
        return "<good checkpoint>"


@pytest.fixture(scope="module")
def good_checkpoint():
    """The bytes of a real (tiny) trained checkpoint and its ``meta``."""
    torch.manual_seed(0)
    data = load_data("moons", n=64, generator=torch.Generator().manual_seed(0))
    from scorekit import make_objective

    process = VE(0.01, 3.0)
    model = ScoreModel(MLP(2, hidden=8, depth=1, emb_dim=8), process)
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(model, make_objective("dsm", process), data.x, cfg, tmp)
        tr.fit()
        path = Path(tmp) / "checkpoint.safetensors"
        blob = path.read_bytes()
        tensors, meta = load_checkpoint(path)
    return _Quiet((blob, tensors, meta))


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


# -- checkpoints ---------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_as_checkpoint(tmp_path, data):
    p = _write(tmp_path, "c.safetensors", data)
    assert isinstance(clean(load_checkpoint, p), ValueError)
    assert isinstance(clean(load_model, p), ValueError)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True), flip=st.integers(0, 2**16), byte=st.integers(0, 255))
def test_truncated_or_corrupted_checkpoint(tmp_path, good_checkpoint, cut, flip, byte):
    blob = good_checkpoint[0]
    p = _write(tmp_path, "cut.safetensors", blob[: int(cut * len(blob))])
    assert isinstance(clean(load_checkpoint, p), ValueError)
    assert isinstance(clean(load_model, p), ValueError)
    i = flip % len(blob)
    bad = bytearray(blob)
    bad[i] = byte
    p = _write(tmp_path, "flip.safetensors", bytes(bad))
    out = clean(load_model, p)  # a flipped weight byte may still load: then it is a model
    assert isinstance(out, (ValueError, tuple))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _mutate(meta: dict, path: list[str], value) -> dict:
    out = json.loads(json.dumps(meta))
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


PATHS = [
    ["model"], ["model", "net"], ["model", "net", "hidden"], ["model", "net", "depth"],
    ["model", "net", "dim"], ["model", "net", "name"], ["model", "net", "embedding"],
    ["model", "net", "emb_dim"], ["model", "process"], ["model", "process", "sigma_max"],
    ["model", "process", "name"], ["model", "prediction"], ["model", "precond"],
    ["normalizer"], ["normalizer", "loc"], ["normalizer", "scale"], ["step"], ["format"],
]  # fmt: skip


@FUZZ
@given(where=st.sampled_from(PATHS), value=JSON)
def test_checkpoint_json_with_wrong_types(tmp_path, good_checkpoint, where, value):
    _, tensors, meta = good_checkpoint
    meta = _mutate({k: v for k, v in meta.items() if k != "format"}, where, value)
    p = tmp_path / "m.safetensors"
    save_checkpoint(p, tensors, {k: v for k, v in meta.items() if k != "format"})
    out = clean(load_model, p)
    if not isinstance(out, ValueError):
        model, normalizer, meta = out
        x = torch.zeros(3, *meta["data_shape"])
        with _alarm():
            assert model(x, torch.full((3,), 0.5)).shape == x.shape
            assert normalizer.encode(x).shape == x.shape


@FUZZ
@given(name=st.sampled_from(["model.", "ema."]), k=st.integers(0, 50), shape=st.lists(
    st.integers(0, 5), max_size=3))  # fmt: skip
def test_checkpoint_tensors_that_do_not_match_the_config(tmp_path, good_checkpoint, name, k, shape):
    _, tensors, meta = good_checkpoint
    keys = sorted(t for t in tensors if t.startswith(name))
    key = keys[k % len(keys)]
    changed = dict(tensors)
    if tuple(shape) == tuple(tensors[key].shape):
        del changed[key]
    else:
        changed[key] = torch.zeros(shape)
    p = tmp_path / "t.safetensors"
    save_checkpoint(p, changed, {k: v for k, v in meta.items() if k != "format"})
    with _alarm():
        with pytest.raises(ValueError, match="does not match the network"):
            load_model(p, ema=name == "ema.")


# -- data files ----------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".npy", ".npz", ".csv"]))
def test_random_bytes_as_data_file(tmp_path, data, suffix):
    out = clean(load_file, _write(tmp_path, "d" + suffix, data))
    if not isinstance(out, ValueError):  # only a csv of numbers can be read
        assert suffix == ".csv" and out.dtype == torch.float32 and torch.isfinite(out).all()


ARRAYS = st.sampled_from(
    [np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64, "U3", "S2",
     "M8[s]", [("a", "f4"), ("b", "i2")]]
)  # fmt: skip


@FUZZ
@given(
    dtype=ARRAYS,
    shape=st.lists(st.integers(0, 4), max_size=4),
    cut=st.floats(0, 1),
    special=st.sampled_from([None, np.nan, np.inf]),
    key=st.sampled_from([None, "x", "missing"]),
)
def test_npy_npz_of_any_shape_dtype_or_length(tmp_path, dtype, shape, cut, special, key):
    arr = np.zeros(shape, dtype=dtype)
    if special is not None and arr.dtype.kind == "f" and arr.size:
        arr.flat[0] = special  # the loader must refuse it
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    raw = buf.getvalue()
    raw = raw[: max(1, int(cut * len(raw)))] if cut < 1 else raw
    out = clean(load_file, _write(tmp_path, "a.npy", raw))
    zbuf = io.BytesIO()
    np.savez(zbuf, x=arr, y=np.ones(2))
    zraw = zbuf.getvalue()
    zraw = zraw[: max(1, int(cut * len(zraw)))] if cut < 1 else zraw
    zout = clean(load_file, _write(tmp_path, "a.npz", zraw), key=key)
    for o in (out, zout):
        if not isinstance(o, ValueError):
            assert o.dtype == torch.float32 and o.shape[0] >= 1 and torch.isfinite(o).all()
    nonfinite = special is not None and arr.dtype.kind == "f" and arr.size > 0
    if arr.dtype.kind not in "biuf" or arr.ndim == 0 or arr.size == 0 or nonfinite:
        assert isinstance(out, ValueError)


def test_pickled_arrays_are_never_loaded(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    np.save(tmp_path / "p.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tmp_path / "p.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([Boom()], dtype=object), allow_pickle=True)
        z.writestr("x.npy", buf.getvalue())
    for name in ("p.npy", "p.npz"):
        with pytest.raises(ValueError, match="unpickle|pickle"):
            load_file(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


@FUZZ
@given(
    rows=st.lists(
        st.lists(
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.integers(-5, 5).map(str),
                st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=4),
            ),
            max_size=4,
        ),
        max_size=6,
    )
)
def test_csv_of_any_cells(tmp_path, rows):
    text = "\n".join(",".join(r) for r in rows)
    out = clean(load_file, _write(tmp_path, "t.csv", text.encode("utf-8", "surrogatepass")))
    if not isinstance(out, ValueError):
        assert out.dim() == 2 and out.shape[0] >= 1 and torch.isfinite(out).all()


@FUZZ
@given(files=st.lists(st.tuples(st.sampled_from([".png", ".jpg"]), st.binary(max_size=512)),
                      min_size=1, max_size=3),
       cut=st.floats(0.0, 1.0), size=st.sampled_from([None, 4]))  # fmt: skip
def test_image_folder_with_broken_or_truncated_images(tmp_path, files, cut, size):
    from PIL import Image

    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (10, 200, 30)).save(buf, format="PNG")
    good = buf.getvalue()
    _write(folder, "good.png", good)
    for i, (suffix, data) in enumerate(files):
        _write(folder, f"f{i}{suffix}", data if i % 2 else good[: int(cut * len(good))])
    out = clean(load_file, folder, image_size=size)
    if not isinstance(out, ValueError):
        assert out.dim() == 4 and torch.isfinite(out).all()


# -- configurations ------------------------------------------------------------------------
def _deep(config) -> bool:
    if not isinstance(config, dict):
        return False
    depth, mults = config.get("depth"), config.get("mults")
    if (isinstance(depth, int) and depth > 64) or (isinstance(mults, list) and len(mults) > 8):
        return True
    return _deep(config.get("net"))


def _on_meta(build):
    """``build`` on PyTorch's meta device: the checks run, no memory is taken (a fuzzed
    ``hidden=10**6`` is a valid request for a huge network, not an error)."""

    def call(config):
        if _deep(config):
            return None  # a valid request for a very deep network: slow even on meta
        with torch.device("meta"):
            return build(config)

    return call


@FUZZ
@given(value=JSON)
def test_configs_of_wrong_types(value):
    for fn in (Normalizer.from_config, process_from_config, _on_meta(build_net)):
        clean(fn, value)
    clean(_on_meta(build_model), value)
    if isinstance(value, dict):
        clean(TrainConfig.from_dict, value)
        rest = {k: v for k, v in value.items() if k != "name"}
        clean(process_from_config, {"name": "VE", **rest})
        clean(_on_meta(build_net), {"name": "mlp", "dim": 2, **rest})
        clean(Normalizer.from_config, {"loc": 0.0, **rest})


FIELDS = ["sigma_min", "sigma_max", "hidden", "depth", "dim", "emb_dim", "embedding",
          "time_input", "out_dim", "emb_scale", "loc", "scale", "channels", "mults"]  # fmt: skip


@FUZZ
@given(key=st.sampled_from(FIELDS), value=JSON)
def test_one_config_field_of_a_wrong_type(key, value):
    clean(process_from_config, {"name": "VE", "sigma_min": 0.01, "sigma_max": 1.0, key: value})
    for name in ("mlp", "energy_mlp"):
        clean(_on_meta(build_net), {"name": name, "dim": 2, "hidden": 4, "depth": 1, key: value})
    clean(_on_meta(build_net), {"name": "unet", "channels": 1, key: value})
    clean(Normalizer.from_config, {"loc": 0.0, "scale": 1.0, key: value})
    clean(TrainConfig.from_dict, {"steps": 3, key: value} if key != "loc" else {"lr": value})


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_training_log_and_cli_config(tmp_path, data):
    from scorekit.app.cli import _load_json
    from scorekit.app.plots import read_log

    p = _write(tmp_path, "log.jsonl", data)
    clean(read_log, p)
    clean(_load_json, str(p))


@pytest.mark.parametrize(
    "field,value", [("depth", 10**9), ("hidden", 10**9), ("dim", 2**62), ("emb_dim", 10**8)]
)
def test_a_checkpoint_cannot_ask_for_a_huge_network(tmp_path, good_checkpoint, field, value):
    # found by the long fuzz run: depth=10**9 built 10**9 blocks before comparing shapes
    _, tensors, meta = good_checkpoint
    meta = _mutate({k: v for k, v in meta.items() if k != "format"}, ["model", "net", field], value)
    p = tmp_path / "huge.safetensors"
    save_checkpoint(p, tensors, meta)
    refused = "does not match the network|cannot be built|cannot build"
    with _alarm(20), pytest.raises(ValueError, match=refused):
        load_model(p)
