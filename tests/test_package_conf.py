"""The Hydra configs ship inside the package (``motion_relevance/conf``): they compose through
``importlib.resources``, and a wheel (a non-editable install) carries every one of them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import motion_relevance.live.config  # noqa: F401  (registers live.yaml's schema in Hydra's ConfigStore)
from motion_relevance.conf import CONFIG_DIR, CONFIG_MODULE

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("explain", "live", "train")


def _yaml_files(node: Traversable, prefix: str = "") -> set[str]:
    """Relative names of the yaml files under ``node`` (a package resource folder), walked by hand."""
    out: set[str] = set()
    for child in node.iterdir():
        if child.is_dir():
            out |= _yaml_files(child, f"{prefix}{child.name}/")
        elif child.name.endswith(".yaml"):
            out.add(prefix + child.name)
    return out


def test_the_config_folder_is_the_package_resource() -> None:
    on_disk = {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    assert _yaml_files(resources.files(CONFIG_MODULE)) == on_disk
    assert {f"{name}.yaml" for name in ROOTS} <= on_disk
    assert len(on_disk) > 40  # the groups came along, not only the roots
    assert not (REPO / "conf").exists(), "the configs live only in src/motion_relevance/conf"


@pytest.mark.parametrize("name", ROOTS)
def test_roots_compose_through_importlib_resources(name: str) -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=name, overrides=["ckpt_path=x.ckpt"] if name != "train" else [])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.task_name
    if name == "train":
        assert cfg.model._target_ == "motion_relevance.classifier.VideoClassifier"


def test_a_wheel_ships_every_config_and_an_installed_copy_composes(tmp_path: Path) -> None:
    """A wheel lists every yaml of the source tree; installed with ``--target`` (no editable finder, the
    repository out of sys.path), the entry points' config folder resolves inside the install."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("motion_relevance-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("motion_relevance/conf/") for n in z.namelist()
                   if n.startswith("motion_relevance/conf/") and n.endswith(".yaml")}
    assert shipped == {p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml")}
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import motion_relevance as t, motion_relevance.conf as c; from hydra import compose, "
            "initialize_config_dir as i\nwith i(config_dir=str(c.CONFIG_DIR), version_base='1.3'):\n"
            "    cfg = compose(config_name='train')\nprint(t.__file__); print(c.CONFIG_DIR); print(cfg.data._target_)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": ""},
                         check=True, capture_output=True, text=True, timeout=300).stdout.splitlines()
    assert Path(out[0]).is_relative_to(target) and Path(out[1]) == target / "motion_relevance" / "conf"
    assert out[2].startswith("motion_relevance.")
