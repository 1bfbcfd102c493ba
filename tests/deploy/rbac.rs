//! The chart's RBAC against the requests the controller really makes: the end-to-end tests call
//! [`assert_chart_allows`] with their API server's request log, so a new call the chart does not grant
//! fails a test here instead of a user's cluster.

use axum::http::Method;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde_json::Value;

use super::{documents, render};

/// What RBAC decides on: the request's attributes.
#[derive(Debug)]
struct Attributes {
    verb: &'static str,
    group: String,
    /// `pods`, or `pods/eviction` for a subresource.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

/// The RBAC attributes of a request, or None for a non-resource path (discovery and /version, which
/// every authenticated user may read).
fn attributes(method: &Method, path_and_query: &str) -> Option<Attributes> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [plural] => ((*plural).to_owned(), None),
        [plural, name] => ((*plural).to_owned(), Some((*name).to_owned())),
        [plural, name, sub] => (format!("{plural}/{sub}"), Some((*name).to_owned())),
        _ => return None,
    };
    let watching = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other}"),
    };
    Some(Attributes { verb, group: group.to_owned(), resource, namespace, name })
}

fn allows(rule: &PolicyRule, a: &Attributes) -> bool {
    let has = |list: &Option<Vec<String>>, item: &str| list.iter().flatten().any(|x| x == item);
    rule.verbs.iter().any(|v| v == a.verb)
        && has(&rule.api_groups, &a.group)
        && has(&rule.resources, &a.resource)
        && match (&rule.resource_names, &a.name) {
            (None, _) => true,
            (Some(names), _) if names.is_empty() => true,
            (Some(names), Some(name)) => names.contains(name),
            (Some(_), None) => false,
        }
}

/// Checks every request in `log` against the chart rendered as release `cartwright` in `namespace` with
/// `settings.cloudProvider=provider`: ClusterRole rules apply everywhere, Role rules in `namespace` only.
/// Returns how many resource requests were checked.
pub fn assert_chart_allows(log: &[(Method, String)], provider: &str, namespace: &str) -> usize {
    let yaml = render("cartwright", namespace, &["--set", &format!("settings.cloudProvider={provider}")])
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    let mut cluster_rules = Vec::new();
    let mut namespace_rules = Vec::new();
    for doc in documents(&yaml) {
        match doc["kind"].as_str() {
            Some("ClusterRole") => {
                let role: ClusterRole = serde_json::from_value(doc).unwrap();
                cluster_rules.extend(role.rules.unwrap_or_default());
            }
            Some("Role") => {
                assert_eq!(doc["metadata"]["namespace"], Value::from(namespace));
                let role: Role = serde_json::from_value(doc).unwrap();
                namespace_rules.extend(role.rules.unwrap_or_default());
            }
            _ => {}
        }
    }
    let mut checked = 0;
    let mut denied = Vec::new();
    for (method, path) in log {
        let Some(a) = attributes(method, path) else { continue };
        checked += 1;
        let by_cluster_role = cluster_rules.iter().any(|r| allows(r, &a));
        let by_role =
            a.namespace.as_deref() == Some(namespace) && namespace_rules.iter().any(|r| allows(r, &a));
        if !by_cluster_role && !by_role {
            denied.push(format!("{method} {path} ({a:?})"));
        }
    }
    denied.sort();
    denied.dedup();
    assert!(
        denied.is_empty(),
        "the chart's RBAC does not allow requests the controller made:\n{}",
        denied.join("\n")
    );
    checked
}

#[test]
fn request_attributes_follow_the_kubernetes_authorizer() {
    let a = attributes(&Method::POST, "/api/v1/namespaces/default/pods/web-1/eviction").unwrap();
    assert_eq!((a.verb, a.group.as_str(), a.resource.as_str()), ("create", "", "pods/eviction"));
    let a =
        attributes(&Method::GET, "/apis/cartwright.sh/v1/nodeclaims?watch=true&resourceVersion=5").unwrap();
    assert_eq!((a.verb, a.resource.as_str(), a.namespace), ("watch", "nodeclaims", None));
    let a = attributes(&Method::GET, "/apis/cartwright.sh/v1/nodeclaims?limit=500").unwrap();
    assert_eq!(a.verb, "list");
    let a = attributes(&Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x").unwrap();
    assert_eq!(
        (a.verb, a.name.as_deref(), a.namespace.as_deref()),
        ("update", Some("x"), Some("kube-system"))
    );
    assert!(attributes(&Method::GET, "/version").is_none());
    assert!(attributes(&Method::GET, "/apis").is_none());
}

#[test]
fn the_check_refuses_what_the_chart_does_not_grant() {
    // A request the controller never makes must be refused, or the end-to-end checks prove nothing.
    for request in [
        (Method::GET, "/api/v1/namespaces/default/secrets/token"),
        (Method::DELETE, "/api/v1/namespaces/default/pods/web-1"),
        (Method::POST, "/api/v1/nodes"),
        (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/other/leases/cartwright-leader-election"),
        (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/someone-elses"),
    ] {
        let log = vec![(request.0.clone(), request.1.to_owned())];
        let refused = std::panic::catch_unwind(|| assert_chart_allows(&log, "aws", "kube-system")).is_err();
        assert!(refused, "{} {} must be refused", request.0, request.1);
    }
    let log = vec![
        (Method::POST, "/api/v1/nodes".to_owned()),
        (
            Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/cartwright-leader-election"
                .to_owned(),
        ),
        (Method::POST, "/api/v1/namespaces/default/pods/web-1/eviction".to_owned()),
    ];
    assert_eq!(
        assert_chart_allows(&log, "kwok", "kube-system"),
        3,
        "kwok creates nodes; the lease is its own"
    );
}
