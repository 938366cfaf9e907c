"""Build the agent's Debian package for one suite: `clockfleet-agent_<version>_amd64.deb`.

    python packaging/build_deb.py --suite bookworm [--out dist] [--version 0.1.0] [--revision 1]

The package is self-contained for the PBX: a private virtualenv under /opt/clockfleet-agent,
made for that suite's own /usr/bin/python3.X, holding this project (as pip builds it from
pyproject.toml, so packaging changes flow through) and only the agent's dependencies, as
binary wheels for that Python (deb_payload.py). Nothing is fetched on the host that installs it.

The version is the agent's own, UPSTREAM-REVISION~debNu1 (suites.py says why): 0.1.0-1~deb12u1.
`--version` builds another upstream version (a release candidate; the tests' newer build):
it is written into the packaged agent too, which then reports it in its status.

The virtualenv is written by hand (pyvenv.cfg, bin/python3 -> /usr/bin/python3.X,
lib/python3.X/site-packages) rather than created by `python3.X -m venv`, so one build
machine makes packages for Pythons it does not have.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # its sibling modules, run as a script or loaded by path
    sys.path.insert(0, str(HERE))

from deb_payload import (  # noqa: E402
    PREFIX,
    download_wheels,
    glibc_floor,
    install_payload,
    project_wheel,
    run,
)
from suites import REPO, SUITES, Suite, deb_name, debian_version, project_version  # noqa: E402

PACKAGE = "clockfleet-agent"

# Units beside clockfleet-agent.service: applying a changed /etc/clockfleet, and the root
# helpers that apply what the chrony and timesyncd backends hand over (backend-apply).
HELPER_UNITS = tuple(
    f"clockfleet-agent-{name}.{kind}"
    for name in ("config", "chrony", "timesyncd")
    for kind in ("path", "service")
)


def packaged_unit() -> str:
    """agent/clockfleet-agent.service with the package's paths and no capability by default.

    The shipped unit (source installs, /usr/local/bin) is the one place the hardening is kept;
    the package changes only where the program lives and moves CAP_SYS_TIME into the `system`
    backend's drop-in (the other backends need no capability at all).
    """
    text = (REPO / "agent" / "clockfleet-agent.service").read_text()
    _, sep, body = text.partition("[Unit]")
    assert sep, "unit has no [Unit] section"
    body = body.replace(
        "ExecStart=/usr/local/bin/clockfleet agent",
        f"ExecStart={PREFIX}/bin/clockfleet agent",
    )
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        body, n = re.subn(rf"^{key}=.*$", f"{key}=", body, flags=re.M)
        assert n == 1, f"unit has no single {key}="
    body = body.replace(
        "# Only for backend `system`; see the header for dropping it.\n",
        "# None by default: the `system` backend's drop-in grants CAP_SYS_TIME.\n",
    )
    # Which backend's privileges this unit grants: observe's (none) until a backend's
    # drop-in says otherwise. The agent refuses to run any other (config.UNIT_BACKEND_ENV).
    body, n = re.subn(
        r"^(User=clockfleet\n)",
        "# The backend whose privileges this unit grants: observe's (none) unless the\n"
        "# generator's drop-in says another. The agent refuses to run any other backend.\n"
        "Environment=CLOCKFLEET_UNIT_BACKEND=observe\n\\1",
        body,
        flags=re.M,
    )
    assert n == 1, "unit has no single User=clockfleet"
    body, n = re.subn(
        r"^(ExecStart=.*\n)",
        "# As root ('+'), before the agent reads its files: what it reads, so that a write under\n"
        "# /etc/clockfleet that changes none of it restarts nothing (apply-config).\n"
        "ExecStartPre=-+/usr/lib/clockfleet-agent/apply-config --record\n\\1",
        body,
        flags=re.M,
    )
    assert n == 1, "unit has no single ExecStart="
    body = body.replace(
        "Documentation=file:///etc/clockfleet/agent.yaml",
        "Documentation=file:///etc/clockfleet/agent.yaml "
        "file:///usr/share/doc/clockfleet-agent/README.Debian",
    )
    return (
        "# clockfleet agent, as installed by the clockfleet-agent package. Per-backend\n"
        "# privileges: a generator adds the drop-in of the backend agent.yaml names, from\n"
        "# /usr/share/clockfleet-agent/backends/ (see README.Debian).\n\n" + sep + body
    )


def control(suite: Suite, version: str, installed_kb: int, libc: str) -> str:
    depends = [
        f"python{suite.python}",
        f"libc6 (>= {libc})",
        "adduser",
        "systemd",
        "dbus",
        suite.polkit,
        "tzdata",
        "init-system-helpers (>= 1.54~)",
    ]
    return (
        f"Package: {PACKAGE}\n"
        f"Version: {version}\n"
        "Architecture: amd64\n"
        "Maintainer: clockfleet maintainers <clockfleet@example.net>\n"
        f"Installed-Size: {installed_kb}\n"
        f"Depends: {', '.join(depends)}\n"
        "Suggests: chrony | systemd-timesyncd\n"
        "Section: admin\n"
        "Priority: optional\n"
        "Homepage: https://example.net/clockfleet\n"
        "Description: clockfleet agent: fleet-managed NTP servers and time zone\n"
        " Follows its region's signed, ordered NTP server list and its profile over\n"
        " MQTT, probes the servers in order, disciplines the clock (observe, chrony,\n"
        " timesyncd or system), sets the time zone through timedated and reports to the\n"
        " broker; /var/lib/clockfleet/status.json tells local software whether the clock\n"
        " can be trusted.\n"
        " .\n"
        f" Built for Debian {suite.debian} ({suite.name}): its Python dependencies live in a\n"
        f" private virtualenv under {PREFIX} for the system's python{suite.python}.\n"
    )


def copy_file(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def unconfigured_agent_yaml() -> str:
    """The example agent.yaml with its identity commented out.

    Installed before anyone configured the host, the unit must not talk to the example's
    broker: without `id` the agent stops at once with "no agent id" (exit 2, no restart)
    until agent.yaml is written, which starts it again (clockfleet-agent-config.path).
    """
    text = (REPO / "agent" / "agent.yaml").read_text()
    text, n = re.subn(r"^(id|broker|username|password_file|ca_file): ", r"# \1: ", text, flags=re.M)
    assert n == 5, "agent/agent.yaml changed shape: identity and broker keys not found"
    text, n = re.subn(r"^trust_keys:\n  - ", "# trust_keys:\n#   - ", text, flags=re.M)
    assert n == 1, "agent/agent.yaml changed shape: trust_keys not found"
    return (
        "# Written by the clockfleet-agent package. Until `id` and `broker` are set the agent\n"
        "# does not start; writing this file starts it (see README.Debian).\n" + text
    )


def stage(
    suite: Suite, upstream: str, version: str, root: Path, wheels: Path, project: Path
) -> None:
    install_payload(suite, root, wheels, project, upstream)
    share = HERE / "debian"
    lib = root / suite.systemd_lib / "system"
    lib.mkdir(parents=True)
    copy_file(
        share / "clockfleet-agent-generator",
        root / suite.systemd_lib / "system-generators/clockfleet-agent-generator",
        0o755,
    )
    (lib / "clockfleet-agent.service").write_text(packaged_unit())
    for unit in HELPER_UNITS:
        copy_file(share / unit, lib / unit, 0o644)
    for script in ("apply-config", "backend-of", "backend-apply"):
        copy_file(share / script, root / "usr/lib/clockfleet-agent" / script, 0o755)
    backends = root / "usr/share/clockfleet-agent/backends"
    for conf in sorted((share / "backends").glob("*.conf")):
        copy_file(conf, backends / conf.name, 0o644)
    etc = root / "etc/clockfleet"
    etc.mkdir(parents=True)
    (etc / "agent.yaml").write_text(unconfigured_agent_yaml())
    # 0644/0755 in the archive (nothing secret in the example); postinst narrows them with
    # dpkg-statoverride once the clockfleet group exists.
    (etc / "trust").mkdir()
    if suite.polkit_rules == "js":
        copy_file(
            HERE / "polkit/50-clockfleet-agent.rules",
            root / "usr/share/polkit-1/rules.d/50-clockfleet-agent.rules",
            0o644,
        )
    else:
        copy_file(
            HERE / "polkit/50-clockfleet-agent.pkla",
            root / "var/lib/polkit-1/localauthority/10-vendor.d/50-clockfleet-agent.pkla",
            0o644,
        )
    usrbin = root / "usr/bin"
    usrbin.mkdir(parents=True)
    (usrbin / "clockfleet").symlink_to(f"{PREFIX}/bin/clockfleet")
    doc = root / "usr/share/doc" / PACKAGE
    copy_file(share / "README.Debian", doc / "README.Debian", 0o644)
    copy_file(share / "copyright", doc / "copyright", 0o644)
    copy_file(REPO / "agent" / "agent.yaml", doc / "examples/agent.yaml", 0o644)
    copy_file(HERE / "cloud-init/clockfleet-agent.yaml", doc / "examples/cloud-init.yaml", 0o644)
    changelog = doc / "changelog.Debian.gz"  # not native: a Debian revision and suite
    subprocess.run(
        ["gzip", "-9n"],
        input=(
            f"{PACKAGE} ({version}) {suite.name}; urgency=medium\n\n"
            f"  * clockfleet {upstream}, built for Debian {suite.debian} ({suite.name}).\n\n"
            " -- clockfleet maintainers <clockfleet@example.net>  "
            "Mon, 30 Nov 2026 00:00:00 +0000\n"
        ).encode(),
        stdout=changelog.open("wb"),
        check=True,
    )
    changelog.chmod(0o644)
    lintian = root / "usr/share/lintian/overrides" / PACKAGE
    lintian.parent.mkdir(parents=True)
    overrides = (share / "lintian-overrides").read_text()
    overrides = overrides.replace("@SYSTEMD_LIB@", suite.systemd_lib)
    if suite.polkit == "policykit-1":
        overrides += (
            "# Debian 11 has no polkitd package: policykit-1 is that suite's polkit daemon\n"
            "# (lintian judges by the newest suite's archive).\n"
            f"{PACKAGE}: depends-on-obsolete-package Depends: policykit-1 => polkitd and "
            "optionally pkexec\n"
        )
    lintian.write_text(overrides)
    lintian.chmod(0o644)

    debian = root / "DEBIAN"
    debian.mkdir()
    for script in ("postinst", "prerm", "postrm", "preinst"):
        text = (share / script).read_text().replace("@PYTHON@", f"python{suite.python}")
        (debian / script).write_text(text)
        (debian / script).chmod(0o755)
    (debian / "conffiles").write_text("/etc/clockfleet/agent.yaml\n")
    size = sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir()) // 1024 + 1
    (debian / "control").write_text(control(suite, version, size, glibc_floor(wheels)))
    md5 = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] == "DEBIAN" or p.is_dir() or p.is_symlink():
            continue
        md5.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}\n")
    (debian / "md5sums").write_text("".join(md5))
    (debian / "md5sums").chmod(0o644)
    for d in [root, *root.rglob("*")]:
        if d.is_dir() and not d.is_symlink():
            d.chmod(0o755)


def build(suite: Suite, upstream: str, out: Path, cache: Path, revision: int = 1) -> Path:
    version = debian_version(upstream, suite, revision)
    wheels = download_wheels(suite, cache / "wheels")
    with tempfile.TemporaryDirectory(prefix="cf-deb-") as tmp:
        work = Path(tmp)
        project = project_wheel(work)
        root = work / "root"
        root.mkdir()
        stage(suite, upstream, version, root, wheels, project)
        for p in root.rglob("*"):
            if (
                p.is_file()
                and not p.is_symlink()
                and p.suffix != ".so"
                and "DEBIAN" not in p.parts
                and p.stat().st_mode & 0o111
                and p.parent.name not in ("bin", "system-generators", "clockfleet-agent")
            ):
                p.chmod(0o644)  # wheels mark some data files executable
        out.mkdir(parents=True, exist_ok=True)
        deb = out / deb_name(PACKAGE, version)
        env = dict(os.environ, SOURCE_DATE_EPOCH="1796083200")
        run(
            "dpkg-deb",
            "--root-owner-group",
            "-Zxz",
            "--build",
            root,
            deb,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return deb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="append", choices=sorted(SUITES), required=True)
    p.add_argument(
        "--version", default=None, help="upstream version (default: the one the agent reports)"
    )
    p.add_argument("--revision", type=int, default=1, help="Debian revision (default 1)")
    p.add_argument("--out", type=Path, default=REPO / "dist")
    p.add_argument("--cache", type=Path, default=REPO / ".cache")
    args = p.parse_args(argv)
    upstream = args.version or project_version()
    for name in args.suite:
        print(build(SUITES[name], upstream, args.out, args.cache, args.revision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
