//! The message every provider carries, and its wire form on the brokers.
//!
//! On NATS and Kafka a message is JSON with exactly the keys `id`, `timestamp` (unix seconds),
//! `source`, `payload` (standard base64) and `metadata` — the form the existing Go services read
//! and write (`encoding/json` of the seed's `DataMessage`), so consumers of either broker move
//! without a code change. Keys are emitted in that order and metadata keys sorted, as Go does.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Longest message id accepted from a client (ids travel as NATS headers and Kafka keys).
pub const MAX_ID_LEN: usize = 128;

/// One message, as ingested and as stored on every broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataMessage {
    /// Stable id, the same on every broker and every replay; brokers de-duplicate by it.
    pub id: String,
    /// Unix seconds at ingest.
    pub timestamp: i64,
    /// Who sent it (free text from the client).
    pub source: String,
    /// Opaque bytes; base64 on the wire.
    #[serde(serialize_with = "ser_b64", deserialize_with = "de_b64")]
    pub payload: Bytes,
    /// Free-form string pairs; `null` (a nil Go map) reads as empty.
    #[serde(default, deserialize_with = "de_metadata")]
    pub metadata: BTreeMap<String, String>,
}

impl DataMessage {
    /// A new message with a fresh time-ordered id (UUIDv7) stamped now.
    pub fn new(source: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            timestamp: chrono::Utc::now().timestamp(),
            source: source.into(),
            payload: payload.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// The JSON bytes written to a broker.
    pub fn to_wire(&self) -> Vec<u8> {
        // Serializing a struct of strings, bytes and a string map cannot fail.
        serde_json::to_vec(self).expect("DataMessage always serializes")
    }

    /// Parses the JSON bytes read from a broker.
    pub fn from_wire(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The digest of what the message says: its source, payload and metadata. Two messages with
    /// the same id and the same digest are the same message (a retry); with another digest, a
    /// conflict. The id is what a digest is compared under and the timestamp is the relay's
    /// (a retry is stamped anew), so neither is part of it.
    pub fn content_digest(&self) -> ContentDigest {
        // Each field is preceded by its length (8 bytes, big-endian), and the metadata by its
        // number of pairs, so no two different contents encode to the same bytes.
        fn field(h: &mut Sha256, bytes: &[u8]) {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let mut h = Sha256::new();
        field(&mut h, self.source.as_bytes());
        field(&mut h, &self.payload);
        h.update((self.metadata.len() as u64).to_be_bytes());
        for (k, v) in &self.metadata {
            field(&mut h, k.as_bytes());
            field(&mut h, v.as_bytes());
        }
        ContentDigest(h.finalize().into())
    }
}

/// The header that carries a message's [`ContentDigest`] on NATS and on Kafka.
pub const DIGEST_HEADER: &str = "Dualwrite-Digest";

/// SHA-256 of a message's content ([`DataMessage::content_digest`]); written
/// `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentDigest(pub [u8; 32]);

impl ContentDigest {
    const PREFIX: &'static str = "sha256:";
    /// The length of its text form (`sha256:` and 64 hex digits): what the header's value takes.
    pub const TEXT_LEN: usize = Self::PREFIX.len() + 64;
}

impl std::fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for ContentDigest {
    type Err = String;

    /// Reads `sha256:<hex>` (what [`DIGEST_HEADER`] holds).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a content digest (sha256:<64 hex digits>)");
        let hex = s.strip_prefix(Self::PREFIX).ok_or_else(bad)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(out))
    }
}

/// Why a client-chosen message id is refused (the text is what the client reads in a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("id must be 1 to {MAX_ID_LEN} characters long")]
    IdLength,
    #[error("id contains {0:?}; use only letters, digits and . _ : -")]
    IdCharacter(char),
}

/// Checks a client-chosen id: non-empty, at most [`MAX_ID_LEN`] bytes, and only characters that
/// are safe in a NATS header and a Kafka key (`A-Z a-z 0-9 . _ : -`).
pub fn validate_id(id: &str) -> Result<(), MessageError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(MessageError::IdLength);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(MessageError::IdCharacter(c));
    }
    Ok(())
}

fn ser_b64<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    // Go encodes a nil []byte as null.
    let text: Option<String> = Option::deserialize(d)?;
    match text {
        None => Ok(Bytes::new()),
        Some(t) => base64::engine::general_purpose::STANDARD
            .decode(t.as_bytes())
            .map(Bytes::from)
            .map_err(|e| serde::de::Error::custom(format!("payload is not standard base64: {e}"))),
    }
}

fn de_metadata<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly what Go's `json.Marshal` prints for the seed's DataMessage with these values.
    const GO_SAMPLE: &str = r#"{"id":"0192f4b8-6c1e-7cc0-9a57-3d1f0e4b2a11","timestamp":1732600000,"source":"test","payload":"ZHVhbC13cml0ZSB0ZXN0","metadata":{"content-type":"text/plain","tenant":"acme"}}"#;

    #[test]
    fn decodes_and_reencodes_the_go_wire_form_byte_for_byte() {
        let msg = DataMessage::from_wire(GO_SAMPLE.as_bytes()).unwrap();
        assert_eq!(msg.id, "0192f4b8-6c1e-7cc0-9a57-3d1f0e4b2a11");
        assert_eq!(msg.timestamp, 1_732_600_000);
        assert_eq!(msg.source, "test");
        assert_eq!(&msg.payload[..], b"dual-write test");
        assert_eq!(msg.metadata["tenant"], "acme");
        assert_eq!(String::from_utf8(msg.to_wire()).unwrap(), GO_SAMPLE);
    }

    #[test]
    fn go_nil_map_and_nil_bytes_read_as_empty() {
        let msg = DataMessage::from_wire(
            br#"{"id":"a","timestamp":1,"source":"s","payload":null,"metadata":null}"#,
        )
        .unwrap();
        assert!(msg.payload.is_empty());
        assert!(msg.metadata.is_empty());
        assert_eq!(
            String::from_utf8(msg.to_wire()).unwrap(),
            r#"{"id":"a","timestamp":1,"source":"s","payload":"","metadata":{}}"#
        );
    }

    #[test]
    fn bad_base64_is_a_clear_error() {
        let err = DataMessage::from_wire(
            br#"{"id":"a","timestamp":1,"source":"s","payload":"%%","metadata":{}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("payload is not standard base64"),
            "{err}"
        );
    }

    #[test]
    fn new_messages_get_distinct_ids() {
        let a = DataMessage::new("s", "x");
        let b = DataMessage::new("s", "x");
        assert_ne!(a.id, b.id);
        validate_id(&a.id).unwrap();
    }

    #[test]
    fn content_digest_covers_source_payload_and_metadata_only() {
        let mut a = DataMessage::new("s", "one");
        a.metadata.insert("k".into(), "v".into());
        let mut retry = a.clone();
        retry.id = "other-id".into();
        retry.timestamp += 60;
        assert_eq!(
            a.content_digest(),
            retry.content_digest(),
            "id and timestamp are not content"
        );
        let changed = |f: &dyn Fn(&mut DataMessage)| {
            let mut m = a.clone();
            f(&mut m);
            m.content_digest()
        };
        let d = a.content_digest();
        assert_ne!(d, changed(&|m| m.source = "t".into()));
        assert_ne!(d, changed(&|m| m.payload = Bytes::from_static(b"two")));
        assert_ne!(
            d,
            changed(&|m| {
                m.metadata.insert("k".into(), "w".into());
            })
        );
        assert_ne!(d, changed(&|m| m.metadata.clear()));
        // Lengths are part of the encoding: moving bytes from one field to the next changes it.
        let mut x = DataMessage::new("ab", "c");
        let mut y = DataMessage::new("a", "bc");
        x.id = y.id.clone();
        assert_ne!(x.content_digest(), y.content_digest());
        y.metadata.insert(String::new(), String::new());
        assert_ne!(
            DataMessage::new("a", "bc").content_digest(),
            y.content_digest()
        );
    }

    #[test]
    fn content_digest_text_form() {
        // SHA-256 of the encoding of source "", payload "", no metadata: three zero lengths.
        let empty = DataMessage::new("", "").content_digest();
        assert_eq!(
            empty.to_string(),
            format!("sha256:{}", hex_sha256(&[0u8; 24]))
        );
        assert_eq!(empty.to_string().parse::<ContentDigest>().unwrap(), empty);
        for bad in [
            "",
            "sha256:",
            "md5:00",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<ContentDigest>().is_err(), "{bad:?}");
        }
    }

    fn hex_sha256(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn id_validation() {
        for ok in ["a", "order-42", "x.y:z_1", &"a".repeat(MAX_ID_LEN)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a\nb", "ü", &"a".repeat(MAX_ID_LEN + 1)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
