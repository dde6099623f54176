//! Kafka provider (next issue).
