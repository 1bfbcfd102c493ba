//! The controller's IAM policy (`deploy/aws/controller-policy.json`, what docs/aws.md tells users to
//! create) covers every AWS call the provider makes and nothing broader.

use serde_json::Value;

fn statements() -> Vec<Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/aws/controller-policy.json"))
            .unwrap();
    let policy: Value = serde_json::from_str(&text).expect("the policy is JSON");
    policy["Statement"].as_array().unwrap().clone()
}

fn actions(statement: &Value) -> Vec<String> {
    match &statement["Action"] {
        Value::String(a) => vec![a.clone()],
        Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
        other => panic!("Action {other}"),
    }
}

#[test]
fn the_iam_policy_allows_exactly_the_calls_made_and_conditions_every_write() {
    let statements = statements();
    let allowed: std::collections::BTreeSet<String> = statements.iter().flat_map(actions).collect();
    // Every operation the SDK implementation and the queue poller call.
    let sources = [
        include_str!("../../provisioner/aws/src/sdk.rs"),
        include_str!("../../provisioner/aws/src/interruption.rs"),
    ]
    .concat();
    let called = [
        ("describe_instance_types()", "ec2:DescribeInstanceTypes"),
        ("describe_instance_type_offerings()", "ec2:DescribeInstanceTypeOfferings"),
        ("describe_spot_price_history()", "ec2:DescribeSpotPriceHistory"),
        ("describe_subnets()", "ec2:DescribeSubnets"),
        ("describe_security_groups()", "ec2:DescribeSecurityGroups"),
        ("describe_images()", "ec2:DescribeImages"),
        ("describe_launch_templates()", "ec2:DescribeLaunchTemplates"),
        ("create_launch_template()", "ec2:CreateLaunchTemplate"),
        ("create_fleet()", "ec2:CreateFleet"),
        ("describe_instances()", "ec2:DescribeInstances"),
        ("terminate_instances()", "ec2:TerminateInstances"),
        ("get_parameter()", "ssm:GetParameter"),
        ("get_products()", "pricing:GetProducts"),
        ("receive_message()", "sqs:ReceiveMessage"),
        ("delete_message()", "sqs:DeleteMessage"),
        ("get_queue_url()", "sqs:GetQueueUrl"),
        ("delete_launch_template()", "ec2:DeleteLaunchTemplate"),
        ("get_instance_profile()", "iam:GetInstanceProfile"),
        ("list_instance_profiles()", "iam:ListInstanceProfiles"),
        ("create_instance_profile()", "iam:CreateInstanceProfile"),
        ("add_role_to_instance_profile()", "iam:AddRoleToInstanceProfile"),
        ("remove_role_from_instance_profile()", "iam:RemoveRoleFromInstanceProfile"),
        ("delete_instance_profile()", "iam:DeleteInstanceProfile"),
    ];
    let mut expected = std::collections::BTreeSet::new();
    for (call, action) in called {
        assert!(
            sources.contains(&format!(".{call}")),
            "the provider no longer calls {call}: update this test"
        );
        assert!(allowed.contains(action), "{action} is not allowed");
        expected.insert(action.to_owned());
    }
    // Launching needs RunInstances on the resources CreateFleet uses; tags only while creating; the node role.
    // Tags on a new instance profile need TagInstanceProfile.
    expected.extend(
        ["ec2:RunInstances", "ec2:CreateTags", "iam:PassRole", "iam:TagInstanceProfile"].map(String::from),
    );
    assert_eq!(allowed, expected, "nothing beyond what is called");
    for s in &statements {
        let acts = actions(s);
        assert!(acts.iter().all(|a| !a.contains('*')), "wildcard action in {}", s["Sid"]);
        let writes =
            acts.iter().any(|a| !a.contains(":Describe") && !a.contains(":Get") && !a.starts_with("sqs:"));
        let resource_scoped = s["Resource"] != Value::String("*".into());
        if writes {
            assert!(resource_scoped, "{} writes on every resource", s["Sid"]);
        }
        if acts.iter().any(|a| {
            a == "ec2:TerminateInstances"
                || a == "ec2:CreateTags"
                || a == "ec2:CreateLaunchTemplate"
                || a == "ec2:DeleteLaunchTemplate"
                || a.starts_with("iam:") && !a.contains(":Get") && !a.contains(":List") && a != "iam:PassRole"
        }) {
            assert!(s.get("Condition").is_some(), "{} is not conditioned on tags", s["Sid"]);
        }
    }
}
