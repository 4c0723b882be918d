import numpy as np
import pytest
import torch

from scorekit.train.data import TOYS, Normalizer, load_data, load_file, toy_2d


@pytest.mark.parametrize("name", TOYS)
def test_toys_are_seeded_2d_and_sized(name):
    a = toy_2d(name, 500, torch.Generator().manual_seed(0))
    b = toy_2d(name, 500, torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert 0.3 < float(a.std()) < 3.0


def test_toy_geometry():
    g = torch.Generator().manual_seed(0)
    x = toy_2d("8gaussians", 4000, g).double()
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - 2.0) < 0.05
    ang = torch.atan2(x[:, 1], x[:, 0]) / (2 * torch.pi / 8)
    assert float((ang - ang.round()).abs().max()) < 0.5
    rings = toy_2d("rings", 4000, g).double().norm(dim=1)
    assert float(((rings / 0.5) - (rings / 0.5).round()).abs().mean()) < 0.1
    moons = toy_2d("moons", 4000, g)
    assert float(moons[:, 0].min()) > -1.4 and float(moons[:, 0].max()) < 2.4


def test_normalizer_roundtrip_and_config():
    x = torch.randn(100, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + 3
    for mode in ("standard", "minmax", "none"):
        n = Normalizer.fit(x, mode)
        z = n.encode(x)
        assert torch.allclose(n.decode(z), x)
        m = Normalizer.from_config(n.config())
        assert torch.allclose(m.encode(x), z)
    z = Normalizer.fit(x, "standard").encode(x)
    assert torch.allclose(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(0), torch.ones(3, dtype=torch.float64))
    z = Normalizer.fit(x, "minmax").encode(x)
    assert torch.allclose(z.amin(0), -z.amax(0)) and torch.allclose(
        z.amax(0), torch.ones_like(z[0])
    )
    n = Normalizer(1.0, 2.0)
    assert n.log_det_for((3, 4)) == pytest.approx(-12 * np.log(2.0))
    with pytest.raises(ValueError, match="scale"):
        Normalizer(0.0, 0.0)


def test_digits_in_unit_range():
    d = load_data("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,)
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    assert torch.allclose(d.normalizer.decode(d.x)[0, 0, 0, :3], torch.tensor([0.0, 0.0, 5.0]))


def test_user_files(tmp_path):
    arr = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.save(tmp_path / "a.npy", arr)
    np.savez(tmp_path / "b.npz", data=arr)
    np.savez(tmp_path / "c.npz", x=arr, y=arr)
    (tmp_path / "d.csv").write_text("u,v\n" + "\n".join(f"{a},{b}" for a, b in arr) + "\n")
    for name in ("a.npy", "b.npz", "d.csv"):
        assert torch.equal(load_file(tmp_path / name), torch.tensor(arr, dtype=torch.float32))
    assert torch.equal(load_file(tmp_path / "c.npz", key="y"), load_file(tmp_path / "a.npy"))
    with pytest.raises(ValueError, match="choose one"):
        load_file(tmp_path / "c.npz")
    d = load_data(tmp_path / "a.npy")
    assert torch.allclose(d.x.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(d.normalizer.decode(d.x.double()), torch.tensor(arr), atol=1e-5)


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    for i, p in enumerate(pix):
        Image.fromarray(p, mode="L").save(tmp_path / f"im{i}.png")
    d = load_data(tmp_path)
    assert d.x.shape == (3, 1, 8, 8)
    assert torch.allclose(
        d.x, torch.tensor(pix, dtype=torch.float32)[:, None] / 127.5 - 1, atol=1e-6
    )
    Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    with pytest.raises(ValueError, match="mixed sizes.*image-size"):
        load_data(tmp_path)
    d = load_data(tmp_path, image_size=4)
    assert d.x.shape == (4, 3, 4, 4)  # one colour image makes the set RGB


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_file(tmp_path / "missing.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(ValueError, match="no examples"):
        load_file(tmp_path / "empty.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="unpickle"):
        load_file(tmp_path / "obj.npy")
    (tmp_path / "bad.csv").write_text("1,2\n3,abc\n")
    with pytest.raises(ValueError, match=r"non-numeric cell 'abc' at data row 2, column 2"):
        load_file(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="columns"):
        load_file(tmp_path / "ragged.csv")
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="no examples"):
        load_file(tmp_path / "header.csv")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="unknown type"):
        load_file(tmp_path / "x.txt")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a valid"):
        load_file(tmp_path / "broken.npy")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="NaN"):
        load_file(tmp_path / "nan.npy")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        load_file(tmp_path / "imgs")
