#!/bin/sh
# Usage: bench/get-bwrap.sh DEST_DIR
#
# Make a recent bubblewrap (>= 0.11, with --overlay-src/--tmp-overlay) usable on a
# Debian system whose own archive is older: download Debian sid's bubblewrap and the
# libraries it needs with a *private* apt configuration (the system's apt config and
# state are not touched), unpack them into DEST_DIR/root and create DEST_DIR/bwrap,
# a wrapper that runs sid's bwrap through sid's own dynamic loader.
# Idempotent: if DEST_DIR/bwrap already works, its path is printed and nothing else
# is done. Needs root (for apt-get download's sandbox and for the final check).
set -eu

MIN_VERSION=0.11
SUITE=sid
PACKAGES="bubblewrap libc6 libcap2 libselinux1 libpcre2-8-0"

die() { echo "get-bwrap: $*" >&2; exit 1; }
say() { echo "get-bwrap: $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 DEST_DIR"
mkdir -p "$1"
DEST=$(cd "$1" && pwd)
WRAPPER=$DEST/bwrap

# Prints the version if $1 is a working bwrap >= MIN_VERSION.
version_ok() {
    v=$("$1" --version 2>/dev/null | awk '{print $2; exit}') || return 1
    [ -n "$v" ] || return 1
    [ "$(printf '%s\n%s\n' "$MIN_VERSION" "$v" | sort -V | head -n1)" = "$MIN_VERSION" ] || return 1
    echo "$v"
}

if [ -x "$WRAPPER" ] && version_ok "$WRAPPER" >/dev/null; then
    echo "$WRAPPER"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found"
done

# --- archive URI (and keyring) from the system's own apt sources -----------------
# Prints "URI KEYRING SUITES..." lines (KEYRING is "-" if none) for every deb source.
system_sources() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && enabled != "no")
                     for (i = 1; i <= split(uris, u, " "); i++)
                         print u[i], (key ~ /^\// ? key : "-"), suites
                 types = uris = suites = key = enabled = ""; last = ""
             }
             /^#/ { next }
             /^[ \t]*$/ { flush(); next }
             /^[ \t]/ { if (last == "uris") uris = uris " " $0; next }
             {
                 k = tolower(substr($0, 1, index($0, ":") - 1)); v = substr($0, index($0, ":") + 1)
                 gsub(/^[ \t]+|[ \t]+$/, "", v); last = k
                 if (k == "types") types = v; else if (k == "uris") uris = v
                 else if (k == "suites") suites = v; else if (k == "signed-by") key = v
                 else if (k == "enabled") enabled = tolower(v)
             }
             END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        sed -n 's/^[ \t]*deb[ \t]\+\(\[\([^]]*\)\][ \t]\+\)\?\([^ \t]\+\)[ \t]\+\([^ \t]\+\).*/\3 [\2] \4/p' "$f" |
            while read -r uri opts suite; do
                key=$(echo "$opts" | tr -d '[]' | tr ' ' '\n' | sed -n 's/^signed-by=//p')
                echo "$uri ${key:--} $suite"
            done
    done
}

# Prefer a plain ".../debian" archive, skip security archives.
SRC=$(system_sources | grep -v -i security | awk '$1 ~ /\/debian\/?$/' | head -n1)
[ -n "$SRC" ] || SRC=$(system_sources | grep -v -i security | head -n1)
[ -n "$SRC" ] || die "no Debian archive found in /etc/apt/sources.list{,.d}"
URI=$(echo "$SRC" | awk '{print $1}')
URI=${URI%/}
KEYRING=$(echo "$SRC" | awk '{print $2}')
if [ "$KEYRING" = "-" ] || [ ! -r "$KEYRING" ]; then
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
fi
[ -r "$KEYRING" ] || die "no Debian archive keyring found"

# --- private apt configuration --------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/get-bwrap.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/lists/partial" "$TMP/cache/archives/partial" "$TMP/parts" "$TMP/debs"
: >"$TMP/status"
echo "deb [signed-by=$KEYRING] $URI $SUITE main" >"$TMP/sources.list"

apt_private() {
    tool=$1; shift
    "$tool" -q \
        -o Dir::Etc::SourceList="$TMP/sources.list" \
        -o Dir::Etc::SourceParts=- \
        -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts="$TMP/parts" \
        -o Dir::State="$TMP" \
        -o Dir::State::Lists="$TMP/lists" \
        -o Dir::State::status="$TMP/status" \
        -o Dir::Cache="$TMP/cache" \
        -o APT::Architectures=amd64 \
        -o APT::Sandbox::User=root \
        -o Acquire::Languages=none \
        "$@"
}

say "fetching the '$SUITE' package list (archive taken from the system's apt sources)"
apt_private apt-get update >"$TMP/update.log" 2>&1 || { cat "$TMP/update.log" >&2; die "apt-get update failed"; }
if grep -Eq '^(W|E): ' "$TMP/update.log"; then
    cat "$TMP/update.log" >&2; die "apt-get update reported problems"
fi

say "downloading: $PACKAGES"
(cd "$TMP/debs" && apt_private apt-get download $PACKAGES) >"$TMP/download.log" 2>&1 ||
    { cat "$TMP/download.log" >&2; die "apt-get download failed"; }

# --- unpack and write the wrapper ------------------------------------------------
rm -rf "$DEST/root.new"
mkdir -p "$DEST/root.new"
for deb in "$TMP"/debs/*.deb; do
    dpkg-deb -x "$deb" "$DEST/root.new"
done
rm -rf "$DEST/root"
mv "$DEST/root.new" "$DEST/root"
ROOT=$DEST/root

LDSO=
for c in lib64/ld-linux-x86-64.so.2 usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
         usr/lib64/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; do
    # lib64 may be an absolute symlink into the host: resolve inside ROOT ourselves.
    if [ -f "$ROOT/$c" ] && [ "$(readlink -f "$ROOT/$c" | cut -c1-${#ROOT})" = "$ROOT" ]; then
        LDSO=$ROOT/$c; break
    fi
done
[ -n "$LDSO" ] || die "no ld-linux-x86-64.so.2 in $ROOT"
[ -x "$ROOT/usr/bin/bwrap" ] || die "no usr/bin/bwrap in $ROOT"
LIBPATH=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu

# Every library must resolve inside ROOT (never silently from the host).
LIST=$("$LDSO" --library-path "$LIBPATH" --list "$ROOT/usr/bin/bwrap") || die "ld.so --list failed"
if echo "$LIST" | grep -q 'not found'; then
    echo "$LIST" >&2; die "missing libraries"
fi
if echo "$LIST" | awk '/=>/ {print $3}' | grep -v "^$ROOT/"; then
    echo "$LIST" >&2; die "some libraries resolve outside $ROOT (add their packages to PACKAGES)"
fi

cat >"$WRAPPER.new" <<EOF
#!/bin/sh
# Debian $SUITE's bubblewrap, run through $SUITE's own dynamic loader (made by get-bwrap.sh).
exec "$LDSO" --library-path "$LIBPATH" "$ROOT/usr/bin/bwrap" "\$@"
EOF
chmod 755 "$WRAPPER.new"
mv "$WRAPPER.new" "$WRAPPER"

# --- verify ----------------------------------------------------------------------
VERSION=$(version_ok "$WRAPPER") || { "$WRAPPER" --version >&2 || true; die "bwrap --version is not >= $MIN_VERSION"; }
say "bwrap version $VERSION"

T=$(mktemp -d "${TMPDIR:-/tmp}/bw.XXXXXX")
mkdir -p "$T/l1" "$T/l2" "$T/p"
MOUNTS_BEFORE=$(cat /proc/self/mountinfo)
set -- --overlay-src "$T/l1" --overlay-src "$T/l2" --tmp-overlay / \
       --ro-bind /usr /usr --symlink usr/lib64 /lib64 --symlink usr/lib /lib \
       --symlink usr/bin /bin --proc /proc --dev /dev --tmpfs /tmp \
       --ro-bind "$T/p" /work /bin/sh -c 'echo ok'
say "check: $WRAPPER $*"
OUT=$("$WRAPPER" "$@" 2>&1) || true
MOUNTS_AFTER=$(cat /proc/self/mountinfo)
rm -rf "$T"
[ "$MOUNTS_BEFORE" = "$MOUNTS_AFTER" ] || die "host mount table changed during the check"
[ "$OUT" = ok ] || { echo "$OUT" >&2; die "overlay check failed"; }
say "overlay check printed: $OUT"
echo "$WRAPPER"
