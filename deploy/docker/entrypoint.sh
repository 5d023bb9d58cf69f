#!/bin/sh
# Entrypoint of the gpuledger image: the collector by default, any other command on request.
#
#   docker run … gpuledger                       the collector (collector-entrypoint.sh)
#   docker run … gpuledger --simulate            the collector, with these options
#   docker run … gpuledger collect --bus kafka   the collector, with these options
#   docker run … gpuledger consume --bus kafka   any other gpuledger command
#
# The documented `docker run -d --restart unless-stopped … <image>` therefore runs the agent,
# never `--help` in a restart loop.
set -eu
here=$(dirname "$0")

if [ $# -eq 0 ]; then
  exec "$here/collector-entrypoint.sh"
fi
case "$1" in
  collect) shift; exec "$here/collector-entrypoint.sh" "$@" ;;
  -*) exec "$here/collector-entrypoint.sh" "$@" ;;
  *) exec gpuledger "$@" ;;
esac
