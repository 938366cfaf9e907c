#!/bin/sh
# Install the Debian packages clockfleet's tests and demo run for real, when missing.
# As root: apt-get update + install. Otherwise: name them and stop.
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
echo "installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
