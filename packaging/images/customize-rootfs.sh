#!/bin/sh
# Make a debootstrapped ROOT boot under Docker with systemd as PID 1, sharing the host's
# network namespace (the only networking tests use) without reaching out or touching the host:
#   - mask units that would run timers, consoles or kernel settings meant for a real machine;
#   - chronyd: never steps the shared clock (-x), no outside sources, no command port
#     (UDP 323 on the shared loopback would clash between containers), started although the
#     container lacks CAP_SYS_TIME;
#   - systemd-timesyncd: no built-in or fallback servers, allowed to start in a container.
#   - cloud-init and sshd installed but off (the delivery tests turn them on).
set -eu
ROOT=$1
SUITE=$2

for unit in apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer \
    e2scrub_reap.service getty@tty1.service console-getty.service systemd-sysctl.service \
    systemd-binfmt.service systemd-modules-load.service systemd-pstore.service \
    systemd-firstboot.service systemd-journald-audit.socket dpkg-db-backup.timer \
    systemd-networkd-wait-online.service ssh.service ssh.socket; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$unit"
done

conf=$ROOT/etc/chrony/chrony.conf
sed -i -e '/^[[:space:]]*\(pool\|server\|peer\)[[:space:]]/d' "$conf"
grep -q '^sourcedir /etc/chrony/sources.d' "$conf" || echo 'sourcedir /etc/chrony/sources.d' >>"$conf"
mkdir -p "$ROOT/etc/chrony/sources.d"
echo 'cmdport 0' >>"$conf"
echo 'DAEMON_OPTS="-F 1 -x"' >"$ROOT/etc/default/chrony"
mkdir -p "$ROOT/etc/systemd/system/chrony.service.d"
printf '[Unit]\n# A container never has CAP_SYS_TIME; chronyd runs with -x instead.\nConditionCapability=\n' \
    >"$ROOT/etc/systemd/system/chrony.service.d/container.conf"

mkdir -p "$ROOT/etc/systemd/timesyncd.conf.d" "$ROOT/etc/systemd/system/systemd-timesyncd.service.d"
printf '[Time]\n# Only servers the tests start on loopback, never the distribution pool.\nNTP=\nFallbackNTP=\n' \
    >"$ROOT/etc/systemd/timesyncd.conf.d/00-loopback-only.conf"
printf '[Unit]\nConditionVirtualization=\nConditionCapability=\nConditionFileIsExecutable=\n' \
    >"$ROOT/etc/systemd/system/systemd-timesyncd.service.d/container.conf"

# cloud-init looks for a cloud at every boot: only tests/hosts/test_cloud_init.py runs it, by
# its stages. sshd (masked above) is started by test_ansible_role.py on a port of its own.
mkdir -p "$ROOT/etc/cloud"
touch "$ROOT/etc/cloud/cloud-init.disabled"

# The debootstrap downloads are not needed at run time: a smaller image imports faster.
rm -f "$ROOT/var/cache/apt/archives/"*.deb
: "$SUITE"
