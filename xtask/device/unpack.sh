#!/bin/bash
# unpack.sh NAME: .device/bin/NAME.xz (or NAME.gz) → /tmp/NAME, executable, unless the packed
# file is the one unpacked last time (a copy is kept as /tmp/NAME.packed). xz packs a stripped
# build to ~10 MB (gzip: ~15), so four builds and the tree fit in one 64 MiB carry; Python's
# lzma unpacks it where the image has no xz.
set -u
n=$1
for ext in xz gz; do
  src=.device/bin/$n.$ext
  [ -f $src ] || continue
  cmp -s $src /tmp/$n.packed && [ -x /tmp/$n ] && exit 0
  cp $src /tmp/$n.packed
  if [ $ext = xz ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      /tmp/$n.packed /tmp/$n
  else
    gunzip -c /tmp/$n.packed > /tmp/$n
  fi
  chmod +x /tmp/$n
  exit 0
done
echo "unpack.sh: no .device/bin/$n.xz or $n.gz" >&2
exit 1
