//! The on-disk form of one backlog entry: `[format 1][enqueued-at unix millis, 8 bytes
//! big-endian][the message's wire JSON]`. The version byte lets a later format be told apart;
//! the enqueue time sits in front so that `max_age` can be judged without parsing the message.

use crate::message::DataMessage;

/// Entry layout version, so a later format can be told apart from this one.
pub(super) const FORMAT_V1: u8 = 1;
/// Version byte + enqueue time.
const HEADER_LEN: usize = 9;

/// Why a stored entry cannot be turned back into a message. Such an entry is logged, dropped by
/// replay and counted as missed; it never reaches a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum EntryError {
    #[error("empty entry")]
    Empty,
    #[error("unknown entry format {0}")]
    UnknownFormat(u8),
    #[error("entry of {0} bytes is truncated")]
    Truncated(usize),
    /// The JSON did not parse (serde's text: its error is neither `Clone` nor `Eq`).
    #[error("not a message: {0}")]
    NotAMessage(String),
}

pub(super) fn encode_entry(enqueued_ms: u64, wire: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + wire.len());
    value.push(FORMAT_V1);
    value.extend_from_slice(&enqueued_ms.to_be_bytes());
    value.extend_from_slice(wire);
    value
}

pub(super) fn decode_entry(value: &[u8]) -> Result<DataMessage, EntryError> {
    match value.first() {
        Some(&FORMAT_V1) if value.len() >= HEADER_LEN => {
            DataMessage::from_wire(&value[HEADER_LEN..])
                .map_err(|e| EntryError::NotAMessage(e.to_string()))
        }
        Some(&FORMAT_V1) => Err(EntryError::Truncated(value.len())),
        Some(v) => Err(EntryError::UnknownFormat(*v)),
        None => Err(EntryError::Empty),
    }
}

/// The enqueue time of an entry; 0 (as old as can be) when unreadable, so a broken entry
/// counts against `max_age` rather than hiding.
pub(super) fn entry_millis(value: &[u8]) -> u64 {
    match value.get(1..HEADER_LEN) {
        Some(b) if value[0] == FORMAT_V1 => {
            let mut millis = [0u8; 8];
            millis.copy_from_slice(b);
            u64::from_be_bytes(millis)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::numbered as msg;

    #[test]
    fn entry_encoding_round_trips() {
        let m = msg(7);
        let value = encode_entry(0x0102_0304_0506_0708, &m.to_wire());
        assert_eq!(value[0], FORMAT_V1);
        assert_eq!(&value[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(entry_millis(&value), 0x0102_0304_0506_0708);
        assert_eq!(decode_entry(&value), Ok(m));
        assert!(decode_entry(&[]).is_err());
        assert!(decode_entry(&[FORMAT_V1, 0]).is_err());
        assert_eq!(entry_millis(&[FORMAT_V1, 0]), 0);
    }
}
