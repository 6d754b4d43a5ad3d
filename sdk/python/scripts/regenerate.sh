#!/usr/bin/env bash
# Regenerates s3gate_plugin/_proto/ from proto/s3gate/plugin/v1/plugin.proto
# and proto/grpc/health/v1/health.proto with a pinned grpcio-tools
# (installed into a temporary directory, nothing else is touched). Run it
# after changing a .proto, review the diff, commit the result.
set -euo pipefail
cd "$(dirname "$0")/.."
GRPCIO_TOOLS_VERSION=1.85.1
root=$(cd ../.. && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip install --quiet --target "$tmp/tools" "grpcio-tools==$GRPCIO_TOOLS_VERSION"
mkdir -p "$tmp/out"
PYTHONPATH="$tmp/tools" python3 -m grpc_tools.protoc \
    -I "$root/proto" \
    --python_out="$tmp/out" --pyi_out="$tmp/out" --grpc_python_out="$tmp/out" \
    s3gate/plugin/v1/plugin.proto grpc/health/v1/health.proto
out=s3gate_plugin/_proto
for f in plugin_pb2.py plugin_pb2.pyi plugin_pb2_grpc.py; do
    cp "$tmp/out/s3gate/plugin/v1/$f" "$out/$f"
done
for f in health_pb2.py health_pb2.pyi health_pb2_grpc.py; do
    cp "$tmp/out/grpc/health/v1/$f" "$out/$f"
done
# The generated stubs import their messages by the proto's package path;
# inside this package they are siblings.
sed -i \
    -e 's/^from s3gate\.plugin\.v1 import plugin_pb2 as/from . import plugin_pb2 as/' \
    -e 's/^from grpc\.health\.v1 import health_pb2 as/from . import health_pb2 as/' \
    "$out/plugin_pb2_grpc.py" "$out/health_pb2_grpc.py"
echo "regenerated $out with grpcio-tools $GRPCIO_TOOLS_VERSION"
