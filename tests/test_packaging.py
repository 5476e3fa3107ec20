"""The project runs from its checkout: `pip install .` stops with one message, installing nothing
(its generic top-level packages would shadow others in site-packages)."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_build_backend_refuses_every_build_with_the_checkout_instructions():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    system = config["build-system"]
    assert system["requires"] == []  # nothing to download before the refusal
    path = REPO / system["backend-path"][0] / f"{system['build-backend']}.py"
    spec = importlib.util.spec_from_file_location("backend", path)
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    for hook in ("get_requires_for_build_wheel", "build_wheel", "build_sdist", "build_editable"):
        with pytest.raises(SystemExit, match=r"runs from its checkout\. Run `pip install -r requ"):
            getattr(backend, hook)("dist")
    assert {"ruff", "pytest"} <= config["tool"].keys()
