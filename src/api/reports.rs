//! Where the relays report: a ConfigMap per pipeline, `<pipeline>-relay-reports`, with one key
//! per relay pod holding that relay's [`RelayReport`] as JSON. The operator creates it (owned by
//! the pipeline) and aggregates it into the status; a relay's Role may `get` and `patch` exactly
//! that ConfigMap and nothing of the pipeline's status, so a relay's credentials can report what
//! it sees but never write what the operator decides (migration step, fallback, strategy,
//! conditions, consistency).

use std::collections::BTreeMap;

use super::RelayReport;

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
    for (pod, json) in data {
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
    fn the_configmap_wins_over_the_status_copy() {
        let merged = merge_relay_reports(&[report("a", 10)], &[report("a", 1), report("old", 2)]);
        let got: Vec<_> = merged
            .iter()
            .map(|r| (r.name.as_str(), r.reported_at.0.as_second()))
            .collect();
        assert_eq!(got, [("a", 10), ("old", 2)]);
    }
}
