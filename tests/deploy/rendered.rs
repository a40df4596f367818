//! The chart as Helm itself renders it, checked against Kubernetes' own
//! schemas and against the server it deploys.
//!
//! `tests/deploy/render.py` lints (strictly) and renders with Helm's
//! library (the PyPI package helm-python-sdk, no helm binary, no cluster)
//! and checks each manifest with kubernetes-validate's strict schemas for
//! every Kubernetes minor version `Chart.yaml`'s `kubeVersion` admits. It
//! runs in the venv at `JOBVISOR_DEPLOY_VENV` (default
//! `~/.cache/jobvisor/deploy-venv`), which `.ci/run` creates from
//! `tests/deploy/requirements.txt`; without it these tests fail, saying
//! how to create it. The cases: the defaults, each `ci/*-values.yaml`, and
//! a matrix of the values that switch parts of the chart on and off.

use super::{files, is_yaml, merge, parse_yaml, repo, values};
use clap::{CommandFactory as _, Parser as _};
use regex::Regex;
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

const RELEASE: &str = "jv";
const NAMESPACE: &str = "jobs";
/// The resources' name for release `jv` (release name, then chart name).
const FULLNAME: &str = "jv-jobvisor";

/// What the required database Secret is called in every case that renders.
fn database() -> Value {
    json!({"database": {"existingSecret": "jobvisor-database"}})
}

/// The values that switch parts of the chart on and off, one at a time
/// (the `ci/` files turn many on at once). Each goes over [`database`].
fn matrix() -> Vec<(&'static str, Value)> {
    vec![
        ("the database only", json!({})),
        (
            "tokens",
            json!({"auth": {"existingSecret": "jobvisor-tokens"}}),
        ),
        (
            "multi-replica",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "5s"}, "replicaCount": 3}),
        ),
        (
            "multi-replica, one pod",
            json!({"multiReplica": {"enabled": true}}),
        ),
        (
            "autoscaling",
            json!({"multiReplica": {"enabled": true}, "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 5}}),
        ),
        (
            "disruption budget by minAvailable",
            json!({"podDisruptionBudget": {"enabled": true, "minAvailable": "50%"}}),
        ),
        (
            "disruption budget by maxUnavailable",
            json!({"podDisruptionBudget": {"enabled": true, "maxUnavailable": 1}}),
        ),
        (
            "service monitor",
            json!({"serviceMonitor": {"enabled": true, "interval": "15s", "labels": {"release": "prometheus"}}}),
        ),
        ("retention", json!({"retention": "30d"})),
        ("exec", json!({"exec": {"enabled": true}})),
        (
            "exec, some commands",
            json!({"exec": {"enabled": true, "commands": ["python3", "/opt/bin/encode"]}}),
        ),
        ("engine threads", json!({"engineThreads": 4})),
        (
            "traces over B3",
            json!({"otel": {
                "endpoint": "http://otel-collector.observability:4317",
                "serviceName": "jobvisor-eu",
                "resourceAttributes": "deployment.environment=prod",
                "tracesSampler": "parentbased_traceidratio",
                "tracesSamplerArg": "0.1",
                "propagators": "b3multi",
            }}),
        ),
        ("no preStop sleep", json!({"preStopSleepSeconds": 0})),
        (
            "an existing service account",
            json!({"serviceAccount": {"create": false, "name": "jobs"}}),
        ),
        (
            "more variables",
            json!({"extraEnv": [
                {"name": "JOBVISOR_DB_MAX_CONNECTIONS", "value": "32"},
                {"name": "JOBVISOR_RATE_LIMIT", "value": "50"},
                {"name": "LANG", "value": "C.UTF-8"},
            ]}),
        ),
        (
            "scheduling and annotations",
            json!({
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "jobvisor"}}}}
                ]}},
                "podAnnotations": {"example.com/team": "batch"},
                "podLabels": {"team": "batch"},
                "imagePullSecrets": [{"name": "registry"}],
                "service": {"annotations": {"example.com/scrape": "true"}},
                "serviceAccount": {"annotations": {"example.com/role": "jobvisor"}},
            }),
        ),
    ]
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
fn report() -> &'static Value {
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
fn case(name: &str) -> &'static Value {
    report()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name:?}"))
}

/// The cases that should render, with their values merged over the
/// defaults as Helm does.
fn rendering() -> Vec<(String, Value, &'static Value)> {
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
fn manifests(report: &'static Value, kind: &str) -> Vec<&'static Value> {
    report["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["document"])
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn one(report: &'static Value, kind: &str) -> &'static Value {
    let found = manifests(report, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn container(report: &'static Value) -> &'static Value {
    let containers = &one(report, "Deployment")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1));
    &containers[0]
}

/// The container's environment, by name.
fn env(report: &'static Value) -> BTreeMap<String, &'static Value> {
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

fn str_at<'v>(values: &'v Value, path: &str) -> &'v str {
    super::at(values, path)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn bool_at(values: &Value, path: &str) -> bool {
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

/// Each switch in the values turns its part of the manifests on or off,
/// and the cases render both sides of every switch.
#[test]
fn each_value_switches_its_part_of_the_manifests() {
    let mut seen: BTreeMap<&str, BTreeSet<bool>> = BTreeMap::new();
    for (name, values, report) in rendering() {
        let mut switch = |what: &'static str, on: bool, present: bool| {
            seen.entry(what).or_default().insert(on);
            assert_eq!(present, on, "{name}: {what} should be {on}");
        };
        let env = env(report);
        let has = |var: &str| env.contains_key(var);
        let value = |var: &str| env.get(var).and_then(|v| v["value"].as_str());
        let deployment = one(report, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = container(report);

        let tokens = str_at(&values, "auth.existingSecret");
        switch("tokens", !tokens.is_empty(), has("JOBVISOR_AUTH_TOKENS"));
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/etc/jobvisor/auth");
        switch("tokens mounted", !tokens.is_empty(), mounted);
        if !tokens.is_empty() {
            assert_eq!(
                value("JOBVISOR_AUTH_TOKENS"),
                Some("/etc/jobvisor/auth/tokens.json")
            );
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "auth")
                .expect("the tokens volume");
            assert_eq!(volume["secret"]["secretName"], tokens, "{name}");
        }

        let multi = bool_at(&values, "multiReplica.enabled");
        let autoscaling = bool_at(&values, "autoscaling.enabled");
        switch("multi-replica", multi, has("JOBVISOR_MULTI_REPLICA"));
        switch("replica id", multi, has("JOBVISOR_REPLICA_ID"));
        switch("lease timeout", multi, has("JOBVISOR_LEASE_TIMEOUT"));
        switch(
            "rolling update",
            multi,
            deployment["spec"]["strategy"]["type"] == "RollingUpdate",
        );
        if multi {
            assert_eq!(
                value("JOBVISOR_LEASE_TIMEOUT"),
                Some(str_at(&values, "multiReplica.leaseTimeout"))
            );
            assert_eq!(
                env["JOBVISOR_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.name"
            );
            assert_eq!(
                deployment["spec"]["strategy"]["rollingUpdate"],
                json!({"maxSurge": 1, "maxUnavailable": 0})
            );
        } else {
            assert_eq!(deployment["spec"]["strategy"], json!({"type": "Recreate"}));
        }
        switch(
            "autoscaler",
            autoscaling,
            !manifests(report, "HorizontalPodAutoscaler").is_empty(),
        );
        switch(
            "fixed replicas",
            !autoscaling,
            deployment["spec"].get("replicas").is_some(),
        );
        if autoscaling {
            let hpa = &one(report, "HorizontalPodAutoscaler")["spec"];
            assert_eq!(hpa["scaleTargetRef"]["name"], FULLNAME);
            assert_eq!(hpa["minReplicas"], values["autoscaling"]["minReplicas"]);
            assert_eq!(hpa["maxReplicas"], values["autoscaling"]["maxReplicas"]);
        } else {
            assert_eq!(deployment["spec"]["replicas"], values["replicaCount"]);
        }

        let budget = bool_at(&values, "podDisruptionBudget.enabled");
        let budgets = manifests(report, "PodDisruptionBudget");
        switch("disruption budget", budget, !budgets.is_empty());
        if budget {
            let min = str_at(&values, "podDisruptionBudget.minAvailable");
            let spec = &budgets[0]["spec"];
            if min.is_empty() {
                assert_eq!(
                    spec["maxUnavailable"],
                    values["podDisruptionBudget"]["maxUnavailable"]
                );
                assert!(spec.get("minAvailable").is_none());
            } else {
                assert_eq!(spec["minAvailable"], min);
                assert!(spec.get("maxUnavailable").is_none());
            }
        }

        let monitor = bool_at(&values, "serviceMonitor.enabled");
        let monitors = manifests(report, "ServiceMonitor");
        switch("service monitor", monitor, !monitors.is_empty());
        if monitor {
            let labels = &monitors[0]["metadata"]["labels"];
            for (key, label) in values["serviceMonitor"]["labels"].as_object().unwrap() {
                assert_eq!(&labels[key], label, "{name}: ServiceMonitor label {key}");
            }
            assert_eq!(
                monitors[0]["spec"]["endpoints"][0]["interval"],
                values["serviceMonitor"]["interval"]
            );
        }

        let retention = str_at(&values, "retention");
        switch(
            "retention",
            !retention.is_empty(),
            has("JOBVISOR_RETENTION"),
        );
        if !retention.is_empty() {
            assert_eq!(value("JOBVISOR_RETENTION"), Some(retention));
        }

        let exec = bool_at(&values, "exec.enabled");
        let commands: Vec<&str> = values["exec"]["commands"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        switch("exec", exec, value("JOBVISOR_ALLOW_EXEC") == Some("true"));
        switch(
            "exec commands",
            exec && !commands.is_empty(),
            has("JOBVISOR_EXEC_COMMANDS"),
        );
        if has("JOBVISOR_EXEC_COMMANDS") {
            assert_eq!(
                value("JOBVISOR_EXEC_COMMANDS"),
                Some(commands.join(",").as_str())
            );
        }

        let threads = values["engineThreads"].as_i64().unwrap();
        switch(
            "engine threads",
            threads != 0,
            has("JOBVISOR_ENGINE_THREADS"),
        );
        if threads != 0 {
            assert_eq!(
                value("JOBVISOR_ENGINE_THREADS"),
                Some(threads.to_string().as_str())
            );
        }

        for (key, var) in [
            ("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            ("serviceName", "OTEL_SERVICE_NAME"),
            ("resourceAttributes", "OTEL_RESOURCE_ATTRIBUTES"),
            ("tracesSampler", "OTEL_TRACES_SAMPLER"),
            ("tracesSamplerArg", "OTEL_TRACES_SAMPLER_ARG"),
            ("propagators", "OTEL_PROPAGATORS"),
        ] {
            let set = str_at(&values, &format!("otel.{key}"));
            switch(var, !set.is_empty(), has(var));
            if !set.is_empty() {
                assert_eq!(value(var), Some(set), "{name}");
            }
        }

        let sleep = values["preStopSleepSeconds"].as_i64().unwrap();
        switch(
            "preStop sleep",
            sleep > 0,
            container.get("lifecycle").is_some(),
        );
        if sleep > 0 {
            assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], sleep);
        }

        let create = bool_at(&values, "serviceAccount.create");
        let accounts = manifests(report, "ServiceAccount");
        switch("service account", create, !accounts.is_empty());
        let account = str_at(&values, "serviceAccount.name");
        let expected = match (create, account) {
            (_, name) if !name.is_empty() => name,
            (true, _) => FULLNAME,
            (false, _) => "default",
        };
        assert_eq!(pod["serviceAccountName"], expected, "{name}");
        if create {
            assert_eq!(accounts[0]["metadata"]["name"], expected);
            assert_eq!(accounts[0]["automountServiceAccountToken"], false);
        }
        assert_eq!(pod["automountServiceAccountToken"], false);

        for extra in values["extraEnv"].as_array().unwrap() {
            let var = extra["name"].as_str().unwrap();
            assert_eq!(env.get(var).copied(), Some(extra), "{name}: extraEnv {var}");
        }
        for (key, field) in [
            ("nodeSelector", "nodeSelector"),
            ("tolerations", "tolerations"),
            ("affinity", "affinity"),
            ("imagePullSecrets", "imagePullSecrets"),
        ] {
            let set = !values[key].as_object().is_some_and(|m| m.is_empty())
                && !values[key].as_array().is_some_and(|a| a.is_empty());
            switch(key, set, pod.get(field).is_some());
            if set {
                assert_eq!(pod[field], values[key], "{name}: {field}");
            }
        }
    }
    let one_sided: Vec<String> = seen
        .iter()
        .filter(|(_, sides)| sides.len() < 2)
        .map(|(what, sides)| format!("{what} only {sides:?}"))
        .collect();
    assert!(
        one_sided.is_empty(),
        "the cases never render the other side of: {one_sided:?}"
    );
}

/// A rendered variable's value, with what a cluster would put there for
/// a `valueFrom` (the checks below need a value to parse).
fn value_of(name: &str, var: &Value, values: &Value) -> String {
    if let Some(value) = var["value"].as_str() {
        return value.to_string();
    }
    let from = &var["valueFrom"];
    if let Some(secret) = from.get("secretKeyRef") {
        assert_eq!(
            name, "DATABASE_URL",
            "only the database URL comes from a Secret"
        );
        assert_eq!(secret["name"], values["database"]["existingSecret"]);
        assert_eq!(secret["key"], values["database"]["secretKey"]);
        return "postgres://jobvisor@postgres:5432/jobvisor".into();
    }
    assert_eq!(
        from["fieldRef"]["fieldPath"], "metadata.name",
        "{name}: a value or a valueFrom, not {var}"
    );
    format!("{FULLNAME}-7d9c8f6b5-x2x4z")
}

/// Every variable the chart sets for jobvisor is one `jobvisor serve`
/// reads, with a value it accepts (parsed by its own command line), and
/// every OpenTelemetry variable is one the server knows what to do with.
#[test]
fn the_rendered_container_sets_only_settings_jobvisor_serve_reads_and_accepts() {
    let cli = jobvisor::cli::Cli::command();
    let serve = cli.find_subcommand("serve").expect("a serve subcommand");
    let otel = BTreeSet::from([
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_PROPAGATORS",
    ]);
    for (name, values, report) in rendering() {
        let env = env(report);
        for expected in [
            "JOBVISOR_LISTEN",
            "JOBVISOR_METRICS_LISTEN",
            "JOBVISOR_LOG_FORMAT",
            "JOBVISOR_SHUTDOWN_GRACE",
            "JOBVISOR_INSECURE",
            "DATABASE_URL",
        ] {
            assert!(
                env.contains_key(expected),
                "{name}: the chart should set {expected}"
            );
        }
        let mut argv = vec!["jobvisor".to_string(), "serve".to_string()];
        for (var, entry) in &env {
            let value = value_of(var, entry, &values);
            if var.starts_with("OTEL_") {
                assert!(
                    otel.contains(var.as_str()),
                    "{name}: {var} is no setting jobvisor reads"
                );
                if var == "OTEL_PROPAGATORS" {
                    jobvisor::telemetry::propagation::from_setting(Some(&value))
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                continue;
            }
            if !(var.starts_with("JOBVISOR_") || var == "DATABASE_URL") {
                continue;
            }
            let arg = serve
                .get_arguments()
                .find(|a| a.get_env() == Some(OsStr::new(var)))
                .unwrap_or_else(|| {
                    panic!("{name}: the chart sets {var}, which `jobvisor serve` does not read")
                });
            let flag = format!("--{}", arg.get_long().unwrap());
            if arg.get_action().takes_values() {
                argv.extend([flag, value]);
            } else {
                assert_eq!(value, "true", "{name}: {var} is a switch");
                argv.push(flag);
            }
        }
        if let Err(e) = jobvisor::cli::Cli::try_parse_from(&argv) {
            panic!("{name}: `jobvisor serve` refuses the chart's settings {argv:?}:\n{e}");
        }
    }
}

/// The probes ask the server's health services on the gRPC port, the
/// ports are the ones the server listens on, and the Service, the
/// ServiceMonitor, the budget and the autoscaler find the pods.
#[test]
fn rendered_probes_ports_and_selectors_agree() {
    let liveness = jobvisor::server::LIVENESS;
    for (name, _, report) in rendering() {
        let env = env(report);
        let container = container(report);
        let ports: BTreeMap<&str, i64> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["containerPort"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([("grpc", 50051), ("metrics", 9464)]),
            "{name}"
        );
        assert_eq!(env["JOBVISOR_LISTEN"]["value"], "0.0.0.0:50051");
        assert_eq!(env["JOBVISOR_METRICS_LISTEN"]["value"], "0.0.0.0:9464");
        for (probe, service) in [
            ("startupProbe", liveness),
            ("livenessProbe", liveness),
            ("readinessProbe", ""),
        ] {
            assert_eq!(
                container[probe]["grpc"],
                json!({"port": 50051, "service": service}),
                "{name}: {probe}"
            );
        }

        let deployment = one(report, "Deployment");
        let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        let selects_the_pods = |selector: &Value, what: &str| {
            let selector = selector.as_object().unwrap();
            assert!(!selector.is_empty(), "{name}: {what} selects everything");
            for (key, label) in selector {
                assert_eq!(
                    pod_labels.get(key),
                    Some(label),
                    "{name}: {what} selector {key}"
                );
            }
        };
        selects_the_pods(&deployment["spec"]["selector"]["matchLabels"], "Deployment");
        let service = one(report, "Service");
        assert_eq!(service["spec"]["type"], "ClusterIP");
        selects_the_pods(&service["spec"]["selector"], "Service");
        let service_ports = service["spec"]["ports"].as_array().unwrap();
        assert_eq!(service_ports.len(), 2, "{name}: the grpc and metrics ports");
        for port in service_ports {
            let port_name = port["name"].as_str().unwrap();
            assert_eq!(
                port["targetPort"], port_name,
                "{name}: Service port {port_name}"
            );
            assert_eq!(port["port"].as_i64(), ports.get(port_name).copied());
            let protocol = if port_name == "grpc" { "grpc" } else { "http" };
            assert_eq!(port["appProtocol"], protocol, "{name}: {port_name}");
        }
        for budget in manifests(report, "PodDisruptionBudget") {
            selects_the_pods(
                &budget["spec"]["selector"]["matchLabels"],
                "PodDisruptionBudget",
            );
        }
        for monitor in manifests(report, "ServiceMonitor") {
            let service_labels = &service["metadata"]["labels"];
            for (key, label) in monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
            {
                assert_eq!(
                    &service_labels[key], label,
                    "{name}: ServiceMonitor selector {key}"
                );
            }
            let endpoint = &monitor["spec"]["endpoints"][0];
            assert_eq!(endpoint["port"], "metrics");
            assert_eq!(endpoint["path"], "/metrics");
        }
        for manifest in report["manifests"].as_array().unwrap() {
            assert_eq!(
                manifest["document"]["metadata"]["name"], FULLNAME,
                "{name}: {}",
                manifest["template"]
            );
        }
    }
}

/// The install notes render for every case and name the release.
#[test]
fn the_install_notes_render() {
    for (name, values, report) in rendering() {
        let notes = report["notes"].as_str().unwrap();
        assert!(
            notes.contains(&format!("installed as {FULLNAME} in namespace {NAMESPACE}")),
            "{name}: {notes}"
        );
        let multi = bool_at(&values, "multiReplica.enabled");
        assert_eq!(notes.contains("Multi-replica mode"), multi, "{name}");
        let tokens = !str_at(&values, "auth.existingSecret").is_empty();
        assert_eq!(
            notes.contains("Bearer tokens are required"),
            tokens,
            "{name}"
        );
    }
}
