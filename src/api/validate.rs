//! Validation of a spec, for manifests that reach the relay without an API server.

use std::collections::HashSet;
use std::time::Duration;

use super::*;

/// Parses a duration such as `5s`, `750ms`, `2m` or `1h30m`.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{field}: {text:?} is not a duration like 5s, 750ms or 2m ({e})"))
}

impl DualWritePipelineSpec {
    /// The same rules the CRD schema enforces, for manifests that reach the relay without an API
    /// server. Returns every problem found, each saying how to fix it.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.providers.is_empty() {
            errs.push("spec.providers: list at least one provider".to_string());
        }
        if self.providers.len() > MAX_PROVIDERS {
            errs.push(format!("spec.providers: at most {MAX_PROVIDERS} providers"));
        }
        let mut names = HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("spec.providers[{i}]");
            if !is_dns_label(&p.name) {
                errs.push(format!(
                    "{at}.name: {:?} must be a DNS label (lower case letters, digits and '-', at most 63)",
                    p.name
                ));
            }
            if !names.insert(p.name.as_str()) {
                errs.push(format!(
                    "{at}.name: {:?} is used twice; provider names must be unique",
                    p.name
                ));
            }
            let blocks = [
                (ProviderType::Memory, p.memory.is_some()),
                (ProviderType::Nats, p.nats.is_some()),
                (ProviderType::Kafka, p.kafka.is_some()),
            ];
            for (kind, present) in blocks {
                if present && kind != p.kind {
                    errs.push(format!(
                        "{at}: {kind} settings are only allowed on a provider of type {kind}"
                    ));
                }
            }
            match p.kind {
                ProviderType::Nats => match &p.nats {
                    None => errs.push(format!(
                        "{at}: a provider of type nats needs a nats block with url and subject"
                    )),
                    Some(n) => {
                        if n.url.trim().is_empty() {
                            errs.push(format!(
                                "{at}.nats.url: give the server URL, e.g. nats://nats:4222"
                            ));
                        }
                        if n.subject.trim().is_empty() {
                            errs.push(format!("{at}.nats.subject: give the subject to publish on"));
                        } else if n
                            .subject
                            .contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
                        {
                            errs.push(format!("{at}.nats.subject: {:?} must be one subject, without wildcards or spaces", n.subject));
                        }
                    }
                },
                ProviderType::Kafka => match &p.kafka {
                    None => errs.push(format!(
                        "{at}: a provider of type kafka needs a kafka block with brokers and topic"
                    )),
                    Some(k) => {
                        if k.brokers.is_empty() || k.brokers.iter().any(|b| b.trim().is_empty()) {
                            errs.push(format!(
                                "{at}.kafka.brokers: list at least one broker as host:port"
                            ));
                        }
                        if k.topic.trim().is_empty() {
                            errs.push(format!("{at}.kafka.topic: give the topic to write to"));
                        } else if !k
                            .topic
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                        {
                            errs.push(format!("{at}.kafka.topic: {:?} may hold only letters, digits, '.', '_' and '-'", k.topic));
                        }
                    }
                },
                ProviderType::Memory => {
                    if p.memory.as_ref().and_then(|m| m.capacity) == Some(0) {
                        errs.push(format!("{at}.memory.capacity: must be at least 1"));
                    }
                }
            }
        }
        if let Some(t) = &self.publish_timeout {
            match parse_duration("spec.publishTimeout", t) {
                Ok(d) if d.is_zero() => {
                    errs.push("spec.publishTimeout: must be more than 0".into())
                }
                Ok(_) => {}
                Err(e) => errs.push(e),
            }
        }
        if let Some(m) = &self.migration {
            if m.steps.is_empty() {
                errs.push("spec.migration.steps: list at least one step".into());
            }
            for (i, s) in m.steps.iter().enumerate() {
                let at = format!("spec.migration.steps[{i}]");
                for n in s.providers.iter().flatten().chain(s.read_from.iter()) {
                    if !names.contains(n.as_str()) {
                        errs.push(format!(
                            "{at}: {n:?} is not a provider listed in spec.providers"
                        ));
                    }
                }
                if let Some(min) = s.gates.as_ref().and_then(|g| g.min_duration.as_ref()) {
                    if let Err(e) = parse_duration(&format!("{at}.gates.minDuration"), min) {
                        errs.push(e);
                    }
                }
            }
            if let Some(t) = m.target_step {
                if t as usize >= m.steps.len() {
                    errs.push(format!(
                        "spec.migration.targetStep: {t} is past the last step ({})",
                        m.steps.len().saturating_sub(1)
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The publish deadline (default [`crate::composite::DEFAULT_PUBLISH_TIMEOUT`]).
    pub fn publish_timeout(&self) -> Duration {
        self.publish_timeout
            .as_deref()
            .and_then(|t| parse_duration("spec.publishTimeout", t).ok())
            .unwrap_or(crate::composite::DEFAULT_PUBLISH_TIMEOUT)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl NatsSpec {
    /// The provider's configuration.
    pub fn to_config(&self) -> Result<crate::provider::nats::NatsConfig, String> {
        Ok(crate::provider::nats::NatsConfig {
            url: self.url.clone(),
            subject: self.subject.clone(),
            stream: self.stream.clone(),
            durable: self.durable.clone(),
            duplicate_window: self
                .duplicate_window
                .as_deref()
                .map(|w| parse_duration("nats.duplicateWindow", w))
                .transpose()?,
        })
    }
}

impl KafkaSpec {
    /// The provider's configuration.
    pub fn to_config(&self) -> crate::provider::kafka::KafkaConfig {
        crate::provider::kafka::KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            partitions: self.partitions,
            replication_factor: self.replication_factor,
            group_id: self.group_id.clone(),
            config: self.config.clone(),
        }
    }
}
