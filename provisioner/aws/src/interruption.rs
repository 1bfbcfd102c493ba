//! Interruption notices from an SQS queue that EventBridge feeds (docs/install-eks.md has the rules and the
//! queue policy): spot interruption warnings, rebalance recommendations, AWS Health scheduled changes and
//! instance state changes, each for one or more instances.

use std::future::Future;

use cartwright_core::cloud::{Interruption, InterruptionKind};
use serde_json::Value;

use crate::api::Ec2Error;

/// A received message: its body and the handle that deletes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub body: String,
    pub receipt: String,
}

/// The queue calls the poller makes.
pub trait Queue: Send + Sync {
    /// Long-polls for up to 10 messages (at most 20 s).
    fn receive(&self) -> impl Future<Output = Result<Vec<Message>, Ec2Error>> + Send;
    fn delete(&self, receipt: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

/// The queue over the SDK.
#[derive(Clone, Debug)]
pub struct SdkQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
}

fn sqs_error<E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error>(e: E) -> Ec2Error {
    Ec2Error {
        code: e.code().map(str::to_owned),
        message: e.message().map(str::to_owned).unwrap_or_else(|| e.to_string()),
    }
}

impl SdkQueue {
    /// The queue named `name_or_url` (a queue URL is used as it is).
    pub async fn new(config: &aws_config::SdkConfig, name_or_url: &str) -> Result<SdkQueue, Ec2Error> {
        let sqs = aws_sdk_sqs::Client::new(config);
        let url = if name_or_url.starts_with("https://") || name_or_url.starts_with("http://") {
            name_or_url.to_owned()
        } else {
            let out = sqs.get_queue_url().queue_name(name_or_url).send().await.map_err(sqs_error)?;
            out.queue_url().unwrap_or_default().to_owned()
        };
        Ok(SdkQueue { sqs, url })
    }
}

impl Queue for SdkQueue {
    async fn receive(&self) -> Result<Vec<Message>, Ec2Error> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .wait_time_seconds(20)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(Message { body: m.body()?.to_owned(), receipt: m.receipt_handle()?.to_owned() })
            })
            .collect())
    }

    async fn delete(&self, receipt: &str) -> Result<(), Ec2Error> {
        self.sqs
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sqs_error)?;
        Ok(())
    }
}

/// The notices in one EventBridge event. Events of other kinds, and state changes to `pending` or
/// `running`, give none; a body that is not an EventBridge event is an error.
pub fn parse(body: &str) -> Result<Vec<Interruption>, String> {
    let event: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let detail_type = event.get("detail-type").and_then(Value::as_str).ok_or("no detail-type")?;
    let detail = event.get("detail").ok_or("no detail")?;
    let instance = || detail.get("instance-id").and_then(Value::as_str).map(str::to_owned);
    let one = |kind| Ok(instance().map(|machine| Interruption { machine, kind }).into_iter().collect());
    match detail_type {
        "EC2 Spot Instance Interruption Warning" => one(InterruptionKind::SpotInterruption),
        "EC2 Instance Rebalance Recommendation" => one(InterruptionKind::RebalanceRecommendation),
        "EC2 Instance State-change Notification" => {
            let state = detail.get("state").and_then(Value::as_str).unwrap_or_default();
            if matches!(state, "stopping" | "stopped" | "shutting-down" | "terminated") {
                one(InterruptionKind::StateChange)
            } else {
                Ok(Vec::new())
            }
        }
        "AWS Health Event" => {
            let scheduled = detail.get("service").and_then(Value::as_str) == Some("EC2")
                && detail.get("eventTypeCategory").and_then(Value::as_str) == Some("scheduledChange");
            if !scheduled {
                return Ok(Vec::new());
            }
            Ok(detail
                .get("affectedEntities")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("entityValue").and_then(Value::as_str))
                .map(|id| Interruption { machine: id.to_owned(), kind: InterruptionKind::ScheduledChange })
                .collect())
        }
        _ => Ok(Vec::new()),
    }
}

/// One long poll: the notices received; every message is deleted once read (those that do not parse too,
/// after a warning, so a bad message cannot block the queue).
pub async fn poll<Q: Queue>(queue: &Q) -> Result<Vec<Interruption>, Ec2Error> {
    let mut out = Vec::new();
    for message in queue.receive().await? {
        match parse(&message.body) {
            Ok(notices) => out.extend(notices),
            Err(e) => {
                tracing::warn!(error = e, "an interruption queue message that is not an EventBridge event")
            }
        }
        queue.delete(&message.receipt).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(detail_type: &str, detail: Value) -> String {
        json!({"version": "0", "id": "1", "detail-type": detail_type, "source": "aws.ec2", "account": "123456789012",
            "time": "2026-11-24T10:00:00Z", "region": "us-east-1", "resources": [], "detail": detail})
        .to_string()
    }

    #[test]
    fn each_event_kind_names_its_instances() {
        let spot = event(
            "EC2 Spot Instance Interruption Warning",
            json!({"instance-id": "i-1", "instance-action": "terminate"}),
        );
        assert_eq!(
            parse(&spot).unwrap(),
            [Interruption { machine: "i-1".into(), kind: InterruptionKind::SpotInterruption }]
        );
        let rebalance = event("EC2 Instance Rebalance Recommendation", json!({"instance-id": "i-2"}));
        assert_eq!(parse(&rebalance).unwrap()[0].kind, InterruptionKind::RebalanceRecommendation);
        let stopping = event(
            "EC2 Instance State-change Notification",
            json!({"instance-id": "i-3", "state": "stopping"}),
        );
        assert_eq!(parse(&stopping).unwrap()[0].kind, InterruptionKind::StateChange);
        let running = event(
            "EC2 Instance State-change Notification",
            json!({"instance-id": "i-3", "state": "running"}),
        );
        assert!(parse(&running).unwrap().is_empty());
        let health = event(
            "AWS Health Event",
            json!({"service": "EC2", "eventTypeCategory": "scheduledChange", "eventTypeCode": "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED",
                "affectedEntities": [{"entityValue": "i-4"}, {"entityValue": "i-5"}]}),
        );
        let machines: Vec<String> = parse(&health).unwrap().into_iter().map(|i| i.machine).collect();
        assert_eq!(machines, ["i-4", "i-5"]);
        let other = event("AWS Health Event", json!({"service": "EC2", "eventTypeCategory": "issue"}));
        assert!(parse(&other).unwrap().is_empty());
        assert!(parse("{}").unwrap_err().contains("detail-type"));
        assert!(parse("not json").unwrap_err().starts_with("not JSON"));
        assert!(
            Interruption { machine: "i-1".into(), kind: InterruptionKind::SpotInterruption }
                .is_for("aws:///us-east-1a/i-1")
        );
    }
}
