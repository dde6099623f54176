//! `POST /api/v1/ingest/batch`: many messages in one request, a JSON array of the single
//! endpoint's objects or NDJSON (`Content-Type: application/x-ndjson`, one object a line).
//!
//! 1. Every element is parsed and checked (fields, id, size against the brokers' limit) before
//!    any write: one bad element refuses the whole batch (400, or 413 for size and count),
//!    naming its index (`[3]`), and nothing is written.
//! 2. Each id is decided by the de-duplication window as a single request's would be (the same
//!    id twice inside the batch: same content → a duplicate of the first, other content → a
//!    conflict). Claims are taken in id order, so two batches sharing ids cannot each hold one
//!    the other waits for.
//! 3. The fresh messages go to the composite's batch path: each provider gets them pipelined
//!    in one `Provider::publish_batch` (one flush, not a round trip each), and the strategy
//!    decides each message.
//! 4. The answer lists every message in request order, and its status is 202 only when every
//!    message was accepted (503 when a provider failed one, 409 when only conflicts), so a client
//!    that reads only the status cannot miss a partial failure.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::http::{read_body, IngestRequest};
use super::metrics::IngestMetrics;
use super::window::{Claim, Verdict};
use super::Relay;
use crate::composite::{PublishError, PublishReport};
use crate::message::DataMessage;

/// The media type of a newline-delimited batch.
pub const NDJSON: &str = "application/x-ndjson";

/// Why a batch is refused before any write.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    index: Option<usize>,
    message: String,
}

impl Refusal {
    fn bad(index: Option<usize>, message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            index,
            message,
        }
    }

    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(i) = self.index {
            body["index"] = i.into();
        }
        (self.status, Json(body)).into_response()
    }
}

/// What each message of the batch came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Accepted,
    Duplicate,
    Failed,
    Conflict,
}

/// A message's row in the answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    index: usize,
    message_id: String,
    status: Status,
    /// Providers that acknowledged it.
    providers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    deferred_providers: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_providers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Row {
    fn new(index: usize, message_id: String, status: Status) -> Self {
        Self {
            index,
            message_id,
            status,
            providers: Vec::new(),
            deferred_providers: Vec::new(),
            failed_providers: Vec::new(),
            error: None,
        }
    }
}

/// The answer's body.
#[derive(Debug, Serialize)]
struct Answer {
    /// Accepted now or before (duplicates).
    accepted: usize,
    /// Failed or refused as conflicts.
    failed: usize,
    results: Vec<Row>,
}

pub(super) async fn ingest_batch(
    State(relay): State<Arc<Relay>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let m = &relay.metrics;
    let body = match read_body(&relay, body) {
        Ok(b) => b,
        Err((status, message)) => return super::http::error(status, message),
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with(NDJSON));
    let composite = relay.composite();
    let msgs = match parse(&body, ndjson, relay.max_batch_messages()).and_then(|msgs| {
        for (i, msg) in msgs.iter().enumerate() {
            composite.check_size(&msg.outgoing()).map_err(|e| Refusal {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                index: Some(i),
                message: format!("[{i}]: {e}; nothing of the batch was written"),
            })?;
        }
        Ok(msgs)
    }) {
        Ok(msgs) => msgs,
        Err(refusal) => {
            IngestMetrics::count(if refusal.status == StatusCode::PAYLOAD_TOO_LARGE {
                &m.too_large
            } else {
                &m.bad_request
            });
            return refusal.into_response();
        }
    };
    IngestMetrics::count(&m.batches);
    m.batch_messages
        .fetch_add(msgs.len() as u64, std::sync::atomic::Ordering::Relaxed);
    // The write and its bookkeeping run detached from the request: a request dropped on its
    // timeout or by the client must not cut between the brokers' acknowledgements and the
    // backlog appends, window records and counters that follow them.
    let task = super::detach::run_detached({
        let relay = Arc::clone(&relay);
        async move {
            let rows = write(&relay, composite, msgs).await;
            let m = &relay.metrics;
            let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
            let counts = (
                count(Status::Accepted),
                count(Status::Duplicate),
                count(Status::Failed),
                count(Status::Conflict),
            );
            let (accepted, duplicate, failed, conflict) = counts;
            for (n, counter) in [
                (accepted, &m.accepted),
                (duplicate, &m.duplicate),
                (failed, &m.unavailable),
                (conflict, &m.conflict),
            ] {
                counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            (rows, counts)
        }
    });
    let (rows, (accepted, duplicate, failed, conflict)) = match task.await {
        Ok(done) => done,
        Err(e) => {
            return super::http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the batch's write failed: {e}"),
            )
        }
    };
    let status = if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if conflict > 0 {
        StatusCode::CONFLICT
    } else {
        StatusCode::ACCEPTED
    };
    let answer = Answer {
        accepted: accepted + duplicate,
        failed: failed + conflict,
        results: rows,
    };
    (status, Json(answer)).into_response()
}

/// The role of a message inside its batch.
enum Role {
    /// The first with its id: decided by the window, maybe written.
    First,
    /// The same id and content as an earlier element: answered as that one was.
    SameAs(usize),
    /// The same id as an earlier element with other content: a conflict, not written.
    ConflictWith(usize),
}

/// Decides every message against the window, writes the fresh ones as one batch, and answers a
/// row per message in request order.
async fn write(
    relay: &Relay,
    mut composite: Arc<crate::composite::Composite>,
    msgs: Vec<DataMessage>,
) -> Vec<Row> {
    let digests: Vec<_> = msgs.iter().map(DataMessage::content_digest).collect();
    let mut first_of: HashMap<&str, usize> = HashMap::with_capacity(msgs.len());
    let roles: Vec<Role> = msgs
        .iter()
        .enumerate()
        .map(|(i, msg)| match first_of.get(msg.id.as_str()) {
            None => {
                first_of.insert(&msg.id, i);
                Role::First
            }
            Some(&j) if digests[j] == digests[i] => Role::SameAs(j),
            Some(&j) => Role::ConflictWith(j),
        })
        .collect();
    // Claims in id order (a lock order): two batches that share ids never wait on each other.
    let mut order: Vec<usize> = first_of.into_values().collect();
    order.sort_unstable_by(|a, b| msgs[*a].id.cmp(&msgs[*b].id));
    let mut verdicts: Vec<Option<Verdict>> = (0..msgs.len()).map(|_| None).collect();
    for i in order {
        verdicts[i] = Some(relay.window.check(&msgs[i].id, digests[i]).await);
    }

    let ids: Vec<String> = msgs.iter().map(|m| m.id.clone()).collect();
    let mut rows: Vec<Option<Row>> = (0..msgs.len()).map(|_| None).collect();
    let mut fresh: Vec<(usize, Claim)> = Vec::new();
    let mut to_write = Vec::new();
    for (i, (msg, verdict)) in msgs.into_iter().zip(verdicts.iter_mut()).enumerate() {
        match verdict.take() {
            Some(Verdict::Fresh(claim)) => {
                fresh.push((i, claim));
                to_write.push(msg);
            }
            Some(Verdict::Duplicate) => {
                rows[i] = Some(Row::new(i, ids[i].clone(), Status::Duplicate));
            }
            Some(Verdict::Conflict { accepted }) => {
                let mut row = Row::new(i, ids[i].clone(), Status::Conflict);
                row.error = Some(conflict_message(relay, &ids[i], accepted));
                rows[i] = Some(row);
            }
            None => {} // a later element with an id seen in this batch: below
        }
    }

    // Sizes were checked on this composite before the window was asked.
    let mut results = composite.publish_batch_checked(&to_write).await;
    if results
        .iter()
        .all(|r| matches!(r, Err(PublishError::Closed)))
    {
        // The provider list was swapped while this request held the old composite: retry once
        // on the one in force now (nothing was written on the old one).
        let current = relay.composite();
        if !Arc::ptr_eq(&current, &composite) {
            composite = current;
            results = composite.publish_batch_detailed(&to_write).await;
        }
    }
    for ((i, claim), result) in fresh.into_iter().zip(results) {
        rows[i] = Some(row_of(i, ids[i].clone(), claim, result));
    }

    for (i, role) in roles.iter().enumerate() {
        let row = match role {
            Role::First => continue,
            Role::SameAs(j) => {
                let first = rows[*j].as_ref();
                let mut row = Row::new(i, ids[i].clone(), Status::Duplicate);
                match first.map(|f| (f.status, f)) {
                    Some((Status::Accepted | Status::Duplicate, f)) => {
                        row.providers = f.providers.clone();
                    }
                    Some((status, f)) => {
                        row.status = status;
                        row.error = Some(format!(
                            "the same message as [{j}] of this batch, which was not accepted: {}",
                            f.error.as_deref().unwrap_or("unknown")
                        ));
                    }
                    None => {
                        row.status = Status::Failed;
                        row.error = Some(format!("the same message as [{j}], not answered"));
                    }
                }
                row
            }
            Role::ConflictWith(j) => {
                let mut row = Row::new(i, ids[i].clone(), Status::Conflict);
                row.error = Some(format!(
                    "message id {:?} is used by [{j}] of this batch with different content \
                     (source, data or metadata); new content needs a new id",
                    ids[i]
                ));
                row
            }
        };
        rows[i] = Some(row);
    }
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                let mut row = Row::new(i, ids[i].clone(), Status::Failed);
                row.error = Some("not answered".into());
                row
            })
        })
        .collect()
}

/// The row of a message the composite wrote (or refused), settling its claim as the single
/// endpoint does.
fn row_of(i: usize, id: String, claim: Claim, result: Result<PublishReport, PublishError>) -> Row {
    match result {
        Ok(report) => {
            claim.accept();
            let mut row = Row::new(i, id, Status::Accepted);
            row.failed_providers = report
                .failed
                .iter()
                .map(|e| e.provider().to_string())
                .collect();
            row.providers = report.accepted;
            row.deferred_providers = report.deferred;
            row
        }
        Err(e) => {
            if matches!(e, PublishError::TooLarge { .. } | PublishError::Closed) {
                // Refused before any write: the id stays free.
                claim.release();
            } // otherwise the claim is dropped: attempted, maybe stored on a broker
            let mut row = Row::new(i, id, Status::Failed);
            row.failed_providers = e.failed_providers();
            row.error = Some(e.to_string());
            row
        }
    }
}

fn conflict_message(relay: &Relay, id: &str, accepted: bool) -> String {
    let earlier = if accepted {
        "was accepted"
    } else {
        "was sent (and may be stored on a broker)"
    };
    format!(
        "message id {id:?} {earlier} with different content (source, data or metadata) within \
         the last {}; a retry must repeat the same content, new content needs a new id",
        crate::duration::format(relay.window.max_age()),
    )
}

const EXPECTED: &str = "expected a JSON array of message objects, e.g. [{\"source\": \"...\", \
    \"data\": \"...\"}], or one object a line with Content-Type: application/x-ndjson";

/// Every message of the body, checked, or why the batch is refused (naming the element).
fn parse(body: &[u8], ndjson: bool, max: usize) -> Result<Vec<DataMessage>, Refusal> {
    let requests = if ndjson {
        parse_ndjson(body, max)?
    } else {
        parse_array(body, max)?
    };
    if requests.is_empty() {
        return Err(Refusal::bad(
            None,
            format!("the batch is empty; {EXPECTED}"),
        ));
    }
    requests
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.into_message()
                .map_err(|e| Refusal::bad(Some(i), format!("[{i}]: {e}")))
        })
        .collect()
}

fn too_many(max: usize) -> Refusal {
    Refusal {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        index: Some(max),
        message: format!(
            "more than {max} messages in one batch; split it or raise spec.ingest.maxBatchMessages"
        ),
    }
}

fn parse_ndjson(body: &[u8], max: usize) -> Result<Vec<IngestRequest>, Refusal> {
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.len() > max {
        return Err(too_many(max));
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice::<Element>(line)
                .map(|e| e.0)
                .map_err(|e| Refusal::bad(Some(i), element_error(i, &e)))
        })
        .collect()
}

fn element_error(i: usize, e: &serde_json::Error) -> String {
    let what = if e.is_data() {
        "invalid request"
    } else {
        "malformed JSON"
    };
    format!("[{i}]: {what}: {e}; expected {{\"source\": \"...\", \"data\": \"...\", \"metadata\": {{...}}}}")
}

fn parse_array(body: &[u8], max: usize) -> Result<Vec<IngestRequest>, Refusal> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        return Err(Refusal::bad(
            None,
            format!("the body is not a JSON array; {EXPECTED}"),
        ));
    }
    // Elements are decided one by one as the array is read: the index of a bad one is known,
    // and a batch past `max` stops being read at `max`.
    let at = Cell::new(0usize);
    let too_many_seen = Cell::new(false);
    let seed = Elements {
        max,
        at: &at,
        too_many: &too_many_seen,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if too_many_seen.get() => Err(too_many(max)),
        Err(e) => {
            let i = at.get();
            Err(Refusal::bad(Some(i), element_error(i, &e)))
        }
    }
}

/// A batch element: only a JSON object is a message (serde's derived struct deserializer would
/// also take an array in field order).
struct Element(IngestRequest);

impl<'de> Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = Element;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a message object {\"source\", \"data\", \"metadata\"?, \"id\"?}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Element, A::Error> {
                IngestRequest::deserialize(de::value::MapAccessDeserializer::new(map)).map(Element)
            }
        }
        d.deserialize_map(ObjectOnly)
    }
}

/// The array of a batch, read element by element (see [`parse_array`]).
struct Elements<'a> {
    max: usize,
    /// The index of the element being read.
    at: &'a Cell<usize>,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = Vec<IngestRequest>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Vec<IngestRequest>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of message objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        loop {
            self.at.set(out.len());
            if out.len() == self.max {
                // One more element is a batch too large; the end of the array is not.
                return match seq.next_element::<de::IgnoredAny>()? {
                    None => Ok(out),
                    Some(_) => {
                        self.too_many.set(true);
                        Err(de::Error::custom("too many messages"))
                    }
                };
            }
            match seq.next_element::<Element>()? {
                Some(e) => out.push(e.0),
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str, ndjson: bool, max: usize) -> (u16, Option<usize>, String) {
        match parse(body.as_bytes(), ndjson, max) {
            Ok(msgs) => panic!("accepted {} messages of {body}", msgs.len()),
            Err(r) => (r.status.as_u16(), r.index, r.message),
        }
    }

    #[test]
    fn arrays_and_ndjson_parse_in_order() {
        let array = r#" [{"source":"s","data":"a"}, {"source":"s","data":"b","id":"x-1","metadata":{"k":"v"}}] "#;
        let ndjson = "{\"source\":\"s\",\"data\":\"a\"}\n\n{\"source\":\"s\",\"data\":\"b\",\"id\":\"x-1\",\"metadata\":{\"k\":\"v\"}}\n";
        for (body, nd) in [(array, false), (ndjson, true)] {
            let msgs = parse(body.as_bytes(), nd, 2).unwrap_or_else(|r| panic!("{}", r.message));
            assert_eq!(msgs.len(), 2);
            assert_eq!(&msgs[0].payload[..], b"a");
            assert_eq!(msgs[1].id, "x-1");
            assert_eq!(msgs[1].metadata["k"], "v");
        }
    }

    #[test]
    fn a_bad_element_is_named_by_its_index() {
        for (body, nd, want_index, want) in [
            (
                r#"[{"source":"s","data":"a"},{"source":"s"}]"#,
                false,
                Some(1),
                "[1]: invalid request: missing field `data`",
            ),
            (
                r#"[{"source":"s","data":"a"},["s","a"]]"#,
                false,
                Some(1),
                "[1]: invalid request",
            ),
            (
                r#"[{"source":"s","data":"a"},{"source":"s","data":"b","extra":1}]"#,
                false,
                Some(1),
                "unknown field `extra`",
            ),
            (
                r#"[{"source":"s","data":"a"},{"source":"s","data":"b"},{"source":"s","data":"#,
                false,
                Some(2),
                "[2]: malformed JSON",
            ),
            (
                r#"[{"source":"s","data":"a","id":"bad id"}]"#,
                false,
                Some(0),
                "[0]: invalid request",
            ),
            (
                "{\"source\":\"s\",\"data\":\"a\"}\nnot json\n",
                true,
                Some(1),
                "[1]: malformed JSON",
            ),
            (
                r#"{"source":"s","data":"a"}"#,
                false,
                None,
                "not a JSON array",
            ),
            ("[]", false, None, "the batch is empty"),
        ] {
            let (status, index, message) = refusal(body, nd, 10);
            assert_eq!((status, index), (400, want_index), "{body}: {message}");
            assert!(message.contains(want), "{body}: {message}");
        }
    }

    #[test]
    fn more_than_the_maximum_is_413() {
        let one = r#"{"source":"s","data":"a"}"#;
        let array = format!("[{one},{one},{one}]");
        assert_eq!(refusal(&array, false, 2).0, 413);
        assert_eq!(parse(array.as_bytes(), false, 3).unwrap().len(), 3);
        let nd = format!("{one}\n{one}\n{one}\n");
        assert_eq!(refusal(&nd, true, 2).0, 413);
        assert!(refusal(&nd, true, 2).2.contains("maxBatchMessages"));
    }
}
