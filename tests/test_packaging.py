"""The installed distribution is one import package, ``pgt``: the folders agent/,
backends/ and kernels/ install as ``pgt``, ``pgt.backends`` and ``pgt.kernels``, and
nothing puts a top-level ``agent``, ``backends`` or ``kernels`` on the path."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("agent", "backends", "kernels")


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    """Import names the distribution's installed files provide at the top level."""
    names = set()
    for file in dist.files or ():
        first = file.parts[0]
        if first.endswith((".dist-info", ".egg-info")) or first in ("..", "__pycache__"):
            continue
        if first.startswith("__editable__") and first.endswith("_finder.py"):
            # An editable install maps import names to folders in its finder module.
            spec = importlib.util.spec_from_file_location("_pgt_finder", file.locate())
            finder = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(finder)
            names.update(name.split(".")[0] for name in finder.MAPPING)
        elif first.startswith("__editable__") or first.endswith(".pth"):
            continue
        else:
            names.add(first.removesuffix(".py"))
    return names


def test_the_distribution_installs_only_the_pgt_package():
    # The installed one, not the build's pgt.egg-info a source checkout may hold.
    site = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    (dist,) = importlib.metadata.distributions(name="pgt", path=sorted(site))
    names = _top_level_names(dist)
    assert names == {"pgt"}, names
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert scripts == {"pgt": "pgt.cli:main"}


def test_import_pgt_works_and_the_folder_names_are_not_importable(tmp_path):
    # -I: no current directory and no PYTHONPATH on sys.path, only what is installed.
    code = (
        "import importlib.util, json, pgt, pgt.backends, pgt.kernels\n"
        f"print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in {FOREIGN!r}}}))\n"
        "print(pgt.__name__, pgt.backends.__name__, pgt.kernels.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert json.loads(out[0]) == {name: False for name in FOREIGN}
    assert out[1] == "pgt pgt.backends pgt.kernels"
