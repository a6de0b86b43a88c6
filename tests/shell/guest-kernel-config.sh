#!/usr/bin/env bash
# Every symbol the fragments ask for made it into the built .config
# (merge_config.sh drops what Kconfig cannot satisfy, silently).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vmlinux=$("$root/guest-kernel/build.sh" 2>/dev/null | tail -n1)
config=$(dirname "$vmlinux")/config
[ -s "$config" ] || { echo "no .config next to $vmlinux"; exit 1; }
missing=()
for frag in "$root"/guest-kernel/fragments/*.config; do
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qxF "$line" "$config" || missing+=("$line ($(basename "$frag"))") ;;
      "# CONFIG_"*" is not set")
        sym=${line#\# }; sym=${sym%% *}
        grep -q "^$sym=" "$config" && missing+=("$line ($(basename "$frag"))") ;;
    esac
  done < "$frag"
done
if [ ${#missing[@]} -gt 0 ]; then
  printf 'not in the built config: %s\n' "${missing[@]}"
  exit 1
fi
file "$vmlinux" | grep -q 'ELF 64-bit' || { echo "$vmlinux is not a 64-bit ELF"; exit 1; }
# The PVH entry note both engines boot through.
readelf -n "$vmlinux" | grep -q 'Xen' || { echo "$vmlinux has no PVH (Xen ELF) note"; exit 1; }
