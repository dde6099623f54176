//! TLS and authentication for async-nats, from a [`NatsConfig`]'s `tls` and `auth` (or, without
//! an authentication block, the user-info of its URL): the options the provider dials with and
//! `dualwrite verify`'s reader too, so both connect the same way. Secret files are read when the
//! options are made, that is at every dial.
//!
//! URL user-info (`nats://user:pass@host`) is taken out of the addresses and handed over as
//! options, so no address the client holds (and may print) carries it; messages show URLs
//! through [`redact_url`](crate::provider::secret::redact_url).

use std::fmt;
use std::sync::Arc;

use async_nats::{ConnectOptions, ServerAddr};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

use super::NatsConfig;
use crate::provider::secret::{redact_url, NatsAuth, SecretFile, SecretMissing, TlsFiles};

/// Credentials found in a URL's user-info: `user:pass@` or `token@`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

impl fmt::Debug for UrlAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlAuth::UserPassword(..) => "UrlAuth::UserPassword(***)",
            UrlAuth::Token(_) => "UrlAuth::Token(***)",
        })
    }
}

/// The servers of a `nats.url`: addresses without user-info, and the first user-info found.
#[derive(Clone, Debug)]
pub(crate) struct Servers {
    pub(crate) addrs: Vec<ServerAddr>,
    pub(crate) url_auth: Option<UrlAuth>,
}

/// Why a NATS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientSetupError {
    #[error(transparent)]
    Secret(#[from] SecretMissing),
    /// `nats.url` cannot be used (the message shows it redacted).
    #[error("{0}")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Parses `url` (comma-separated servers). The error shows the URL redacted.
pub(crate) fn parse_servers(url: &str) -> Result<Servers, String> {
    let mut addrs = Vec::new();
    let mut url_auth = None;
    for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        // async-nats' parse error names the problem, never the input.
        let addr = u.parse::<ServerAddr>().map_err(|e| {
            format!(
                "nats.url {:?} is not a NATS URL like nats://host:4222 ({e})",
                redact_url(u)
            )
        })?;
        let mut inner = addr.into_inner();
        if !inner.username().is_empty() || inner.password().is_some() {
            let user = percent_decode(inner.username());
            let found = match inner.password() {
                Some(p) => UrlAuth::UserPassword(user, percent_decode(p)),
                None => UrlAuth::Token(user),
            };
            url_auth.get_or_insert(found);
            // Infallible for the URLs ServerAddr accepts (they have a host).
            let _ = inner.set_username("");
            let _ = inner.set_password(None);
        }
        let addr = ServerAddr::from_url(inner)
            .map_err(|e| format!("nats.url {:?}: {e}", redact_url(u)))?;
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Err("nats.url is empty; give e.g. nats://nats:4222".into());
    }
    Ok(Servers { addrs, url_auth })
}

/// `%XX` sequences of a URL's user-info decoded (left as they are when not valid).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `options` with TLS and authentication: `auth` when given, else the URL's user-info. Reads the
/// Secret files now; errs (naming the Secret and key) when one cannot be read or used.
pub(crate) fn secure(
    mut options: ConnectOptions,
    tls: Option<&TlsFiles>,
    auth: Option<&NatsAuth>,
    url_auth: Option<&UrlAuth>,
) -> Result<ConnectOptions, ClientSetupError> {
    if let Some(tls) = tls {
        options = options.require_tls(true);
        if !tls.trusted_certificates.is_empty() {
            options = options.tls_client_config(rustls_config(tls)?);
        } else if let Some(c) = &tls.client {
            // The system's CAs (async-nats loads them) and a client certificate.
            c.certificate.read()?;
            c.key.read()?;
            options =
                options.add_client_certificate(c.certificate.path.clone(), c.key.path.clone());
        }
    }
    Ok(match (auth, url_auth) {
        (Some(NatsAuth::Creds(f)), _) => options
            .credentials(&f.read_text()?)
            .map_err(|_| unusable(f, "not a NATS .creds file (user JWT and nkey seed)"))?,
        (Some(NatsAuth::Nkey(f)), _) => options.nkey(f.read_text()?),
        (Some(NatsAuth::UserPassword { username, password }), _) => {
            options.user_and_password(username.clone(), password.read_text()?)
        }
        (Some(NatsAuth::Token(f)), _) => options.token(f.read_text()?),
        (None, Some(UrlAuth::UserPassword(u, p))) => {
            options.user_and_password(u.clone(), p.clone())
        }
        (None, Some(UrlAuth::Token(t))) => options.token(t.clone()),
        (None, None) => options,
    })
}

/// The servers and client options of `spec` for a plain client (`dualwrite verify`).
pub fn client_options(
    spec: &NatsConfig,
    base: ConnectOptions,
) -> Result<(Vec<ServerAddr>, ConnectOptions), ClientSetupError> {
    let servers = parse_servers(&spec.url).map_err(ClientSetupError::Url)?;
    let options = secure(
        base,
        spec.tls.as_ref(),
        spec.auth.as_ref(),
        servers.url_auth.as_ref(),
    )?;
    Ok((servers.addrs, options))
}

fn unusable(f: &SecretFile, reason: &str) -> SecretMissing {
    SecretMissing {
        secret: f.secret.clone(),
        key: f.key.clone(),
        reason: reason.into(),
    }
}

/// A rustls client configuration trusting exactly the given CAs (async-nats' own option keeps
/// only one CA file), with the client certificate when one is given.
fn rustls_config(tls: &TlsFiles) -> Result<rustls::ClientConfig, ClientSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for f in &tls.trusted_certificates {
        let pem = f.read()?;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|_| unusable(f, "not a PEM certificate"))?;
            roots
                .add(cert)
                .map_err(|_| unusable(f, "not a usable CA certificate"))?;
            found += 1;
        }
        if found == 0 {
            return Err(unusable(f, "holds no PEM certificate").into());
        }
    }
    // ring: the one provider this build links (async-nats and tokio-rustls with `ring`).
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientSetupError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    match &tls.client {
        None => Ok(builder.with_no_client_auth()),
        Some(c) => {
            let certs = CertificateDer::pem_slice_iter(&c.certificate.read()?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| unusable(&c.certificate, "not a PEM certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(&c.key.read()?)
                .map_err(|_| unusable(&c.key, "not a PEM private key"))?;
            Ok(builder
                .with_client_auth_cert(certs, key)
                .map_err(|_| unusable(&c.key, "does not match the client certificate"))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_leaves_the_addresses() {
        for (url, auth) in [
            ("nats://h:4222", None),
            (
                "nats://u:p%40ss@h:4222",
                Some(UrlAuth::UserPassword("u".into(), "p@ss".into())),
            ),
            (
                "tls://tok@h:1,nats://h2",
                Some(UrlAuth::Token("tok".into())),
            ),
        ] {
            let s = parse_servers(url).unwrap();
            assert_eq!(s.url_auth, auth, "{url}");
            for a in &s.addrs {
                assert!(!a.as_url_str().contains('@'), "{}", a.as_url_str());
            }
        }
        assert!(parse_servers("http://u:hidden@h")
            .unwrap_err()
            .contains("***@h"));
        assert!(!format!("{:?}", UrlAuth::Token("hidden".into())).contains("hidden"));
    }

    #[test]
    fn percent_decoding() {
        for (raw, want) in [("a%2Fb", "a/b"), ("%", "%"), ("x%4", "x%4"), ("%41", "A")] {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
    }
}
