//! What the rendered manifests tell the server and each other: every
//! variable is a setting `jobvisor serve` reads and accepts, the probes and
//! ports are the server's, the selectors find the pods, and the install
//! notes render.

use super::rendered::{
    FULLNAME, NAMESPACE, bool_at, container, env, manifests, one, rendering, str_at,
};
use clap::{CommandFactory as _, Parser as _};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
};

/// The pod IP a cluster would give the pod.
const POD_IP: &str = "10.42.0.17";

/// A rendered variable's value, with what a cluster would put there for
/// a `valueFrom` (the checks below need a value to parse).
fn value_of(name: &str, var: &Value, values: &Value) -> String {
    if let Some(value) = var["value"].as_str() {
        // Kubernetes expands $(POD_IP) from the variable before it.
        return value.replace("$(POD_IP)", POD_IP);
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
    if name == "POD_IP" {
        assert_eq!(from["fieldRef"]["fieldPath"], "status.podIP");
        return POD_IP.into();
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
    for (name, values, report) in rendering() {
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
        // The HTTP API's port unless a case turns it off.
        let http = values["httpApi"].as_bool() != Some(false);
        let mut expected = BTreeMap::from([("grpc", 50051), ("metrics", 9464)]);
        if http {
            expected.insert("http", 8080);
        }
        assert_eq!(ports, expected, "{name}");
        assert_eq!(env["JOBVISOR_LISTEN"]["value"], "0.0.0.0:50051");
        assert_eq!(env["JOBVISOR_METRICS_LISTEN"]["value"], "0.0.0.0:9464");
        assert_eq!(
            env["JOBVISOR_HTTP_LISTEN"]["value"],
            if http { "0.0.0.0:8080" } else { "off" },
            "{name}"
        );
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
        assert_eq!(
            service_ports.len(),
            expected.len(),
            "{name}: the Service has the pods' ports"
        );
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
