//! The values that switch parts of the chart on and off, each rendered on
//! both sides, and what each switch must change in the manifests.

use super::rendered::{FULLNAME, bool_at, container, env, manifests, one, rendering, str_at};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The values that switch parts of the chart on and off, one at a time
/// (the `ci/` files turn many on at once). Each goes over
/// [`super::rendered::database`].
pub(super) fn matrix() -> Vec<(&'static str, Value)> {
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
        (
            "retention, the server's vacuum off",
            json!({"retention": "7d", "vacuumAfter": 0}),
        ),
        ("no HTTP API", json!({"httpApi": false})),
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
            "advertise address",
            multi,
            has("JOBVISOR_ADVERTISE_ADDRESS"),
        );
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
            // The other pods borrow its workers at its pod IP.
            assert_eq!(
                env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
                "status.podIP"
            );
            assert_eq!(value("JOBVISOR_ADVERTISE_ADDRESS"), Some("$(POD_IP):50051"));
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
        // The vacuum after so many deleted items matters only with a
        // retention.
        switch(
            "vacuum after",
            !retention.is_empty(),
            has("JOBVISOR_VACUUM_AFTER"),
        );
        if !retention.is_empty() {
            assert_eq!(value("JOBVISOR_RETENTION"), Some(retention));
            let vacuum = values["vacuumAfter"].as_i64().unwrap().to_string();
            assert_eq!(value("JOBVISOR_VACUUM_AFTER"), Some(vacuum.as_str()));
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
