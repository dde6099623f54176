//! NATS JetStream provider (next issue).
