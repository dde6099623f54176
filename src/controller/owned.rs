//! The operator's caches of the objects it owns or reads per pipeline, and the comparison that
//! lets a reconcile of an unchanged pipeline make no request at all.
//!
//! Lifecycle, and why it is shaped this way: [`super::run`] starts one watch per kind (the
//! owned kinds, the relay pods and their claims), each feeding a reflector [`Store`] *before*
//! it triggers the owner's reconcile, so a reconcile triggered by a change always reads that
//! change from the cache (two separate watches, one for the trigger and one for the cache,
//! could race). The stores live as long as that `run` (a new Lease term builds new ones);
//! a reconcile waits until every store has listed once ([`OwnedCache::ready`]) so that a
//! restarted operator does not take "not listed yet" for "missing" and re-apply everything.
//! The stores keep only what is read: every object without `managedFields` and without the
//! copy of itself a client-side `kubectl apply` keeps in an annotation ([`trim`]), a relay pod
//! without its spec ([`trim_pod`]), a claim as its metadata ([`trim_claim`]).
//!
//! Whether an owned object needs an apply ([`needs_apply`]) is decided from two things:
//! - the hash of the desired object, which the operator writes into the object itself
//!   ([`APPLIED_ANNOTATION`]): a different hash means the operator wants something else now,
//!   including a field it no longer sets (a field it stops setting is not visible in the
//!   desired object, so comparing values alone would miss its removal);
//! - [`contains`]: every field the desired object sets has the same value in the cached one.
//!   Only the fields the operator sets are compared, so the defaults the API server fills in
//!   (a Service's `clusterIP`, a container's `terminationMessagePath`, a StatefulSet's
//!   `updateStrategy`, a claim template's `status`) never read as a change; a value the server
//!   normalises (a quantity `1000m` stored as `1`) compares as a quantity, and an empty map or
//!   list the operator sets equals one the server leaves out. A hand edit of a field the
//!   operator sets, or of its annotation, reads as drift and is put back.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The annotation holding the hash of what the operator last applied to an object.
pub const APPLIED_ANNOTATION: &str = "dualwrite.io/applied";

/// How long a reconcile waits for the caches' first lists before it reads the API server
/// directly (a cache that never lists is a watch problem `/readyz` reports).
const READY_WAIT: Duration = Duration::from_secs(30);

/// The reflector stores of one `controller::run`.
#[derive(Clone)]
pub struct OwnedCache {
    pub statefulsets: Store<StatefulSet>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub config_maps: Store<ConfigMap>,
    pub cron_jobs: Store<CronJob>,
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
}

impl OwnedCache {
    /// Waits (up to [`READY_WAIT`] in all) until every store has listed once; the resources
    /// whose store has not, if any. Decisions read these stores (a scale-down looks for the
    /// claims holding a backlog, a rollout for the pods), so a reconcile does not go on from a
    /// store that never listed: an empty store is not "nothing there".
    pub async fn ready(&self) -> Result<(), Vec<&'static str>> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        let mut missing = Vec::new();
        macro_rules! wait {
            ($($store:ident: $resource:literal),* $(,)?) => {$(
                if tokio::time::timeout_at(deadline, self.$store.wait_until_ready())
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    missing.push($resource);
                }
            )*};
        }
        wait!(
            statefulsets: "statefulsets.apps",
            services: "services",
            pdbs: "poddisruptionbudgets.policy",
            service_accounts: "serviceaccounts",
            roles: "roles.rbac.authorization.k8s.io",
            role_bindings: "rolebindings.rbac.authorization.k8s.io",
            config_maps: "configmaps",
            cron_jobs: "cronjobs.batch",
            pods: "pods",
            claims: "persistentvolumeclaims",
        );
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// The store of an owned kind, so that a generic apply finds the cached copy of its object.
pub trait Cached: Resource<DynamicType = ()> + Clone + Sized + 'static {
    fn store(cache: &OwnedCache) -> &Store<Self>;

    /// What an [`ApplyInputs`] records of this object: its resourceVersion (a cached object
    /// always has one; an empty one still differs from "absent").
    fn version(&self) -> String {
        self.meta().resource_version.clone().unwrap_or_default()
    }
}

macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn store(cache: &OwnedCache) -> &Store<Self> {
                &cache.$field
            }
        }
    };
}
cached!(StatefulSet, statefulsets);
cached!(Service, services);
cached!(PodDisruptionBudget, pdbs);
cached!(ServiceAccount, service_accounts);
cached!(Role, roles);
cached!(RoleBinding, role_bindings);
cached!(CronJob, cron_jobs);

/// The operator's ConfigMaps are metadata only (the relays and the consistency check write
/// their `data`; a test holds `resources` to it): their version is a digest of the metadata,
/// so a relay's report does not make the next reconcile compare every owned object again.
impl Cached for ConfigMap {
    fn store(cache: &OwnedCache) -> &Store<Self> {
        &cache.config_maps
    }

    fn version(&self) -> String {
        metadata_version(&self.metadata)
    }
}

/// The cached copy of `name` in `ns`.
pub fn cached<K: Cached>(cache: &OwnedCache, ns: &str, name: &str) -> Option<std::sync::Arc<K>> {
    K::store(cache).get(&ObjectRef::new(name).within(ns))
}

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the caches never read (and what makes an object large): `managedFields`, and
/// the copy of the whole object a client-side `kubectl apply` keeps in an annotation.
pub fn trim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// [`trim`], and a relay pod's spec: only its metadata and status are read
/// (`pods::relay_failure`), and the spec is most of a pod.
pub fn trim_pod(pod: &mut Pod) {
    trim(pod);
    pod.spec = None;
}

/// [`trim`], and a claim's spec and status: only its metadata is read (name, labels,
/// deletion).
pub fn trim_claim(claim: &mut PersistentVolumeClaim) {
    trim(claim);
    claim.spec = None;
    claim.status = None;
}

/// `desired` with [`APPLIED_ANNOTATION`] set to the hash of `desired` (without it), and that
/// hash.
pub fn annotated<K: Resource + Serialize + Clone>(desired: &K) -> (K, String) {
    let json = serde_json::to_vec(desired).expect("an owned object serializes");
    let hash = hex(&Sha256::digest(&json)[..12]);
    let mut out = desired.clone();
    out.meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_ANNOTATION.into(), hash.clone());
    (out, hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `desired` (annotated with its hash, see [`annotated`]) must be applied over the
/// cached `live` object: the hash differs, or a field `desired` sets differs in `live`.
pub fn needs_apply<K: Resource + Serialize>(desired: &K, live: &K) -> bool {
    let want = desired
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_ANNOTATION));
    let have = live
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_ANNOTATION));
    if want.is_none() || want != have {
        return true;
    }
    let (Ok(desired), Ok(live)) = (serde_json::to_value(desired), serde_json::to_value(live))
    else {
        return true;
    };
    !contains(&live, &desired)
}

/// Every field `desired` sets has the same value in `live` (fields only `live` has are
/// defaults or other managers' fields: not compared). Lists compare element by element and
/// must be as long (an element added by someone else is drift for a list the operator sets).
pub fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (_, Value::Null) => true,
        // An empty map or list the operator sets is one the server may leave out.
        (Value::Null, Value::Object(d)) => d.is_empty(),
        (Value::Null, Value::Array(d)) => d.is_empty(),
        (Value::Object(l), Value::Object(d)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => contains(lv, dv),
            None => contains(&Value::Null, dv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(lv, dv))
        }
        (Value::String(l), Value::String(d)) => l == d || same_quantity(l, d),
        (Value::Number(l), Value::Number(d)) => l.as_f64() == d.as_f64(),
        (l, d) => l == d,
    }
}

/// What a pipeline's owned objects were last compared against, when that comparison found
/// every one as the operator wants it ([`ApplyInputs::holds`]): a reconcile whose inputs are
/// all the same again skips building the desired objects and comparing them (the bulk of a
/// resync's CPU at a thousand pipelines) and does only what time changes (the status: stale
/// relays, step timers, fallback). Every input is here, so a change of any one reads as "not
/// the same" and the full comparison runs:
/// - the pipeline as the desired objects are built from it ([`pipeline_version`]: uid,
///   generation, labels, annotations; never its status, which `resources` does not read);
/// - the StatefulSet's replicas the scale decision applies (time changes a decision only
///   while a hold is in force, and then nothing is skipped);
/// - each owned object compared, at the version the cache held ([`cached_version`]), or its
///   absence where the operator wants none (a PodDisruptionBudget, a CronJob). A hand edit or a
///   deletion changes it, so drift is still put back.
#[derive(Clone, Debug)]
pub struct ApplyInputs {
    pub pipeline: String,
    pub replicas: i32,
    /// (kind, name, version): `None` for an object the operator wants absent and the cache
    /// does not hold.
    pub objects: Vec<RecordedObject>,
}

/// One owned object an [`ApplyInputs`] was compared against.
#[derive(Clone, Debug)]
pub struct RecordedObject {
    pub kind: &'static str,
    pub name: String,
    /// [`Cached::version`]; `None` for an object the operator wants absent and the cache did
    /// not hold.
    pub version: Option<String>,
    /// [`cached_version`] of its kind.
    pub read: fn(&OwnedCache, &str, &str) -> Option<String>,
}

impl RecordedObject {
    pub fn new<K: Cached + k8s_openapi::Resource>(name: &str, version: Option<String>) -> Self {
        Self {
            kind: <K as k8s_openapi::Resource>::KIND,
            name: name.to_string(),
            version,
            read: cached_version::<K>,
        }
    }
}

impl ApplyInputs {
    /// Whether nothing these inputs were compared against has changed: the same pipeline
    /// version, the same replicas, and every object at the same version in `cache` now.
    pub fn holds(&self, pipeline: &str, replicas: i32, cache: &OwnedCache, ns: &str) -> bool {
        self.pipeline == pipeline
            && self.replicas == replicas
            && self
                .objects
                .iter()
                .all(|o| (o.read)(cache, ns, &o.name) == o.version)
    }
}

/// The pipeline as the desired objects are built from it (`None` without a uid or generation:
/// then nothing is skipped).
pub fn pipeline_version<K: Resource>(p: &K) -> Option<String> {
    let meta = p.meta();
    let (uid, generation) = (meta.uid.as_deref()?, meta.generation?);
    let json = serde_json::to_vec(&(&meta.labels, &meta.annotations)).ok()?;
    Some(format!(
        "{uid}@{generation}/{}",
        hex(&Sha256::digest(&json)[..12])
    ))
}

/// The version of the cached `name` in `ns` that an [`ApplyInputs`] records
/// ([`Cached::version`]), `None` when the cache does not hold it.
pub fn cached_version<K: Cached>(cache: &OwnedCache, ns: &str, name: &str) -> Option<String> {
    cached::<K>(cache, ns, name).map(|obj| obj.version())
}

/// The metadata of an object that the operator sets (or that a hand edit of it would change),
/// as a digest.
fn metadata_version(meta: &kube::api::ObjectMeta) -> String {
    let json = serde_json::to_vec(&(
        &meta.uid,
        &meta.labels,
        &meta.annotations,
        &meta.owner_references,
        &meta.finalizers,
        &meta.deletion_timestamp,
    ))
    .unwrap_or_default();
    hex(&Sha256::digest(&json)[..12])
}

/// Two strings that both read as Kubernetes quantities of the same amount (`1000m` and `1`,
/// `1024Mi` and `1Gi`): the API server stores quantities in a canonical form.
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// The amount of a quantity string (`<number><suffix>`), or `None` for any other string.
fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    let digits_only = !number.is_empty()
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))
        && number.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '.' | '+' | '-'));
    if !digits_only {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use serde_json::json;

    #[test]
    fn only_the_fields_the_operator_sets_are_compared() {
        // (live, desired, contained)
        let cases = [
            // Defaults the server fills in are not a change.
            (
                json!({"spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
                json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
                true,
            ),
            // A value the operator sets, edited by hand, is drift.
            (
                json!({"spec": {"ports": [{"port": 81, "protocol": "TCP"}]}}),
                json!({"spec": {"ports": [{"port": 80}]}}),
                false,
            ),
            // A field the operator sets, removed by hand, is drift.
            (
                json!({"metadata": {"labels": {}}}),
                json!({"metadata": {"labels": {"a": "b"}}}),
                false,
            ),
            // An element added to a list the operator sets is drift.
            (
                json!({"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]}),
                json!({"rules": [{"verbs": ["get"]}]}),
                false,
            ),
            // An empty map or list the server leaves out is no change.
            (
                json!({"metadata": {}}),
                json!({"metadata": {"labels": {}, "finalizers": []}}),
                true,
            ),
            // Quantities in their canonical form.
            (
                json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                json!({"limits": {"cpu": "1000m", "memory": "1024Mi"}}),
                true,
            ),
            (
                json!({"limits": {"cpu": "1"}}),
                json!({"limits": {"cpu": "2"}}),
                false,
            ),
            // Strings that are not quantities compare as they are.
            (
                json!({"image": "relay:1.0"}),
                json!({"image": "relay:1"}),
                false,
            ),
            (json!({"n": 3}), json!({"n": 3}), true),
            (json!({"b": true}), json!({"b": false}), false),
        ];
        for (live, desired, want) in cases {
            assert_eq!(contains(&live, &desired), want, "{live} ⊇ {desired}");
        }
    }

    #[test]
    fn the_applied_hash_catches_what_a_value_comparison_cannot() {
        let mut before = ConfigMap::default();
        before.metadata.name = Some("x".into());
        before.metadata.labels = Some(BTreeMap::from([("a".into(), "1".into())]));
        let (live, _) = annotated(&before);
        // Unchanged: no apply.
        assert!(!needs_apply(&annotated(&before).0, &live));
        // The operator stops setting a label: the values it still sets all match, the hash
        // says it wants something else.
        let mut after = before.clone();
        after.metadata.labels = None;
        assert!(needs_apply(&annotated(&after).0, &live));
        // Someone removed the annotation: applied again.
        let mut edited = live.clone();
        edited.metadata.annotations = None;
        assert!(needs_apply(&annotated(&before).0, &edited));
        // Someone changed a value the operator sets.
        let mut edited = live.clone();
        edited.metadata.labels = Some(BTreeMap::from([("a".into(), "2".into())]));
        assert!(needs_apply(&annotated(&before).0, &edited));
        // A field only the server sets is no change.
        let mut filled = live.clone();
        filled.metadata.resource_version = Some("42".into());
        filled.metadata.uid = Some("u".into());
        assert!(!needs_apply(&annotated(&before).0, &filled));
    }

    /// An [`OwnedCache`] whose StatefulSet, ConfigMap and PodDisruptionBudget stores the test
    /// writes (the other stores stay empty).
    struct TestCache {
        cache: OwnedCache,
        statefulsets: reflector::store::Writer<StatefulSet>,
        config_maps: reflector::store::Writer<ConfigMap>,
        pdbs: reflector::store::Writer<PodDisruptionBudget>,
    }

    impl TestCache {
        fn new() -> Self {
            let (statefulsets_store, statefulsets) = reflector::store();
            let (config_maps_store, config_maps) = reflector::store();
            let (pdbs_store, pdbs) = reflector::store();
            let cache = OwnedCache {
                statefulsets: statefulsets_store,
                services: reflector::store().0,
                pdbs: pdbs_store,
                service_accounts: reflector::store().0,
                roles: reflector::store().0,
                role_bindings: reflector::store().0,
                config_maps: config_maps_store,
                cron_jobs: reflector::store().0,
                pods: reflector::store().0,
                claims: reflector::store().0,
            };
            Self {
                cache,
                statefulsets,
                config_maps,
                pdbs,
            }
        }
    }

    fn named<K: Resource + Default>(name: &str, rv: &str) -> K {
        let mut obj = K::default();
        obj.meta_mut().name = Some(name.into());
        obj.meta_mut().namespace = Some("shop".into());
        obj.meta_mut().resource_version = Some(rv.into());
        obj.meta_mut().labels = Some(BTreeMap::from([(
            "dualwrite.io/pipeline".into(),
            "p".into(),
        )]));
        obj
    }

    /// The inputs a reconcile records after finding `cache` as wanted: the StatefulSet and
    /// the reports ConfigMap at their cached versions, no PodDisruptionBudget.
    fn recorded(cache: &OwnedCache, pipeline: &str) -> ApplyInputs {
        ApplyInputs {
            pipeline: pipeline.into(),
            replicas: 1,
            objects: vec![
                RecordedObject::new::<StatefulSet>(
                    "p-relay",
                    cached_version::<StatefulSet>(cache, "shop", "p-relay"),
                ),
                RecordedObject::new::<ConfigMap>(
                    "p-relay-reports",
                    cached_version::<ConfigMap>(cache, "shop", "p-relay-reports"),
                ),
                RecordedObject::new::<PodDisruptionBudget>("p-relay", None),
            ],
        }
    }

    #[test]
    fn a_changed_input_is_never_taken_as_unchanged() {
        use kube::runtime::watcher::Event;
        let pipeline = || {
            let mut p = ConfigMap::default();
            p.metadata.uid = Some("u1".into());
            p.metadata.generation = Some(3);
            p
        };
        let version = pipeline_version(&pipeline()).unwrap();
        let sts: StatefulSet = named("p-relay", "10");
        let reports: ConfigMap = named("p-relay-reports", "11");
        // (what changes, still the same inputs)
        type Edit<'a> = Box<dyn Fn(&mut TestCache) -> (String, i32) + 'a>;
        let cases: Vec<(&str, Edit, bool)> = vec![
            ("nothing", Box::new(|_| (version.clone(), 1)), true),
            (
                "a relay's report (the reports ConfigMap's data)",
                Box::new(|t| {
                    let mut m = reports.clone();
                    m.metadata.resource_version = Some("12".into());
                    m.data = Some(BTreeMap::from([("p-relay-0".into(), "{}".into())]));
                    t.config_maps.apply_watcher_event(&Event::Apply(m));
                    (version.clone(), 1)
                }),
                true,
            ),
            (
                "the spec (the pipeline's generation)",
                Box::new(|_| {
                    let mut p = pipeline();
                    p.metadata.generation = Some(4);
                    (pipeline_version(&p).unwrap(), 1)
                }),
                false,
            ),
            (
                "the pipeline's labels",
                Box::new(|_| {
                    let mut p = pipeline();
                    p.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
                    (pipeline_version(&p).unwrap(), 1)
                }),
                false,
            ),
            (
                "the pipeline's annotations",
                Box::new(|_| {
                    let mut p = pipeline();
                    p.metadata.annotations = Some(BTreeMap::from([("x".into(), "y".into())]));
                    (pipeline_version(&p).unwrap(), 1)
                }),
                false,
            ),
            (
                "a pipeline of the same name created again (another uid)",
                Box::new(|_| {
                    let mut p = pipeline();
                    p.metadata.uid = Some("u2".into());
                    (pipeline_version(&p).unwrap(), 1)
                }),
                false,
            ),
            (
                "the replicas the scale decision applies",
                Box::new(|_| (version.clone(), 2)),
                false,
            ),
            (
                "the StatefulSet edited (a new resourceVersion)",
                Box::new(|t| {
                    let mut s = sts.clone();
                    s.metadata.resource_version = Some("13".into());
                    t.statefulsets.apply_watcher_event(&Event::Apply(s));
                    (version.clone(), 1)
                }),
                false,
            ),
            (
                "the StatefulSet deleted",
                Box::new(|t| {
                    t.statefulsets
                        .apply_watcher_event(&Event::Delete(sts.clone()));
                    (version.clone(), 1)
                }),
                false,
            ),
            (
                "the reports ConfigMap's labels edited",
                Box::new(|t| {
                    let mut m = reports.clone();
                    m.metadata.resource_version = Some("12".into());
                    m.metadata.labels = None;
                    t.config_maps.apply_watcher_event(&Event::Apply(m));
                    (version.clone(), 1)
                }),
                false,
            ),
            (
                "the reports ConfigMap's owner removed",
                Box::new(|t| {
                    let mut m = reports.clone();
                    m.metadata.owner_references = Some(Vec::new());
                    t.config_maps.apply_watcher_event(&Event::Apply(m));
                    (version.clone(), 1)
                }),
                false,
            ),
            (
                "the reports ConfigMap deleted",
                Box::new(|t| {
                    t.config_maps
                        .apply_watcher_event(&Event::Delete(reports.clone()));
                    (version.clone(), 1)
                }),
                false,
            ),
            (
                "a PodDisruptionBudget the operator wants absent appears",
                Box::new(|t| {
                    t.pdbs
                        .apply_watcher_event(&Event::Apply(named("p-relay", "14")));
                    (version.clone(), 1)
                }),
                false,
            ),
        ];
        for (what, edit, same) in cases {
            let mut t = TestCache::new();
            t.statefulsets
                .apply_watcher_event(&Event::Apply(sts.clone()));
            t.config_maps
                .apply_watcher_event(&Event::Apply(reports.clone()));
            let inputs = recorded(&t.cache, &version);
            assert!(inputs.holds(&version, 1, &t.cache, "shop"), "as recorded");
            let (version_now, replicas_now) = edit(&mut t);
            assert_eq!(
                inputs.holds(&version_now, replicas_now, &t.cache, "shop"),
                same,
                "{what}"
            );
        }
    }

    #[test]
    fn nothing_is_skipped_for_a_pipeline_without_uid_or_generation() {
        let mut p = ConfigMap::default();
        p.metadata.uid = Some("u".into());
        assert_eq!(pipeline_version(&p), None);
        p.metadata.generation = Some(1);
        p.metadata.uid = None;
        assert_eq!(pipeline_version(&p), None);
    }

    /// A ConfigMap's version is a digest of its metadata ([`Cached::version`]), so the
    /// operator's ConfigMaps must carry only metadata: data it set would go uncompared.
    #[test]
    fn the_operators_config_maps_are_metadata_only() {
        let p: crate::api::DualWritePipeline = serde_yaml::from_str(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\n\
             metadata: {name: p, namespace: shop, uid: u1}\n\
             spec: {providers: [{name: a, type: memory}, {name: b, type: memory}]}\n",
        )
        .unwrap();
        for map in [
            crate::controller::resources::relay_reports(&p),
            crate::controller::resources::consistency(&p),
        ] {
            let json = serde_json::to_value(&map).unwrap();
            let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["apiVersion", "kind", "metadata"], "{json}");
        }
    }

    #[test]
    fn the_caches_keep_what_is_read() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "p-relay-0",
                "labels": {"dualwrite.io/pipeline": "p"},
                "annotations": {
                    APPLIED_ANNOTATION: "abc",
                    LAST_APPLIED: "{\"a whole copy\": 1}",
                },
                "managedFields": [{"manager": "kubelet"}],
            },
            "spec": {"containers": [{"name": "relay", "image": "relay:1"}]},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]},
        }))
        .unwrap();
        let mut claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "state-p-relay-0", "labels": {"dualwrite.io/pipeline": "p"}},
            "spec": {"accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound"},
        }))
        .unwrap();
        let mut map = ConfigMap::default();
        map.metadata.annotations = pod.metadata.annotations.clone();
        trim_pod(&mut pod);
        trim_claim(&mut claim);
        trim(&mut map);
        assert!(pod.spec.is_none() && pod.metadata.managed_fields.is_none());
        assert_eq!(pod.status.unwrap().conditions.unwrap().len(), 1);
        assert_eq!(pod.metadata.labels.unwrap()["dualwrite.io/pipeline"], "p");
        let annotations = pod.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [APPLIED_ANNOTATION]);
        assert!(claim.spec.is_none() && claim.status.is_none());
        assert_eq!(claim.metadata.name.as_deref(), Some("state-p-relay-0"));
        assert_eq!(
            map.metadata.annotations.unwrap().keys().collect::<Vec<_>>(),
            [APPLIED_ANNOTATION]
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1Gi"), Some(1_073_741_824.0));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("relay"), None);
        assert_eq!(quantity("m"), None);
        assert_eq!(quantity("v1"), None);
    }
}
