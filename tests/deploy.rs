//! The deployment artefacts — the Helm chart in `helm/jobvisor` and the
//! `Dockerfile`: the YAML parses, the values match their schema, templates
//! only use values that exist, guards sit where they must, and the image
//! runs the binary as the chart's non-root user. [`rendered`] renders the
//! chart with Helm's own library and checks the manifests against
//! Kubernetes' schemas, [`switches`] that each value switches its part, and
//! [`agreement`] that they agree with the server they deploy (the settings
//! it reads and accepts, health service names, ports, selectors).
//!
//! Not checked: that the image builds (no Docker daemon), and that the
//! chart installs and runs on a cluster.

#[path = "deploy/agreement.rs"]
mod agreement;
#[path = "deploy/rendered.rs"]
mod rendered;
#[path = "deploy/switches.rs"]
mod switches;

use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn parse_yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// Files under `dir` (recursively), sorted, that `keep` accepts.
fn files(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path, keep));
        } else if keep(&path) {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

fn in_templates(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "templates")
}

/// The default values.
fn values() -> Value {
    parse_yaml(&repo("helm/jobvisor/values.yaml"))
}

/// The values files under `ci/`, each merged over the defaults as helm does.
fn ci_values() -> Vec<(PathBuf, Value)> {
    files(&repo("helm/jobvisor/ci"), &is_yaml)
        .into_iter()
        .map(|path| {
            let mut merged = values();
            merge(&mut merged, parse_yaml(&path));
            (path, merged)
        })
        .collect()
}

/// Helm's merge of user values over defaults: maps merge key by key, a null
/// removes a default, anything else replaces it.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                if value.is_null() {
                    base.remove(&key);
                } else if let Some(existing) = base.get_mut(&key) {
                    merge(existing, value);
                } else {
                    base.insert(key, value);
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// The value at a dotted path such as `podDisruptionBudget.enabled`.
fn at<'v>(values: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(values, |v, key| v.get(key))
}

fn int(values: &Value, path: &str) -> i64 {
    at(values, path)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("values.yaml: {path} should be an integer"))
}

/// The chart's templates with their text.
fn templates() -> Vec<(PathBuf, String)> {
    files(&repo("helm/jobvisor/templates"), &|_| true)
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

fn template(name: &str) -> String {
    read(&repo("helm/jobvisor/templates").join(name))
}

/// One `{{ if COND }}` … `{{ else }}` … `{{ end }}` of a template: its
/// condition, the text of its two branches, and the actions (`if`, `with`,
/// `range`) it is nested in, outermost first.
#[derive(Debug)]
struct Branch {
    cond: String,
    then: String,
    otherwise: String,
    within: Vec<String>,
}

/// The `if` blocks of a Go template, found by pairing its actions. Enough
/// for the chart's templates (no `}}` inside strings); an unbalanced
/// template fails the test.
fn branches(text: &str) -> Vec<Branch> {
    struct Open {
        action: String,
        body: usize,
        otherwise: Option<(usize, usize)>,
    }
    let action = Regex::new(r"(?s)\{\{-?\s*(.*?)\s*-?\}\}").unwrap();
    let mut open: Vec<Open> = Vec::new();
    let mut found = Vec::new();
    for m in action.captures_iter(text) {
        let whole = m.get(0).unwrap();
        let inner = m[1].trim();
        let word = inner.split_whitespace().next().unwrap_or_default();
        match word {
            "if" | "with" | "range" | "define" | "block" => open.push(Open {
                action: inner.to_string(),
                body: whole.end(),
                otherwise: None,
            }),
            "else" => {
                let top = open.last_mut().expect("an {{ else }} outside any block");
                top.otherwise.get_or_insert((whole.start(), whole.end()));
            }
            "end" => {
                let block = open.pop().expect("an {{ end }} without a block");
                if let Some(cond) = block.action.strip_prefix("if ") {
                    let (then_end, otherwise) = match block.otherwise {
                        Some((start, end)) => (start, &text[end..whole.start()]),
                        None => (whole.start(), ""),
                    };
                    found.push(Branch {
                        cond: cond.trim().to_string(),
                        then: text[block.body..then_end].to_string(),
                        otherwise: otherwise.to_string(),
                        within: open.iter().map(|o| o.action.clone()).collect(),
                    });
                }
            }
            _ => {}
        }
    }
    assert!(
        open.is_empty(),
        "unclosed blocks: {:?}",
        open.iter().map(|o| &o.action).collect::<Vec<_>>()
    );
    found
}

/// The `if` blocks of a template whose condition is exactly `cond`.
fn branches_on<'b>(all: &'b [Branch], cond: &str) -> Vec<&'b Branch> {
    all.iter().filter(|b| b.cond == cond).collect()
}

/// values.schema.json, compiled.
fn schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&read(&repo("helm/jobvisor/values.schema.json")))
        .expect("values.schema.json is not valid JSON");
    jsonschema::draft7::new(&schema)
        .unwrap_or_else(|e| panic!("values.schema.json is not a valid draft-07 schema: {e}"))
}

/// The defaults with a database Secret, as every real install has, and
/// `over` merged on top.
fn values_with(over: Value) -> Value {
    let mut values = values();
    merge(
        &mut values,
        serde_json::json!({"database": {"existingSecret": "jobvisor-database"}}),
    );
    merge(&mut values, over);
    values
}

/// What the deployment template's guard lets through: without multi-replica
/// mode, one pod and no autoscaler.
fn passes_the_single_replica_guard(values: &Value) -> bool {
    let multi = at(values, "multiReplica.enabled").and_then(Value::as_bool) == Some(true);
    let replicas = at(values, "replicaCount")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let autoscaling = at(values, "autoscaling.enabled").and_then(Value::as_bool) == Some(true);
    multi || (replicas <= 1 && !autoscaling)
}

#[test]
fn every_yaml_file_outside_the_templates_parses() {
    let yaml = files(&repo("helm"), &|p| is_yaml(p) && !in_templates(p));
    let names: Vec<_> = yaml.iter().map(|p| p.file_name().unwrap()).collect();
    assert!(names.contains(&"Chart.yaml".as_ref()) && names.contains(&"values.yaml".as_ref()));
    for path in &yaml {
        parse_yaml(path);
    }
}

#[test]
fn chart_metadata_matches_the_crate() {
    let chart = parse_yaml(&repo("helm/jobvisor/Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2", "Chart.yaml: apiVersion");
    assert_eq!(
        chart["name"], "jobvisor",
        "Chart.yaml: name must be the directory's"
    );
    // The image tag defaults to appVersion: it names the release this tree builds.
    assert_eq!(
        chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml: appVersion should be Cargo.toml's version"
    );
    let version = chart["version"].as_str().unwrap_or_default();
    assert!(
        Regex::new(r"^\d+\.\d+\.\d+").unwrap().is_match(version),
        "Chart.yaml: version {version:?} is not SemVer"
    );
}

#[test]
fn values_match_the_schema() {
    let schema_text: Value =
        serde_json::from_str(&read(&repo("helm/jobvisor/values.schema.json"))).unwrap();
    assert_eq!(
        schema_text["$schema"],
        "http://json-schema.org/draft-07/schema#"
    );
    let validator = schema();
    let mut all = vec![(repo("helm/jobvisor/values.yaml"), values())];
    all.extend(ci_values());
    for (path, values) in all {
        let errors: Vec<String> = validator
            .iter_errors(&values)
            .map(|e| format!("  at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match values.schema.json:\n{}",
            path.display(),
            errors.join("\n")
        );
    }
}

/// Every leaf of values.yaml has a schema entry whose `default` is that
/// value and whose description states it, so the schema is the reference.
#[test]
fn the_schema_documents_every_default() {
    let schema: Value =
        serde_json::from_str(&read(&repo("helm/jobvisor/values.schema.json"))).unwrap();
    let mut problems = Vec::new();
    document(&schema, &values(), "", &mut problems);
    assert!(
        problems.is_empty(),
        "values.schema.json:\n{}",
        problems.join("\n")
    );
}

fn document(schema: &Value, values: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(values) = values.as_object() else {
        return;
    };
    for (key, value) in values {
        let path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(entry) = schema["properties"].get(key) else {
            problems.push(format!("  {path}: not described"));
            continue;
        };
        let description = entry["description"].as_str().unwrap_or_default();
        if description.is_empty() {
            problems.push(format!("  {path}: no description"));
        }
        match entry.get("default") {
            Some(default) if default != value => problems.push(format!(
                "  {path}: default should be {value} as in values.yaml"
            )),
            Some(_) if !description.contains("Default") => problems.push(format!(
                "  {path}: the description should state the default"
            )),
            Some(_) => {}
            None if entry.get("properties").is_some() => document(entry, value, &path, problems),
            None => problems.push(format!("  {path}: no default")),
        }
    }
}

/// `.Values.a.b` in a template that values.yaml lacks renders as nothing,
/// silently; and a value no template reads is a setting that does nothing.
#[test]
fn templates_and_values_refer_to_each_other() {
    let values = values();
    let reference = Regex::new(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)").unwrap();
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (path, text) in templates() {
        for found in reference.captures_iter(&text) {
            let name = found[1].trim_start_matches('.').to_string();
            if at(&values, &name).is_none() {
                missing.push(format!("  {}: .Values.{name}", path.display()));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "templates use values that values.yaml lacks:\n{}",
        missing.join("\n")
    );

    let mut unused = Vec::new();
    for leaf in leaves(&values, "") {
        let read = used
            .iter()
            .any(|u| leaf == *u || leaf.starts_with(&format!("{u}.")));
        if !read {
            unused.push(format!("  {leaf}"));
        }
    }
    assert!(
        unused.is_empty(),
        "values.yaml has values no template reads:\n{}",
        unused.join("\n")
    );
}

/// Dotted paths of the non-map values (and empty maps) under `values`.
fn leaves(values: &Value, prefix: &str) -> Vec<String> {
    match values.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .flat_map(|(key, value)| {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(value, &path)
            })
            .collect(),
        _ => vec![prefix.to_string()],
    }
}

/// Helm reads values as YAML 1.1, where a bare yes/no/on/off is a boolean;
/// the parser here reads YAML 1.2, where it is a string. Quote them.
#[test]
fn values_files_have_no_yaml_1_1_booleans() {
    let bare = Regex::new(r"(?i)^\s*(-\s+|[^#:]+:\s+)(y|n|yes|no|on|off)\s*(#.*)?$").unwrap();
    for path in files(&repo("helm"), &|p| is_yaml(p) && !in_templates(p)) {
        for (n, line) in read(&path).lines().enumerate() {
            assert!(
                !bare.is_match(line),
                "{}:{}: {line:?} means a boolean to helm and a string here: quote it or write true/false",
                path.display(),
                n + 1
            );
        }
    }
}

/// Kubernetes sends SIGKILL after terminationGracePeriodSeconds, counted
/// from the start of the preStop sleep; the drain must fit in before it.
#[test]
fn the_grace_period_outlasts_the_prestop_sleep_and_the_drain() {
    let mut all = vec![(repo("helm/jobvisor/values.yaml"), values())];
    all.extend(ci_values());
    for (path, values) in all {
        let grace = int(&values, "terminationGracePeriodSeconds");
        let drain = int(&values, "preStopSleepSeconds") + int(&values, "shutdownGraceSeconds");
        assert!(
            grace > drain,
            "{}: terminationGracePeriodSeconds ({grace}) must exceed preStopSleepSeconds + shutdownGraceSeconds ({drain})",
            path.display()
        );
    }
    // The same rule, enforced when helm renders the chart.
    let all = branches(&template("deployment.yaml"));
    let guard = all
        .iter()
        .find(|b| b.cond.contains(".Values.terminationGracePeriodSeconds"))
        .expect("deployment.yaml: an `if` on terminationGracePeriodSeconds");
    assert!(guard.cond.contains("$drain") && guard.then.contains("fail"));
    assert!(
        guard.within.is_empty(),
        "the guard should be at the top level"
    );
}

#[test]
fn pods_run_locked_down_by_default() {
    let values = values();
    let pod = &values["podSecurityContext"];
    let container = &values["securityContext"];
    let either = |key: &str| container.get(key).or_else(|| pod.get(key)).cloned();
    assert_eq!(either("runAsNonRoot"), Some(Value::Bool(true)));
    assert_eq!(either("runAsUser"), Some(Value::from(65532)));
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(
        container["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(
        either("seccompProfile"),
        Some(serde_json::json!({"type": "RuntimeDefault"}))
    );
}

/// The final stage of the Dockerfile runs only the binary, as the non-root
/// user the chart expects.
#[test]
fn the_image_runs_jobvisor_as_a_non_root_user() {
    let dockerfile = read(&repo("Dockerfile")).replace("\\\n", " ");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let build = &lines[..last_from];
    let last = &lines[last_from..];
    assert!(
        build.iter().any(|l| l.starts_with("FROM rust:")),
        "a Rust build stage"
    );
    assert!(
        build
            .iter()
            .any(|l| l.contains("cargo build --release --locked")),
        "the build stage builds with the lock file"
    );

    let users: Vec<&str> = last
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .collect();
    let user = *users.last().expect("the final stage should set USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!(
                "Dockerfile: USER {user:?} should be numeric, so Kubernetes can check runAsNonRoot"
            )
        });
    assert_ne!(uid, 0, "Dockerfile: the final stage runs as root");
    assert_eq!(
        i64::from(uid),
        int(&values(), "securityContext.runAsUser"),
        "Dockerfile: USER should be the chart's securityContext.runAsUser"
    );
    assert!(last.contains(&r#"ENTRYPOINT ["/jobvisor"]"#));
    assert!(last.contains(&r#"CMD ["serve"]"#));
    // `docker run` serves on every interface, as the chart does; plaintext
    // there stays an explicit choice (TLS files or JOBVISOR_INSECURE).
    let env: BTreeSet<&str> = last
        .iter()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .collect();
    for setting in [
        "JOBVISOR_LISTEN=0.0.0.0:50051",
        "JOBVISOR_METRICS_LISTEN=0.0.0.0:9464",
        "JOBVISOR_HTTP_LISTEN=0.0.0.0:8080",
    ] {
        assert!(env.contains(setting), "Dockerfile: ENV {setting} ({env:?})");
    }
    assert!(
        !env.iter().any(|e| e.starts_with("JOBVISOR_INSECURE")),
        "Dockerfile: the image should not turn plaintext on by itself"
    );
    let exposed: BTreeSet<&str> = last
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from(["50051", "9464", "8080"]),
        "Dockerfile: EXPOSE"
    );
    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        [&"COPY --from=build /jobvisor /jobvisor"],
        "the final stage holds only the binary"
    );

    let ignored: BTreeSet<String> = read(&repo(".dockerignore"))
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .collect();
    for needed in ["target", ".git", "jobvisor-data"] {
        assert!(
            ignored.contains(needed),
            ".dockerignore should leave out {needed}"
        );
    }
}

/// The chart directory holds a chart: a Dockerfile or other stray file in
/// templates/ would be rendered (or fail to) as a manifest.
#[test]
fn the_chart_holds_only_chart_files() {
    let chart = repo("helm/jobvisor");
    let allowed = [
        "Chart.yaml",
        "values.yaml",
        "values.schema.json",
        "README.md",
        ".helmignore",
    ];
    for path in files(&chart, &|_| true) {
        let relative = path.strip_prefix(&chart).unwrap();
        let name = relative.file_name().unwrap().to_string_lossy();
        let ok = match relative.components().next().unwrap().as_os_str().to_str() {
            Some("templates") => {
                name.ends_with(".yaml") || name.ends_with(".tpl") || name == "NOTES.txt"
            }
            Some("ci") => name.ends_with("-values.yaml"),
            _ => allowed.contains(&name.as_ref()),
        };
        assert!(ok, "helm/jobvisor/{}: not a chart file", relative.display());
    }
}

/// Without multi-replica mode one server runs a database's jobs alone (a
/// second refuses to start beside it), so several pods would crash-loop:
/// the template refuses to render several pods or an autoscaler.
#[test]
fn without_multi_replica_the_chart_refuses_several_pods() {
    let deployment = template("deployment.yaml");
    let all = branches(&deployment);
    let fail = Regex::new(r#"^\s*fail\b.*multiReplica\.enabled=true"#).unwrap();
    let action = Regex::new(r"(?s)\{\{-?\s*(.*?)\s*-?\}\}").unwrap();
    for cond in [
        "gt (int .Values.replicaCount) 1",
        ".Values.autoscaling.enabled",
    ] {
        let guards = branches_on(&all, cond);
        assert_eq!(
            guards.len(),
            1,
            "deployment.yaml: one `if {cond}` guard ({all:#?})"
        );
        let guard = guards[0];
        assert_eq!(
            guard.within,
            ["if not .Values.multiReplica.enabled"],
            "deployment.yaml: the `if {cond}` guard should sit, at the top level, in `if not .Values.multiReplica.enabled`"
        );
        assert!(
            action
                .captures_iter(&guard.then)
                .any(|a| fail.is_match(&a[1])),
            "deployment.yaml: `if {cond}` should `fail` with a message naming multiReplica.enabled=true, not {:?}",
            guard.then
        );
    }
    // The guards come before the manifest, so nothing renders past them.
    let manifest = deployment.find("apiVersion:").unwrap();
    let guard = deployment.find("gt (int .Values.replicaCount) 1").unwrap();
    assert!(guard < manifest);
}

/// With multi-replica mode each pod runs with the server's flags, its pod
/// name as replica id, and pods are replaced one at a time; without it the
/// old pod drains before the new one starts, and none of those variables is
/// set (the server refuses --replica-id without --multi-replica).
#[test]
fn multi_replica_mode_configures_the_server_and_the_rollout() {
    let deployment = template("deployment.yaml");
    let all = branches(&deployment);
    let multi = branches_on(&all, ".Values.multiReplica.enabled");

    let strategy = multi
        .iter()
        .find(|b| b.then.contains("type: RollingUpdate"))
        .expect("deployment.yaml: RollingUpdate under `if .Values.multiReplica.enabled`");
    let rolling = Regex::new(
        r"type: RollingUpdate\n\s+rollingUpdate:\n\s+maxSurge: 1\n\s+maxUnavailable: 0\n",
    )
    .unwrap();
    assert!(rolling.is_match(&strategy.then), "{:?}", strategy.then);
    assert!(
        strategy.otherwise.contains("type: Recreate")
            && !strategy.otherwise.contains("RollingUpdate"),
        "deployment.yaml: Recreate without multi-replica mode, not {:?}",
        strategy.otherwise
    );
    assert!(
        deployment.contains("\n  strategy:\n    {{- if .Values.multiReplica.enabled }}"),
        "deployment.yaml: the strategy of the Deployment's spec"
    );
    assert_eq!(deployment.matches("RollingUpdate").count(), 1);

    let env = multi
        .iter()
        .find(|b| b.then.contains("JOBVISOR_MULTI_REPLICA"))
        .expect(
            "deployment.yaml: the multi-replica variables under `if .Values.multiReplica.enabled`",
        );
    assert!(env.otherwise.is_empty());
    for expected in [
        r#"- name: JOBVISOR_MULTI_REPLICA\n\s+value: "true"\n"#,
        r"- name: JOBVISOR_LEASE_TIMEOUT\n\s+value: \{\{ \.Values\.multiReplica\.leaseTimeout \| quote \}\}\n",
        r"- name: JOBVISOR_REPLICA_ID\n\s+valueFrom:\n\s+fieldRef:\n\s+fieldPath: metadata\.name\n",
        r"- name: POD_IP\n\s+valueFrom:\n\s+fieldRef:\n\s+fieldPath: status\.podIP\n",
        r#"- name: JOBVISOR_ADVERTISE_ADDRESS\n\s+value: "\$\(POD_IP\):50051"\n"#,
    ] {
        assert!(
            Regex::new(expected).unwrap().is_match(&env.then),
            "deployment.yaml: {expected} under `if .Values.multiReplica.enabled`, in {:?}",
            env.then
        );
    }
    for name in [
        "JOBVISOR_MULTI_REPLICA",
        "JOBVISOR_LEASE_TIMEOUT",
        "JOBVISOR_REPLICA_ID",
        "POD_IP",
        "JOBVISOR_ADVERTISE_ADDRESS",
    ] {
        assert_eq!(
            deployment.matches(name).count(),
            env.then.matches(name).count(),
            "deployment.yaml: {name} is set outside multi-replica mode"
        );
    }
    // Those variables sit in the container's env list, at its indentation.
    let listed = Regex::new(r"(?m)^            - name: JOBVISOR_MULTI_REPLICA$").unwrap();
    assert!(listed.is_match(&env.then));
}

/// values.yaml and every ci/ file pass the guard, and ci/ renders both
/// modes: several fixed replicas, and an autoscaler.
#[test]
fn the_values_files_pass_the_guard_and_cover_both_modes() {
    let defaults = values();
    assert_eq!(
        at(&defaults, "multiReplica.enabled"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        at(&defaults, "multiReplica.leaseTimeout"),
        Some(&Value::from("10s"))
    );
    assert_eq!(int(&defaults, "replicaCount"), 1);
    assert!(passes_the_single_replica_guard(&defaults));
    let ci = ci_values();
    for (path, values) in &ci {
        assert!(
            passes_the_single_replica_guard(values),
            "{}: several pods without multiReplica.enabled would fail to render",
            path.display()
        );
    }
    let multi = |v: &Value| at(v, "multiReplica.enabled") == Some(&Value::Bool(true));
    assert!(
        ci.iter()
            .any(|(p, v)| p.ends_with("multi-replica-values.yaml")
                && multi(v)
                && int(v, "replicaCount") > 1),
        "ci/multi-replica-values.yaml: several replicas in multi-replica mode"
    );
    assert!(
        ci.iter()
            .any(|(_, v)| multi(v) && at(v, "autoscaling.enabled") == Some(&Value::Bool(true))),
        "a ci/ file with the autoscaler"
    );
}

/// The schema refuses what the chart or the server would: checked by
/// `helm install` before anything is rendered.
#[test]
fn the_schema_refuses_bad_values() {
    use serde_json::json;
    let validator = schema();
    let refused = [
        ("no pods", json!({"replicaCount": 0})),
        ("a replica count as a string", json!({"replicaCount": "3"})),
        (
            "several pods without multi-replica",
            json!({"replicaCount": 3}),
        ),
        (
            "an autoscaler without multi-replica",
            json!({"autoscaling": {"enabled": true}}),
        ),
        (
            "multiReplica.enabled as a string",
            json!({"multiReplica": {"enabled": "true"}}),
        ),
        (
            "an unknown multiReplica key",
            json!({"multiReplica": {"enabled": true, "replicas": 3}}),
        ),
        (
            "a lease timeout without a unit",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "10"}}),
        ),
        (
            "a lease timeout as a number",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": 10}}),
        ),
        (
            "a lease timeout in words",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "ten seconds"}}),
        ),
        (
            "a lease timeout under 500ms",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "499ms"}}),
        ),
        (
            "a zero lease timeout",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "0s"}}),
        ),
        (
            "a fractional lease timeout",
            json!({"multiReplica": {"enabled": true, "leaseTimeout": "1.5s"}}),
        ),
        (
            "the strategy, which multiReplica.enabled decides",
            json!({"strategy": {"type": "RollingUpdate"}}),
        ),
        ("negative engine threads", json!({"engineThreads": -1})),
        (
            "more engine threads than jobvisor serve takes",
            json!({"engineThreads": 1025}),
        ),
        ("engine threads as a string", json!({"engineThreads": "2"})),
        (
            "a retention that is not a duration",
            json!({"retention": "a month"}),
        ),
        ("a retention of no time", json!({"retention": "0d"})),
        ("a retention under a second", json!({"retention": "500ms"})),
        ("a negative vacuum threshold", json!({"vacuumAfter": -1})),
        (
            "a vacuum threshold as a string",
            json!({"vacuumAfter": "1000"}),
        ),
        (
            "an exec command with a comma (the server splits on them)",
            json!({"exec": {"enabled": true, "commands": ["python3,perl"]}}),
        ),
        (
            "exec commands as a string",
            json!({"exec": {"commands": "python3"}}),
        ),
        (
            "an unknown propagator",
            json!({"otel": {"propagators": "tracecontext,zipkin"}}),
        ),
    ];
    for (what, over) in refused {
        let values = values_with(over.clone());
        assert!(
            !validator.is_valid(&values),
            "values.schema.json accepts {what}: {over}"
        );
    }
    let accepted = [
        json!({}),
        json!({"replicaCount": 1}),
        json!({"multiReplica": {"enabled": true}, "replicaCount": 3}),
        json!({"multiReplica": {"enabled": true}, "autoscaling": {"enabled": true, "minReplicas": 2}}),
        json!({"multiReplica": {"enabled": true, "leaseTimeout": "500ms"}}),
        json!({"multiReplica": {"enabled": true, "leaseTimeout": "1m"}}),
        json!({"multiReplica": {"enabled": false, "leaseTimeout": "30s"}}),
        json!({"engineThreads": 1}),
        json!({"engineThreads": 1024}),
        json!({"retention": ""}),
        json!({"retention": "30d"}),
        json!({"retention": "12h"}),
        json!({"retention": "30d", "vacuumAfter": 0}),
        json!({"retention": "30d", "vacuumAfter": 250000}),
        json!({"exec": {"enabled": true, "commands": ["python3", "/opt/bin/encode"]}}),
        json!({"otel": {"propagators": "b3multi"}}),
        json!({"otel": {"propagators": "tracecontext,baggage,b3"}}),
    ];
    for over in accepted {
        let values = values_with(over.clone());
        let errors: Vec<String> = validator
            .iter_errors(&values)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "values.schema.json refuses {over}: {errors:?}"
        );
        assert!(passes_the_single_replica_guard(&values), "{over}");
    }
}

/// Every lease timeout the schema accepts is one `jobvisor serve` accepts:
/// a humantime duration of at least 500ms.
#[test]
fn the_lease_timeout_pattern_agrees_with_the_server() {
    let schema: Value =
        serde_json::from_str(&read(&repo("helm/jobvisor/values.schema.json"))).unwrap();
    let pattern = schema["properties"]["multiReplica"]["properties"]["leaseTimeout"]["pattern"]
        .as_str()
        .expect("multiReplica.leaseTimeout has a pattern");
    let pattern = Regex::new(pattern).unwrap();
    let server_accepts = |v: &str| {
        humantime::parse_duration(v).is_ok_and(|d| d >= std::time::Duration::from_millis(500))
    };
    let candidates = [
        "10s", "500ms", "499ms", "1000ms", "0s", "0ms", "1s", "1m", "15m", "10", "", "ten", "1.5s",
        "-1s", "10sec", "5 s", "90s", "050ms", "007s", "10s ",
    ];
    for v in candidates {
        if pattern.is_match(v) {
            assert!(
                server_accepts(v),
                "the schema accepts lease timeout {v:?}, the server does not"
            );
        }
    }
    for v in ["10s", "500ms", "1000ms", "1s", "1m", "15m", "90s"] {
        assert!(
            pattern.is_match(v) && server_accepts(v),
            "{v:?} should be accepted"
        );
    }
}

/// Every OTEL_PROPAGATORS the schema accepts is one the server accepts.
#[test]
fn the_propagators_pattern_agrees_with_the_server() {
    let schema: Value =
        serde_json::from_str(&read(&repo("helm/jobvisor/values.schema.json"))).unwrap();
    let pattern = schema["properties"]["otel"]["properties"]["propagators"]["pattern"]
        .as_str()
        .expect("otel.propagators has a pattern");
    let pattern = Regex::new(pattern).unwrap();
    let server_accepts = |v: &str| jobvisor::telemetry::propagation::from_setting(Some(v)).is_ok();
    let candidates = [
        "",
        "tracecontext",
        "baggage",
        "b3",
        "b3multi",
        "none",
        "tracecontext,baggage",
        "tracecontext,baggage,b3multi",
        "b3,b3multi",
        "zipkin",
        "jaeger",
        "b3,",
        ",b3",
        "b3 ,b3multi",
        "none,b3",
        "B3",
        "xray",
    ];
    for v in candidates {
        if pattern.is_match(v) {
            assert!(
                server_accepts(v),
                "the schema accepts propagators {v:?}, the server does not"
            );
        }
    }
    for v in ["", "b3", "b3multi", "tracecontext,baggage", "none"] {
        assert!(pattern.is_match(v) && server_accepts(v), "{v:?}");
    }
}
