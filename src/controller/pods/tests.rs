//! Pod statuses → the relay failure the status shows, as a table; and the retained claims.

use super::*;

/// A relay pod named `name` with the status `status` (YAML).
fn pod(name: &str, status: &str) -> Pod {
    serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: shop}}\nstatus:\n{status}"
    ))
    .unwrap()
}

const RUNNING: &str = "  phase: Running\n  containerStatuses:\n  - {name: relay, image: img, imageID: '', ready: true, restartCount: 0, state: {running: {startedAt: '2026-01-01T00:00:00Z'}}}\n";

const PULL_BACKOFF: &str = "  phase: Pending\n  containerStatuses:\n  - {name: relay, image: 'example.org/dualwrite:nope', imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: 'Back-off pulling image \"example.org/dualwrite:nope\"'}}}\n";

const ERR_PULL: &str = "  phase: Pending\n  containerStatuses:\n  - {name: relay, image: 'example.org/dualwrite:nope', imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ErrImagePull, message: 'not found'}}}\n";

const CONFIG_ERROR: &str = "  phase: Running\n  containerStatuses:\n  - name: relay\n    image: img\n    imageID: ''\n    ready: false\n    restartCount: 3\n    state: {waiting: {reason: CrashLoopBackOff, message: back-off}}\n    lastState: {terminated: {exitCode: 2, reason: Error, message: \"ConfigError: the pipeline is invalid: spec.providers[0].kafka.brokers: empty\\n\"}}\n";

/// Exit 2 with no message (the relay could not write it): still a configuration error.
const CONFIG_ERROR_SILENT: &str = "  phase: Running\n  containerStatuses:\n  - {name: relay, image: img, imageID: '', ready: false, restartCount: 1, state: {terminated: {exitCode: 2, reason: Error}}}\n";

/// Exit 2 once, running again since: the past exit no longer counts.
const RECOVERED: &str = "  phase: Running\n  containerStatuses:\n  - {name: relay, image: img, imageID: '', ready: true, restartCount: 1, state: {running: {}}, lastState: {terminated: {exitCode: 2, message: 'ConfigError: cannot reach the Kubernetes API'}}}\n";

const CRASH_LOOP: &str = "  phase: Running\n  containerStatuses:\n  - name: relay\n    image: img\n    imageID: ''\n    ready: false\n    restartCount: 5\n    state: {waiting: {reason: CrashLoopBackOff, message: back-off 40s}}\n    lastState: {terminated: {exitCode: 137, reason: OOMKilled, message: \"line one\\nlast line\\n\\n\"}}\n";

const UNSCHEDULABLE: &str = "  phase: Pending\n  conditions:\n  - {type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/1 nodes are available: 1 Insufficient memory.'}\n";

const SCHEDULED_PENDING: &str =
    "  phase: Pending\n  conditions:\n  - {type: PodScheduled, status: 'True'}\n";

/// (case, pods, the failure's reason and the start of its message)
type Case = (&'static str, Vec<Pod>, Option<(&'static str, &'static str)>);

#[test]
fn pod_statuses_to_a_failure() {
    let cases: [Case; 11] = [
        ("no pods", vec![], None),
        ("running and ready", vec![pod("o-relay-0", RUNNING)], None),
        ("pending, scheduled", vec![pod("o-relay-0", SCHEDULED_PENDING)], None),
        (
            "image pull back-off",
            vec![pod("o-relay-0", PULL_BACKOFF)],
            Some((reason::RELAY_IMAGE_PULL_FAILED, "pod o-relay-0: image example.org/dualwrite:nope cannot be pulled (ImagePullBackOff): Back-off pulling")),
        ),
        (
            "err image pull",
            vec![pod("o-relay-0", ERR_PULL)],
            Some((reason::RELAY_IMAGE_PULL_FAILED, "pod o-relay-0: image example.org/dualwrite:nope cannot be pulled (ErrImagePull): not found")),
        ),
        (
            "configuration error: the relay's termination message, on one line",
            vec![pod("o-relay-0", CONFIG_ERROR)],
            Some((reason::RELAY_CONFIG_ERROR, "pod o-relay-0: ConfigError: the pipeline is invalid: spec.providers[0].kafka.brokers: empty")),
        ),
        (
            "configuration error without a message",
            vec![pod("o-relay-0", CONFIG_ERROR_SILENT)],
            Some((reason::RELAY_CONFIG_ERROR, "pod o-relay-0: the relay stopped on a configuration error (exit code 2)")),
        ),
        ("exit 2 before, running now", vec![pod("o-relay-0", RECOVERED)], None),
        (
            "crash loop: restarts, exit code, last line of the message",
            vec![pod("o-relay-0", CRASH_LOOP)],
            Some((reason::RELAY_CRASH_LOOPING, "pod o-relay-0: the relay keeps crashing (5 restarts, last exit code 137 OOMKilled): last line")),
        ),
        (
            "unschedulable",
            vec![pod("o-relay-0", UNSCHEDULABLE)],
            Some((reason::RELAY_UNSCHEDULABLE, "pod o-relay-0: cannot be scheduled: 0/1 nodes are available: 1 Insufficient memory.")),
        ),
        (
            "the most telling failure wins, then the first pod by name",
            vec![
                pod("o-relay-3", UNSCHEDULABLE),
                pod("o-relay-2", CRASH_LOOP),
                pod("o-relay-1", PULL_BACKOFF),
                pod("o-relay-0", RUNNING),
                pod("o-relay-4", PULL_BACKOFF),
            ],
            Some((reason::RELAY_IMAGE_PULL_FAILED, "pod o-relay-1:")),
        ),
    ];
    for (case, pods, want) in cases {
        let got = relay_failure(&pods);
        match (want, got) {
            (None, None) => {}
            (Some((reason, start)), Some(f)) => {
                assert_eq!(f.reason, reason, "{case}: {f:?}");
                assert!(f.message.starts_with(start), "{case}: {:?}", f.message);
                assert!(!f.message.contains('\n'), "{case}: one line");
                assert!(f.message.contains(&f.pod), "{case}: names the pod");
            }
            (want, got) => panic!("{case}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn a_pod_being_deleted_does_not_count_and_long_messages_are_cut() {
    let mut p = pod("o-relay-0", PULL_BACKOFF);
    p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        crate::controller::testing::t(0),
    ));
    assert_eq!(relay_failure(&[p]), None);
    let long = CONFIG_ERROR.replace("empty", &"x".repeat(5000));
    let f = relay_failure(&[pod("o-relay-0", &long)]).unwrap();
    assert_eq!(f.message.chars().count(), MAX_MESSAGE);
    assert!(f.message.ends_with('…'));
}

#[test]
fn retained_claims_are_those_of_ordinals_at_or_past_replicas() {
    let claims: Vec<String> = [
        "state-orders-relay-0",
        "state-orders-relay-10",
        "state-orders-relay-2",
        "state-orders-relay-1",
        "state-orders-relay-x",
        "state-orders-relay-01",
        "state-orders-relay-",
        "state-orders-eu-relay-5",
        "other",
    ]
    .map(String::from)
    .to_vec();
    // (replicas, retained)
    let cases: [(i32, &[&str]); 4] = [
        (3, &["state-orders-relay-10"]),
        (
            1,
            &[
                "state-orders-relay-1",
                "state-orders-relay-2",
                "state-orders-relay-10",
            ],
        ),
        (
            0,
            &[
                "state-orders-relay-0",
                "state-orders-relay-1",
                "state-orders-relay-2",
                "state-orders-relay-10",
            ],
        ),
        (11, &[]),
    ];
    for (replicas, want) in cases {
        assert_eq!(
            retained_claims("orders", replicas, &claims),
            want,
            "replicas {replicas}"
        );
    }
}
