//! `cartwright controller --cloud-provider aws` end to end: the in-memory API server, a moto EC2, and a
//! kubelet stand-in that registers a Node with each launched instance's providerID.

use std::time::Duration;

use serde_json::{Value, json};

use super::{K8S_VERSION, Moto, SSM_ROOT, instance_tag, instances, is_running, node_class_spec, seed};
use crate::apiserver::ApiServer;
use crate::controller::{Cluster, name, pod_template, wait_for};

const MINUTE: Duration = Duration::from_secs(60);

/// The kubelet of every launched instance: once a NodeClaim has a providerID, a Ready Node with that
/// providerID and the claim's capacity registers (named after the instance, as EKS names nodes by host).
fn kubelets(server: std::sync::Arc<ApiServer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let nodes = server.list("", "nodes");
            for claim in server.list("cartwright.sh", "nodeclaims") {
                let Some(id) = claim.pointer("/status/providerID").and_then(Value::as_str) else { continue };
                if claim.pointer("/metadata/deletionTimestamp").is_some()
                    || nodes.iter().any(|n| n.pointer("/spec/providerID") == Some(&json!(id)))
                {
                    continue;
                }
                let instance = id.rsplit('/').next().unwrap();
                let mut labels = claim.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                labels["kubernetes.io/hostname"] = json!(instance);
                let status = claim.get("status").cloned().unwrap_or_default();
                let node = json!({
                    "metadata": {"name": instance, "labels": labels},
                    "spec": {"providerID": id},
                    "status": {"capacity": status["capacity"], "allocatable": status["allocatable"],
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
                });
                let _ = server.create("", "nodes", "", node);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_launches_registers_and_terminates_ec2_instances() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    seed(&config, "e2e").await;
    let mut cluster = Cluster::start().await;
    cluster
        .server
        .create(
            "aws.cartwright.sh",
            "ec2nodeclasses",
            "",
            json!({"metadata": {"name": "default"}, "spec": node_class_spec("e2e")}),
        )
        .unwrap();
    cluster.nodepool(
        "default",
        json!({"template": {"spec": {
            "requirements": [
                {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m"]},
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                {"key": "topology.kubernetes.io/zone", "operator": "In",
                    "values": ["us-east-1a", "us-east-1b", "us-east-1c"]}],
            "nodeClassRef": {"group": "aws.cartwright.sh", "kind": "EC2NodeClass", "name": "default"}}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1s"}}),
    );
    let _kubelets = kubelets(cluster.server.clone());
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue = sqs.create_queue().queue_name("e2e-interruptions").send().await.unwrap();
    let queue_url = queue.queue_url().unwrap().to_owned();
    let mut command = cluster.controller_command(&[
        ("--cloud-provider", "aws"),
        ("--cluster-name", "e2e"),
        ("--cluster-endpoint", "https://e2e.example.eks.amazonaws.com"),
        ("--cluster-ca-bundle", "Q0E="),
        ("--kubernetes-version", K8S_VERSION),
        ("--ami-parameter-root", SSM_ROOT),
        ("--disruption-interval", "1s"),
        ("--disruption-validation", "1s"),
        ("--interruption-queue", "e2e-interruptions"),
    ]);
    command.envs(moto.env());
    let _controller = command.spawn().expect("starting cartwright controller");

    // Scale out: instances launched in moto, nodes registered by providerID, pods bound.
    let web = cluster.run_replicas("web", 12, pod_template("1", "2Gi"));
    wait_for("12 pods bound", 2 * MINUTE, || cluster.bound_pods() == 12).await;
    let claims = cluster.claims();
    let running: Vec<_> = instances(&config, "e2e").await.into_iter().filter(is_running).collect();
    assert_eq!(running.len(), claims.len(), "one instance per NodeClaim");
    for claim in &claims {
        let id = claim.pointer("/status/providerID").and_then(Value::as_str).unwrap();
        let instance = running
            .iter()
            .find(|i| id.ends_with(i.instance_id().unwrap()))
            .unwrap_or_else(|| panic!("no instance for {id}"));
        assert_eq!(instance_tag(instance, "cartwright.sh/nodeclaim").as_deref(), Some(name(claim)));
        let labels = claim.pointer("/metadata/labels").unwrap();
        assert_eq!(
            labels["node.kubernetes.io/instance-type"],
            json!(instance.instance_type().unwrap().as_str())
        );
        assert_eq!(labels["karpenter.sh/capacity-type"], json!("on-demand"));
    }
    // The NodeClass's status says what it resolved to.
    wait_for("the EC2NodeClass Ready", MINUTE, || {
        let class = cluster.server.get("aws.cartwright.sh", "ec2nodeclasses", "", "default").unwrap();
        let conditions =
            class.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
            && class.pointer("/status/subnets").and_then(Value::as_array).is_some_and(|s| s.len() == 3)
    })
    .await;

    // A spot interruption warning for one instance: its node is replaced and drained, its pods land on the
    // replacement, the instance is terminated and the queue is emptied.
    let victim = claims[0].clone();
    let victim_id = victim
        .pointer("/status/providerID")
        .and_then(Value::as_str)
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let warning = json!({"version": "0", "id": "7", "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2", "region": "us-east-1", "resources": [],
        "detail": {"instance-id": victim_id, "instance-action": "terminate"}});
    sqs.send_message().queue_url(&queue_url).message_body(warning.to_string()).send().await.unwrap();
    wait_for("the interrupted node replaced", 2 * MINUTE, || {
        let claims = cluster.claims();
        !claims.iter().any(|c| name(c) == name(&victim))
            && cluster.bound_pods() == 12
            && !cluster.nodes().iter().any(|n| name(n) == victim_id)
    })
    .await;
    let victim_instance = instances(&config, "e2e")
        .await
        .into_iter()
        .find(|i| i.instance_id() == Some(victim_id.as_str()))
        .unwrap();
    assert!(!is_running(&victim_instance), "the interrupted instance is terminated");
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let left = attributes
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
        .cloned();
    assert_eq!(left.as_deref(), Some("0"), "the message was deleted");

    // An instance tagged for this cluster without a NodeClaim (a launch whose claim was lost) is collected.
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let leaked = ec2
        .run_instances()
        .image_id(running[0].image_id().unwrap())
        .instance_type(aws_sdk_ec2::types::InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
                .tags(aws_sdk_ec2::types::Tag::builder().key("eks:eks-cluster-name").value("e2e").build())
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key("cartwright.sh/nodeclaim")
                        .value("default-lost")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let leaked_id = leaked.instances()[0].instance_id().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + 2 * MINUTE;
    loop {
        let all = instances(&config, "e2e").await;
        if all.iter().any(|i| i.instance_id() == Some(leaked_id.as_str()) && !is_running(i)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the leaked instance was not terminated");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let live = instances(&config, "e2e").await.into_iter().filter(is_running).count();
    assert_eq!(live, cluster.claims().len(), "garbage collection spared every claimed instance");

    // Scale in to nothing: the empty nodes go and their instances are terminated.
    web.store(0, std::sync::atomic::Ordering::Relaxed);
    wait_for("no NodeClaims left", 2 * MINUTE, || cluster.claims().is_empty() && cluster.nodes().is_empty())
        .await;
    let left: Vec<_> = instances(&config, "e2e").await.into_iter().filter(is_running).collect();
    assert!(
        left.is_empty(),
        "instances still running: {:?}",
        left.iter().map(|i| i.instance_id()).collect::<Vec<_>>()
    );
    // The chart installed with the aws provider grants every request made (NodeClass status included).
    crate::deploy::rbac::assert_chart_allows(&cluster.server.request_log(), "aws", "kube-system");
}
