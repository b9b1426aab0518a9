#!/usr/bin/env bash
# Pack the programs chipaudit's sensors use (tcpdump, ip and tc, nft, strace, nsenter, unshare) with
# their libraries and this host's loader into .tools/, for a lent machine that has none and cannot
# install any. Each program runs through .tools/lib's loader with --library-path, so only that program
# sees the packed libraries: the processes it starts (a traced workload, a namespace's shim) load the
# machine's own. libfaketime goes to .tools/faketime; run-on-gpu.sh installs it where chipaudit looks.
# Needs an x86-64 Debian or Ubuntu host with those packages installed (.ci/run installs them).
set -euo pipefail
dest=${1:-.tools}
rm -rf "$dest"
mkdir -p "$dest/lib" "$dest/real" "$dest/bin" "$dest/faketime"
for tool in tcpdump ip tc nft strace nsenter unshare; do
    exe=$(command -v "$tool")
    cp -L "$exe" "$dest/real/"
    ldd "$exe" | awk '/=>/ {print $3}' | xargs -r cp -Ln -t "$dest/lib/"
    cat > "$dest/bin/$tool" <<SH
#!/bin/sh
d=\$(dirname "\$(readlink -f "\$0")")/..
exec "\$d/lib/ld-linux-x86-64.so.2" --library-path "\$d/lib" "\$d/real/$tool" "\$@"
SH
    chmod +x "$dest/bin/$tool"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$dest/lib/"
cp -L /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 \
    "$dest/faketime/"
du -sh "$dest"
