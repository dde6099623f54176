//! The message every provider carries, and its wire form on the brokers.
//!
//! On NATS and Kafka a message is JSON with exactly the keys `id`, `timestamp` (unix seconds),
//! `source`, `payload` (standard base64) and `metadata` — the form the existing Go services read
//! and write (`encoding/json` of the seed's `DataMessage`), so consumers of either broker move
//! without a code change. Keys are emitted in that order and metadata keys sorted, as Go does.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

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

    /// The JSON bytes written to a broker: byte for byte what `serde_json::to_vec(self)` gives,
    /// written straight into one buffer of the right size (the base64 of the payload included,
    /// with no intermediate string).
    pub fn to_wire(&self) -> Vec<u8> {
        let b64 = base64::encoded_len(self.payload.len(), true).unwrap_or(0);
        // Quotes, colons and commas per pair; escapes can only make it grow past this guess.
        let meta: usize = self
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 6)
            .sum();
        let mut out = Vec::with_capacity(72 + self.id.len() + self.source.len() + b64 + meta);
        out.extend_from_slice(b"{\"id\":");
        json_str(&mut out, &self.id);
        out.extend_from_slice(b",\"timestamp\":");
        out.extend_from_slice(self.timestamp.to_string().as_bytes());
        out.extend_from_slice(b",\"source\":");
        json_str(&mut out, &self.source);
        out.extend_from_slice(b",\"payload\":\"");
        let at = out.len();
        out.resize(at + b64, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.payload, &mut out[at..])
            .expect("the buffer has the base64 length");
        out.truncate(at + written);
        out.extend_from_slice(b"\",\"metadata\":{");
        for (i, (k, v)) in self.metadata.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(&mut out, k);
            out.push(b':');
            json_str(&mut out, v);
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// This message on its way to the brokers: its wire form and content digest, each computed
    /// at most once however many providers write it (see [`Outgoing`]).
    pub fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            msg: self,
            wire: OnceLock::new(),
            digest: OnceLock::new(),
            digest_text: OnceLock::new(),
            owned: OnceLock::new(),
        }
    }

    /// [`DataMessage::outgoing`] with the digest already computed (by the caller, from this
    /// message's content).
    pub fn outgoing_with_digest(&self, digest: ContentDigest) -> Outgoing<'_> {
        let out = self.outgoing();
        let _ = out.digest.set(digest);
        out
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

/// A JSON string (quoted and escaped as serde_json does) appended to `out`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("a string always serializes");
}

/// A message on its way out: what every provider needs of it besides its fields, computed at
/// most once for all of them — the wire JSON ([`DataMessage::to_wire`], shared as [`Bytes`]
/// without a copy), the [`ContentDigest`] and its text, and an owned copy for providers that
/// keep the message itself ([`Outgoing::owned`]). It borrows the message, so the message cannot
/// change while these are cached.
#[derive(Debug)]
pub struct Outgoing<'a> {
    msg: &'a DataMessage,
    wire: OnceLock<Bytes>,
    digest: OnceLock<ContentDigest>,
    digest_text: OnceLock<String>,
    owned: OnceLock<Arc<DataMessage>>,
}

impl<'a> Outgoing<'a> {
    pub fn message(&self) -> &'a DataMessage {
        self.msg
    }

    /// The JSON bytes written to a broker (a cheap clone of one buffer).
    pub fn wire(&self) -> &Bytes {
        self.wire.get_or_init(|| Bytes::from(self.msg.to_wire()))
    }

    /// The message's [`ContentDigest`].
    pub fn digest(&self) -> ContentDigest {
        *self.digest.get_or_init(|| self.msg.content_digest())
    }

    /// The digest's text form, what the [`DIGEST_HEADER`] holds.
    pub fn digest_text(&self) -> &str {
        self.digest_text.get_or_init(|| self.digest().to_string())
    }

    /// An owned copy of the message, made once and shared by every provider that keeps it (two
    /// memory queues hold one copy, not two).
    pub fn owned(&self) -> Arc<DataMessage> {
        self.owned
            .get_or_init(|| Arc::new(self.msg.clone()))
            .clone()
    }
}

impl std::ops::Deref for Outgoing<'_> {
    type Target = DataMessage;

    fn deref(&self) -> &DataMessage {
        self.msg
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
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; Self::TEXT_LEN];
        text[..Self::PREFIX.len()].copy_from_slice(Self::PREFIX.as_bytes());
        for (i, b) in self.0.iter().enumerate() {
            let at = Self::PREFIX.len() + 2 * i;
            text[at] = HEX[usize::from(b >> 4)];
            text[at + 1] = HEX[usize::from(b & 0x0f)];
        }
        // Only ASCII was written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| std::fmt::Error)?)
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
    fn to_wire_is_the_serde_form_byte_for_byte() {
        let mut tricky =
            DataMessage::new("s\"o\\u\nrce \u{1}é", Bytes::from_static(&[0, 255, 1, 2]));
        tricky.id = "id-1".into();
        tricky.timestamp = -5;
        tricky.metadata.insert("k\"ey".into(), "v\talue ü".into());
        tricky.metadata.insert("a".into(), String::new());
        let mut samples = vec![
            tricky,
            DataMessage::new("", ""),
            DataMessage::new("s", vec![7u8; 1000]),
        ];
        for len in 0..5 {
            samples.push(DataMessage::new("s", vec![b'x'; len]));
        }
        for msg in samples {
            assert_eq!(
                String::from_utf8(msg.to_wire()).unwrap(),
                String::from_utf8(serde_json::to_vec(&msg).unwrap()).unwrap()
            );
            assert_eq!(DataMessage::from_wire(&msg.to_wire()).unwrap(), msg);
        }
    }

    #[test]
    fn outgoing_computes_each_encoding_once() {
        let mut msg = DataMessage::new("s", "payload");
        msg.metadata.insert("k".into(), "v".into());
        let out = msg.outgoing();
        let wire = out.wire().clone();
        assert_eq!(&wire[..], &msg.to_wire()[..]);
        assert_eq!(
            out.wire().as_ptr(),
            wire.as_ptr(),
            "the second caller shares the first one's buffer"
        );
        assert_eq!(out.digest(), msg.content_digest());
        assert_eq!(out.digest_text(), msg.content_digest().to_string());
        assert_eq!(out.digest_text().as_ptr(), out.digest_text().as_ptr());
        assert_eq!(out.id, msg.id);
        // One owned copy for every provider that keeps the message (the memory queues).
        let owned = out.owned();
        assert_eq!(*owned, msg);
        assert!(Arc::ptr_eq(&owned, &out.owned()));
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
