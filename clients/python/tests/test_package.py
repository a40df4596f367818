"""The package as shipped: its stubs are what generate.sh makes from the
repository's protos today, and its dependencies are at least what those
stubs check for at import."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
PROTOS = HERE.parent.parent / "proto"
STUBS = HERE / "src" / "jobvisor" / "v1"


def version(text: str) -> tuple:
    return tuple(int(p) for p in text.split("."))


def _clear_json_names(message: object) -> None:
    for field in message.field:  # type: ignore[attr-defined]
        field.ClearField("json_name")
    for nested in message.nested_type:  # type: ignore[attr-defined]
        _clear_json_names(nested)


class PackageTest(unittest.TestCase):
    def test_the_committed_stubs_are_generated_from_the_current_protos(self) -> None:
        # Compared as descriptors (what the protos say), not as text: a
        # newer grpcio-tools writes other version lines and layout.
        try:
            import grpc_tools  # noqa: F401
        except ImportError:
            self.fail("this test needs grpcio-tools: python3 -m pip install grpcio-tools")
        from google.protobuf import descriptor_pb2

        from jobvisor.v1 import jobvisor_pb2, jobvisor_pb2_grpc, worker_pb2, worker_pb2_grpc

        shipped = {m.DESCRIPTOR.name: m.DESCRIPTOR.serialized_pb for m in (jobvisor_pb2, worker_pb2)}
        with tempfile.TemporaryDirectory() as out:
            protos = sorted(str(p) for p in (PROTOS / "jobvisor" / "v1").glob("*.proto"))
            descriptors = Path(out) / "set.pb"
            run = subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS), f"--descriptor_set_out={descriptors}", *protos],
                capture_output=True,
                text=True,
            )
            self.assertEqual(run.returncode, 0, run.stderr)
            current = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
        self.assertEqual(sorted(f.name for f in current.file), sorted(shipped))
        for f in current.file:
            # protoc fills in json_name in a descriptor set; the stubs
            # leave it out.
            for message in f.message_type:
                _clear_json_names(message)
            self.assertEqual(
                descriptor_pb2.FileDescriptorProto.FromString(shipped[f.name]),
                f,
                f"the stubs of {f.name} in clients/python/src/jobvisor/v1 are out of date: "
                "run clients/python/generate.sh",
            )
        # And every service has its gRPC stub.
        self.assertTrue(hasattr(worker_pb2_grpc, "WorkerServiceStub"))
        self.assertTrue(hasattr(jobvisor_pb2_grpc, "JobServiceStub"))
        shipped_files = sorted(p.name for p in STUBS.iterdir() if p.suffix in (".py", ".pyi"))
        self.assertEqual(
            shipped_files,
            ["__init__.py"] + sorted(f"{Path(p).stem}{suffix}" for p in protos for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")),
        )

    def test_the_dependencies_cover_what_the_stubs_need(self) -> None:
        pyproject = (HERE / "pyproject.toml").read_text()
        grpc_min = re.search(r'"grpcio>=([0-9.]+)"', pyproject)
        proto_min = re.search(r'"protobuf>=([0-9.]+)', pyproject)
        assert grpc_min and proto_min, "pyproject.toml names grpcio>=X and protobuf>=Y"
        for stub in STUBS.glob("*_pb2_grpc.py"):
            needed = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", stub.read_text())
            assert needed, stub
            self.assertGreaterEqual(version(grpc_min.group(1)), version(needed.group(1)), stub.name)
        for stub in STUBS.glob("*_pb2.py"):
            needed = re.search(r"Protobuf Python Version: ([0-9.]+)", stub.read_text())
            assert needed, stub
            self.assertGreaterEqual(version(proto_min.group(1)), version(needed.group(1)), stub.name)

    def test_the_package_is_typed_and_ships_its_stub_types(self) -> None:
        self.assertTrue((HERE / "src" / "jobvisor" / "py.typed").exists())
        pyproject = (HERE / "pyproject.toml").read_text()
        self.assertIn('"py.typed"', pyproject)
        self.assertIn('"v1/*.pyi"', pyproject)


if __name__ == "__main__":
    unittest.main()
