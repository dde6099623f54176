//! Where the relays report: a ConfigMap per pipeline, `<pipeline>-relay-reports`, with one key
//! per relay pod holding that relay's [`RelayReport`] as JSON. The operator creates it (owned by
//! the pipeline) and aggregates it into the status; a relay's Role may `get` and `patch` exactly
//! that ConfigMap and nothing of the pipeline's status, so a relay's credentials can report what
//! it sees but never write what the operator decides (migration step, fallback, strategy,
//! conditions, consistency).
//!
//! The consistency verdict has an object and an identity of its own: `dualwrite verify
//! --pipeline` runs under the pipeline's `<pipeline>-verify` ServiceAccount, whose Role may get
//! the pipeline and get/patch exactly the ConfigMap `<pipeline>-consistency`, and the operator
//! reads the verdict from there only. The relay's Role does not name that ConfigMap, so a
//! relay's token cannot forge the verdict a migration gate reads; a verdict written into the
//! reports ConfigMap is ignored.

use std::collections::BTreeMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{ConsistencyStatus, RelayReport};

/// The key, in the pipeline's consistency ConfigMap ([`consistency_name`]), of the last
/// `dualwrite verify --pipeline` verdict. The reports ConfigMap may hold it too (a relay's
/// token can write there, and verify wrote there before it had an identity of its own): it is
/// ignored there, neither a verdict nor a report (a relay pod's name never holds a dot).
pub const VERDICT_KEY: &str = "consistency.verify";

/// The ConfigMap of pipeline `pipeline` that holds the consistency verdict: written by
/// `dualwrite verify` under the `<pipeline>-verify` ServiceAccount, read by the operator.
/// At most 58 characters with the longest pipeline name (46), like the reports' 60.
pub fn consistency_name(pipeline: &str) -> String {
    format!("{pipeline}-consistency")
}

/// The verdict in the consistency ConfigMap's `data`, as the operator takes it into
/// `status.consistency`: evidence written by a Job, not by the operator, so it is checked first. It must name only
/// providers of the pipeline and at least two of them (the check compares two or more), and
/// not be dated in the future (beyond a minute of clock skew). `None` when absent or refused.
pub fn read_verdict(
    data: &BTreeMap<String, String>,
    providers: &[&str],
    now: Timestamp,
) -> Option<ConsistencyStatus> {
    let v: ConsistencyStatus = serde_json::from_str(data.get(VERDICT_KEY)?).ok()?;
    let named: Vec<&String> = v.seen.keys().chain(v.missing.keys()).collect();
    let known = named.iter().all(|p| providers.contains(&p.as_str()));
    let future = v.checked_at.0 > now + SignedDuration::from_secs(60);
    (known && v.seen.len() >= 2 && !future).then_some(v)
}

/// The reports ConfigMap of pipeline `pipeline`.
pub fn relay_reports_name(pipeline: &str) -> String {
    format!("{pipeline}-relay-reports")
}

/// The reports in the ConfigMap's `data`, by relay pod (its key). A value that does not parse
/// (a relay of another version, a hand edit) is left out and named in the second list: it is
/// evidence the operator cannot read, never a reason to fail a reconcile. A report whose `name`
/// differs from its key is read under its key (a relay reports for itself).
pub fn parse_relay_reports(data: &BTreeMap<String, String>) -> (Vec<RelayReport>, Vec<String>) {
    let mut reports = Vec::new();
    let mut unreadable = Vec::new();
    for (pod, json) in data.iter().filter(|(k, _)| k.as_str() != VERDICT_KEY) {
        match serde_json::from_str::<RelayReport>(json) {
            Ok(mut r) => {
                r.name = pod.clone();
                reports.push(r);
            }
            Err(_) => unreadable.push(pod.clone()),
        }
    }
    (reports, unreadable)
}

/// The reports the operator works from: those in the ConfigMap, then those in the status that
/// the ConfigMap does not name (written by a relay of an earlier version before its Role lost
/// the status, or by hand).
pub fn merge_relay_reports(
    from_map: &[RelayReport],
    in_status: &[RelayReport],
) -> Vec<RelayReport> {
    let mut all = from_map.to_vec();
    all.extend(
        in_status
            .iter()
            .filter(|s| !from_map.iter().any(|m| m.name == s.name))
            .cloned(),
    );
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn report(name: &str, secs: i64) -> RelayReport {
        RelayReport {
            name: name.into(),
            reported_at: Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap()),
            strategy: super::super::Strategy::FailFast,
            generation: Some(1),
            stopped: false,
            started_at: None,
            accepted: None,
            providers: vec![],
        }
    }

    #[test]
    fn reports_parse_by_key_and_unreadable_ones_are_named() {
        let mut forged = report("someone-else", 5);
        forged.generation = Some(2);
        let data = BTreeMap::from([
            (
                "p-relay-0".to_string(),
                serde_json::to_string(&report("p-relay-0", 1)).unwrap(),
            ),
            (
                "p-relay-1".to_string(),
                serde_json::to_string(&forged).unwrap(),
            ),
            ("p-relay-2".to_string(), "{not json".to_string()),
        ]);
        let (reports, bad) = parse_relay_reports(&data);
        let names: Vec<_> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["p-relay-0", "p-relay-1"]);
        assert_eq!(reports[1].generation, Some(2));
        assert_eq!(bad, ["p-relay-2"]);
    }

    #[test]
    fn a_verdict_is_checked_before_it_counts() {
        let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let verdict = |at: i64, providers: &[&str]| {
            let seen: BTreeMap<String, u64> =
                providers.iter().map(|p| (p.to_string(), 3)).collect();
            let v = ConsistencyStatus {
                checked_at: Time(k8s_openapi::jiff::Timestamp::from_second(at).unwrap()),
                missing: seen.keys().map(|p| (p.clone(), 0)).collect(),
                seen,
                duplicates: BTreeMap::new(),
                conflicting: BTreeMap::new(),
                consistent: true,
                window_start: None,
                window_end: None,
            };
            BTreeMap::from([(VERDICT_KEY.to_string(), serde_json::to_string(&v).unwrap())])
        };
        let spec = ["nats", "kafka"];
        let cases = [
            (
                "a verdict over the pipeline's providers",
                verdict(1_799_999_000, &spec),
                true,
            ),
            (
                "names a provider the pipeline lacks",
                verdict(1_799_999_000, &["nats", "x"]),
                false,
            ),
            (
                "only one provider",
                verdict(1_799_999_000, &["nats"]),
                false,
            ),
            ("dated in the future", verdict(1_800_000_600, &spec), false),
            ("none", BTreeMap::new(), false),
        ];
        for (name, data, accepted) in cases {
            assert_eq!(
                read_verdict(&data, &spec, now).is_some(),
                accepted,
                "{name}"
            );
            assert!(
                parse_relay_reports(&data).0.is_empty(),
                "{name}: a verdict is no report"
            );
        }
    }

    #[test]
    fn the_configmap_wins_over_the_status_copy() {
        let merged = merge_relay_reports(&[report("a", 10)], &[report("a", 1), report("old", 2)]);
        let got: Vec<_> = merged
            .iter()
            .map(|r| (r.name.as_str(), r.reported_at.0.as_second()))
            .collect();
        assert_eq!(got, [("a", 10), ("old", 2)]);
    }
}
