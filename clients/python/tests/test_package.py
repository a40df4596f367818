"""The package as shipped: its stubs are what generate.sh makes from the
repository's protos today, and its dependencies are at least what those
stubs check for at import."""

from __future__ import annotations

import filecmp
import os
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


class PackageTest(unittest.TestCase):
    def test_the_committed_stubs_are_generated_from_the_current_protos(self) -> None:
        try:
            import grpc_tools  # noqa: F401
        except ImportError:
            self.fail("this test needs grpcio-tools: python3 -m pip install grpcio-tools")
        with tempfile.TemporaryDirectory() as out:
            protos = sorted(str(p) for p in (PROTOS / "jobvisor" / "v1").glob("*.proto"))
            run = subprocess.run(
                [sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTOS), f"--python_out={out}",
                 f"--pyi_out={out}", f"--grpc_python_out={out}", *protos],
                capture_output=True, text=True,
            )
            self.assertEqual(run.returncode, 0, run.stderr)
            fresh = Path(out) / "jobvisor" / "v1"
            made = sorted(os.listdir(fresh))
            shipped = sorted(p.name for p in STUBS.iterdir() if p.name != "__init__.py" and p.suffix in (".py", ".pyi"))
            self.assertEqual(made, shipped)
            _, mismatch, errors = filecmp.cmpfiles(fresh, STUBS, made, shallow=False)
            self.assertEqual(
                mismatch + errors, [],
                "the stubs in clients/python/src/jobvisor/v1 are out of date: run clients/python/generate.sh",
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
