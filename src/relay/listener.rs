//! The ingest listener: the accept loop that serves the API of [`super::http`] so that it can be
//! closed (optional TLS, optional bearer tokens) and cannot be exhausted (a cap on connections,
//! a header-read timeout, a whole-request timeout, a cap on requests in flight), with the probe
//! endpoints optionally on a plain port of their own.
//!
//! # Lifecycle, and why it is shaped this way
//!
//! - **Connections.** The loop takes a connection slot (a semaphore of `maxConnections`)
//!   *before* it accepts. Past the cap, new connections wait unaccepted in the kernel's accept
//!   backlog rather than being accepted and closed at once: the client sees a slow connect that
//!   is served as soon as a slot frees, not a reset that it would retry at once (a storm of
//!   retries is what an overloaded server least needs); when the backlog itself is full, the
//!   kernel drops the SYN and the client's TCP retries with backoff. A slot frees when a
//!   connection closes, and no connection holds one for long without doing work: its headers
//!   must arrive within `headerTimeout` (hyper's header-read timer, which also runs while a
//!   keep-alive connection waits idle for its next request, so idle connections cannot hoard
//!   slots), its TLS handshake within the same time, each request within `requestTimeout`.
//! - **Requests.** The token is checked first (cheap, and an unauthenticated flood must not
//!   take the slots of real clients), then a slot of `maxInFlight` is taken without waiting:
//!   past the cap the answer is 503 with `Retry-After` at once, since queueing would only turn
//!   overload into timeouts. `/health`, `/ready`, `/stats` and `/metrics` skip that cap: a
//!   loaded relay must still answer its probes and its scraper. A request that outlives
//!   `requestTimeout` is answered 408 when its body had not all arrived (a slow client), else 503
//!   (a slow publish; a retry with the same id is de-duplicated).
//! - **Probe port.** With `probePort`, `/health`, `/ready`, `/stats` and `/metrics` move to a
//!   plain-HTTP listener with no token and a small connection cap of its own
//!   ([`PROBE_MAX_CONNECTIONS`]), so that neither TLS, nor tokens, nor a flood of ingest
//!   connections can make a kubelet restart a healthy relay; the ingest listener then serves the
//!   ingest API only. Without it the ingest listener serves everything: `/health` and `/ready`
//!   need no token (a kubelet probe carries none), `/stats` and `/metrics` do.
//! - **Stop.** When `shutdown` resolves both loops stop accepting (the ports close), every
//!   connection is told to finish the request it is serving and close (idle ones close at
//!   once), and [`IngestServer::run`] waits up to [`DRAIN_GRACE`] for them before it drops the
//!   stragglers. The relay then closes the composite, letting backlogs replay up to
//!   [`super::BACKLOG_GRACE`]: 5 s + 20 s, plus closing the providers, fit the pod's grace
//!   period (the operator sizes it from these: 45 s with the defaults).
//! - **Secrets.** The certificate, key and tokens are read from their Secret files at start; a
//!   file that is missing or not usable stops the relay with an error naming the Secret and key.
//!   The files are looked at again at most once a second (on a request or a handshake) and read
//!   again when they changed: the kubelet rewrites a mounted Secret when it is rotated, and
//!   cert-manager renews a certificate before it expires. A rotation that cannot be read keeps
//!   the previous value. A token is never logged.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::{rustls, TlsAcceptor};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::http::{self, Endpoints};
use super::metrics::IngestMetrics;
use super::pipeline::IngestConfig;
use super::Relay;
use crate::provider::secret::{CertAndKey, SecretFile, SecretMissing};

/// How long a stopping relay lets requests in flight finish before it closes their connections.
/// With [`super::BACKLOG_GRACE`] (20 s) and the publish timeout it fits the pod's grace period
/// (45 s with the defaults), with time to close the providers.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Connections the probe port accepts at once: a kubelet, a scraper and a person with curl need
/// a handful; the cap keeps a misdirected flood from costing more than that.
pub const PROBE_MAX_CONNECTIONS: usize = 64;

/// What a 503 for overload tells the client to wait, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Pause after a failed `accept` (out of file descriptors, say) so a lasting error does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Why the ingest listener cannot start. Names the Secret and key, never what they hold.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {addr} for the ingest API: {source}; set API_PORT, --port or spec.ingest.port to a free port")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr} for probes and metrics: {source}; set spec.ingest.probePort to a free port")]
    ListenProbes {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A Secret key the listener needs cannot be read.
    #[error("spec.ingest.{field}: {source}")]
    Secret {
        field: &'static str,
        #[source]
        source: SecretMissing,
    },
    /// A Secret key holds something other than what the listener needs.
    #[error("spec.ingest.{field}: {file} {problem}")]
    Unusable {
        field: &'static str,
        file: String,
        problem: String,
    },
}

/// What the listener enforces, from the pipeline's ingest settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl From<&IngestConfig> for Limits {
    fn from(c: &IngestConfig) -> Self {
        Self {
            max_connections: c.max_connections.max(1),
            max_in_flight: c.max_in_flight.max(1),
            header_timeout: c.header_timeout,
            request_timeout: c.request_timeout,
        }
    }
}

/// The ingest API's listeners, ready to run: sockets bound, certificate and tokens loaded.
pub struct IngestServer {
    relay: Arc<Relay>,
    ingest: Listener,
    probes: Option<Listener>,
}

impl IngestServer {
    /// Binds the ingest port (and the pipeline's probe port, if any) on `ip`, after loading the
    /// certificate and tokens the pipeline names.
    pub async fn bind(relay: Arc<Relay>, ip: IpAddr, port: u16) -> Result<Self, ListenerError> {
        let config = relay.config().ingest;
        let guards = Guards::load(&config)?;
        let addr = SocketAddr::new(ip, port);
        let ingest = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenerError::Listen { addr, source })?;
        let probes = match config.probe_port {
            Some(p) => {
                let addr = SocketAddr::new(ip, p);
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ListenerError::ListenProbes { addr, source })?,
                )
            }
            None => None,
        };
        Ok(Self::with_guards(relay, ingest, probes, guards))
    }

    /// Serves on listeners the caller bound (tests bind `127.0.0.1:0`): the ingest API on
    /// `ingest`, and the probe endpoints on `probes` if given, else on `ingest` too. TLS, tokens
    /// and limits come from the relay's pipeline.
    pub fn new(
        relay: Arc<Relay>,
        ingest: TcpListener,
        probes: Option<TcpListener>,
    ) -> Result<Self, ListenerError> {
        let guards = Guards::load(&relay.config().ingest)?;
        Ok(Self::with_guards(relay, ingest, probes, guards))
    }

    fn with_guards(
        relay: Arc<Relay>,
        ingest: TcpListener,
        probes: Option<TcpListener>,
        guards: Guards,
    ) -> Self {
        let limits = guards.limits;
        let endpoints = match &probes {
            Some(p) => Endpoints::Ingest {
                probe_port: p.local_addr().map_or(0, |a| a.port()),
            },
            None => Endpoints::All,
        };
        let ingest = Listener {
            tcp: ingest,
            tls: guards.tls,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            gate: Arc::new(Gate {
                router: http::routes(relay.clone(), endpoints),
                relay: relay.clone(),
                tokens: guards.tokens,
                in_flight: Some(Arc::new(Semaphore::new(limits.max_in_flight))),
                limits,
                ingest: true,
            }),
        };
        let probes = probes.map(|tcp| Listener {
            tcp,
            tls: None,
            connections: Arc::new(Semaphore::new(PROBE_MAX_CONNECTIONS)),
            gate: Arc::new(Gate {
                router: http::routes(relay.clone(), Endpoints::Probes),
                relay: relay.clone(),
                tokens: None,
                in_flight: None,
                limits,
                ingest: false,
            }),
        });
        Self {
            relay,
            ingest,
            probes,
        }
    }

    /// The relay this server serves.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Where the ingest API listens.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.ingest.tcp.local_addr()
    }

    /// Where the probe endpoints listen, when they have a port of their own.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probes.as_ref().and_then(|p| p.tcp.local_addr().ok())
    }

    /// Serves until `shutdown` resolves; then stops accepting and waits up to [`DRAIN_GRACE`]
    /// for the requests in flight (see the module doc). Does not close the providers.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let gate = &self.ingest.gate;
        tracing::info!(
            addr = %self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            probes = %self.probe_addr().map_or_else(|| "same port".to_string(), |a| a.to_string()),
            tls = self.ingest.tls.is_some(),
            authentication = gate.tokens.is_some(),
            max_connections = gate.limits.max_connections,
            max_in_flight = gate.limits.max_in_flight,
            strategy = %self.relay.composite().strategy(),
            "ingest API listening"
        );
        let stop = CancellationToken::new();
        let kill = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stopper = async {
            shutdown.await;
            stop.cancel();
        };
        let probes = async {
            if let Some(p) = self.probes {
                p.accept_loop(&tracker, &stop, &kill).await;
            }
        };
        tokio::join!(
            stopper,
            self.ingest.accept_loop(&tracker, &stop, &kill),
            probes
        );
        // Both listeners are dropped: the ports are closed.
        tracker.close();
        if tokio::time::timeout(DRAIN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                connections = tracker.len(),
                grace = ?DRAIN_GRACE,
                "requests still running after the drain grace; closing their connections"
            );
            kill.cancel();
            tracker.wait().await;
        }
    }
}

/// The certificate, tokens and limits of the ingest listener, loaded from the pipeline.
struct Guards {
    tls: Option<TlsAcceptor>,
    tokens: Option<Arc<Tokens>>,
    limits: Limits,
}

impl Guards {
    fn load(config: &IngestConfig) -> Result<Self, ListenerError> {
        Ok(Self {
            tls: config.tls.as_ref().map(tls_acceptor).transpose()?,
            tokens: config
                .tokens
                .clone()
                .map(Tokens::load)
                .transpose()?
                .map(Arc::new),
            limits: Limits::from(config),
        })
    }
}

/// One listening socket and what guards it.
struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    gate: Arc<Gate>,
}

impl Listener {
    /// Accepts connections until `stop`, each served on a task of `tracker`.
    async fn accept_loop(
        self,
        tracker: &TaskTracker,
        stop: &CancellationToken,
        kill: &CancellationToken,
    ) {
        loop {
            // A slot first: past the cap, connections wait in the kernel's backlog.
            let permit = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                p = self.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break, // never closed
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                accepted = self.tcp.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        }
                    }
                },
            };
            // Answers are small: send them now rather than wait for more to coalesce.
            let _ = stream.set_nodelay(true);
            let gate = self.gate.clone();
            let tls = self.tls.clone();
            let (stop, kill) = (stop.clone(), kill.clone());
            tracker.spawn(async move {
                let _permit = permit;
                let metrics = &gate.relay.metrics;
                let _open = gate.ingest.then(|| IngestMetrics::hold(&metrics.connections));
                let Some(acceptor) = tls else {
                    return serve_connection(stream, gate.clone(), stop, kill).await;
                };
                let handshake = tokio::select! {
                    r = tokio::time::timeout(gate.limits.header_timeout, acceptor.accept(stream)) => r,
                    _ = stop.cancelled() => return,
                };
                match handshake {
                    Ok(Ok(tls)) => serve_connection(tls, gate.clone(), stop, kill).await,
                    Ok(Err(e)) => {
                        IngestMetrics::count(&metrics.rejected.tls_handshake);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        IngestMetrics::count(&metrics.rejected.tls_handshake);
                        tracing::debug!(%peer, "TLS handshake not finished within the header timeout");
                    }
                }
            });
        }
    }
}

/// Serves HTTP/1.1 on one connection until it closes, `stop` (finish the request in flight,
/// then close) or `kill` (close now).
async fn serve_connection<I>(
    io: I,
    gate: Arc<Gate>,
    stop: CancellationToken,
    kill: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn({
        let gate = gate.clone();
        move |req| gate.clone().handle(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gate.limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let outcome = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                _ = kill.cancelled() => return,
            }
        }
    };
    if let Err(e) = outcome {
        if e.is_timeout() {
            IngestMetrics::count(&gate.relay.metrics.rejected.header_timeout);
        } else {
            tracing::debug!(error = %e, "connection closed with an error");
        }
    }
}

/// What every request on one listener goes through before and around its handler.
struct Gate {
    router: Router,
    relay: Arc<Relay>,
    /// Accepted bearer tokens; `None`: no authentication (and always on the probe port).
    tokens: Option<Arc<Tokens>>,
    /// One permit per request in flight; `None` on the probe port.
    in_flight: Option<Arc<Semaphore>>,
    limits: Limits,
    /// The ingest listener (its connections are counted in the gauge).
    ingest: bool,
}

impl Gate {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Response, Infallible> {
        let metrics = &self.relay.metrics;
        let path = req.uri().path();
        let open = http::UNAUTHENTICATED_PATHS.contains(&path);
        let uncapped = http::PROBE_PATHS.contains(&path);
        if let (Some(tokens), false) = (&self.tokens, open) {
            if let Some(refused) = refusal(tokens, &req) {
                IngestMetrics::count(&metrics.rejected.unauthorized);
                return Ok(refused);
            }
        }
        let _slot = match (&self.in_flight, uncapped) {
            (Some(slots), false) => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some((permit, IngestMetrics::hold(&metrics.in_flight))),
                Err(_) => {
                    IngestMetrics::count(&metrics.rejected.overloaded);
                    return Ok(overloaded(self.limits.max_in_flight));
                }
            },
            _ => None,
        };
        let body_arrived = Arc::new(AtomicBool::new(false));
        let req = req.map(|b| Body::new(WatchedBody::new(b, body_arrived.clone())));
        let timeout = self.limits.request_timeout;
        match tokio::time::timeout(timeout, self.router.clone().oneshot(req)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(never)) => match never {},
            Err(_) if !body_arrived.load(Ordering::Acquire) => {
                IngestMetrics::count(&metrics.rejected.body_timeout);
                Ok(closing(http::error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} (spec.ingest.requestTimeout); send it at once",
                        humantime::format_duration(timeout)
                    ),
                )))
            }
            Err(_) => {
                IngestMetrics::count(&metrics.rejected.request_timeout);
                Ok(closing(http::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "no answer within {} (spec.ingest.requestTimeout); the message may or may not have been written: retry it with the same \"id\" (a retry is de-duplicated)",
                        humantime::format_duration(timeout)
                    ),
                )))
            }
        }
    }
}

/// The response with `Connection: close` (the connection's state is unknown after a timeout).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 503 with `Retry-After`: past `maxInFlight`.
fn overloaded(max_in_flight: usize) -> Response {
    let mut r = http::error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the relay is serving its limit of {max_in_flight} requests (spec.ingest.maxInFlight); retry after {RETRY_AFTER_SECONDS} s"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    r
}

/// Checks `Authorization: Bearer <token>`: `None` when accepted, else the refusal, 401 with
/// `WWW-Authenticate`.
fn refusal<B>(tokens: &Tokens, req: &Request<B>) -> Option<Response> {
    let (message, challenge) = match bearer_token(req) {
        None => (
            "this relay requires a bearer token: send the header Authorization: Bearer <token>",
            "Bearer realm=\"dualwrite\"",
        ),
        Some(t) if tokens.accepts(t) => return None,
        Some(_) => (
            "the bearer token is not accepted; use one of the tokens in the Secret that spec.ingest.authentication.tokensSecret names",
            "Bearer realm=\"dualwrite\", error=\"invalid_token\"",
        ),
    };
    let mut r = http::error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    Some(r)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token<B>(req: &Request<B>) -> Option<&[u8]> {
    let value = req.headers().get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// A request body that records when it has all arrived, so that a timeout can tell a slow
/// client (408) from a slow publish (503).
struct WatchedBody {
    inner: Incoming,
    arrived: Arc<AtomicBool>,
}

impl WatchedBody {
    fn new(inner: Incoming, arrived: Arc<AtomicBool>) -> Self {
        if hyper::body::Body::is_end_stream(&inner) {
            arrived.store(true, Ordering::Release);
        }
        Self { inner, arrived }
    }
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.arrived.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

mod secrets;
#[cfg(test)]
use secrets::*;
pub use secrets::{tls_acceptor, Tokens};

#[cfg(test)]
mod tests {
    use super::*;

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(a) = authorization {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn bearer_token_is_read_from_the_authorization_header() {
        for (header, token) in [
            (None, None),
            (Some("Bearer abc"), Some("abc")),
            (Some("bearer   abc  "), Some("abc")),
            (Some("BEARER abc"), Some("abc")),
            (Some("Basic abc"), None),
            (Some("Bearer"), None),
            (Some("Bearer  "), None),
            (Some("Bearerabc"), None),
        ] {
            assert_eq!(
                bearer_token(&request(header)),
                token.map(str::as_bytes),
                "{header:?}"
            );
        }
    }

    fn tokens_file(dir: &Path, content: &str) -> SecretFile {
        let f = SecretFile::new(dir, "ingest-tokens", "tokens");
        std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
        std::fs::write(&f.path, content).unwrap();
        f
    }

    #[test]
    fn tokens_accept_only_a_listed_token_and_say_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::load(tokens_file(dir.path(), "\n  first-token \nsecond\n\n")).unwrap();
        for (presented, ok) in [
            ("first-token", true),
            ("second", true),
            ("first", false),
            ("first-token2", false),
            ("", false),
            ("Second", false),
        ] {
            assert_eq!(tokens.accepts(presented.as_bytes()), ok, "{presented:?}");
        }
        let empty = Tokens::load(tokens_file(dir.path(), "\n \n"))
            .err()
            .unwrap();
        assert!(empty.to_string().contains("\"ingest-tokens\""), "{empty}");
        let missing = Tokens::load(SecretFile::new(dir.path(), "nope", "tokens"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            missing.contains("\"nope\"") && missing.contains("\"tokens\""),
            "{missing}"
        );
    }

    #[test]
    fn a_rotated_tokens_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = tokens_file(dir.path(), "old-token\n");
        let tokens = Tokens::load(file.clone()).unwrap();
        assert!(tokens.accepts(b"old-token"));
        // As the kubelet does: a new file swapped in.
        let next = file.path.with_extension("new");
        std::fs::write(&next, "new-token\n").unwrap();
        std::fs::rename(&next, &file.path).unwrap();
        // Not looked at again within the check interval...
        assert!(tokens.accepts(b"old-token"));
        // ...then re-read.
        tokens.0.state.lock().unwrap().checked -= RELOAD_CHECK_EVERY;
        assert!(tokens.accepts(b"new-token"));
        assert!(!tokens.accepts(b"old-token"));
        // A file gone mid-rotation keeps the tokens we have.
        std::fs::remove_file(&file.path).unwrap();
        tokens.0.state.lock().unwrap().checked -= RELOAD_CHECK_EVERY;
        assert!(tokens.accepts(b"new-token"));
    }

    #[test]
    fn unusable_tls_files_name_the_secret_and_key_and_not_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let secret = |key: &str, content: &str| {
            let f = SecretFile::new(dir.path(), "ingest-tls", key);
            std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
            std::fs::write(&f.path, content).unwrap();
            f
        };
        let planted = "-----BEGIN CERTIFICATE-----\nPLANTED-SECRET!!\n-----END CERTIFICATE-----\n";
        for (cert, key, expected) in [
            (
                secret("tls.crt", planted),
                secret("tls.key", planted),
                "\"tls.crt\"",
            ),
            (
                secret("empty.crt", "nothing here"),
                secret("tls.key", ""),
                "\"empty.crt\"",
            ),
            (
                SecretFile::new(dir.path(), "ingest-tls", "absent.crt"),
                secret("tls.key", ""),
                "\"absent.crt\"",
            ),
        ] {
            let err = tls_acceptor(&CertAndKey {
                certificate: cert,
                key,
            })
            .err()
            .expect("refused")
            .to_string();
            assert!(
                err.contains("\"ingest-tls\"") && err.contains(expected),
                "{err}"
            );
            assert!(!err.contains("PLANTED"), "{err}");
        }
    }
}
