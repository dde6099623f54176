//! The rules a spec's strings follow, written once: the CRD's schema takes these patterns and
//! CEL rules (`regex(pattern = ...)`, `Rule::new(...)`), and the validator checks the same ones.

/// A provider name: a DNS label.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A concrete NATS subject: dot-separated non-empty tokens, no wildcards, no whitespace.
pub const NATS_SUBJECT: &str = r"^[^\s*>.]+(\.[^\s*>.]+)*$";
/// A Kafka topic's characters (Kafka's rule; `.` and `..` alone are refused by a CEL rule).
pub const KAFKA_TOPIC: &str = r"^[a-zA-Z0-9._-]+$";
/// NATS server URLs, comma-separated: an optional scheme of nats, tls, ws or wss, optional
/// user info, a host name or a bracketed IPv6 address, an optional port.
pub const NATS_URLS: &str = r"^ *((nats|tls|ws|wss)://)?([^\s,/@]+@)?(\[[0-9a-fA-F:.]+\]|[^\s,/:@\[\]]+)(:[0-9]+)?/? *( *, *((nats|tls|ws|wss)://)?([^\s,/@]+@)?(\[[0-9a-fA-F:.]+\]|[^\s,/:@\[\]]+)(:[0-9]+)?/? *)*$";
/// A Kafka record key (`kafka.key`): `id`, `source`, or `metadata:<field>` (a metadata field
/// name without whitespace).
pub const KAFKA_KEY: &str = r"^(id|source|metadata:\S+)$";
/// The CRD's rule tying `minInsyncReplicas` to the replication factor a created topic gets.
pub const KAFKA_MIN_ISR_RULE: &str = "!has(self.minInsyncReplicas) || self.minInsyncReplicas <= (has(self.replicationFactor) ? self.replicationFactor : 1)";
/// Its message.
pub const KAFKA_MIN_ISR_MESSAGE: &str = "kafka.minInsyncReplicas must not exceed kafka.replicationFactor (default 1): no write could ever be acknowledged";
/// A bootstrap server, `host:port`.
pub const KAFKA_BROKER: &str = r"^[^\s,]+:[0-9]+$";
/// A publish deadline: not zero, in ms, s or m.
pub const TIMEOUT: &str = r"^([0-9]*[1-9][0-9]*(ms|s|m))+$";
/// A duration in ms, s, m or h.
pub const DURATION_MS: &str = r"^([0-9]+(ms|s|m|h))+$";
/// A duration in s, m or h.
pub const DURATION: &str = r"^([0-9]+(s|m|h))+$";

/// One item of a cron field: `*` or `?` with an optional step, or a number or three-letter
/// name (`MON`, `JAN`) with an optional range end and step.
macro_rules! cron_item {
    () => {
        r"((\*|\?)(/[0-9]+)?|([0-9]+|[A-Za-z]{3})(-([0-9]+|[A-Za-z]{3}))?(/[0-9]+)?)"
    };
}
/// One cron field: items separated by commas.
macro_rules! cron_field {
    () => {
        concat!(cron_item!(), "(,", cron_item!(), ")*")
    };
}
/// A CronJob schedule: five fields (minute hour day-of-month month day-of-week) separated by
/// spaces, or one of the descriptors `@hourly`, `@daily`, `@midnight`, `@weekly`, `@monthly`,
/// `@yearly`, `@annually`. No `TZ=` prefix (Kubernetes refuses it in `schedule`). The values'
/// ranges (a minute of 60) are left to the API server, which refuses the CronJob.
pub const CRON_SCHEDULE: &str = concat!(
    "^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|",
    cron_field!(),
    "( +",
    cron_field!(),
    "){4})$"
);
/// A CronJob's name is at most 52 characters (its Jobs add 11), so a pipeline with a scheduled
/// check (`<name>-verify`) is at most 45 characters long. The CRD's rule at the root, where
/// the name is seen.
pub const SCHEDULED_NAME_RULE: &str = "!has(self.spec.consistency) || !has(self.spec.consistency.schedule) || size(self.metadata.name) <= 45";
/// Its message.
pub const SCHEDULED_NAME_MESSAGE: &str = "metadata.name: a pipeline with spec.consistency.schedule is at most 45 characters long (its CronJob <name>-verify may have at most 52)";

/// Longest pipeline name: `<name>-relay` and a StatefulSet's `<name>-relay-<10-char hash>`
/// revision label must stay within 63 characters.
pub const MAX_PIPELINE_NAME: usize = 46;
/// The CRD's rule on `metadata.name` (only the API server sees a resource's name).
pub const PIPELINE_NAME_RULE: &str =
    "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 46";
/// Its message.
pub const PIPELINE_NAME_MESSAGE: &str = "metadata.name: a pipeline's name must start with a letter, hold only lower case letters, digits and '-', end with a letter or digit, and be at most 46 characters (it names the relay's Service and StatefulSet)";

/// A Secret's name: a DNS subdomain.
pub const SECRET_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key within a Secret (Kubernetes' rule for ConfigMap and Secret keys).
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// The librdkafka settings `kafka.config` may hold: tuning only. Everything about security
/// (`security.protocol`, `ssl.*`, `sasl.*`, plugins, Kerberos commands) goes through the typed
/// `tls` and `authentication` fields, and the delivery guarantees (`acks=all`, idempotence, a
/// finite message timeout derived from `publishTimeout`) cannot be changed. An allowlist, so a
/// key librdkafka adds later is refused until someone decides it is safe.
macro_rules! kafka_config_allowlist {
    ($m:ident) => {
        $m!(
            "batch.num.messages",
            "batch.size",
            "broker.address.family",
            "client.id",
            "client.rack",
            "compression.codec",
            "compression.level",
            "compression.type",
            "connections.max.idle.ms",
            "fetch.max.bytes",
            "fetch.min.bytes",
            "fetch.wait.max.ms",
            "heartbeat.interval.ms",
            "linger.ms",
            "max.partition.fetch.bytes",
            "max.poll.interval.ms",
            "message.max.bytes",
            "metadata.max.age.ms",
            "partitioner",
            "queue.buffering.max.kbytes",
            "queue.buffering.max.messages",
            "queue.buffering.max.ms",
            "receive.message.max.bytes",
            "reconnect.backoff.max.ms",
            "reconnect.backoff.ms",
            "request.timeout.ms",
            "retry.backoff.max.ms",
            "retry.backoff.ms",
            "session.timeout.ms",
            "socket.keepalive.enable",
            "socket.receive.buffer.bytes",
            "socket.send.buffer.bytes",
            "socket.timeout.ms",
            "statistics.interval.ms",
            "sticky.partitioning.linger.ms",
            "topic.metadata.refresh.interval.ms"
        )
    };
}
macro_rules! as_array {
    ($($k:literal),*) => { [$($k),*] };
}
// A CEL map literal, not a list: membership in a map is a constant-cost lookup for the API
// server's cost estimator, which refuses a list scan per key of an unbounded map.
macro_rules! as_cel_list {
    ($($k:literal),*) => { concat!("{", $("'", $k, "': true, ",)* "}") };
}
/// The keys `kafka.config` accepts.
pub const KAFKA_CONFIG_ALLOWED: &[&str] = &kafka_config_allowlist!(as_array);
/// The CRD's rule for `kafka.config` (the same list).
pub const KAFKA_CONFIG_RULE: &str = concat!(
    "!has(self.config) || self.config.all(k, k in ",
    kafka_config_allowlist!(as_cel_list),
    ")"
);
/// The CRD's message naming a refused key (the first; the relay's validator names them all).
pub const KAFKA_CONFIG_MESSAGE: &str = concat!(
    "'kafka.config: ' + self.config.filter(k, !(k in ",
    kafka_config_allowlist!(as_cel_list),
    "))[0] + ' is not allowed: only tuning settings (batching, linger, compression, buffering, timeouts, client.id); security goes through tls and authentication, and acks, idempotence and the message timeout are fixed'"
);
