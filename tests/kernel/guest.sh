#!/bin/bash
# Runs INSIDE the virtme-ng guest of `make test-kernel` (tests/kernel/run.py boots it):
# Debian's kernel, the host's userspace read-only, this tree over 9p (read-only).
# Loads the modules, then runs the kernel tests with pytest; its exit code is ours.
set -u
cd "$(dirname "$0")/../.."
export PYTHONDONTWRITEBYTECODE=1
# Unix sockets cannot live on the 9p share (ENXIO): the lab's state and sockets on /run.
export WGCAST_LAB_DIR=/run/wgcast-lab TMPDIR=/run/tmp
# Software emulation: the lab's readiness deadlines x20 (timings inside mean nothing).
export WGCAST_LAB_SLOW=${WGCAST_LAB_SLOW:-20}
mkdir -p "$TMPDIR" /run/wireguard
for m in tun wireguard sch_netem sch_htb cls_fw nft_nat nft_chain_nat veth; do
  modprobe "$m" 2>/dev/null || echo "guest: modprobe $m failed"
done
ip link set lo up
# virtme-ng's root is 9p without a cache: every process reads python, its libraries and
# every module again through the emulated virtio. run.py exports / a second time
# (tag wgcastroot); mounted with cache=loose over /usr and this tree, pages and lookups
# stay cached in the guest (the host does not change them during a run).
here=$PWD
if mkdir -p /run/wgcast-root && mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
     wgcastroot /run/wgcast-root 2>/dev/null; then
  mount --bind /run/wgcast-root/usr /usr && mount --bind "/run/wgcast-root$here" "$here" \
    && cd "$here" && echo "guest: /usr and $here cached (9p cache=loose)"
else
  echo "guest: no cached root export; /usr and $here uncached"
fi
echo "guest: up $(cut -d' ' -f1 /proc/uptime)s, kernel $(uname -r), $(nproc) cpus, wireguard module: $( [ -d /sys/module/wireguard ] && echo yes || echo no)"
if [ "${WGCAST_GUEST_CMD:-}" != "" ]; then
  eval "$WGCAST_GUEST_CMD"
  exit $?
fi
[ $# -gt 0 ] || set -- tests/kernel
# hypothesis's pytest plugin is not needed here (its import alone is seconds in the guest).
exec .venv/bin/python -m pytest -p no:cacheprovider -p no:hypothesispytest -v -rfE --durations=12 --timeout 900 "$@"
