"""Scratch client environments for the client matrix, cheaply: one *base* venv holds the
dependencies every client release shares (qiskit, numpy, pydantic, ...; installed once with
pip's resolver), and each client is a thin venv *layered* on it: its own site-packages holds
only that client's distributions (``pip install --no-deps``), and a ``.pth`` file adds the base's
site-packages after it. A layer costs a few seconds instead of a fresh venv's minute. Each
layer's declared requirements are checked against what it then sees, so a release whose
requirements the shared base does not meet fails with its reason instead of running on
versions it never declared.

Venvs live in $QPROXY_CLIENT_VENVS (default .state/client-venvs in the clone, git-ignored);
reruns reuse them (a marker file per venv records what it was built from).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_DEFAULT = Path(__file__).resolve().parents[2] / ".state" / "client-venvs"
VENVS = Path(os.environ.get("QPROXY_CLIENT_VENVS", _DEFAULT))

# What the base is resolved from: the newest client and QRMI (so their dependency floors hold),
# then removed from it again so that each layer brings its own release.
NEWEST_RUNTIME = "0.51.0"
# the qiskit-ibm-runtime releases the product supports (the client matrix runs each)
SUPPORTED_RUNTIME = ("0.49.0", "0.50.0", NEWEST_RUNTIME)
QRMI = "0.26.4"
BASE_SPEC = (f"qiskit-ibm-runtime=={NEWEST_RUNTIME}", f"qrmi=={QRMI}", "qiskit-qasm3-import",
             "python-dotenv", "packaging")
BASE_REMOVE = ("qiskit-ibm-runtime", "qrmi")
PIP = ("-m", "pip", "--disable-pip-version-check", "-q")

# Run inside a layer: every declared requirement (with the extras the layer was installed
# with) of each top distribution must be met by the installed versions.
_CHECK = r"""
import json, sys
from importlib import metadata
from packaging.requirements import Requirement
problems = []
for top, extras in json.loads(sys.argv[1]).items():
    for text in metadata.requires(top) or []:
        req = Requirement(text)
        envs = [{"extra": e} for e in ["", *extras]]
        if req.marker and not any(req.marker.evaluate(e) for e in envs):
            continue
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{top} needs {req}, not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            problems.append(f"{top} needs {req}, base has {have}")
print(json.dumps(problems))
"""


class LayerError(RuntimeError):
    """A client release cannot run on the shared base (its reason is the message)."""


def _run(args: list[str], timeout: float) -> None:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise LayerError(f"{' '.join(args[:6])}...: {(r.stdout + r.stderr)[-2000:]}")


def _site(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"


def base() -> Path:
    """The shared base venv (built once; ~1 min on a fresh machine)."""
    venv = VENVS / "base"
    marker = venv / ".qproxy-ok"
    if marker.exists() and marker.read_text() == repr(BASE_SPEC):
        return venv
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    _run([python, *PIP, "install", *BASE_SPEC], timeout=1200)
    _run([python, *PIP, "uninstall", "-y", *BASE_REMOVE], timeout=300)
    marker.write_text(repr(BASE_SPEC))
    return venv


def layer(name: str, requirements: list[str], extras: dict[str, list[str]]) -> Path:
    """A venv named ``name`` with only ``requirements`` of its own (``--no-deps``) over the
    base; ``extras`` maps each top distribution to the extras whose requirements must hold.
    Returns its python. Raises LayerError with the unmet requirements, if any."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".qproxy-ok"
    spec = repr((requirements, extras, BASE_SPEC))
    if marker.exists() and marker.read_text() == spec:
        return python
    base_venv = base()
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)],
                   check=True)
    # site.addsitedir (not a bare path line) so that the base's own .pth files are read too.
    (_site(venv) / "_qproxy_base.pth").write_text(
        f"import site; site.addsitedir({str(_site(base_venv))!r})\n")
    # pip comes from the base; it installs into this venv (its sys.prefix), scripts included.
    _run([str(python), *PIP, "install", "--no-deps", "--ignore-installed", *requirements],
         timeout=600)
    r = subprocess.run([str(python), "-c", _CHECK, json.dumps(extras)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise LayerError(r.stderr[-2000:])
    problems = json.loads(r.stdout)
    if problems:
        raise LayerError("; ".join(problems))
    marker.write_text(spec)
    return python


def runtime(version: str) -> Path:
    """qiskit-ibm-runtime ``version`` (exact, e.g. "0.40.1") on the base."""
    return layer(f"rt-{version}", [f"qiskit-ibm-runtime=={version}"],
                 {"qiskit-ibm-runtime": []})


def prepare() -> None:
    """Every venv the suites use, built once before lanes run side by side (two lanes must
    never build the same one, and a cluster's namespace has no registry)."""
    qrmi()
    for version in SUPPORTED_RUNTIME:
        runtime(version)


def qrmi() -> Path:
    """IBM's QRMI with its ``ibm`` extra's client (the newest qiskit-ibm-runtime) on the base."""
    return layer(f"qrmi-{QRMI}", [f"qrmi=={QRMI}", f"qiskit-ibm-runtime=={NEWEST_RUNTIME}"],
                 {"qrmi": ["ibm"], "qiskit-ibm-runtime": []})
