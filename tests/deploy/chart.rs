//! `charts/cartwright`: lint, render, schema-validate, and the invariants a user relies on.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde_json::Value;

use super::{chart_dir, documents, helm, helms, python, render, render_with, run, values_files};

/// One rendering of the chart, parsed into the k8s-openapi types.
#[derive(Default)]
struct Rendered {
    deployments: Vec<Deployment>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    pdbs: Vec<PodDisruptionBudget>,
    services: Vec<Service>,
    others: Vec<Value>,
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_path_to_error::deserialize(doc)
        .unwrap_or_else(|e| panic!("{} {} does not parse: {e}", doc["kind"], doc["metadata"]["name"]))
}

fn parse(yaml: &str) -> Rendered {
    let mut r = Rendered::default();
    for doc in documents(yaml) {
        match (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or("")) {
            ("apps/v1", "Deployment") => r.deployments.push(typed(&doc)),
            ("v1", "ServiceAccount") => r.service_accounts.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => r.cluster_roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                r.cluster_role_bindings.push(typed(&doc))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => r.roles.push(typed(&doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => r.role_bindings.push(typed(&doc)),
            ("policy/v1", "PodDisruptionBudget") => r.pdbs.push(typed(&doc)),
            ("v1", "Service") => r.services.push(typed(&doc)),
            _ => r.others.push(doc),
        }
    }
    r
}

fn values_args(file: &std::path::Path) -> Vec<String> {
    vec!["--values".to_owned(), file.to_str().unwrap().to_owned()]
}

/// Every rendering the tests check: defaults, and each values file.
fn renderings() -> Vec<(String, String)> {
    let mut out = vec![("defaults".to_owned(), render("cartwright", "kube-system", &[]).unwrap())];
    for file in values_files() {
        let args = values_args(&file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        out.push((
            name.clone(),
            render("cartwright", "kube-system", &args).unwrap_or_else(|e| panic!("{name}: {e}")),
        ));
    }
    out
}

#[test]
fn helm_3_and_4_lint_the_chart_and_render_it_the_same() {
    let mut files = vec![None];
    files.extend(values_files().into_iter().map(Some));
    for file in &files {
        let args = file.as_deref().map(values_args).unwrap_or_default();
        let mut rendered = Vec::new();
        for (version, mut helm) in helms() {
            helm.args(["lint", "--strict"]).arg(chart_dir()).args(&args);
            run(helm).unwrap_or_else(|e| panic!("{version} lint {file:?}: {e}"));
            let (_, helm) = helms().into_iter().find(|(v, _)| *v == version).unwrap();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let yaml = render_with(helm, "cartwright", "kube-system", &args)
                .unwrap_or_else(|e| panic!("{version} template {file:?}: {e}"));
            rendered.push(documents(&yaml));
        }
        assert_eq!(rendered[0], rendered[1], "helm 3 and helm 4 render {file:?} alike");
    }
    // A typo in a value fails with both.
    for (version, helm) in helms() {
        let err = render_with(helm, "cartwright", "kube-system", &["--set", "settings.clusterNmae=prod"])
            .expect_err("the schema rejects an unknown value");
        assert!(err.contains("clusterNmae"), "{version}: {err}");
    }
}

#[test]
fn every_rendered_manifest_validates_against_the_kubernetes_schemas() {
    let dir = std::env::temp_dir().join(format!("cartwright-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, yaml) in renderings() {
        let path = dir.join(format!("rendered-{name}"));
        std::fs::write(&path, yaml).unwrap();
        files.push(path);
    }
    // The CRDs the chart installs are manifests too.
    for entry in std::fs::read_dir(chart_dir().join("crds")).unwrap() {
        files.push(entry.unwrap().path());
    }
    // The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest schemas known.
    for version in ["1.29", "1.37"] {
        let mut command = python();
        command.args(["-m", "kubernetes_validate", "--strict", "--quiet", "-k", version]).args(&files);
        let out = run(command);
        assert!(out.is_ok(), "kubernetes-validate --strict -k {version}: {}", out.unwrap_err());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kubernetes_validate_rejects_a_manifest_with_an_unknown_field() {
    // The validator is strict: the check above would catch a typo in a template.
    let yaml = render("cartwright", "kube-system", &[])
        .unwrap()
        .replace("revisionHistoryLimit:", "revisionHistoryLimt:");
    let path = std::env::temp_dir().join(format!("cartwright-chart-typo-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let mut command = python();
    command.args(["-m", "kubernetes_validate", "--strict", "--quiet"]).arg(&path);
    let err = run(command).expect_err("a misspelled field fails validation");
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("revisionHistoryLimt"), "{err}");
}

fn rule_has_wildcard(rule: &PolicyRule) -> bool {
    let wild = |v: &Option<Vec<String>>| v.iter().flatten().any(|s| s.contains('*'));
    rule.verbs.iter().any(|v| v.contains('*')) || wild(&rule.api_groups) || wild(&rule.resources)
}

#[test]
fn every_rendering_holds_the_invariants_users_rely_on() {
    for (name, yaml) in renderings() {
        let r = parse(&yaml);
        let [deployment] = r.deployments.as_slice() else { panic!("{name}: one Deployment") };
        let spec = &deployment.spec;
        let pod = spec.template.spec.as_ref().unwrap();
        let replicas = spec.replicas.unwrap_or(1);
        let [container] = pod.containers.as_slice() else { panic!("{name}: one container") };
        let args = container.args.clone().unwrap_or_default();
        let arg =
            |flag: &str| args.iter().find_map(|a| a.strip_prefix(&format!("{flag}="))).map(str::to_owned);

        // RBAC: no wildcards, nothing that hands out more rights, no Secrets.
        let rules: Vec<&PolicyRule> = r
            .cluster_roles
            .iter()
            .flat_map(|c| c.rules.iter().flatten())
            .chain(r.roles.iter().flat_map(|c| c.rules.iter().flatten()))
            .collect();
        assert!(!rules.is_empty(), "{name}: RBAC rules");
        for rule in &rules {
            assert!(!rule_has_wildcard(rule), "{name}: wildcard in {rule:?}");
            assert!(rule.non_resource_urls.is_none(), "{name}: non-resource URLs in {rule:?}");
            for verb in &rule.verbs {
                assert!(!["escalate", "bind", "impersonate"].contains(&verb.as_str()), "{name}: {verb}");
            }
            assert!(!rule.resources.iter().flatten().any(|r| r == "secrets"), "{name}: secrets");
        }
        // The bindings name the ServiceAccount the pods run as.
        let account = pod.service_account_name.clone().unwrap();
        for subjects in r
            .cluster_role_bindings
            .iter()
            .map(|b| &b.subjects)
            .chain(r.role_bindings.iter().map(|b| &b.subjects))
        {
            let subjects = subjects.as_ref().unwrap();
            assert!(
                subjects.iter().all(|s| s.kind == "ServiceAccount" && s.name == account),
                "{name}: {subjects:?}"
            );
        }
        if name.contains("pod-identity") {
            assert_eq!(account, "cartwright", "Pod Identity associations name a fixed account");
        }
        if !name.contains("pod-identity") {
            let [sa] = r.service_accounts.as_slice() else { panic!("{name}: one ServiceAccount") };
            assert_eq!(sa.metadata.name.as_deref(), Some(account.as_str()));
            let irsa = sa.metadata.annotations.as_ref().and_then(|a| a.get("eks.amazonaws.com/role-arn"));
            assert_eq!(irsa.is_some(), name.contains("irsa"), "{name}: IRSA annotation only when asked");
        }

        // Leader election whenever more than one replica runs, with a Role for exactly its Lease.
        let lease_namespace = arg("--leader-election-namespace").unwrap_or_else(|| "kube-system".into());
        if replicas > 1 {
            assert_eq!(lease_namespace, "kube-system", "{name}: leader election in the release namespace");
            let lease = arg("--leader-election-name").expect("a lease name");
            let [role] = r.roles.as_slice() else { panic!("{name}: one Role for the lease") };
            let named = role.rules.iter().flatten().any(|rule| {
                rule.resource_names.iter().flatten().any(|n| *n == lease)
                    && rule.verbs.iter().any(|v| v == "update")
            });
            assert!(named, "{name}: the Role updates the lease {lease}");
        } else {
            assert!(lease_namespace.is_empty() || !r.roles.is_empty(), "{name}");
        }

        // Non-root, read-only root filesystem, no capabilities, no privilege escalation.
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true), "{name}");
        assert!(pod_security.run_as_user.is_some_and(|u| u != 0), "{name}");
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{name}");
        let dropped = security.capabilities.as_ref().and_then(|c| c.drop.clone()).unwrap_or_default();
        assert_eq!(dropped, ["ALL"], "{name}");
        assert!(security.capabilities.as_ref().unwrap().add.is_none(), "{name}");

        // Probes on the metrics port, the port the controller serves on.
        let port = arg("--metrics-address").unwrap().rsplit(':').next().unwrap().parse::<i32>().unwrap();
        let ports = container.ports.as_ref().unwrap();
        assert!(ports.iter().any(|p| p.container_port == port && p.name.as_deref() == Some("http-metrics")));
        for (probe, path) in
            [(&container.liveness_probe, "/healthz"), (&container.readiness_probe, "/readyz")]
        {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{name}");
        }
        assert!(container.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some(), "{name}: requests");

        // Scheduled where it should be: critical priority, spread over zones, off the nodes it manages.
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-cluster-critical"), "{name}");
        let spread = pod.topology_spread_constraints.as_ref().unwrap();
        assert!(spread.iter().any(|t| t.topology_key == "topology.kubernetes.io/zone"), "{name}");
        let excluded = pod
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref())
            .is_some_and(|req| {
                req.node_selector_terms.iter().all(|t| {
                    t.match_expressions
                        .iter()
                        .flatten()
                        .any(|e| e.key == "karpenter.sh/nodepool" && e.operator == "DoesNotExist")
                })
            });
        assert!(excluded, "{name}: the controller never runs on a node it manages");

        // The PDB and the Service select exactly the controller's pods.
        let labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        let selects = |selector: &std::collections::BTreeMap<String, String>| {
            !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        assert_eq!(spec.selector.match_labels.as_ref().map(selects), Some(true));
        let pdb_enabled = !name.contains("kwok");
        assert_eq!(r.pdbs.len(), usize::from(pdb_enabled), "{name}: PodDisruptionBudget");
        for pdb in &r.pdbs {
            let selector =
                pdb.spec.as_ref().and_then(|s| s.selector.as_ref()).and_then(|s| s.match_labels.as_ref());
            assert_eq!(selector.map(selects), Some(true), "{name}");
        }
        let [service] = r.services.as_slice() else { panic!("{name}: the metrics Service") };
        let service_spec = service.spec.as_ref().unwrap();
        assert_eq!(service_spec.selector.as_ref().map(selects), Some(true), "{name}");

        // Cloud provider settings reach the controller.
        let provider = arg("--cloud-provider").unwrap();
        assert_eq!(provider == "kwok", name.contains("kwok"), "{name}");
        if provider == "aws" && name != "defaults" {
            assert_eq!(arg("--cluster-name").as_deref(), Some("demo"), "{name}");
            assert!(arg("--cluster-endpoint").is_some_and(|e| e.starts_with("https://")), "{name}");
        }
        let kwok_writes_nodes = rules.iter().any(|rule| {
            rule.resources.iter().flatten().any(|r| r == "nodes") && rule.verbs.iter().any(|v| v == "create")
        });
        assert_eq!(kwok_writes_nodes, provider == "kwok", "{name}: only kwok creates Node objects");

        // The ServiceMonitor and the dashboard only when asked.
        let kinds: BTreeSet<&str> = r.others.iter().filter_map(|d| d["kind"].as_str()).collect();
        assert_eq!(kinds.contains("ServiceMonitor"), name.contains("servicemonitor"), "{name}: {kinds:?}");
        if let Some(monitor) = r.others.iter().find(|d| d["kind"] == "ServiceMonitor") {
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
            assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
        }
    }
}

#[test]
fn the_rendered_flags_are_ones_the_controller_accepts() {
    // `--help` after the rendered flags: clap parses (and validates) every flag before it, so an unknown
    // flag or a bad duration fails here.
    for (name, yaml) in renderings() {
        let r = parse(&yaml);
        let container = &r.deployments[0].spec.template.spec.as_ref().unwrap().containers[0];
        let mut args = container.args.clone().unwrap();
        args.push("--help".into());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartwright")).args(&args).output().unwrap();
        assert!(out.status.success(), "{name}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // And the check can fail.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartwright"))
        .args(["controller", "--batch-idle-duration=soon", "--help"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad duration is refused before --help");
}

#[test]
fn a_misspelled_value_or_unsafe_combination_fails_to_render() {
    let err = render("cartwright", "kube-system", &["--set", "settings.clusterNmae=prod"]).unwrap_err();
    assert!(err.contains("clusterNmae"), "the schema names the typo: {err}");
    let err = render("cartwright", "kube-system", &["--set", "replica=3"]).unwrap_err();
    assert!(err.contains("replica"), "{err}");
    let err = render("cartwright", "kube-system", &["--set", "settings.cloudProvider=gcp"]).unwrap_err();
    assert!(err.contains("cloudProvider"), "{err}");
    let err = render("cartwright", "kube-system", &["--set", "settings.batchIdleDuration=soon"]).unwrap_err();
    assert!(err.contains("batchIdleDuration"), "{err}");
    let err = render("cartwright", "kube-system", &["--set", "leaderElection.enabled=false"]).unwrap_err();
    assert!(err.contains("leaderElection.enabled must be true when replicas > 1"), "{err}");
    // One replica may run without it.
    render("cartwright", "kube-system", &["--set", "leaderElection.enabled=false", "--set", "replicas=1"])
        .unwrap();
}

#[test]
fn the_dashboard_queries_only_metrics_the_controller_exports() {
    let text = std::fs::read_to_string(chart_dir().join("dashboards/cartwright.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // A family is exported once it has a series: give each labelled one a series, as a running controller
    // does.
    let metrics = cartwright_kube::metrics::Metrics::default();
    let one = cartwright_kube::metrics::labels(&[("kind", "x")]);
    for family in [
        &metrics.nodeclaims_created,
        &metrics.nodeclaims_terminated,
        &metrics.cloud_calls,
        &metrics.cloud_errors,
        &metrics.interruptions,
        &metrics.garbage_collected,
    ] {
        family.get_or_create(&one).inc();
    }
    metrics.cost_per_hour.get_or_create(&one).set(1.0);
    metrics.headroom_pods.get_or_create(&one).set(1);
    metrics.headroom_cost_per_hour.get_or_create(&one).set(1.0);
    let exported = metrics.encode();
    // Family names as Prometheus sees them: `# TYPE name type`, and a histogram's and a counter's series.
    let mut names = BTreeSet::new();
    for line in exported.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (family, kind) = (parts.next().unwrap(), parts.next().unwrap());
            match kind {
                "counter" => names.insert(format!("{family}_total")),
                "histogram" => {
                    names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{family}{s}")));
                    true
                }
                _ => names.insert(family.to_owned()),
            };
        }
    }
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "a panel per concern");
    let mut used = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("cartwright_") {
                    assert!(
                        names.contains(word),
                        "panel {:?} queries {word}, which is not exported:\n{exported}",
                        panel["title"]
                    );
                    used.insert(word.to_owned());
                }
            }
        }
    }
    for wanted in ["cartwright_pods_pending", "cartwright_cluster_cost_per_hour_dollars", "cartwright_leader"]
    {
        assert!(used.contains(wanted), "{wanted} is on the dashboard");
    }
}

#[test]
fn notes_tell_what_to_do_next_and_warn_when_the_cluster_is_not_named() {
    // Helm 4 renders NOTES without a cluster (`--dry-run=client`); Helm 3 asks a cluster for its version
    // first, and renders the same templates otherwise.
    let notes = |args: &[&str]| {
        let mut helm = helm();
        helm.args(["install", "cartwright"])
            .arg(chart_dir())
            .args(["--namespace", "kube-system", "--dry-run=client"])
            .args(args);
        let out = run(helm).unwrap_or_else(|e| panic!("helm install --dry-run: {e}"));
        out.split_once("NOTES:").expect("NOTES rendered").1.to_owned()
    };
    let unnamed = notes(&[]);
    assert!(unnamed.contains("settings.clusterName and settings.clusterEndpoint are required"), "{unnamed}");
    let irsa = chart_dir().join("ci/irsa-values.yaml");
    let named = notes(&["--values", irsa.to_str().unwrap()]);
    assert!(!named.contains("WARNING"), "{named}");
    assert!(named.contains("get lease cartwright-leader-election"), "{named}");
    assert!(named.contains("sed \"s/\\${CLUSTER_NAME}/demo/g\" examples/eks/ec2nodeclass.yaml"), "{named}");
    let kwok = chart_dir().join("ci/kwok-values.yaml");
    let kwok = notes(&["--values", kwok.to_str().unwrap()]);
    assert!(!kwok.contains("ec2nodeclass") && !kwok.contains("get lease"), "{kwok}");
}
