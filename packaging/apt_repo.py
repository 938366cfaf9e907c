"""A signed apt repository of the agent's packages: one distribution per Debian release.

    python packaging/apt_repo.py --repo dist/apt [--build [--version V]] [DEB ...]
        [--gnupghome DIR --key FINGERPRINT] [--valid-days N]

Adds the packages to the pool (`pool/main/c/clockfleet-agent/`), then writes every
distribution (bullseye, bookworm, trixie) from the pool: `dists/SUITE/main/binary-amd64/
Packages{,.gz}` with Debian's apt-ftparchive, `Release` with it too, signed with gpg as
`InRelease` and `Release.gpg`; the archive keyring beside them, binary for apt's `signed-by`
(`clockfleet-archive-keyring.gpg`) and armored (`.asc`, for cloud-init and Ansible). A
package goes to the distribution its version names (`~debNu1`, packaging/suites.py); the pool
keeps every version added, so apt can upgrade to the newest and downgrade to any other.

The repository is the pool and what is derived from it: nothing else is kept, so running
this again rebuilds the same indexes. A file already in the pool under the same name with
other contents is refused: a version, once published, must never change (hosts that have
it would never see the new one; build with a new --revision instead).

Signing key: --gnupghome/--key (or CLOCKFLEET_APT_GNUPGHOME/CLOCKFLEET_APT_KEY), the
archive key, which whoever releases holds (docs/trust.md). Without them, a development key
is made once in .cache/apt-key and used, with a warning: never for hosts.
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
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # its sibling modules, run as a script or loaded by path
    sys.path.insert(0, str(HERE))

from suites import REPO, SUITES, Suite, deb_name  # noqa: E402

COMPONENT = "main"
ARCH = "amd64"
KEYRING = "clockfleet-archive-keyring"
DEV_KEY_UID = "clockfleet archive (development key, never for hosts) <clockfleet@example.net>"
ORIGIN = "clockfleet"
SUITE_OF_VERSION = re.compile(r"~deb(\d+)u\d+\Z")


class RepoError(Exception):
    """Something the operator must fix; the CLI prints it and exits 2."""


def run(argv: list[str], **kw: object) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise RepoError(f"{' '.join(argv[:3])} ... failed: {r.stderr.strip()[-2000:]}")
    return str(r.stdout)


@dataclass(frozen=True)
class Signer:
    gnupghome: Path
    key: str  # the key's fingerprint

    def gpg(self, *args: str) -> list[str]:
        return ["gpg", "--batch", "--yes", "--homedir", str(self.gnupghome), *args]

    def sign(self, release: Path) -> None:
        """InRelease (clear-signed) and Release.gpg (detached), as apt fetches them."""
        me = ["--local-user", self.key, "--digest-algo", "SHA512"]
        run(self.gpg(*me, "--clearsign", "-o", str(release.with_name("InRelease")), str(release)))
        run(self.gpg(*me, "--armor", "--detach-sign", "-o", f"{release}.gpg", str(release)))

    def export(self, repo: Path) -> None:
        """The public key only, as a keyring apt's signed-by reads, and armored."""
        (repo / f"{KEYRING}.gpg").write_bytes(
            subprocess.run(self.gpg("--export", self.key), capture_output=True, check=True).stdout
        )
        (repo / f"{KEYRING}.asc").write_text(run(self.gpg("--armor", "--export", self.key)))

    def close(self) -> None:
        """Stop the gpg-agent that signing started for this home."""
        subprocess.run(
            ["gpgconf", "--homedir", str(self.gnupghome), "--kill", "gpg-agent"],
            capture_output=True,
        )


def new_key(gnupghome: Path, uid: str = DEV_KEY_UID) -> Signer:
    """A signing-only Ed25519 key without a passphrase, in a new gpg home (tests, development)."""
    gnupghome.mkdir(parents=True, exist_ok=True)
    gnupghome.chmod(0o700)
    s = Signer(gnupghome, "")
    run(s.gpg("--passphrase", "", "--quick-generate-key", uid, "ed25519", "sign", "2y"))
    return Signer(gnupghome, fingerprint(gnupghome))


def fingerprint(gnupghome: Path) -> str:
    out = run(["gpg", "--homedir", str(gnupghome), "--list-secret-keys", "--with-colons"])
    fprs = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]
    if not fprs:
        raise RepoError(f"{gnupghome}: no secret key")
    return fprs[0]


def development_signer() -> Signer:
    home = REPO / ".cache" / "apt-key"
    print(f"apt_repo: signing with the development key in {home}: never for hosts", file=sys.stderr)
    if home.is_dir():
        return Signer(home, fingerprint(home))
    return new_key(home)


def control_fields(deb: Path) -> dict[str, str]:
    out = run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"])
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)


def suite_of(version: str) -> Suite:
    m = SUITE_OF_VERSION.search(version)
    suite = next((s for s in SUITES.values() if m and s.debian == int(m.group(1))), None)
    if suite is None:
        raise RepoError(f"version {version}: no ~debNu suffix of a known suite (build_deb.py)")
    return suite


def pool_dir(repo: Path, package: str) -> Path:
    return repo / "pool" / COMPONENT / package[0] / package


def add(repo: Path, deb: Path) -> Path:
    """Put `deb` into the pool under Debian's name for it; the same file again is a no-op."""
    f = control_fields(deb)
    suite_of(f["Version"])
    dest = pool_dir(repo, f["Package"]) / deb_name(f["Package"], f["Version"], f["Architecture"])
    if dest.exists():
        if sha256(dest) != sha256(deb):
            raise RepoError(
                f"{dest.name} is published already with other contents: a version never "
                "changes once published (build with a new --revision)"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    shutil.copyfile(deb, tmp)
    tmp.chmod(0o644)
    tmp.rename(dest)
    return dest


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generate(repo: Path, signer: Signer, valid_days: int | None = None) -> None:
    """Every distribution's indexes from the pool, signed; swapped in whole (dists.new ->
    dists), so a client never reads one suite's new Release with its old Packages."""
    pool = sorted((repo / "pool").rglob("*.deb"))
    by_suite: dict[str, list[str]] = {name: [] for name in SUITES}
    for deb in pool:
        by_suite[suite_of(deb.name.split("_")[1]).name].append(str(deb.relative_to(repo)))
    new = repo / "dists.new"
    shutil.rmtree(new, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="cf-apt-") as tmp:
        conf = Path(tmp) / "generate.conf"
        lines = [f'Dir {{ ArchiveDir "{repo}"; }};', 'Default { Packages::Compress ". gzip"; };']
        for name, files in by_suite.items():
            binary = f"dists.new/{name}/{COMPONENT}/binary-{ARCH}"
            (repo / binary).mkdir(parents=True)
            listing = Path(tmp) / f"{name}.list"
            listing.write_text("".join(f"{f}\n" for f in files))
            lines.append(
                f'BinDirectory "{binary}" {{ Packages "{binary}/Packages"; '
                f'FileList "{listing}"; Contents ""; }};'
            )
        conf.write_text("\n".join(lines) + "\n")
        run(["apt-ftparchive", "generate", str(conf)], cwd=repo)
    for suite in SUITES.values():
        release = new / suite.name / "Release"
        text = run(
            ["apt-ftparchive", *release_options(suite, valid_days), "release", "."],
            cwd=new / suite.name,
        )
        release.write_text(text)
        signer.sign(release)
    signer.export(repo)
    old = repo / "dists.old"
    shutil.rmtree(old, ignore_errors=True)
    if (repo / "dists").exists():
        (repo / "dists").rename(old)
    new.rename(repo / "dists")
    shutil.rmtree(old, ignore_errors=True)


def release_options(suite: Suite, valid_days: int | None) -> list[str]:
    fields = {
        "Origin": ORIGIN,
        "Label": ORIGIN,
        "Suite": suite.name,
        "Codename": suite.name,
        "Architectures": ARCH,
        "Components": COMPONENT,
        "Description": f"clockfleet agent for Debian {suite.debian} ({suite.name})",
    }
    opts = [f"-oAPT::FTPArchive::Release::{k}={v}" for k, v in fields.items()]
    if valid_days:
        opts.append(f"-oAPT::FTPArchive::Release::ValidTime={valid_days * 86400}")
    return opts


def signer_from(args: argparse.Namespace) -> Signer:
    home = args.gnupghome or os.environ.get("CLOCKFLEET_APT_GNUPGHOME")
    key = args.key or os.environ.get("CLOCKFLEET_APT_KEY")
    if home is None:
        if key:
            raise RepoError("--key needs --gnupghome (or CLOCKFLEET_APT_GNUPGHOME)")
        return development_signer()
    return Signer(Path(home), key or fingerprint(Path(home)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("debs", nargs="*", type=Path, help="packages to add (build_deb.py's)")
    p.add_argument("--repo", type=Path, default=REPO / "dist" / "apt")
    p.add_argument("--build", action="store_true", help="build every suite's package first")
    p.add_argument("--version", help="with --build: another upstream version")
    p.add_argument("--gnupghome", help="gpg home holding the archive key")
    p.add_argument("--key", help="the archive key's fingerprint (default: the home's only key)")
    p.add_argument("--valid-days", type=int, help="Release files expire after N days")
    args = p.parse_args(argv)
    debs = list(args.debs)
    try:
        if args.build:
            from build_deb import build, project_version

            out = REPO / "dist"
            upstream = args.version or project_version()
            debs += [build(s, upstream, out, REPO / ".cache") for s in SUITES.values()]
        signer = signer_from(args)
        repo = args.repo.resolve()
        try:
            for deb in debs:
                print(add(repo, deb))
            generate(repo, signer, args.valid_days)
        finally:
            signer.close()
    except RepoError as exc:
        print(f"apt_repo: {exc}", file=sys.stderr)
        return 2
    print(f"{repo}: {', '.join(SUITES)} signed by {signer.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
