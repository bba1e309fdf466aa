# Make the python Ansible is lent, in a throwaway container of the release it is for:
# python3 and python3-apt from the release's own packages, copied under one folder
# ("$1", where build containers will mount it), with every shared library they need
# that is not part of glibc, libstdc++ or libapt-pkg (present wherever apt is) next
# to them. Each ELF file finds those libraries through a relative rpath, never
# through LD_LIBRARY_PATH, which would leak into dpkg's maintainer scripts.
# Writes /tmp/rolebake-toolchain.tar (rooted at /) and prints the package versions.
# Exit 3: this image cannot make one (no apt-get, or no python3-apt for the release).
set -eu
prefix=$1
out=/tmp/rolebake-toolchain
export DEBIAN_FRONTEND=noninteractive
command -v apt-get >/dev/null 2>&1 || { echo "no apt-get in this image" >&2; exit 3; }
want="python3 python3-apt patchelf"
# shellcheck disable=SC2086
if ! apt-get install -y -qq --no-install-recommends $want >/tmp/rolebake-apt.log 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $want >/tmp/rolebake-apt.log 2>&1 || {
        tail -n 5 /tmp/rolebake-apt.log >&2; exit 3; }
fi
python=$(readlink -f /usr/bin/python3)
version=${python##*/python}
root=$out$prefix
rm -rf "$out"
mkdir -p "$root/bin" "$root/lib/python3/dist-packages"
cp -a "$python" "$root/bin/python$version"
ln -s "python$version" "$root/bin/python3"
cp -a "/usr/lib/python$version" "$root/lib/"
rm -rf "$root/lib/python$version/test" "$root/lib/python$version/dist-packages" \
       "$root/lib/python$version/site-packages"
dpkg -L python3-apt | grep '^/usr/lib/python3/dist-packages/[^/]*$' | while read -r file; do
    cp -a "$file" "$root/lib/python3/dist-packages/"
done
# Python libraries a role installs on the target (python3-pymysql, ...) stay importable
# for modules that need them: same release, same python, so the same ABI. Last on sys.path.
printf '/usr/local/lib/python%s/dist-packages\n/usr/lib/python3/dist-packages\n' "$version" \
    > "$root/lib/python3/dist-packages/zz-rolebake-target.pth"
skip='^(libc|libm|libdl|libpthread|librt|libutil|libresolv|ld-linux-.*|libstdc\+\+|libgcc_s|libapt-pkg)\.so'
todo="$root/bin/python$version $(find "$root/lib" -type f -name '*.so*' | tr '\n' ' ')"
while [ -n "$(echo "$todo" | tr -d ' ')" ]; do
    next=""
    for elf in $todo; do
        resolved=$(ldd "$elf" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1 "=" $3}')
        for name in $(patchelf --print-needed "$elf"); do
            echo "$name" | grep -Eq "$skip" && continue
            [ -e "$root/lib/$name" ] && continue
            path=$(printf '%s\n' $resolved | sed -n "s|^$name=||p" | head -n 1)
            [ -n "$path" ] || continue
            cp -L "$path" "$root/lib/$name"
            next="$next $root/lib/$name"
        done
    done
    todo=$next
done
find "$root" -type f \( -name '*.so*' -o -path "$root/bin/*" \) | while read -r elf; do
    case "$elf" in
        "$root/bin/"*) rpath='$ORIGIN/../lib' ;;
        *)  rel=""; dir=${elf%/*}
            while [ "$dir" != "$root/lib" ]; do rel="$rel/.."; dir=${dir%/*}; done
            rpath="\$ORIGIN$rel" ;;
    esac
    patchelf --set-rpath "$rpath" "$elf"
done
"$root/bin/python3" -c 'import apt_pkg, ssl, hashlib, ctypes, pyexpat' >/dev/null
tar -C "$out" --numeric-owner -cf /tmp/rolebake-toolchain.tar .
printf 'packages:'
for pkg in "python$version" python3-apt libexpat1; do
    printf ' %s' "$(dpkg-query -W -f '${Package}=${Version}' "$pkg" 2>/dev/null || echo "$pkg=?")"
done
echo
echo "size: $(du -sk "$root" | cut -f1) KiB"
