"""The README's Python tour runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README has a Python tour"
    scope: dict = {}  # one session: each block goes on from the last
    exec(compile(blocks[0], str(README), "exec"), scope)  # noqa: S102
    assert scope["x"].shape == (1000, 2) and scope["logp"].shape == (100,)
    exec(compile(blocks[1], str(README), "exec"), scope)  # noqa: S102
    assert scope["x"].shape == (100, 2) and scope["trainer"].step == 20


def test_readme_loading_a_run(tmp_path, monkeypatch):
    from scorekit.app.cli import main

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "load_model" in b)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "moons", "--n", "300", "--steps", "5", "--quiet",
                 "--out", "runs/moons"]) == 0  # fmt: skip
    scope: dict = {"sk": __import__("scorekit")}
    exec(compile(code.replace("500", "50"), str(README), "exec"), scope)  # noqa: S102
    x, model = scope["x"], scope["model"]
    assert x.shape == (50, 2) and model.recipe == "toy-2d" and model.data_shape == (2,)
    # data coordinates: the toy's own scale, not the standardised one
    assert abs(float(x[:, 1].mean()) - float(model.normalizer.loc[1])) < 1.0
