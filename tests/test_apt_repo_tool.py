"""The delivery's pure parts (docs/delivery.md): package versions in apt's order, and
packaging/apt_repo.py's repository (signed distributions, one pool, a published version never
changing). What apt on a host makes of it: tests/hosts/test_apt_repository.py."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

needs_tools = pytest.mark.skipif(
    shutil.which("apt-ftparchive") is None or shutil.which("gpg") is None,
    reason="apt-ftparchive (apt-utils) and gpg: `make test` installs them",
)


def load(name: str):
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "packaging" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "packaging"))


suites = load("suites")


def older(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def version(upstream: str, suite: str, revision: int = 1) -> str:
    return suites.debian_version(upstream, suites.SUITES[suite], revision)


def test_within_a_release_each_debian_gets_a_newer_build_than_the_one_before():
    assert older(version("0.1.0", "bullseye"), version("0.1.0", "bookworm"))
    assert older(version("0.1.0", "bookworm"), version("0.1.0", "trixie"))


def test_a_newer_release_or_revision_beats_every_build_of_the_older_one():
    assert older(version("0.1.0", "trixie"), version("0.1.1", "bullseye"))
    assert older(version("0.1.0", "trixie"), version("0.1.0", "bullseye", revision=2))
    assert older(version("0.1.0", "bookworm"), version("0.1.0+upgrade1", "bookworm"))
    # The packages built before this scheme (0.1.0, native) are older: those hosts upgrade.
    assert older("0.1.0", version("0.1.0", "bullseye"))


def test_an_upstream_version_that_would_parse_two_ways_is_refused():
    for bad in ("0.1.0-2", "1:0.1.0", "v0.1.0", ""):
        with pytest.raises(ValueError):
            suites.debian_version(bad, suites.SUITES["bookworm"])


def tiny_deb(tmp: Path, name: str, ver: str, payload: str = "x") -> Path:
    root = tmp / f"{name}-{ver}-{payload}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {ver}\nArchitecture: amd64\n"
        "Maintainer: tests <tests@example.net>\nDescription: test\n"
    )
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/payload").write_text(payload)
    deb = tmp / f"{root.name}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    apt_repo = load("apt_repo")
    signer = apt_repo.new_key(tmp_path_factory.mktemp("gnupg"), "tests <tests@example.net>")
    yield signer
    signer.close()


def publish(repo: Path, key, *debs: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(REPO / "packaging/apt_repo.py"), "--repo", str(repo)]
    argv += ["--gnupghome", str(key.gnupghome), *map(str, debs)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@needs_tools
def test_each_distribution_lists_its_own_builds_signed_by_the_archive_key(tmp_path, key):
    debs = [tiny_deb(tmp_path, "clockfleet-agent", version("0.1.0", s)) for s in suites.SUITES]

    assert publish(tmp_path / "apt", key, *debs).returncode == 0

    for name in suites.SUITES:
        dist = tmp_path / "apt/dists" / name
        packages = (dist / "main/binary-amd64/Packages").read_text()
        assert [line for line in packages.splitlines() if line.startswith("Version:")] == [
            f"Version: {version('0.1.0', name)}"
        ]
        assert f"Codename: {name}\n" in (dist / "Release").read_text()
        keyring = str(tmp_path / "apt/clockfleet-archive-keyring.gpg")
        verified = subprocess.run(
            ["gpgv", "--keyring", keyring, str(dist / "InRelease")], capture_output=True
        )
        assert verified.returncode == 0, verified.stderr


@needs_tools
def test_the_pool_keeps_every_version_so_apt_can_go_back(tmp_path, key):
    old = tiny_deb(tmp_path, "clockfleet-agent", version("0.1.0", "bookworm"))
    new = tiny_deb(tmp_path, "clockfleet-agent", version("0.1.0+upgrade1", "bookworm"))
    publish(tmp_path / "apt", key, old)

    assert publish(tmp_path / "apt", key, new).returncode == 0

    packages = (tmp_path / "apt/dists/bookworm/main/binary-amd64/Packages").read_text()
    assert packages.count("Package: clockfleet-agent\n") == 2


@needs_tools
def test_a_published_version_with_other_contents_is_refused(tmp_path, key):
    first = tiny_deb(tmp_path, "clockfleet-agent", version("0.1.0", "bookworm"), "first")
    other = tiny_deb(tmp_path, "clockfleet-agent", version("0.1.0", "bookworm"), "other")
    publish(tmp_path / "apt", key, first)
    before = (tmp_path / "apt/dists/bookworm/InRelease").read_bytes()

    done = publish(tmp_path / "apt", key, other)

    assert done.returncode == 2
    assert "published already with other contents" in done.stderr
    assert (tmp_path / "apt/dists/bookworm/InRelease").read_bytes() == before
    assert publish(tmp_path / "apt", key, first).returncode == 0  # the same file again: fine
