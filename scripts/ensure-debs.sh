#!/bin/sh
# Install the Debian packages clockfleet's tests and demo run for real, when missing.
# As root: apt-get update + install, with no daemon started. Otherwise: name them and stop.
#
# No daemon starts: chrony's postinst would start chronyd with Debian's pool and `makestep`,
# which steps this machine's clock, and mosquitto's, prometheus's or docker's would take
# their default ports. The tests and the demo start every daemon they need themselves, on
# free loopback ports. Debian's policy-rc.d (invoke-rc.d and deb-systemd-invoke ask it before
# starting anything) answers "no" (101) while the packages install; an administrator's own
# policy-rc.d is put back as it was afterwards.
set -eu
missing=""
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "clockfleet needs these Debian packages:$missing" >&2
    echo "install them as root:  sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
fi
POLICY=/usr/sbin/policy-rc.d
SAVED="$POLICY.clockfleet-saved"
restore() {
    if [ -e "$SAVED" ]; then mv -f "$SAVED" "$POLICY"; else rm -f "$POLICY"; fi
}
[ -e "$POLICY" ] && mv -f "$POLICY" "$SAVED"
trap restore EXIT
trap 'exit 130' INT TERM
printf '#!/bin/sh\n# scripts/ensure-debs.sh (clockfleet): no daemon starts while it installs\nexit 101\n' >"$POLICY"
chmod 755 "$POLICY"
echo "installing Debian packages (no daemon started):$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
