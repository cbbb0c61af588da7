#!/bin/bash
# Source at the start of every device call of a sequence. Ignored folders carried into one call
# are removed from the device's tree by the next call that does not name them (even while the
# machine stays warm); /tmp survives. So each call copies what it carried into /tmp/stash and
# links .device back from there when this call did not carry it.
mkdir -p /tmp/stash/parts
for d in .dev1 .dev2 .dev3; do [ -d $d ] && cp $d/p* /tmp/stash/parts/; done
if [ -d .device ] && [ ! -L .device ]; then rm -rf /tmp/stash/.device && cp -r .device /tmp/stash/; fi
[ -e .device ] || ln -s /tmp/stash/.device .device
# The xtask binary (bin/xtask.xz or .gz), where one is carried: unpacked again whenever it
# differs from the last one unpacked.
if [ -f .device/bin/xtask.xz ] || [ -f .device/bin/xtask.gz ]; then bash xtask/device/unpack.sh xtask; fi
echo "stash: parts [$(cd /tmp/stash/parts && ls | tr '\n' ' ')] xtask $(md5sum 2>/dev/null < /tmp/xtask.packed | cut -c1-8)"
