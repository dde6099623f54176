//! Where the relay's pipeline comes from: a manifest file, the seed's environment variables, or
//! the built-in default (two memory providers, so dual-write works with no outside service).
//! Each source yields a `DualWritePipelineSpec`, which `api`'s one validator turns into the
//! [`PipelineConfig`] the relay runs.

use std::collections::BTreeMap;

use crate::api::{
    DualWritePipeline, DualWritePipelineSpec, KafkaSpec, MemorySpec, NatsSpec, ProviderKind,
    ProviderSpec, SpecError,
};
use crate::composite::Strategy;
use crate::relay::PipelineConfig;

/// Why a pipeline could not be read or is not valid. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A seed variable is wrong (the message names it).
    #[error("{0}")]
    Variable(String),
    #[error("the manifest is not valid YAML: {0}")]
    Yaml(serde_yaml::Error),
    #[error("the manifest's kind is {0:?}; expected a DualWritePipeline (apiVersion dualwrite.io/v1alpha1)")]
    Kind(String),
    #[error("the manifest does not match DualWritePipeline: {path}: {message}")]
    Shape { path: String, message: String },
    #[error("the manifest has fields DualWritePipeline does not know: {} (misspelt?)", .0.join(", "))]
    UnknownFields(Vec<String>),
    #[error(transparent)]
    Invalid(#[from] SpecError),
}

/// The pipeline of a manifest, checked.
pub fn pipeline_from_manifest(text: &str) -> Result<PipelineConfig, ConfigError> {
    Ok(PipelineConfig::try_from(&spec_from_manifest(text)?)?)
}

/// The pipeline the seed's variables describe, checked.
pub fn pipeline_from_env(env: &SeedEnv) -> Result<PipelineConfig, ConfigError> {
    Ok(PipelineConfig::try_from(&spec_from_env(env)?)?)
}

/// The seed's variables, read once. Empty values count as unset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeedEnv {
    pub queue_type: Option<String>,
    pub composite_providers: Option<String>,
    pub composite_strategy: Option<String>,
    pub queue_size: Option<String>,
    pub nats_url: Option<String>,
    pub nats_subject: Option<String>,
    pub kafka_brokers: Option<String>,
    pub kafka_topic: Option<String>,
    pub publish_timeout: Option<String>,
}

impl SeedEnv {
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Self {
            queue_type: get("QUEUE_TYPE"),
            composite_providers: get("COMPOSITE_PROVIDERS"),
            composite_strategy: get("COMPOSITE_STRATEGY"),
            queue_size: get("QUEUE_SIZE"),
            nats_url: get("NATS_URL"),
            nats_subject: get("NATS_SUBJECT"),
            kafka_brokers: get("KAFKA_BROKERS"),
            kafka_topic: get("KAFKA_TOPIC"),
            publish_timeout: get("PUBLISH_TIMEOUT"),
        }
    }

    /// True when the variables describe a pipeline (rather than leaving the default in force).
    pub fn describes_pipeline(&self) -> bool {
        self.queue_type.is_some() || self.composite_providers.is_some()
    }
}

/// Defaults of the seed's variables.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_NATS_SUBJECT: &str = "dualwrite.messages";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_KAFKA_TOPIC: &str = "dualwrite-messages";

/// The pipeline the seed's variables describe.
pub fn spec_from_env(env: &SeedEnv) -> Result<DualWritePipelineSpec, ConfigError> {
    spec_from_variables(env).map_err(ConfigError::Variable)
}

fn spec_from_variables(env: &SeedEnv) -> Result<DualWritePipelineSpec, String> {
    let types = provider_types(env)?;
    let strategy = match &env.composite_strategy {
        None => Strategy::FailFast,
        Some(s) => s.parse().map_err(|e| format!("COMPOSITE_STRATEGY: {e}"))?,
    };
    let capacity = match &env.queue_size {
        None => None,
        Some(s) => Some(
            s.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("QUEUE_SIZE={s:?} must be a whole number above 0"))?,
        ),
    };
    let count = |t: ProviderKind| types.iter().filter(|x| **x == t).count();
    let mut seen: std::collections::HashMap<ProviderKind, usize> = Default::default();
    let providers = types
        .iter()
        .map(|&t| {
            let n = seen.entry(t).or_default();
            *n += 1;
            // The same type twice (memory,memory) gets numbered names; once, the bare type.
            let name = if count(t) > 1 {
                format!("{t}-{n}")
            } else {
                t.to_string()
            };
            provider_spec(env, t, name, capacity)
        })
        .collect();
    Ok(DualWritePipelineSpec {
        providers,
        strategy,
        publish_timeout: env.publish_timeout.clone(),
        ingest: None,
        relay: None,
        handoff: None,
        migration: None,
        consistency: None,
    })
}

/// `QUEUE_TYPE` (one provider) or, for `composite`, the list in `COMPOSITE_PROVIDERS`.
fn provider_types(env: &SeedEnv) -> Result<Vec<ProviderKind>, String> {
    let queue_type = env
        .queue_type
        .as_deref()
        .unwrap_or("composite")
        .to_ascii_lowercase();
    if queue_type != "composite" {
        return Ok(vec![queue_type.parse::<ProviderKind>().map_err(|_| {
            format!("QUEUE_TYPE={queue_type:?} is unknown: use memory, nats, kafka or composite")
        })?]);
    }
    let list = env.composite_providers.as_deref().ok_or(
        "QUEUE_TYPE=composite needs COMPOSITE_PROVIDERS, e.g. COMPOSITE_PROVIDERS=nats,kafka",
    )?;
    list.split(',')
        .map(|t| {
            t.parse::<ProviderKind>()
                .map_err(|e| format!("COMPOSITE_PROVIDERS: {e}"))
        })
        .collect()
}

/// One provider of type `kind` with the seed's settings for that type.
fn provider_spec(
    env: &SeedEnv,
    kind: ProviderKind,
    name: String,
    capacity: Option<u32>,
) -> ProviderSpec {
    let or = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.into());
    ProviderSpec {
        name,
        kind,
        memory: (kind == ProviderKind::Memory).then_some(MemorySpec { capacity }),
        nats: (kind == ProviderKind::Nats).then(|| NatsSpec {
            url: or(&env.nats_url, DEFAULT_NATS_URL),
            subject: or(&env.nats_subject, DEFAULT_NATS_SUBJECT),
            stream: None,
            durable: None,
            duplicate_window: None,
            replicas: None,
            tls: None,
            authentication: None,
        }),
        kafka: (kind == ProviderKind::Kafka).then(|| KafkaSpec {
            brokers: or(&env.kafka_brokers, DEFAULT_KAFKA_BROKERS)
                .split(',')
                .map(|b| b.trim().to_string())
                .collect(),
            topic: or(&env.kafka_topic, DEFAULT_KAFKA_TOPIC),
            partitions: None,
            replication_factor: None,
            min_insync_replicas: None,
            key: Default::default(),
            group_id: None,
            config: BTreeMap::new(),
            tls: None,
            authentication: None,
        }),
    }
}

/// The built-in pipeline: FailFast over two in-memory queues.
pub fn default_spec() -> DualWritePipelineSpec {
    let env = SeedEnv {
        composite_providers: Some("memory,memory".into()),
        ..SeedEnv::default()
    };
    spec_from_env(&env).expect("the default pipeline is valid")
}

/// Reads a `DualWritePipeline` manifest (the YAML a user would `kubectl apply`).
pub fn spec_from_manifest(text: &str) -> Result<DualWritePipelineSpec, ConfigError> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(ConfigError::Yaml)?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "DualWritePipeline" {
        return Err(ConfigError::Kind(kind.to_string()));
    }
    // A misspelt field (`stratgy:`) would otherwise be dropped without a word and the relay
    // would run something else than the file says; the API server prunes such fields, so only
    // a manifest read from a file needs this.
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        if path.starts_with("spec") {
            unknown.push(path);
        }
    };
    // serde_path_to_error names where a value failed (`spec.providers[1].type`), as the API
    // server does, instead of serde's bare "unknown variant".
    let pipeline: DualWritePipeline = serde_path_to_error::deserialize(
        serde_ignored::Deserializer::new(value, &mut record_unknown),
    )
    .map_err(|e| ConfigError::Shape {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })?;
    if !unknown.is_empty() {
        return Err(ConfigError::UnknownFields(unknown));
    }
    Ok(pipeline.spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> SeedEnv {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SeedEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn seed_variables_build_a_composite() {
        let spec = spec_from_env(&env(&[
            ("QUEUE_TYPE", "composite"),
            ("COMPOSITE_PROVIDERS", "nats,kafka"),
            ("COMPOSITE_STRATEGY", "best-effort"),
            ("NATS_URL", "nats://n:4222"),
            ("KAFKA_BROKERS", "k1:9092, k2:9092"),
            ("KAFKA_TOPIC", "orders"),
        ]))
        .unwrap();
        assert_eq!(spec.strategy, Strategy::BestEffort);
        let names: Vec<_> = spec.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["nats", "kafka"]);
        assert_eq!(
            spec.providers[0].nats.as_ref().unwrap().url,
            "nats://n:4222"
        );
        let k = spec.providers[1].kafka.as_ref().unwrap();
        assert_eq!(k.brokers, ["k1:9092", "k2:9092"]);
        assert_eq!(k.topic, "orders");
        spec.validate().unwrap();
    }

    #[test]
    fn same_type_twice_gets_numbered_names() {
        let spec = spec_from_env(&env(&[
            ("COMPOSITE_PROVIDERS", "memory,memory"),
            ("QUEUE_SIZE", "5"),
        ]))
        .unwrap();
        let names: Vec<_> = spec.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["memory-1", "memory-2"]);
        assert_eq!(spec.providers[0].memory.as_ref().unwrap().capacity, Some(5));
        spec.validate().unwrap();
    }

    #[test]
    fn single_queue_type() {
        let spec = spec_from_env(&env(&[("QUEUE_TYPE", "memory")])).unwrap();
        assert_eq!(spec.providers.len(), 1);
        assert_eq!(spec.providers[0].name, "memory");
    }

    #[test]
    fn errors_say_what_to_fix() {
        for (vars, want) in [
            (
                &[
                    ("COMPOSITE_PROVIDERS", "memory"),
                    ("COMPOSITE_STRATEGY", "sometimes"),
                ][..],
                "use fail-fast or best-effort",
            ),
            (
                &[("QUEUE_TYPE", "composite")][..],
                "needs COMPOSITE_PROVIDERS",
            ),
            (
                &[("QUEUE_TYPE", "redis")][..],
                "use memory, nats, kafka or composite",
            ),
            (
                &[("COMPOSITE_PROVIDERS", "memory,rabbit")][..],
                "COMPOSITE_PROVIDERS: unknown provider type \"rabbit\"",
            ),
            (
                &[("COMPOSITE_PROVIDERS", "memory"), ("QUEUE_SIZE", "0")][..],
                "QUEUE_SIZE",
            ),
        ] {
            let err = spec_from_env(&env(vars)).unwrap_err().to_string();
            assert!(err.contains(want), "{vars:?}: {err}");
        }
    }

    #[test]
    fn the_default_spec_and_the_built_in_pipeline_agree() {
        assert_eq!(
            PipelineConfig::try_from(&default_spec()).unwrap(),
            PipelineConfig::two_memory_queues()
        );
    }

    #[test]
    fn default_is_two_memory_providers_fail_fast() {
        let spec = default_spec();
        assert_eq!(spec.providers.len(), 2);
        assert!(spec
            .providers
            .iter()
            .all(|p| p.kind == ProviderKind::Memory));
        assert_eq!(spec.strategy, Strategy::FailFast);
        assert!(!SeedEnv::default().describes_pipeline());
    }

    #[test]
    fn shape_errors_name_the_field() {
        let head = "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: x}\nspec:\n";
        for (body, path, text) in [
            (
                "  strategy: Sometimes\n  providers: [{name: a, type: memory}]\n",
                "spec.strategy",
                "unknown variant `Sometimes`",
            ),
            (
                "  providers: [{name: a, type: memory}, {name: b, type: redis}]\n",
                "spec.providers[1].type",
                "unknown variant `redis`",
            ),
            (
                "  providers: [{name: k, type: kafka, kafka: {brokers: b:1, topic: t}}]\n",
                "spec.providers[0].kafka.brokers",
                "expected a sequence",
            ),
            (
                "  providers: [{name: a, type: memory, memory: {capacity: lots}}]\n",
                "spec.providers[0].memory.capacity",
                "invalid type",
            ),
        ] {
            let err = spec_from_manifest(&format!("{head}{body}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{path}: ")) && err.contains(text),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn manifests_are_checked_for_kind_and_shape() {
        let ok = "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {name: x}\nspec:\n  providers: [{name: a, type: memory}]\n";
        assert_eq!(spec_from_manifest(ok).unwrap().providers[0].name, "a");
        assert!(spec_from_manifest("kind: ConfigMap\n")
            .unwrap_err()
            .to_string()
            .contains("expected a DualWritePipeline"));
        assert!(spec_from_manifest(": : :")
            .unwrap_err()
            .to_string()
            .contains("not valid YAML"));
        let bad = ok.replace("memory", "redis");
        assert!(spec_from_manifest(&bad)
            .unwrap_err()
            .to_string()
            .contains("redis"));
        let typo = ok.replace("  providers:", "  stratgy: BestEffort\n  providers:");
        let err = spec_from_manifest(&typo).unwrap_err().to_string();
        assert!(
            err.contains("spec.stratgy") && err.contains("misspelt"),
            "{err}"
        );
    }
}
