//! The chart as Helm itself renders it, linted strictly and checked against
//! Kubernetes' own schemas.
//!
//! `tests/deploy/render.py` lints (strictly) and renders with Helm's
//! library (the PyPI package helm-python-sdk, no helm binary, no cluster)
//! and checks each manifest with kubernetes-validate's strict schemas for
//! every Kubernetes minor version `Chart.yaml`'s `kubeVersion` admits. It
//! runs in the venv at `JOBVISOR_DEPLOY_VENV` (default
//! `~/.cache/jobvisor/deploy-venv`), which `.ci/run` creates from
//! `tests/deploy/requirements.txt`; without it these tests fail, saying
//! how to create it. The cases: the defaults, each `ci/*-values.yaml`, a
//! matrix of the values that switch parts of the chart on and off
//! ([`super::switches`]), and values the chart must refuse. What the
//! manifests must say to the server is [`super::agreement`]'s.

use super::{files, is_yaml, merge, parse_yaml, repo, switches::matrix, values};
use regex::Regex;
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

const RELEASE: &str = "jv";
pub(super) const NAMESPACE: &str = "jobs";
/// The resources' name for release `jv` (release name, then chart name).
pub(super) const FULLNAME: &str = "jv-jobvisor";

/// What the required database Secret is called in every case that renders.
pub(super) fn database() -> Value {
    json!({"database": {"existingSecret": "jobvisor-database"}})
}

/// Values that must stop rendering, with a message naming the fix.
fn refusals() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "the defaults",
            json!({}),
            "database.existingSecret is required: the name of a Secret holding the PostgreSQL URL",
        ),
        (
            "a grace period the drain does not fit in",
            json!({"database": {"existingSecret": "jobvisor-database"}, "terminationGracePeriodSeconds": 15}),
            "terminationGracePeriodSeconds (15) must exceed preStopSleepSeconds + shutdownGraceSeconds (15)",
        ),
        (
            "several pods without multi-replica",
            json!({"database": {"existingSecret": "jobvisor-database"}, "replicaCount": 3}),
            "at '/replicaCount'",
        ),
    ]
}

/// Renders, but with a manifest Kubernetes refuses (a misspelt field the
/// values schema cannot see inside `affinity`): proves the schemas are
/// applied.
const MISSPELT: &str = "a misspelt affinity";

fn misspelt() -> Value {
    json!({"database": {"existingSecret": "jobvisor-database"}, "affinity": {"nodeAfinity": {}}})
}

/// Every case by name, with the values given to Helm (which merges them
/// over values.yaml itself).
fn cases() -> Vec<(String, Value)> {
    let mut cases: Vec<(String, Value)> = Vec::new();
    for path in files(&repo("helm/jobvisor/ci"), &is_yaml) {
        let name = format!("ci/{}", path.file_name().unwrap().to_string_lossy());
        cases.push((name, parse_yaml(&path)));
    }
    for (name, over) in matrix() {
        let mut values = database();
        merge(&mut values, over);
        cases.push((name.to_string(), values));
    }
    for (name, values, _) in refusals() {
        cases.push((name.to_string(), values));
    }
    cases.push((MISSPELT.to_string(), misspelt()));
    cases
}

/// The Kubernetes minor versions `kubeVersion` admits, oldest first:
/// `>=1.A.0-0 <1.B.0-0` gives 1.A to 1.(B-1).
fn kube_versions() -> Vec<String> {
    let chart = parse_yaml(&repo("helm/jobvisor/Chart.yaml"));
    let range = chart["kubeVersion"].as_str().unwrap_or_default();
    let pattern = Regex::new(r"^>=1\.(\d+)\.0-0 <1\.(\d+)\.0-0$").unwrap();
    let found = pattern.captures(range).unwrap_or_else(|| {
        panic!(
            "Chart.yaml: kubeVersion {range:?} should be a closed range like \">=1.30.0-0 <1.38.0-0\": the versions the manifests are checked against"
        )
    });
    let (from, to): (u32, u32) = (found[1].parse().unwrap(), found[2].parse().unwrap());
    assert!(
        from < to,
        "Chart.yaml: kubeVersion {range:?} admits nothing"
    );
    (from..to).map(|minor| format!("1.{minor}")).collect()
}

/// The venv holding helm-python-sdk and kubernetes-validate:
/// `JOBVISOR_DEPLOY_VENV`, else `$XDG_CACHE_HOME/jobvisor/deploy-venv`
/// (`~/.cache/…`), where `.ci/run` puts it.
fn venv() -> PathBuf {
    if let Some(venv) = std::env::var_os("JOBVISOR_DEPLOY_VENV") {
        return PathBuf::from(venv);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("JOBVISOR_DEPLOY_VENV, XDG_CACHE_HOME or HOME");
    cache.join("jobvisor/deploy-venv")
}

/// What render.py reported for every case, computed once per test run.
pub(super) fn report() -> &'static Value {
    static REPORT: OnceLock<Value> = OnceLock::new();
    REPORT.get_or_init(|| {
        let venv = venv();
        let how = format!(
            "create it with `python3 -m venv {v} && {v}/bin/pip install -r tests/deploy/requirements.txt` \
             (.ci/run does; JOBVISOR_DEPLOY_VENV names another venv)",
            v = venv.display()
        );
        let python = venv.join("bin/python");
        assert!(
            python.exists(),
            "the chart is rendered by Helm's library and checked with Kubernetes' schemas \
             (helm-python-sdk, kubernetes-validate) from the venv {}, which does not exist: {how}",
            venv.display()
        );
        let cases: Vec<Value> = cases()
            .into_iter()
            .map(|(name, values)| json!({"name": name, "values": values}))
            .collect();
        let request = json!({
            "chart": repo("helm/jobvisor"),
            "release": RELEASE,
            "namespace": NAMESPACE,
            "kube_versions": kube_versions(),
            "cases": cases,
        });
        let mut child = Command::new(&python)
            .arg(repo("tests/deploy/render.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {how}", python.display()));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "tests/deploy/render.py failed ({}); if a package is missing, {how}:\n{stderr}",
            output.status
        );
        serde_json::from_slice(&output.stdout).expect("render.py writes JSON")
    })
}

/// One case's report.
pub(super) fn case(name: &str) -> &'static Value {
    report()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name:?}"))
}

/// The cases that should render, with their values merged over the
/// defaults as Helm does.
pub(super) fn rendering() -> Vec<(String, Value, &'static Value)> {
    let refused: BTreeSet<&str> = refusals().iter().map(|r| r.0).collect();
    cases()
        .into_iter()
        .filter(|(name, _)| !refused.contains(name.as_str()))
        .map(|(name, over)| {
            let mut merged = values();
            merge(&mut merged, over);
            let report = case(&name);
            assert!(
                report["error"].is_null(),
                "{name}: rendering failed: {}",
                report["error"]
            );
            (name, merged, report)
        })
        .collect()
}

/// The manifests of a case, by kind.
pub(super) fn manifests(report: &'static Value, kind: &str) -> Vec<&'static Value> {
    report["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["document"])
        .filter(|d| d["kind"] == kind)
        .collect()
}

pub(super) fn one(report: &'static Value, kind: &str) -> &'static Value {
    let found = manifests(report, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

pub(super) fn container(report: &'static Value) -> &'static Value {
    let containers = &one(report, "Deployment")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1));
    &containers[0]
}

/// The container's environment, by name.
pub(super) fn env(report: &'static Value) -> BTreeMap<String, &'static Value> {
    let mut found = BTreeMap::new();
    for var in container(report)["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_string();
        assert!(
            found.insert(name.clone(), var).is_none(),
            "{name} is set twice"
        );
    }
    found
}

pub(super) fn str_at<'v>(values: &'v Value, path: &str) -> &'v str {
    super::at(values, path)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub(super) fn bool_at(values: &Value, path: &str) -> bool {
    super::at(values, path).and_then(Value::as_bool) == Some(true)
}

#[test]
fn helm_lints_every_case_strictly() {
    assert!(
        report()["helm"]
            .as_str()
            .unwrap_or_default()
            .starts_with('v'),
        "{}",
        report()["helm"]
    );
    for (name, _, report) in rendering() {
        for message in report["lint"].as_array().unwrap() {
            // Info only: `icon is recommended` (the chart has no icon).
            assert!(
                message["severity"].as_i64() <= Some(1),
                "{name}: helm lint --strict: {message}"
            );
        }
    }
}

#[test]
fn refused_values_stop_rendering_with_the_charts_message() {
    for (name, _, message) in refusals() {
        let error = case(name)["error"].as_str().unwrap_or_else(|| {
            panic!("{name}: rendered, but should have stopped with {message:?}")
        });
        assert!(
            error.contains(message),
            "{name}: stopped with {error:?}, not {message:?}"
        );
    }
}

/// Every manifest matches Kubernetes' strict schema (no unknown field) of
/// every version in `kubeVersion`; the one custom resource, the Prometheus
/// Operator's ServiceMonitor, has no schema there.
#[test]
fn every_manifest_matches_kubernetes_schemas_for_each_supported_version() {
    let versions = kube_versions();
    let known: BTreeSet<&str> = report()["schema_versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for version in &versions {
        assert!(
            known.contains(format!("{version}.0").as_str()),
            "Chart.yaml's kubeVersion admits {version}, which kubernetes-validate has no schemas for ({known:?})"
        );
    }
    for (name, _, report) in rendering() {
        let invalid: Vec<&str> = report["invalid"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if name == MISSPELT {
            assert_eq!(invalid.len(), versions.len(), "{invalid:#?}");
            assert!(
                invalid
                    .iter()
                    .all(|e| e.contains("'nodeAfinity' was unexpected"))
            );
            continue;
        }
        assert!(invalid.is_empty(), "{name}: {invalid:#?}");
        for unchecked in report["unchecked"].as_array().unwrap() {
            assert_eq!(
                unchecked, "monitoring.coreos.com/v1 ServiceMonitor",
                "{name}"
            );
        }
        assert!(!manifests(report, "Deployment").is_empty(), "{name}");
    }
}
