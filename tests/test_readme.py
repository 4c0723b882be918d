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
    for code in blocks[1:]:
        exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    assert scope["x"].shape == (100, 2) and scope["trainer"].step == 20
