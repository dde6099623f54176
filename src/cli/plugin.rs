//! `kubectl dualwrite`: the kubectl plugin that operates a migration (`src/bin/kubectl-dualwrite.rs`
//! only parses and calls [`run`]).
//!
//! A verb is a request written to the pipeline's status subresource
//! (`status.migration.request`), as Argo Rollouts writes promote and abort: Git and Argo CD
//! self-heal never see it, so a sync cannot undo it, and it pins nothing. The operator acts on it
//! once, records what it did in `status.migration.lastRequest` (and the history, and an Event)
//! and removes it; the plugin waits for that record and prints it. When the spec pins the
//! migration (`spec.migration.targetStep` or `paused`), the spec wins: the plugin refuses and
//! names the field to change in Git. `status` reads the pipeline; `verify` is a request too
//! (`action: Verify`): the operator starts the check's Job
//! ([`crate::controller::resources::verify_job`]) and names it in `lastRequest.job`, and the
//! plugin waits for the verdict in `status.consistency`. The plugin never creates a Job itself:
//! a right to create Jobs would let its holder run any pod as `<pipeline>-verify`, the identity
//! that may write the verdict.
//!
//! Exit codes: 0 done, 1 refused (by the plugin or the operator) or the brokers disagree, 2 an
//! error (no such pipeline, RBAC, no connection, a timeout).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};

use crate::api::{
    DualWritePipeline, MigrationAction, MigrationRequest, MigrationSpec, MigrationStatus,
    RequestOutcome,
};

/// How long `verify` waits for the operator to start the check's Job.
const REQUEST_WAIT: Duration = Duration::from_secs(60);

/// How many times a request is written when the pipeline changed since it was read.
const WRITE_ATTEMPTS: u32 = 5;

/// The field manager of the plugin's status writes (`kubectl get -o yaml --show-managed-fields`).
pub const FIELD_MANAGER: &str = "kubectl-dualwrite";

/// `kubectl dualwrite`: operate a DualWritePipeline's migration.
#[derive(Parser)]
#[command(
    name = "kubectl-dualwrite",
    bin_name = "kubectl dualwrite",
    version,
    about = "Operate a DualWritePipeline migration: status, promote, pause, resume, rollback, abort, verify",
    long_about = "Operate a DualWritePipeline migration.\n\nEach verb writes a request into the pipeline's status subresource (status.migration.request); the operator acts on it once and records the outcome. Git and Argo CD never see it, so a sync cannot undo it and it pins nothing. When the spec sets spec.migration.targetStep or paused, the spec wins: change it in Git."
)]
pub struct PluginCli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace of the pipeline (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

/// A verb and the pipeline it acts on.
#[derive(Subcommand)]
pub enum Verb {
    /// Show the steps, what the current step waits for, the providers, backlog, hold and the
    /// last consistency check.
    Status {
        /// The DualWritePipeline's name.
        name: String,
    },
    /// Pass the current step's gates once (a manual gate included) and go to the next step;
    /// --to STEP goes to that step past any gates, --full to the last step.
    Promote {
        /// The DualWritePipeline's name.
        name: String,
        /// The 0-based step to go to (ahead of the current one).
        #[arg(long, conflicts_with = "full")]
        to: Option<u32>,
        /// Go to the last step.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Hold the current step: its gates do not advance it until `resume`.
    Pause {
        /// The DualWritePipeline's name.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Lift a hold made by pause, rollback or abort (not spec.migration.paused: that is Git's).
    Resume {
        /// The DualWritePipeline's name.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Go back to the previous step (or --to STEP) and hold there.
    Rollback {
        /// The DualWritePipeline's name.
        name: String,
        /// The 0-based step to go back to.
        #[arg(long)]
        to: Option<u32>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Go back to the first step (its safe strategy) and hold there.
    Abort {
        /// The DualWritePipeline's name.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run the consistency check now: a request the operator turns into a Job
    /// (`dualwrite verify --pipeline`, under `<name>-verify`), then print its verdict from
    /// status.consistency.
    Verify {
        /// The DualWritePipeline's name.
        name: String,
        /// How long to wait for the verdict.
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

/// How long a verb waits for the operator to act on its request.
#[derive(clap::Args, Clone, Copy)]
pub struct WaitArgs {
    /// How long to wait for the operator to act on the request (0: do not wait).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    crate::duration::parse(text).map_err(|e| e.to_string())
}

/// What ends a plugin run other than success.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The request is not sensible, or the operator refused it (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The brokers disagree (exit 1).
    #[error("{0}")]
    Inconsistent(String),
    /// Anything else (exit 2).
    #[error("{0}")]
    Failed(String),
}

impl PluginError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            PluginError::Refused(_) | PluginError::Inconsistent(_) => ExitCode::from(1),
            PluginError::Failed(_) => ExitCode::from(2),
        }
    }
}

type Result<T> = std::result::Result<T, PluginError>;

/// What a failed API call means to the person who ran the verb: 403 names the permission it
/// needs (the chart's `…-migration-operator` ClusterRole grants it), 404 the missing object.
fn api_error(e: kube::Error, verb: &str, resource: &str, ns: &str, name: &str) -> PluginError {
    match &e {
        kube::Error::Api(s) if s.code == 403 => PluginError::Failed(format!(
            "forbidden: you may not {verb} {resource} in namespace {ns} (the chart's ClusterRole …-migration-operator grants what kubectl dualwrite needs): {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 404 && resource.starts_with("dualwritepipelines") => {
            PluginError::Failed(format!(
                "no DualWritePipeline {name} in namespace {ns} (kubectl get dwp -n {ns} lists them)"
            ))
        }
        _ => PluginError::Failed(format!("cannot {verb} {resource} {ns}/{name}: {e}")),
    }
}

/// Runs the verb; prints what it did on stdout.
pub async fn run(cli: PluginCli) -> Result<()> {
    let (client, default_ns) = connect(&cli).await?;
    let ns = cli.namespace.clone().unwrap_or(default_ns);
    let api: Api<DualWritePipeline> = Api::namespaced(client.clone(), &ns);
    match cli.verb {
        Verb::Status { name } => {
            let p = get(&api, &ns, &name).await?;
            print!("{}", render_status(&p));
            Ok(())
        }
        Verb::Promote {
            name,
            to,
            full,
            wait,
        } => {
            let action = if full {
                MigrationAction::PromoteFull
            } else {
                MigrationAction::Promote
            };
            request(&client, &api, &ns, &name, action, to, wait).await
        }
        Verb::Pause { name, wait } => {
            request(
                &client,
                &api,
                &ns,
                &name,
                MigrationAction::Pause,
                None,
                wait,
            )
            .await
        }
        Verb::Resume { name, wait } => {
            request(
                &client,
                &api,
                &ns,
                &name,
                MigrationAction::Resume,
                None,
                wait,
            )
            .await
        }
        Verb::Rollback { name, to, wait } => {
            request(
                &client,
                &api,
                &ns,
                &name,
                MigrationAction::Rollback,
                to,
                wait,
            )
            .await
        }
        Verb::Abort { name, wait } => {
            request(
                &client,
                &api,
                &ns,
                &name,
                MigrationAction::Abort,
                None,
                wait,
            )
            .await
        }
        Verb::Verify { name, timeout } => verify(&client, &api, &ns, &name, timeout).await,
    }
}

/// A client as kubectl would make it: `--kubeconfig`, else `$KUBECONFIG` (a list is merged),
/// else `~/.kube/config`, else in-cluster; `--context`; the context's namespace as the default.
async fn connect(cli: &PluginCli) -> Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let failed =
        |e: &dyn std::fmt::Display| PluginError::Failed(format!("cannot load the kubeconfig: {e}"));
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                PluginError::Failed(format!("cannot read --kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| failed(&e))?
        }
        None if cli.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| failed(&e))?,
        None => kube::Config::infer().await.map_err(|e| failed(&e))?,
    };
    let ns = config.default_namespace.clone();
    let client = Client::try_from(config)
        .map_err(|e| PluginError::Failed(format!("cannot build a Kubernetes client: {e}")))?;
    Ok((client, ns))
}

async fn get(api: &Api<DualWritePipeline>, ns: &str, name: &str) -> Result<DualWritePipeline> {
    api.get(name)
        .await
        .map_err(|e| api_error(e, "get", "dualwritepipelines.dualwrite.io", ns, name))
}

/// Why the plugin refuses `action` on `p` before writing anything, if it does: no migration, the
/// spec pins it, a step out of range, a request still pending.
pub fn refusal(p: &DualWritePipeline, action: MigrationAction, to: Option<u32>) -> Option<String> {
    let name = p.name_any();
    let Some(m) = &p.spec.migration else {
        return Some(format!(
            "{name} has no spec.migration: there is no migration to {}",
            verb_word(action)
        ));
    };
    // A consistency check does not move the step: the spec's pins do not stop it.
    if let Some(t) = m.target_step.filter(|_| action != MigrationAction::Verify) {
        return Some(format!(
            "spec.migration.targetStep={t} pins this migration: change it in Git"
        ));
    }
    if m.paused && action != MigrationAction::Verify {
        return Some(
            "spec.migration.paused=true pins this migration: change it in Git".to_string(),
        );
    }
    let Some(current) = p.status.as_ref().and_then(|s| s.migration.as_ref()) else {
        return Some(format!(
            "the operator has not started {name}'s migration yet (no status.migration): is it running?"
        ));
    };
    if let Some(to) = to.filter(|to| *to as usize >= m.steps.len()) {
        return Some(format!(
            "step {to} is out of range: {name} has {} steps (0 to {})",
            m.steps.len(),
            m.steps.len().saturating_sub(1)
        ));
    }
    if let Some(r) = crate::controller::step::pending_request(current) {
        return Some(format!(
            "a {:?} request by {} ({}) is still waiting for the operator: try again once it is acted on",
            r.action,
            crate::controller::step::requester(r),
            r.requested_at
        ));
    }
    None
}

fn verb_word(action: MigrationAction) -> &'static str {
    match action {
        MigrationAction::Promote | MigrationAction::PromoteFull => "promote",
        MigrationAction::Pause => "pause",
        MigrationAction::Resume => "resume",
        MigrationAction::Rollback => "roll back",
        MigrationAction::Abort => "abort",
        MigrationAction::Verify => "verify",
    }
}

/// Writes the request (a merge patch of the status subresource carrying the resourceVersion
/// read, so a change meanwhile fails it), then waits for the operator's outcome.
async fn request(
    client: &Client,
    api: &Api<DualWritePipeline>,
    ns: &str,
    name: &str,
    action: MigrationAction,
    to: Option<u32>,
    wait: WaitArgs,
) -> Result<()> {
    match write_request(client, api, ns, name, action, to, wait.timeout).await? {
        None => {
            println!(
                "{:?} requested for {ns}/{name}; the operator acts on it shortly",
                action
            );
            Ok(())
        }
        Some(outcome) if outcome.accepted => {
            println!("{}", outcome.message);
            Ok(())
        }
        Some(outcome) => Err(PluginError::Refused(format!(
            "the operator refused the request: {}",
            outcome.message
        ))),
    }
}

/// Writes the request and waits up to `timeout` for the operator's outcome (None: no wait).
async fn write_request(
    client: &Client,
    api: &Api<DualWritePipeline>,
    ns: &str,
    name: &str,
    action: MigrationAction,
    to: Option<u32>,
    timeout: Duration,
) -> Result<Option<RequestOutcome>> {
    let mut request = MigrationRequest {
        action,
        to_step: to,
        requested_at: k8s_openapi::jiff::Timestamp::now().to_string(),
        requested_by: Some(who_am_i(client).await),
        nonce: None,
    };
    // The operator writes the status often: a write based on an older read conflicts (409);
    // read again, judge again, write again.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let p = get(api, ns, name).await?;
        if let Some(why) = refusal(&p, action, to) {
            return Err(PluginError::Refused(why));
        }
        // The resourceVersion read: unique to this write (it fails when the pipeline changed),
        // so two equal requests within a second are two requests.
        request.nonce = p.resource_version();
        let body = serde_json::json!({
            "metadata": {"resourceVersion": p.resource_version()},
            "status": {"migration": {"request": request}},
        });
        match api
            .patch_status(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempts < WRITE_ATTEMPTS => continue,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Err(PluginError::Failed(format!(
                    "{ns}/{name} kept changing while the request was being written ({attempts} attempts): run the command again"
                )))
            }
            Err(e) => {
                return Err(api_error(
                    e,
                    "patch",
                    "dualwritepipelines.dualwrite.io/status",
                    ns,
                    name,
                ))
            }
        }
    }
    if timeout.is_zero() {
        return Ok(None);
    }
    wait_for_outcome(api, ns, name, &request, timeout)
        .await
        .map(Some)
}

/// Waits until `cond` holds for object `name` (a watch, as `kubectl wait` does), up to
/// `timeout`. A watch that fails (an expired resourceVersion, a dropped connection) is started
/// again within the deadline; Err carries the last watch error, if any, once it has passed.
async fn wait_for<K, C>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: C,
) -> std::result::Result<Option<K>, Option<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: kube::runtime::wait::Condition<K> + Clone,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(last_error);
        }
        match tokio::time::timeout(left, await_condition(api.clone(), name, cond.clone())).await {
            Ok(Ok(obj)) => return Ok(obj),
            Ok(Err(e)) => {
                last_error = Some(e.to_string());
                tokio::time::sleep(WATCH_RETRY.min(left)).await;
            }
            Err(_) => return Err(last_error),
        }
    }
}

/// The pause before a failed watch is started again.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Waits (a watch) until the operator records `request` as acted on.
async fn wait_for_outcome(
    api: &Api<DualWritePipeline>,
    ns: &str,
    name: &str,
    request: &MigrationRequest,
    timeout: Duration,
) -> Result<RequestOutcome> {
    let outcome_of = |p: &DualWritePipeline| -> Option<RequestOutcome> {
        p.status
            .as_ref()?
            .migration
            .as_ref()?
            .last_request
            .clone()
            .filter(|l| &l.request == request)
    };
    let done = |p: Option<&DualWritePipeline>| p.and_then(outcome_of).is_some();
    match wait_for(api, name, timeout, done).await {
        Ok(Some(p)) => outcome_of(&p).ok_or_else(|| {
            PluginError::Failed("the watch ended without the operator's outcome".into())
        }),
        Ok(None) => Err(PluginError::Failed(format!(
            "{ns}/{name} was deleted while waiting"
        ))),
        Err(Some(e)) => Err(PluginError::Failed(format!(
            "the operator's outcome did not arrive within {}; the last watch error (it needs list and watch on dualwritepipelines): {e}",
            humantime::format_duration(timeout)
        ))),
        Err(None) => Err(PluginError::Failed(format!(
            "the operator has not acted on the request within {}: is it running? The request stays in status.migration.request until it does",
            humantime::format_duration(timeout)
        ))),
    }
}

/// The requester's user name (a SelfSubjectReview, as `kubectl auth whoami`), else `$USER`.
async fn who_am_i(client: &Client) -> String {
    let reviews: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = SelfSubjectReview::default();
    match reviews.create(&PostParams::default(), &review).await {
        Ok(r) => r
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    }
}

/// Asks the operator for a consistency check (a Verify request), then waits for the verdict
/// its Job records in status.consistency; prints it.
async fn verify(
    client: &Client,
    api: &Api<DualWritePipeline>,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    // Whole seconds: the verdict's checkedAt has no fraction.
    let started =
        k8s_openapi::jiff::Timestamp::from_second(k8s_openapi::jiff::Timestamp::now().as_second())
            .expect("now is a valid time");
    let deadline = tokio::time::Instant::now() + timeout;
    let outcome = write_request(
        client,
        api,
        ns,
        name,
        MigrationAction::Verify,
        None,
        timeout.min(REQUEST_WAIT),
    )
    .await?
    .expect("waited for");
    if !outcome.accepted {
        return Err(PluginError::Refused(format!(
            "the operator refused the request: {}",
            outcome.message
        )));
    }
    let job = outcome.job.unwrap_or_else(|| "(unnamed)".into());
    println!(
        "job.batch/{job} started by the operator; waiting up to {} for its verdict",
        humantime::format_duration(timeout)
    );
    let verdict = |p: Option<&DualWritePipeline>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.consistency.as_ref())
            .is_some_and(|c| c.checked_at.0 >= started)
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let p = match wait_for(api, name, left, verdict).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(PluginError::Failed(format!(
                "{ns}/{name} was deleted while waiting"
            )))
        }
        Err(last) => {
            return Err(PluginError::Failed(format!(
                "no verdict from job.batch/{job} within {}: kubectl describe job {job} -n {ns}{}",
                humantime::format_duration(timeout),
                last.map(|e| format!(" (last watch error: {e})"))
                    .unwrap_or_default()
            )))
        }
    };
    let c = p
        .status
        .as_ref()
        .and_then(|s| s.consistency.as_ref())
        .expect("awaited above");
    let line = consistency_line(c);
    if c.consistent {
        println!("{line}");
        Ok(())
    } else {
        Err(PluginError::Inconsistent(line))
    }
}

fn consistency_line(c: &crate::api::ConsistencyStatus) -> String {
    let list = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let seen = list(&c.seen);
    if c.consistent {
        format!("consistent (checked at {}; seen {seen})", c.checked_at.0)
    } else {
        let mut parts = vec![format!("NOT consistent (checked at {})", c.checked_at.0)];
        for (what, m) in [
            ("missing", &c.missing),
            ("conflicting", &c.conflicting),
            ("duplicates", &c.duplicates),
        ] {
            let l = list(m);
            if !l.is_empty() {
                parts.push(format!("{what}: {l}"));
            }
        }
        parts.join("; ")
    }
}

/// `kubectl dualwrite status`: what a person operating the migration needs on one screen.
pub fn render_status(p: &DualWritePipeline) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let status = p.status.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "Pipeline:   {}/{}",
        p.namespace().unwrap_or_default(),
        p.name_any()
    );
    let _ = writeln!(
        out,
        "Strategy:   {}   read from: {}   relays reporting: {}",
        status
            .strategy
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        status.read_from.as_deref().unwrap_or("-"),
        status.replicas
    );
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "{:<11} {} ({}) {}",
            format!("{}:", c.type_),
            c.status,
            c.reason,
            c.message
        );
    }
    match (&p.spec.migration, &status.migration) {
        (None, _) => {
            let _ = writeln!(out, "Migration:  none (spec.migration is not set)");
        }
        (Some(m), current) => render_migration(&mut out, m, current.as_ref()),
    }
    let _ = writeln!(out, "Providers:");
    let _ = writeln!(
        out,
        "  {:<12} {:<7} {:<8} {:>10} {:>8} {:>8} {:>9}  NEEDS-RECONCILIATION",
        "NAME", "TYPE", "READY", "PUBLISHED", "FAILED", "BACKLOG", "P99(ms)"
    );
    for r in &status.providers {
        let _ = writeln!(
            out,
            "  {:<12} {:<7} {:<8} {:>10} {:>8} {:>8} {:>9}  {}",
            r.name,
            r.kind.to_string(),
            r.ready.to_string(),
            r.published,
            r.failed,
            r.backlog,
            r.latency_p99_ms
                .map(|l| format!("{l:.1}"))
                .unwrap_or_else(|| "-".into()),
            if r.needs_reconciliation {
                format!("yes: {}", r.reconciliation_reason.as_deref().unwrap_or(""))
            } else {
                "no".into()
            }
        );
    }
    let _ = writeln!(out, "Backlog:    {}", status.backlog);
    let _ = writeln!(
        out,
        "Consistency: {}",
        status
            .consistency
            .as_ref()
            .map(consistency_line)
            .unwrap_or_else(|| "no check has run (kubectl dualwrite verify NAME runs one)".into())
    );
    out
}

fn render_migration(out: &mut String, m: &MigrationSpec, current: Option<&MigrationStatus>) {
    use std::fmt::Write;
    let Some(cur) = current else {
        let _ = writeln!(out, "Migration:  not started by the operator yet");
        return;
    };
    let _ = writeln!(
        out,
        "Migration:  step {} ({}) since {}: {}",
        cur.current_step, cur.step_name, cur.step_started_at.0, cur.reason
    );
    let _ = writeln!(out, "  {}", cur.message);
    if let Some(t) = m.target_step {
        let _ = writeln!(
            out,
            "  Pinned by spec.migration.targetStep={t} (change it in Git)"
        );
    }
    if m.paused {
        let _ = writeln!(out, "  Paused by spec.migration.paused (change it in Git)");
    }
    if let Some(h) = &cur.held {
        let _ = writeln!(
            out,
            "  Held:     {} since {} (kubectl dualwrite resume lifts it)",
            h.reason, h.since.0
        );
    }
    if let Some(r) = &cur.request {
        let _ = writeln!(
            out,
            "  Pending request: {:?} by {} at {}",
            r.action,
            crate::controller::step::requester(r),
            r.requested_at
        );
    }
    if let Some(l) = &cur.last_request {
        let _ = writeln!(
            out,
            "  Last request: {:?} by {} at {}: {} — {}",
            l.request.action,
            crate::controller::step::requester(&l.request),
            l.handled_at.0,
            if l.accepted { "done" } else { "refused" },
            l.message
        );
    }
    let _ = writeln!(out, "Steps:");
    let _ = writeln!(
        out,
        "    {:<4} {:<16} {:<11} {:<8} GATES",
        "STEP", "NAME", "STRATEGY", "READS"
    );
    for (i, s) in m.steps.iter().enumerate() {
        let marker = if i as u32 == cur.current_step {
            "->"
        } else {
            "  "
        };
        let gates = match crate::controller::step::gates(s) {
            Ok(g) => {
                let mut parts = Vec::new();
                if g.manual {
                    parts.push("manual".to_string());
                }
                if !g.min_duration.is_zero() {
                    parts.push(format!(
                        "minDuration {}",
                        crate::controller::human(g.min_duration)
                    ));
                }
                if g.all_healthy {
                    parts.push("allHealthy".into());
                }
                if g.backlog_empty {
                    parts.push("backlogEmpty".into());
                }
                if g.consistent {
                    parts.push("consistent".into());
                }
                if i + 1 == m.steps.len() {
                    "(last step)".to_string()
                } else {
                    parts.join(", ")
                }
            }
            Err(e) => format!("invalid: {e}"),
        };
        let _ = writeln!(
            out,
            "  {marker}{:<4} {:<16} {:<11} {:<8} {gates}",
            i,
            s.name,
            s.strategy.to_string(),
            s.read_from.as_deref().unwrap_or("-"),
        );
    }
    let _ = writeln!(out, "  Waiting for: {}", waiting_for(cur));
}

/// What the current step waits for, in the step machine's words (it names the closed gate).
fn waiting_for(cur: &MigrationStatus) -> String {
    use crate::controller::reason;
    match cur.reason.as_str() {
        reason::COMPLETED => "nothing: the migration is complete".into(),
        reason::HELD => "a resume (or promote) request".into(),
        reason::PAUSED | reason::PINNED => "a change in Git".into(),
        reason::AWAITING_PROMOTION
        | reason::MIN_DURATION_NOT_REACHED
        | reason::WAITING_FOR_RELAYS
        | reason::PROVIDERS_NOT_READY
        | reason::BACKLOG_NOT_EMPTY
        | reason::CONSISTENCY_NOT_CONFIRMED
        | reason::INVALID_GATE => format!("{} ({})", cur.reason, cur.message),
        _ => "the next reconcile to judge the gates".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(extra: &str, status: &str) -> DualWritePipeline {
        serde_yaml::from_str(&format!(
            "apiVersion: dualwrite.io/v1alpha1\nkind: DualWritePipeline\nmetadata: {{name: orders, namespace: shop}}\nspec:\n  providers: [{{name: a, type: memory}}, {{name: b, type: memory}}]\n  migration: {{steps: [{{name: s0, strategy: FailFast}}, {{name: s1, strategy: BestEffort}}]{extra}}}\n{status}"
        ))
        .unwrap()
    }

    const STARTED: &str = "status: {migration: {currentStep: 0, stepName: s0, reason: Started, stepStartedAt: '2026-01-01T00:00:00Z'}}";

    /// The plugin refuses before writing: the spec pins the migration (naming the field), the
    /// step is out of range, the migration has not started.
    #[test]
    fn refusals_name_what_to_change() {
        let cases = [
            (
                ", targetStep: 1",
                STARTED,
                Some(1),
                "spec.migration.targetStep=1 pins this migration: change it in Git",
            ),
            (
                ", paused: true",
                STARTED,
                None,
                "spec.migration.paused=true pins this migration: change it in Git",
            ),
            (
                "",
                STARTED,
                Some(5),
                "step 5 is out of range: orders has 2 steps (0 to 1)",
            ),
            ("", "", None, "has not started"),
            (
                "",
                "status: {migration: {currentStep: 0, stepName: s0, reason: Started, stepStartedAt: '2026-01-01T00:00:00Z', request: {action: Pause, requestedAt: '2026-01-01T00:00:01Z', requestedBy: bob}}}",
                None,
                "a Pause request by bob (2026-01-01T00:00:01Z) is still waiting for the operator",
            ),
        ];
        for (extra, status, to, want) in cases {
            let why = refusal(&pipeline(extra, status), MigrationAction::Promote, to);
            assert!(
                why.as_deref().is_some_and(|w| w.contains(want)),
                "{extra} {status}: {why:?} lacks {want:?}"
            );
        }
        assert_eq!(
            refusal(&pipeline("", STARTED), MigrationAction::Promote, Some(1)),
            None
        );
    }
}
