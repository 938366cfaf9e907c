"""The package's Python payload: this project's wheel and the agent's dependencies as binary
wheels for one suite's CPython and glibc, installed into a virtualenv written by hand under
/opt/clockfleet-agent (packaging/build_deb.py stages the rest of the package around it)."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from suites import REPO, VERSION_PY, VERSION_RE, Suite, project_version

PREFIX = "/opt/clockfleet-agent"

# What `clockfleet agent` imports beyond the standard library (checked by
# tests/hosts/test_deb_contents.py against the installed tree): its dependencies, and the
# `nts` extra (pyOpenSSL, cryptography: NTS, imported only for a list naming an NTS server).
# ntplib, prometheus-client and rich serve the publisher and collector only.
AGENT_DEPENDENCIES = ("paho-mqtt", "msgspec", "pynacl", "pyyaml", "pyopenssl", "cryptography")
# Parts of the project the agent never imports: left out so the package carries only the
# agent (the dispatcher says "not built yet" for the other commands).
NOT_SHIPPED = ("publisher", "collector", "demo.py", "demo_fleet.py", "demo_procs.py")
NOT_SHIPPED += ("demo_view.py", "devstack.py")


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], check=True, text=True, **kw)


def stamp_version(site: Path, upstream: str) -> None:
    """Make the packaged agent report `upstream` (a build of another version than the
    checkout's): its version.py and the wheel's metadata, with RECORD's hash to match."""
    path = site / VERSION_PY
    text, n = VERSION_RE.subn(f'__version__ = "{upstream}"', path.read_text())
    assert n == 1, f"{VERSION_PY}: no single __version__"
    path.write_text(text)
    (dist,) = site.glob("clockfleet-*.dist-info")
    meta = dist / "METADATA"
    meta.write_text(
        re.sub(r"^Version: .*$", f"Version: {upstream}", meta.read_text(), count=1, flags=re.M)
    )
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest())
    line = f"{VERSION_PY},sha256={digest.rstrip(b'=').decode()},{path.stat().st_size}"
    record = dist / "RECORD"
    rows = [
        line if row.startswith(VERSION_PY + ",") else row
        for row in record.read_text().splitlines()
        if not row.startswith(f"{dist.name}/METADATA,")  # hashless: it changed
    ]
    record.write_text("\n".join([*rows, f"{dist.name}/METADATA,,"]) + "\n")


def agent_requirements() -> list[str]:
    """The agent's dependencies with the version bounds pyproject.toml gives them."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, flags=re.M | re.S)
    if block is None:
        sys.exit("pyproject.toml: no dependencies")
    reqs = re.findall(r'"([^"]+)"', block.group(1))
    nts = re.search(r"^nts\s*=\s*\[(.*?)\]", text, flags=re.M)
    if nts is not None:
        reqs += re.findall(r'"([^"]+)"', nts.group(1))
    wanted = []
    for req in reqs:
        name = re.split(r"[<>=!~ \[;]", req, maxsplit=1)[0].lower().replace("_", "-")
        if name in AGENT_DEPENDENCIES:
            wanted.append(req)
    missing = set(AGENT_DEPENDENCIES) - {
        re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in wanted
    }
    if missing:
        sys.exit(f"pyproject.toml does not list {sorted(missing)}")
    return wanted


def platform_args(suite: Suite) -> list[str]:
    """pip's target flags: CPython X.Y on x86-64 with the suite's glibc."""
    _, minor = suite.glibc
    tags = [f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    abi = "cp" + suite.python.replace(".", "")
    args = ["--python-version", suite.python, "--implementation", "cp", "--abi", abi]
    args += ["--abi", "abi3", "--abi", "none"]
    for t in tags:
        args += ["--platform", t]
    return args


def download_wheels(suite: Suite, cache: Path) -> Path:
    """Binary wheels of the agent's dependencies (and theirs) for the suite's Python."""
    reqs = agent_requirements()
    key = hashlib.sha256("\n".join([suite.python, *reqs]).encode()).hexdigest()[:12]
    dest = cache / f"{suite.name}-{key}"
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", dest]
    run(*pip, *platform_args(suite), *reqs)
    (dest / ".complete").touch()
    return dest


def project_wheel(work: Path) -> Path:
    out = work / "project"
    argv = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)]
    # setuptools' deprecation chatter on success is noise; on failure it is the reason.
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"pip wheel {REPO} failed:\n{r.stdout}{r.stderr}")
    (wheel,) = out.glob("clockfleet-*.whl")
    return wheel


def install_payload(
    suite: Suite, root: Path, wheels: Path, project: Path, upstream: str | None = None
) -> None:
    venv = root / PREFIX.lstrip("/")
    site = venv / "lib" / f"python{suite.python}" / "site-packages"
    run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",  # compiled on the host by postinst, for its exact Python
        "--ignore-requires-python",  # pyproject's bound is the publisher's (3.11+)
        "--only-binary=:all:",
        *platform_args(suite),
        "--target",
        site,
        *sorted(wheels.glob("*.whl")),
        project,
    )
    shutil.rmtree(site / "bin", ignore_errors=True)  # console scripts for the build's Python
    for f in site.glob("clockfleet-*.dist-info/direct_url.json"):
        # It names this build's temporary directory; with its RECORD line gone too, the same
        # checkout builds the same package, byte for byte (apt_repo.py refuses a changed one).
        f.unlink()
        record = f.with_name("RECORD")
        rows = record.read_text().splitlines()
        record.write_text(
            "".join(f"{r}\n" for r in rows if not r.startswith(f"{f.parent.name}/{f.name},"))
        )
    if upstream is not None and upstream != project_version():
        stamp_version(site, upstream)
    for name in NOT_SHIPPED:
        p = site / "clockfleet" / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache)
    # PyYAML's wheel links a private copy of libyaml into its C binding; the agent reads one
    # small agent.yaml at start, so PyYAML's pure-Python loader (its own fallback) is enough,
    # and the package embeds one library fewer.
    for so in site.glob("yaml/_yaml*.so"):
        so.unlink()
    shutil.rmtree(site / "_yaml", ignore_errors=True)
    for so in site.rglob("*.so"):
        run("strip", "--strip-unneeded", "--remove-section=.comment", so)
    # A virtualenv in the layout `python -m venv` makes: Python finds pyvenv.cfg next to the
    # directory of the interpreter it was started as, and takes site-packages from there.
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {suite.python}\n"
    )
    bindir = venv / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(f"/usr/bin/python{suite.python}")
    (bindir / "python").symlink_to("python3")
    launcher = bindir / "clockfleet"
    module, func = console_script(site, "clockfleet")
    # -I: a system service ignores PYTHON* variables and user site-packages.
    launcher.write_text(
        f"#!{PREFIX}/bin/python3 -I\n"
        "import sys\n\n"
        f"from {module} import {func}\n\n"
        f"sys.exit({func}())\n"
    )
    launcher.chmod(0o755)


def console_script(site: Path, name: str) -> tuple[str, str]:
    """The project's own entry point for `name` (pyproject's [project.scripts])."""
    for dist in site.glob("clockfleet-*.dist-info"):
        m = re.search(
            rf"^{name}\s*=\s*([\w.]+):(\w+)", (dist / "entry_points.txt").read_text(), re.M
        )
        if m:
            return m.group(1), m.group(2)
    sys.exit(f"the clockfleet wheel declares no console script {name!r}")


def glibc_floor(wheels: Path) -> str:
    """The glibc the shipped binary wheels need: for each wheel the oldest of its manylinux
    tags (it runs on any of them), then the newest of those over all wheels."""
    floor = (2, 17)
    for wheel in wheels.glob("*.whl"):
        tags = [(2, 17)] if "manylinux2014" in wheel.name else []
        tags += [(int(a), int(b)) for a, b in re.findall(r"manylinux_(\d+)_(\d+)_", wheel.name)]
        if tags:
            floor = max(floor, min(tags))
    return f"{floor[0]}.{floor[1]}"
