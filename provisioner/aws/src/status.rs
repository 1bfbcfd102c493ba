//! An EC2NodeClass's status from its resolution: the subnets, security groups and AMIs found, and one
//! condition per part (SubnetsReady, SecurityGroupsReady, AMIsReady, InstanceProfileReady, UserDataReady)
//! plus Ready, each False with the reason in words when something did not resolve.

use cartwright_api::ec2nodeclass::{EC2NodeClassStatus, ResolvedId, ResolvedSubnet};
use cartwright_api::nodeclaim::Condition;

use crate::nodeclass::Resolved;

const PARTS: [&str; 5] =
    ["SubnetsReady", "SecurityGroupsReady", "AMIsReady", "InstanceProfileReady", "UserDataReady"];

fn condition(
    type_: &str,
    problems: &[String],
    previous: Option<&EC2NodeClassStatus>,
    generation: Option<i64>,
) -> Condition {
    let (status, reason, message) = if problems.is_empty() {
        ("True", type_.to_owned(), None)
    } else {
        ("False", format!("{}NotReady", type_.trim_end_matches("Ready")), Some(problems.join("; ")))
    };
    // The transition time stays while the status does.
    let last = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason),
        message,
        last_transition_time: last.or_else(|| Some(k8s_openapi::jiff::Timestamp::now().to_string())),
        observed_generation: generation,
    }
}

/// The status for a resolution; `previous` keeps the conditions' transition times.
pub fn status(
    resolved: &Resolved,
    previous: Option<&EC2NodeClassStatus>,
    generation: Option<i64>,
) -> EC2NodeClassStatus {
    let mut conditions: Vec<Condition> = PARTS
        .iter()
        .map(|part| {
            let problems: Vec<String> = resolved
                .problems
                .iter()
                .filter(|p| p.condition == *part)
                .map(|p| p.message.clone())
                .collect();
            condition(part, &problems, previous, generation)
        })
        .collect();
    let all: Vec<String> = resolved.problems.iter().map(|p| p.message.clone()).collect();
    conditions.push(condition("Ready", &all, previous, generation));
    EC2NodeClassStatus {
        subnets: resolved
            .subnets
            .iter()
            .map(|s| ResolvedSubnet { id: s.id.clone(), zone: s.zone.clone(), zone_id: s.zone_id.clone() })
            .collect(),
        security_groups: resolved
            .security_groups
            .iter()
            .map(|g| ResolvedId { id: g.id.clone(), name: Some(g.name.clone()).filter(|n| !n.is_empty()) })
            .collect(),
        amis: resolved
            .amis
            .iter()
            .map(|i| ResolvedId { id: i.id.clone(), name: Some(i.name.clone()).filter(|n| !n.is_empty()) })
            .collect(),
        instance_profile: resolved.instance_profile.clone(),
        conditions,
    }
}
