#!/bin/sh
# Container entrypoint of the gpuledger collector.
#
# Run the container with:
#   --gpus all (or runtime: nvidia)  the NVIDIA container toolkit mounts libnvidia-ml.so.1
#   --pid=host                       NVML reports host PIDs; attribution reads them in /proc
#   --uts=host, or GPULEDGER_COLLECTOR__NODE=<host name>   events must name the node
#   -v /var/lib/gpuledger:/data      the spool survives restarts (GPULEDGER_DATA_DIR=/data in the image)
#   -p 9400:9400                     Prometheus /metrics
# Extra arguments are passed to the collector (e.g. --simulate, --interval 60).
set -eu

: "${GPULEDGER_DATA_DIR:=/var/lib/gpuledger}"
: "${GPULEDGER_REGISTRY:=/etc/gpuledger/registry.toml}"
export GPULEDGER_DATA_DIR GPULEDGER_REGISTRY

warn() { printf '{"level":"warning","logger":"gpuledger.entrypoint","msg":"%s"}\n' "$1" >&2; }

case " $* " in
  *" --simulate "*) simulate=1 ;;
  *) simulate=0 ;;
esac

if [ "$simulate" = 0 ]; then
  # In a private PID namespace PID 1 is this container's own init: NVML's host PIDs are not
  # visible, so every GPU would be unattributed.
  init=$(cat /proc/1/comm 2>/dev/null || echo unknown)
  case "$init" in
    systemd|init) ;;
    *) warn "PID 1 is '$init': run the container with --pid=host, or GPUs cannot be attributed to jobs" ;;
  esac
  if [ -z "${GPULEDGER_COLLECTOR__NODE:-}" ]; then
    warn "GPULEDGER_COLLECTOR__NODE is not set: events will name the node '$(hostname)' (use --uts=host or set it)"
  fi
fi

if [ ! -r "$GPULEDGER_REGISTRY" ]; then
  warn "registry $GPULEDGER_REGISTRY is not readable: mount it or set GPULEDGER_REGISTRY"
fi

mkdir -p "$GPULEDGER_DATA_DIR"
exec python -m gpuledger.cli_collect "$@"
