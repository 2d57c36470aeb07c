#!/usr/bin/env bash
# Generates the Python stubs (messages and gRPC stubs) from the gateway's
# protos into gen/, or into the directory given as the first argument.
# Needs `pip install grpcio grpcio-tools`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
protos=$(cd "$here/../../proto" && pwd)
out=${1:-$here/gen}
mkdir -p "$out"
# grpc_tools.protoc adds the well-known types (google/protobuf/*.proto) itself.
python3 -m grpc_tools.protoc \
    -I "$protos" \
    --python_out="$out" \
    --pyi_out="$out" \
    --grpc_python_out="$out" \
    "$protos"/asyncgate/v1/*.proto
echo "stubs written to $out" >&2
