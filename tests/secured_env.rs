//! The build and the secured test environment, checked with plain clients (not the relay's
//! providers): librdkafka as built here speaks TLS and SASL SCRAM-SHA-512 to Kafka's `SASL_SSL`
//! listener (one record produced and read back; a wrong password fails the delivery with an
//! authentication error within a bound), and the `nats-tls` server accepts TLS with the test CA
//! plus a user/password or an nkey, and refuses a wrong password.
//!
//! Addresses and credentials come from `target/test-env/env.sh` (`hack/test-env up`):
//! `KAFKA_SASL_SSL_BROKERS`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`, `NATS_TLS_URL`,
//! `NATS_USER`, `NATS_PASSWORD`, `NATS_NKEY_SEED_FILE`, `TEST_CA_FILE`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Bound on one produce (delivery report) and on reading the record back.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// `message.timeout.ms` of the wrong-password producer: its delivery must fail within this
/// (plus the slack below), whatever error librdkafka reports it with.
const WRONG_PASSWORD_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the `SASL_SSL` listener.
struct SaslSsl {
    brokers: String,
    username: String,
    password: String,
    ca_file: String,
}

impl SaslSsl {
    fn from_env() -> Option<Self> {
        Some(Self {
            brokers: common::require_env("KAFKA_SASL_SSL_BROKERS")?,
            username: common::require_env("KAFKA_SASL_USERNAME")?,
            password: common::require_env("KAFKA_SASL_PASSWORD")?,
            ca_file: common::require_env("TEST_CA_FILE")?,
        })
    }

    /// A client configuration for SCRAM-SHA-512 over TLS, the server certificate checked
    /// against the test CA (and its name: librdkafka verifies the endpoint by default).
    fn client_config(&self, password: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", &self.username)
            .set("sasl.password", password)
            .set("ssl.ca.location", &self.ca_file)
            .set("ssl.endpoint.identification.algorithm", "https");
        c
    }
}

/// Without any broker: clients asking for TLS, and for SASL_SSL with each mechanism the relay
/// offers, can be created; a librdkafka built without OpenSSL refuses them ("OpenSSL not
/// available at build time", or an unsupported SASL mechanism).
#[test]
fn librdkafka_is_built_with_tls_plain_and_scram() {
    let mut cases = vec![("SSL", None)];
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        cases.push(("SASL_SSL", Some(mechanism)));
    }
    for (protocol, mechanism) in cases {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:9")
            .set("security.protocol", protocol);
        if let Some(mechanism) = mechanism {
            config
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", "nobody")
                .set("sasl.password", "unused");
        }
        if let Err(e) = config.create::<FutureProducer>() {
            panic!(
                "librdkafka refuses {protocol} {mechanism:?}: {e} (is rdkafka's `ssl` feature on?)"
            );
        }
    }
}

#[tokio::test]
async fn sasl_ssl_scram_produces_and_reads_back_one_record() {
    let Some(kafka) = SaslSsl::from_env() else {
        return;
    };
    let topic = common::unique("dwtest-sasl");

    // The topic is created over the secured listener too (admin API, same credentials).
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(&kafka.password)
        .create()
        .expect("an admin client for SASL_SSL");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        )
        .await
        .expect("CreateTopics over SASL_SSL");
    assert!(
        created.iter().all(Result::is_ok),
        "creating {topic}: {created:?}"
    );

    let producer: FutureProducer = kafka
        .client_config(&kafka.password)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
        .create()
        .expect("a SASL_SSL producer");
    let payload = common::unique("secured-payload");
    let delivered = producer
        .send(
            FutureRecord::to(&topic).key("k1").payload(&payload),
            KAFKA_TIMEOUT,
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the record is delivered over SASL_SSL");

    let consumer: StreamConsumer = kafka
        .client_config(&kafka.password)
        .set("group.id", common::unique("dwtest-sasl-group"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a SASL_SSL consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &topic,
        delivered.partition,
        Offset::Offset(delivered.offset),
    )
    .unwrap();
    consumer.assign(&tpl).unwrap();
    let record = tokio::time::timeout(KAFKA_TIMEOUT, consumer.recv())
        .await
        .expect("a record within the timeout")
        .expect("the consumer reads over SASL_SSL");
    assert_eq!(record.key(), Some(&b"k1"[..]));
    assert_eq!(record.payload(), Some(payload.as_bytes()));
    assert_eq!(record.offset(), delivered.offset);
    producer.flush(KAFKA_TIMEOUT).unwrap();
}

/// Records the errors librdkafka reports for the client as a whole (its error callback), where
/// an authentication failure shows even when a delivery report only says "timed out".
#[derive(Clone, Default)]
struct ErrorLog(Arc<Mutex<Vec<KafkaError>>>);

impl ClientContext for ErrorLog {
    fn error(&self, error: KafkaError, _reason: &str) {
        // A std Mutex: held for a push, never across an await.
        self.0.lock().unwrap().push(error);
    }
}

fn is_authentication(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication)
}

#[tokio::test]
async fn sasl_ssl_wrong_password_fails_delivery_with_an_authentication_error() {
    let Some(kafka) = SaslSsl::from_env() else {
        return;
    };
    let errors = ErrorLog::default();
    let producer: FutureProducer<ErrorLog> = kafka
        .client_config("not-the-password")
        .set(
            "message.timeout.ms",
            WRONG_PASSWORD_MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        .create_with_context(errors.clone())
        .expect("the producer is created; authentication happens on connect");
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        WRONG_PASSWORD_MESSAGE_TIMEOUT + Duration::from_secs(10),
        producer.send(
            FutureRecord::to(&common::unique("dwtest-sasl-refused"))
                .key("k")
                .payload("never stored"),
            Duration::from_secs(1),
        ),
    )
    .await
    .expect("the delivery report comes within message.timeout.ms");
    let elapsed = started.elapsed();
    let (delivery_error, _) = outcome.expect_err("a wrong password must not deliver");
    let reported = errors.0.lock().unwrap().clone();
    // librdkafka 2.12 fails the delivery itself with `MessageTimedOut` (it keeps retrying the
    // connection until message.timeout.ms); the cause, `Authentication`, comes through the
    // client's error callback within about a second. Either place counts.
    assert!(
        is_authentication(&delivery_error) || reported.iter().any(is_authentication),
        "expected an authentication error; delivery failed with {delivery_error:?} after \
         {elapsed:?}, client errors: {reported:?}"
    );
    eprintln!(
        "wrong password: delivery failed after {elapsed:?} with {delivery_error}; \
         client errors: {reported:?}"
    );
}

/// Connect options for the `nats-tls` server: TLS required, the test CA as the only root.
fn nats_tls_options(
    options: async_nats::ConnectOptions,
    ca_file: &str,
) -> async_nats::ConnectOptions {
    options
        .require_tls(true)
        .add_root_certificates(ca_file.into())
        .connection_timeout(NATS_TIMEOUT)
}

/// Publishes one message to a fresh subject and receives it on the same connection.
async fn nats_round_trip(client: &async_nats::Client) {
    let subject = common::unique("dwtest.tls");
    let mut sub = client.subscribe(subject.clone()).await.unwrap();
    client.flush().await.unwrap();
    client.publish(subject, "over tls".into()).await.unwrap();
    let msg = tokio::time::timeout(NATS_TIMEOUT, sub.next())
        .await
        .expect("the message within the timeout")
        .expect("the subscription is open");
    assert_eq!(&msg.payload[..], b"over tls");
}

#[tokio::test]
async fn nats_tls_accepts_user_password_and_nkey_and_refuses_a_wrong_password() {
    let (Some(url), Some(user), Some(password), Some(seed_file), Some(ca_file)) = (
        common::require_env("NATS_TLS_URL"),
        common::require_env("NATS_USER"),
        common::require_env("NATS_PASSWORD"),
        common::require_env("NATS_NKEY_SEED_FILE"),
        common::require_env("TEST_CA_FILE"),
    ) else {
        return;
    };

    let by_password = nats_tls_options(
        async_nats::ConnectOptions::with_user_and_password(user.clone(), password),
        &ca_file,
    )
    .connect(url.as_str())
    .await
    .expect("user/password over TLS connects");
    nats_round_trip(&by_password).await;
    // JetStream answers on the secured server too.
    async_nats::jetstream::new(by_password.clone())
        .query_account()
        .await
        .expect("JetStream account info over TLS");

    let seed = std::fs::read_to_string(&seed_file).expect("the nkey seed file");
    let by_nkey = nats_tls_options(
        async_nats::ConnectOptions::with_nkey(seed.trim().to_string()),
        &ca_file,
    )
    .connect(url.as_str())
    .await
    .expect("the nkey user over TLS connects");
    nats_round_trip(&by_nkey).await;

    let refused = nats_tls_options(
        async_nats::ConnectOptions::with_user_and_password(user, "not-the-password".into()),
        &ca_file,
    )
    .connect(url.as_str())
    .await;
    match refused {
        Err(e) => assert_eq!(
            e.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "a wrong password is refused as an authorization violation: {e}"
        ),
        Ok(_) => panic!("a wrong password must be refused"),
    }
}
