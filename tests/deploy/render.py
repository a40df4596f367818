"""Renders the Helm chart with Helm's own library and checks every manifest
against Kubernetes' schemas: the bridge tests/deploy.rs runs through the
venv that tests/deploy/requirements.txt describes.

Reads one JSON request on stdin:

    {"chart": "<dir>", "release": "<name>", "namespace": "<ns>",
     "kube_versions": ["1.30", ..., "1.37"],   # oldest first
     "cases": [{"name": "...", "values": {...}}, ...]}

and writes one JSON report on stdout:

    {"helm": "<Helm SDK version>", "schema_versions": ["1.25.0", ...],
     "cases": [{"name", "lint": [{"severity", "path", "error"}],  # strict, newest
                "error": null | "<why rendering stopped>",
                "manifests": [{"template", "document": {...}}],
                "notes": "<NOTES.txt>",
                "invalid": ["<kind/name> on <version>: <where>: <what>"],
                "unchecked": ["<apiVersion> <kind>"]}]}

The checking (what must render, what must not) is the Rust test's; this
only reports what Helm and the schemas say.
"""

import json
import re
import sys

import helm_python
import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource


def lint(chart, values, newest):
    """Strict lint messages (warnings count as errors), with the newest
    version's deprecations."""
    version = {"kube_version": "v%s.0" % newest[0]} if newest else {}
    report = helm_python.lint(chart, values, strict=True, **version)
    errors = [{"severity": 3, "path": "", "error": e} for e in report["errors"]]
    return report["messages"] + errors


class Schemas:
    """Kubernetes' strict schemas (no unknown fields) by version and kind,
    each compiled once: kubernetes_validate.validate reads them again on
    every call, a second or so per manifest and version."""

    def __init__(self):
        self.validators = {}
        self.definitions = {}

    def validator(self, document, version):
        # The file naming is kubernetes_validate.validate's.
        api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", document["apiVersion"])
        key = (version, document["kind"].lower(), api)
        if key not in self.validators:
            folder = "kubernetes-json-schema/v%s.0-local-strict" % version
            try:
                schema = kv.schema_contents("%s/%s-%s.json" % (folder, key[1], api), version)
            except FileNotFoundError:
                self.validators[key] = None
                return None
            if version not in self.definitions:
                self.definitions[version] = Resource.from_contents(
                    kv.schema_contents("%s/_definitions.json" % folder, version)
                )
            registry = Resource.from_contents(schema) @ (self.definitions[version] @ Registry())
            self.validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self.validators[key]

    def check(self, document, versions):
        """Schema errors of one manifest for each version, and whether the
        schemas know its kind at all."""
        invalid = []
        name = "%s/%s" % (document.get("kind"), document.get("metadata", {}).get("name"))
        for version in versions:
            validator = self.validator(document, version)
            if validator is None:
                return invalid, False
            for e in validator.iter_errors(document):
                where = ".".join(str(p) for p in e.absolute_path)
                invalid.append("%s on %s: %s: %s" % (name, version, where, e.message))
        return invalid, True


def render(chart, schemas, request, case):
    result = {
        "name": case["name"],
        "lint": lint(request["chart"], case["values"], request["kube_versions"][-1:]),
        "error": None,
        "manifests": [],
        "notes": "",
        "invalid": [],
        "unchecked": [],
    }
    try:
        rendered = chart.render(
            case["values"],
            name=request["release"],
            namespace=request["namespace"],
            is_install=True,
        )
    except helm_python.HelmError as e:
        result["error"] = str(e)
        return result
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            result["notes"] = text
            continue
        for document in yaml.safe_load_all(text):
            if not document:
                continue
            result["manifests"].append({"template": template, "document": document})
            invalid, known = schemas.check(document, request["kube_versions"])
            result["invalid"].extend(invalid)
            if not known:
                result["unchecked"].append(
                    "%s %s" % (document.get("apiVersion"), document.get("kind"))
                )
    return result


def main():
    request = json.load(sys.stdin)
    chart = helm_python.Chart.load(request["chart"])
    schemas = Schemas()
    known = sorted(set(kv.all_versions()), key=kv.Version)
    # A version without schemas is the Rust test's to report, by name.
    request["kube_versions"] = [v for v in request["kube_versions"] if v + ".0" in known]
    report = {
        "helm": helm_python.helm_sdk_version(),
        "schema_versions": known,
        "cases": [render(chart, schemas, request, case) for case in request["cases"]],
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
