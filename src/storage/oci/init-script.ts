/**
 * `/.mvm/init`: PID 1 of a guest booted from an OCI image (kernel command line
 * `init=/.mvm/init`). It uses only /.mvm/busybox (applets linked in /.mvm/bin),
 * never the image's own tools: mounts the API filesystems, configures the
 * network from the kernel command line (same syntax as images/guest/rootfs-init:
 * `ip=`, `mvm.ip1=`, `mvm.ip2=`, `mvm.dns=`, `mvm.name=`, `mvm.id=`), prints
 * `MVM-READY id=<id>`, then runs the image's process (/.mvm/run, generated from
 * the image config) on the console. When it exits, init prints
 * `MVM-EXIT code=<n>` and powers the VM off (container semantics).
 * SIGTERM/SIGUSR1/SIGUSR2 and the ACPI power button power off cleanly.
 */
import { VOLUME_MOUNT_SH } from '../volumes/guest-mount.js';

export const OCI_INIT_PATH = '/.mvm/init';

export const OCI_INIT_SCRIPT = `#!/.mvm/busybox sh
# /.mvm/init of a MicroVM Service OCI guest (generated; see src/storage/oci/init-script.ts)
PATH=/.mvm/bin
export PATH
umask 022
log() { echo "mvm-init: $*"; }

stopping=
shutdown_now() {
  [ -n "$stopping" ] && return
  stopping=1
  action=$1
  kill -TERM -1 2>/dev/null
  kill -CONT -1 2>/dev/null
  n=0
  while [ "$n" -lt 20 ]; do
    others=
    for p in /proc/[0-9]*; do
      [ "$p" = /proc/1 ] && continue
      [ -e "$p/exe" ] && { others=1; break; }
    done
    [ -z "$others" ] && break
    sleep 0.1
    n=$((n + 1))
  done
  kill -KILL -1 2>/dev/null
  sync
  umount -a -r 2>/dev/null
  mount -o remount,ro / 2>/dev/null
  sync
  log "$action"
  "$action" -f
  sleep 5
  exit 1
}
trap 'shutdown_now poweroff' TERM USR1 USR2
trap 'shutdown_now reboot' INT
trap '' HUP PIPE

mnt() {
  [ -d "$2" ] || mkdir -p "$2" 2>/dev/null
  grep -q "^[^ ]* $2 " /proc/mounts 2>/dev/null || mount -t "$1" -o "$3" "$1" "$2" || log "warning: cannot mount $1 on $2"
}
mnt proc /proc nosuid,nodev,noexec
mnt sysfs /sys nosuid,nodev,noexec
mnt devtmpfs /dev nosuid,mode=0755
mnt devpts /dev/pts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666
mnt tmpfs /dev/shm nosuid,nodev,mode=1777
mnt tmpfs /run nosuid,nodev,mode=0755
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr

id= name= ip0= ip1= ip2= dns=
set -f
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    mvm.id=*) id="\${arg#mvm.id=}" ;;
    mvm.name=*) name="\${arg#mvm.name=}" ;;
    ip=*) ip0="\${arg#ip=}" ;;
    mvm.ip1=*) ip1="\${arg#mvm.ip1=}" ;;
    mvm.ip2=*) ip2="\${arg#mvm.ip2=}" ;;
    mvm.dns=*) dns="\${arg#mvm.dns=}" ;;
  esac
done
set +f

ip link set lo up 2>/dev/null
mask2prefix() {
  case "$1" in
    *.*)
      bits=0
      set -f; IFS=. ; set -- $1 ; unset IFS; set +f
      for o in "$@"; do
        case "$o" in
          255) bits=$((bits + 8)) ;; 254) bits=$((bits + 7)) ;; 252) bits=$((bits + 6)) ;;
          248) bits=$((bits + 5)) ;; 240) bits=$((bits + 4)) ;; 224) bits=$((bits + 3)) ;;
          192) bits=$((bits + 2)) ;; 128) bits=$((bits + 1)) ;;
        esac
      done
      echo "$bits" ;;
    '') echo 24 ;;
    *) echo "$1" ;;
  esac
}
ns_from_ip=
have_default=
configure_if() {
  spec=$1 dev=$2
  case "$spec" in
    ''|off|none) return ;;
    dhcp|on|any)
      ip link set "$dev" up && udhcpc -b -q -t 5 -i "$dev" -s /.mvm/udhcpc.script >/dev/null 2>&1 &
      return ;;
  esac
  set -f; IFS=: ; set -- $spec ; unset IFS; set +f
  cip=$1 gw=$3 mask=$4 hn=$5 d=$6 d0=$8 d1=$9
  [ -n "$d" ] && dev=$d
  [ -n "$hn" ] && [ -z "$name" ] && name=$hn
  [ -n "$d0" ] && ns_from_ip="$ns_from_ip $d0"
  [ -n "$d1" ] && ns_from_ip="$ns_from_ip $d1"
  [ -z "$cip" ] && { log "warning: no address in ip spec for $dev"; return; }
  n=0
  while [ ! -e "/sys/class/net/$dev" ] && [ "$n" -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
  prefix=$(mask2prefix "$mask")
  ip link set "$dev" up || { log "warning: no interface $dev"; return; }
  ip addr add "$cip/$prefix" dev "$dev" || log "warning: cannot set $cip/$prefix on $dev"
  if [ -n "$gw" ] && [ -z "$have_default" ]; then
    ip route add default via "$gw" dev "$dev" && have_default=1
  fi
}
configure_if "$ip0" eth0
configure_if "$ip1" eth1
configure_if "$ip2" eth2
servers=$(echo "$dns" | tr ',' ' ')
[ -z "$servers" ] && servers=$ns_from_ip
if [ -n "$servers" ] && [ ! -L /etc/resolv.conf ] && [ -d /etc ]; then
  : > /etc/resolv.conf 2>/dev/null && for s in $servers; do echo "nameserver $s" >> /etc/resolv.conf; done
fi
[ -z "$name" ] && name=mvm
hostname "$name"

if ls /dev/input/event* >/dev/null 2>&1; then
  acpid -c /.mvm/acpi -l /run/mvm-acpid.log
fi

${VOLUME_MOUNT_SH}
echo "MVM-READY id=$id" > /dev/console

setsid cttyhack /.mvm/run &
child=$!
rc=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  rc=$?
done
echo "MVM-EXIT code=$rc" > /dev/console
shutdown_now poweroff
while :; do sleep 3600 & wait $!; done
`;

export const UDHCPC_SCRIPT = `#!/.mvm/busybox sh
PATH=/.mvm/bin
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/\${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface" && break; done
    ;;
esac
`;

export const ACPI_POWER_SCRIPT = '#!/.mvm/busybox sh\nexec /.mvm/busybox kill -USR2 1\n';
