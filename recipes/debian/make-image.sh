#!/bin/sh
# Build the Debian root filesystem image that recipes/debian.toml mounts:
# debootstrap --variant=minbase into a scratch directory, then mkfs.erofs.
#
#   recipes/debian/make-image.sh [SUITE [IMAGE]]     (as root; needs debootstrap and erofs-utils:
#                                                     apt-get install -y debootstrap erofs-utils)
#
# The mirror is the one this machine's apt uses (debootstrap's default if none is found).
set -eu

suite=${1:-bookworm}
image=${2:-$(dirname "$0")/$suite-minbase.erofs}

mirror=$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
    mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
fi

scratch=$(mktemp -d /var/tmp/nsbuild-debootstrap.XXXXXX)
trap 'rm -rf --one-file-system "$scratch"' EXIT

# In a private mount namespace: whatever debootstrap mounts (proc, sys) goes away with it, also on failure.
unshare --mount --propagation private \
    debootstrap --variant=minbase "$suite" "$scratch/rootfs" ${mirror:+"$mirror"}
rm -rf "$scratch/rootfs/var/cache/apt/archives/"*.deb "$scratch/rootfs/var/lib/apt/lists/"*

mkfs.erofs --quiet -zlz4hc "$image.tmp" "$scratch/rootfs"
mv "$image.tmp" "$image"
echo "wrote $image ($(du -h "$image" | cut -f1)); sha256: $(sha256sum "$image" | cut -d' ' -f1)"
