//! The listener's Secret files: the accepted tokens and the TLS certificate and key, read at
//! start and read again when the kubelet rewrites a rotated Secret (checked at most once a
//! second). Errors name the Secret and key, never what the files hold.

use super::*;

/// A value read from Secret files (the tokens; the certificate and key), read again when one
/// of the files changed: the kubelet rewrites a mounted Secret when it is rotated.
pub(super) struct Reloading<T> {
    /// What it is, for the logs.
    what: &'static str,
    files: Vec<SecretFile>,
    read: fn(&[SecretFile]) -> Result<T, ListenerError>,
    // A std Mutex: held to look at a timestamp and clone an Arc (or, after a rotation, to read
    // a small file once), never across an await.
    pub(super) state: Mutex<ReloadState<T>>,
}

pub(super) struct ReloadState<T> {
    value: Arc<T>,
    /// The files as last read; a different one on disk means a rotation.
    seen: Vec<Option<Fingerprint>>,
    pub(super) checked: Instant,
}

/// What tells one version of a Secret file from the next: the kubelet writes a rotated Secret
/// as new files and swaps a symlink, so the inode changes; an edited file changes its
/// modification time or length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

pub(super) fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

impl<T> Reloading<T> {
    fn load(
        what: &'static str,
        files: Vec<SecretFile>,
        read: fn(&[SecretFile]) -> Result<T, ListenerError>,
    ) -> Result<Self, ListenerError> {
        let seen = files.iter().map(|f| fingerprint(&f.path)).collect();
        let value = Arc::new(read(&files)?);
        Ok(Self {
            what,
            files,
            read,
            state: Mutex::new(ReloadState {
                value,
                seen,
                checked: Instant::now(),
            }),
        })
    }

    /// The value now, read again first if a file changed since the last look (at most one look
    /// every [`RELOAD_CHECK_EVERY`]). A file that cannot be read or used (half-way through a
    /// rotation, say) keeps the previous value, and is looked at again.
    fn current(&self) -> Arc<T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.checked.elapsed() >= RELOAD_CHECK_EVERY {
            s.checked = Instant::now();
            let now: Vec<_> = self.files.iter().map(|f| fingerprint(&f.path)).collect();
            if now != s.seen {
                match (self.read)(&self.files) {
                    Ok(value) => {
                        tracing::info!(what = self.what, "read again after the Secret changed");
                        s.value = Arc::new(value);
                        s.seen = now;
                    }
                    Err(e) => {
                        tracing::warn!(what = self.what, error = %e, "cannot read the changed Secret; keeping the previous one")
                    }
                }
            }
        }
        s.value.clone()
    }
}

/// How often the Secret files of the listener are looked at for a rotation (one `stat` a file
/// at most this often, on a request or a handshake).
pub(super) const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);

pub(super) const TOKENS_FIELD: &str = "authentication.tokensSecret";

/// The tokens in the one file: one a line, surrounding whitespace and empty lines ignored.
/// After a rotation an empty file is taken as it is (every request refused, with a warning):
/// emptying the Secret is a way to revoke every token.
pub(super) fn read_tokens(files: &[SecretFile]) -> Result<Vec<Vec<u8>>, ListenerError> {
    let file = &files[0];
    let text = file.read().map_err(|source| ListenerError::Secret {
        field: TOKENS_FIELD,
        source,
    })?;
    let tokens: Vec<Vec<u8>> = text
        .split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if tokens.is_empty() {
        tracing::warn!(secret = %file.secret, key = %file.key, "the accepted tokens file is empty: every ingest request is refused");
    }
    Ok(tokens)
}

/// The accepted bearer tokens (one a line in a Secret key), read again when the Secret is
/// rotated, checked in constant time.
pub struct Tokens(pub(super) Reloading<Vec<Vec<u8>>>);

impl Tokens {
    /// Reads the tokens in `file`; none is an error at start (every request would be refused).
    pub fn load(file: SecretFile) -> Result<Self, ListenerError> {
        let shown = file.to_string();
        let tokens = Reloading::load("accepted tokens", vec![file], read_tokens)?;
        if tokens.current().is_empty() {
            return Err(ListenerError::Unusable {
                field: TOKENS_FIELD,
                file: shown,
                problem: "holds no token; put the accepted tokens in it, one a line".into(),
            });
        }
        Ok(Self(tokens))
    }

    /// Whether `presented` is one of the accepted tokens. Compares with every token, each in
    /// constant time, so the time taken says nothing about which bytes matched (only, as
    /// always with `subtle`, whether the lengths differ).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let accepted = self.0.current();
        let mut ok = subtle::Choice::from(0);
        for t in accepted.iter() {
            ok |= t.as_slice().ct_eq(presented);
        }
        ok.into()
    }
}

pub(super) const TLS_FIELD: &str = "tls";

/// The certificate chain and key in `files` (`[certificate, key]`, PEM), checked to belong
/// together.
pub(super) fn read_certified_key(files: &[SecretFile]) -> Result<CertifiedKey, ListenerError> {
    let [certificate, key] = files else {
        unreachable!("a certificate and a key")
    };
    let read = |f: &SecretFile| {
        f.read().map_err(|source| ListenerError::Secret {
            field: TLS_FIELD,
            source,
        })
    };
    let unusable = |f: &SecretFile, problem: &str| ListenerError::Unusable {
        field: TLS_FIELD,
        file: f.to_string(),
        problem: problem.to_string(),
    };
    let cert_pem = read(certificate)?;
    let key_pem = read(key)?;
    // The PEM parser's errors can quote a line of the file: only their kind is shown.
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| {
            unusable(
                certificate,
                "is not PEM; it must hold the certificate chain (-----BEGIN CERTIFICATE-----)",
            )
        })?;
    if chain.is_empty() {
        return Err(unusable(
            certificate,
            "holds no certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => unusable(
            key,
            "holds no private key (-----BEGIN PRIVATE KEY-----, RSA or EC)",
        ),
        _ => unusable(key, "is not PEM; it must hold the private key"),
    })?;
    CertifiedKey::from_der(chain, der, &crypto_provider()).map_err(|e| {
        unusable(
            key,
            &format!(
                "and the certificate in {certificate} do not make a TLS server identity ({e})"
            ),
        )
    })
}

pub(super) fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The listener's certificate, read again when its Secret is rotated (cert-manager renews it
/// before it expires): new handshakes get the new one.
pub(super) struct ReloadingCertificate(Reloading<CertifiedKey>);

impl fmt::Debug for ReloadingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReloadingCertificate")
            .field(&self.0.files)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// A TLS acceptor (HTTP/1.1 by ALPN) for the certificate chain and key in `c` (PEM), read
/// again when they change.
pub fn tls_acceptor(c: &CertAndKey) -> Result<TlsAcceptor, ListenerError> {
    let certificate = Reloading::load(
        "ingest TLS certificate",
        vec![c.certificate.clone(), c.key.clone()],
        read_certified_key,
    )?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ListenerError::Unusable {
            field: TLS_FIELD,
            file: c.certificate.to_string(),
            problem: format!("cannot be served: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ReloadingCertificate(certificate)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
