/**
 * The guest side of volumes: a POSIX sh fragment for PID 1 (the default image's
 * images/guest/rootfs-init carries the same text, checked by test/unit/volumes.test.ts, and the
 * OCI init embeds it). The node agent passes one kernel parameter per volume:
 *
 *   mvm.vol=<device>:<ro|rw>:<mountPath>      e.g. mvm.vol=vdb:rw:/data
 *
 * Devices are the extra virtio-blk drives after the root (vdb, vdc, ... in spec order). A
 * read-only volume whose journal needs recovery (its last writer was killed) cannot replay it on
 * a read-only device: it is mounted with `noload` then.
 */
export const VOLUME_MOUNT_SH = `# --- volumes: mvm.vol=<device>:<ro|rw>:<mountPath> (see src/storage/volumes/guest-mount.ts)
mount_volumes() {
  set -f
  for arg in $(cat /proc/cmdline); do
    case "$arg" in
      mvm.vol=*)
        v=\${arg#mvm.vol=}
        vdev=\${v%%:*}
        v=\${v#*:}
        vmode=\${v%%:*}
        vdir=\${v#*:}
        n=0
        while [ ! -b "/dev/$vdev" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
        mkdir -p "$vdir" 2>/dev/null
        if [ "$vmode" = ro ]; then
          mount -t ext4 -o ro "/dev/$vdev" "$vdir" 2>/dev/null || mount -t ext4 -o ro,noload "/dev/$vdev" "$vdir"
        else
          mount -t ext4 -o rw "/dev/$vdev" "$vdir"
        fi && echo "mvm-init: volume /dev/$vdev on $vdir ($vmode)" || echo "mvm-init: warning: cannot mount volume /dev/$vdev on $vdir"
        ;;
    esac
  done
  set +f
}
mount_volumes
`;
