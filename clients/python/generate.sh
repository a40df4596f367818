#!/usr/bin/env sh
# Regenerates the gRPC stubs this package ships (src/jobvisor/v1/*_pb2*.py
# and their .pyi type stubs) from the repository's proto/jobvisor/v1/*.proto.
# Needs grpcio-tools (python3 -m pip install grpcio-tools), in python3 or in
# the interpreter $PYTHON names. The generated
# code says which grpcio and protobuf it needs at run time: keep
# pyproject.toml's dependencies at least that (tests/test_package.py checks).
#
# The protos' package is jobvisor.v1, so the generated imports
# (`from jobvisor.v1 import worker_pb2`) resolve inside this package as
# they are: nothing is rewritten.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
protos="$here/../../proto"
out="$here/src"
rm -f "$out"/jobvisor/v1/*_pb2.py "$out"/jobvisor/v1/*_pb2.pyi "$out"/jobvisor/v1/*_pb2_grpc.py
"${PYTHON:-python3}" -m grpc_tools.protoc -I "$protos" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$protos"/jobvisor/v1/*.proto
