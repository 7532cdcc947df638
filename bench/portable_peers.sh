#!/bin/bash
# Packs what bench/l4_compare.py and bench/l7_compare.py need into one relocatable tarball, for running them on a
# bigger machine that has none of it installed (no Debian packages, no network): this Python with PyYAML and the
# built zlbfast, HAProxy, nginx (with its stream module), wrk and Envoy from this machine, and the shared libraries
# they load other than glibc's own. Binaries built on Debian 12 need glibc >= 2.35 on the target.
#
#     bash bench/portable_peers.sh OUT.tar.xz        # here, from a checkout where `pip install -e .` has run
#     tar xJf OUT.tar.xz -C /tmp && bash /tmp/zlbbench/run.sh [l7_compare/l4_compare options]   # there
#
# run.sh runs both comparisons from the packed checkout with the options given, for example
# `--load-cpus 2-15 --proxy-cpu 1 --wrk-threads 4 --runs 4 --duration 4` on a 16-CPU machine.
set -euo pipefail
out=$(realpath "${1:?usage: portable_peers.sh OUT.tar.xz}")
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v python3)
prefix=$("$py" -c 'import sys; print(sys.base_prefix)')
ver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/zlbbench
mkdir -p "$root"/{bin,lib,py/bin,nginx-modules}

# Python: the interpreter, its standard library without tests and GUI toolkits, PyYAML and the checkout.
cp "$("$py" -c 'import sys; print(sys.executable)')" "$root/py/bin/python3"
if [ -e "$prefix/lib/libpython$ver.so.1.0" ]; then strip -o "$root/lib/libpython$ver.so.1.0" "$prefix/lib/libpython$ver.so.1.0"; fi
stdlib=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
mkdir -p "$root/py/lib/python$ver/site-packages"
tar -C "$stdlib" -cf - --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./ensurepip \
    --exclude=./lib2to3 --exclude='./config-*' --exclude=./site-packages --exclude='__pycache__' . |
    tar -C "$root/py/lib/python$ver" -xf -
yaml_dir=$("$py" -c 'import os, yaml; print(os.path.dirname(os.path.dirname(yaml.__file__)))')
cp -r "$yaml_dir"/yaml "$yaml_dir"/_yaml "$root/py/lib/python$ver/site-packages/"
mkdir -p "$root/repo" && git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -cf - | tar -C "$root/repo" -xf -
cp "$repo"/zlbfast/_native*.so "$root/repo/zlbfast/"

# The peers and the load generator.
for tool in haproxy nginx wrk taskset; do cp "$(command -v $tool)" "$root/bin/"; done
envoy_bin=$("$py" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
cp "$envoy_bin" "$root/bin/envoy"
cp /usr/lib/nginx/modules/ngx_stream_module.so "$root/nginx-modules/"

# Every shared library those load, except glibc's (the target's own must be used with its loader).
for f in "$root"/bin/* "$root"/py/bin/python3 "$root"/lib/* "$root"/py/lib/python"$ver"/lib-dynload/*.so \
         "$root"/nginx-modules/*.so "$root"/repo/zlbfast/_native*.so; do
    ldd "$f" 2>/dev/null | awk '/=> \// {print $3}'
done | sort -u | grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so' |
    while read -r lib; do [ -e "$root/lib/$(basename "$lib")" ] || cp -L "$lib" "$root/lib/"; done

cat > "$root/run.sh" <<'EOF'
#!/bin/bash
# Runs bench/l7_compare.py, then bench/l4_compare.py, from the packed checkout with the packed tools, with the
# options both take (--duration, --runs, --connections, --load-cpus, --proxy-cpu, --wrk-threads); their JSON goes
# to $OUT (default: the current directory).
set -u
here=$(cd "$(dirname "$0")" && pwd)
export PATH=$here/bin:$PATH LD_LIBRARY_PATH=$here/lib PYTHONHOME=$here/py PYTHONDONTWRITEBYTECODE=1
# The nginx peer of `zlbfast bench --scenario l4` loads its stream module from Debian's path; nginx, started
# as root with a master process, switches to Debian's www-data user.
if [ "$(id -u)" = 0 ]; then
    mkdir -p /usr/lib/nginx/modules && cp "$here"/nginx-modules/*.so /usr/lib/nginx/modules/
    id www-data >/dev/null 2>&1 || useradd -r -M -s /usr/sbin/nologin www-data
fi
out=${OUT:-$PWD}
cd "$here/repo"
"$here/py/bin/python3" bench/l7_compare.py "$@" --json "$out/l7.json"
"$here/py/bin/python3" bench/l4_compare.py "$@" --json "$out/l4.json"
EOF
chmod +x "$root/run.sh"
tar -C "$stage" -cJf "$out" zlbbench
echo "$out: $(du -h "$out" | cut -f1)"
