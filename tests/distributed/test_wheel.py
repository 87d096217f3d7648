"""The package as a user installs it: build the wheel from a copy of the sources, install it into a fresh
virtualenv (dependencies reused from this one, offline), and run bigops from outside the source tree —
`--help`, a SLURM script with the bundled jean-zay profile, and a 2-step tiny run on 4 ranks. A file the code
opens beside itself but the wheel lacks, or a runtime import the wheel does not declare, fails here."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "bigops", "trainer", "launcher")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with only the built wheel of bigops in it; returns its bin directory."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = (base / "dist").glob("bigops-*.whl")
    venv = base / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies, offline: this environment's site-packages as a plain path entry (its .pth files,
    # bigops' editable finder among them, are not processed from there).
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(pip + ["--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=600)
    return venv / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "bigops"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_package_is_the_wheel_not_the_sources(installed, tmp_path):
    out = subprocess.run([str(installed / "python"), "-c", "import bigops, launcher, trainer; "
                          "print(bigops.__file__, launcher.__file__, trainer.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout
    assert str(ROOT) not in out and out.count(str(installed.parent)) == 3, out


def test_help_and_a_slurm_script_with_the_bundled_profile(installed, tmp_path):
    assert _run(installed, ["--help"], tmp_path).returncode == 0
    proc = _run(installed, ["launch", "--slurm", "--preset", "bloom-176b", "--profile", "jean-zay",
                            "--print-script", "--run-dir", str(tmp_path / "run")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--nodes=48" in proc.stdout and "--nproc-per-node=8" in proc.stdout, proc.stdout


def test_a_two_step_tiny_run_from_the_wheel(installed, tmp_path):
    run = tmp_path / "run"
    proc = _run(installed, ["launch", "--run-dir", str(run), "--steps", "2", "--set", "data.source=synthetic"],
                tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained steps 1..2" in proc.stdout, proc.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "global_step2"
