//! `reconciledThrough` as a table.

use std::collections::BTreeMap;

use super::*;
use crate::controller::testing::t;

fn verdict(window_start: Option<i64>, end: i64, missing_kafka: Option<u64>) -> ConsistencyStatus {
    let mut missing = BTreeMap::from([("nats".to_string(), 0)]);
    let mut seen = BTreeMap::from([("nats".to_string(), 10)]);
    if let Some(m) = missing_kafka {
        missing.insert("kafka".into(), m);
        seen.insert("kafka".into(), 10);
    }
    ConsistencyStatus {
        checked_at: Time(t(end + 5)),
        seen,
        missing,
        duplicates: BTreeMap::new(),
        conflicting: BTreeMap::new(),
        consistent: missing_kafka == Some(0),
        window_start: window_start.map(|s| Time(t(s))),
        window_end: Some(Time(t(end))),
    }
}

/// (case, previous, annotation, verdict, want)
type Case<'a> = (
    &'a str,
    Option<i64>,
    Option<&'a str>,
    Option<ConsistencyStatus>,
    Option<i64>,
);

#[test]
fn reconciled_through_table() {
    let at = |s: i64| t(s).to_string();
    let ann_kafka_100 = format!("kafka={}", at(100));
    let ann_both = format!("nats={}, kafka={}", at(50), at(300));
    // (case, previous, annotation, verdict, want)
    let cases: Vec<Case> = vec![
        ("nothing said", None, None, None, None),
        (
            "the annotation names the provider",
            None,
            Some(&ann_kafka_100),
            None,
            Some(100),
        ),
        (
            "the annotation names another provider",
            None,
            Some("nats=2030-01-01T00:00:00Z"),
            None,
            None,
        ),
        (
            "a list, spaces allowed",
            None,
            Some(&ann_both),
            None,
            Some(300),
        ),
        (
            "a bare name is not a time: ignored",
            None,
            Some("kafka"),
            None,
            None,
        ),
        (
            "a clean verdict over everything",
            None,
            None,
            Some(verdict(None, 200, Some(0))),
            Some(200),
        ),
        (
            "a verdict with missing messages",
            None,
            None,
            Some(verdict(None, 200, Some(3))),
            None,
        ),
        (
            "a verdict over a window only",
            None,
            None,
            Some(verdict(Some(150), 200, Some(0))),
            None,
        ),
        (
            "a verdict that did not read the provider",
            None,
            None,
            Some(verdict(None, 200, None)),
            None,
        ),
        (
            "never moves back",
            Some(400),
            Some(&ann_kafka_100),
            Some(verdict(None, 200, Some(0))),
            Some(400),
        ),
        (
            "the latest wins",
            Some(10),
            Some(&ann_kafka_100),
            Some(verdict(None, 200, Some(0))),
            Some(200),
        ),
    ];
    for (name, previous, annotation, verdict, want) in cases {
        let previous = previous.map(|s| Time(t(s)));
        let got = reconciled_through("kafka", previous.as_ref(), annotation, verdict.as_ref());
        assert_eq!(got.map(|x| x.0), want.map(t), "{name}");
    }
}

#[test]
fn unreadable_annotation_entries_are_named() {
    assert_eq!(
        unreadable_entries("kafka=2030-01-01T00:00:00Z, nats, x=yesterday"),
        ["nats", "x=yesterday"]
    );
    assert!(unreadable_entries("").is_empty());
}
