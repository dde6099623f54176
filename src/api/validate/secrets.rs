//! The Secret references of a spec (providers' `tls` and `authentication`, the ingest
//! listener's certificate and tokens): checked as Kubernetes names them, and turned into the
//! files a relay reads under its secrets directory.

use std::path::Path;

use super::super::*;
use super::Problems;
use crate::provider::secret::{
    CertAndKey, KafkaAuth, NatsAuth, SaslMechanism, SecretFile, TlsFiles, DEFAULT_SECRETS_DIR,
};

/// Checks every Secret reference of a provider or the ingest listener: names and keys as
/// Kubernetes allows them (the CRD's patterns).
pub(super) fn secret_refs(problems: &mut Problems, at: &str, refs: &[(&str, &str, &str)]) {
    for (field, name, key) in refs {
        let path = format!("{at}.{field}");
        if problems.length(&format!("{path}.secretName"), name, 1, 253) {
            problems.pattern(
                &format!("{path}.secretName"),
                name,
                SECRET_NAME,
                "is not a Secret name (lower case letters, digits, '-' and '.')",
            );
        }
        if problems.length(&format!("{path} key"), key, 1, 253) {
            problems.pattern(
                &format!("{path} key"),
                key,
                SECRET_KEY,
                "is not a Secret key (letters, digits, '-', '_' and '.')",
            );
        }
    }
}

/// Every Secret reference of a TLS block, as (field, secret, key).
pub(super) fn tls_refs(t: &TlsSpec) -> Vec<(&'static str, &str, &str)> {
    let mut out: Vec<(&str, &str, &str)> = t
        .trusted_certificates
        .iter()
        .map(|c| {
            (
                "tls.trustedCertificates[]",
                c.secret_name.as_str(),
                c.certificate.as_str(),
            )
        })
        .collect();
    if let Some(c) = &t.certificate_and_key {
        out.push(("tls.certificateAndKey", &c.secret_name, &c.certificate));
        out.push(("tls.certificateAndKey", &c.secret_name, &c.key));
    }
    out
}

/// The secrets directory a spec's Secret keys resolve under until `--secrets-dir` re-roots them.
pub(super) fn secrets_dir() -> &'static Path {
    Path::new(DEFAULT_SECRETS_DIR)
}

pub(super) fn secret_key(s: &SecretKeySource) -> SecretFile {
    SecretFile::new(secrets_dir(), &s.secret_name, &s.key)
}

pub(super) fn password(s: &PasswordSecretSource) -> SecretFile {
    SecretFile::new(secrets_dir(), &s.secret_name, &s.password)
}

pub(super) fn cert_and_key(s: &CertAndKeySecretSource) -> CertAndKey {
    CertAndKey {
        certificate: SecretFile::new(secrets_dir(), &s.secret_name, &s.certificate),
        key: SecretFile::new(secrets_dir(), &s.secret_name, &s.key),
    }
}

pub(super) fn tls_files(t: &TlsSpec) -> TlsFiles {
    TlsFiles {
        trusted_certificates: t
            .trusted_certificates
            .iter()
            .map(|c| SecretFile::new(secrets_dir(), &c.secret_name, &c.certificate))
            .collect(),
        client: t.certificate_and_key.as_ref().map(cert_and_key),
    }
}

/// Kafka credentials; each type takes its own fields and refuses the others (as the CRD does).
pub(super) fn kafka_auth(
    problems: &mut Problems,
    at: &str,
    a: &KafkaAuthenticationSpec,
    has_tls: bool,
) -> Option<KafkaAuth> {
    let at = format!("{at}.authentication");
    let sasl = |mechanism| match (&a.username, &a.password_secret) {
        (Some(u), Some(p)) => Some(KafkaAuth::Sasl {
            mechanism,
            username: u.clone(),
            password: password(p),
        }),
        _ => None,
    };
    let (auth, wants) = match a.kind {
        KafkaAuthType::Tls => (
            a.certificate_and_key
                .as_ref()
                .map(|c| KafkaAuth::Tls(cert_and_key(c))),
            "certificateAndKey",
        ),
        KafkaAuthType::Plain => (sasl(SaslMechanism::Plain), "username and passwordSecret"),
        KafkaAuthType::ScramSha256 => (
            sasl(SaslMechanism::ScramSha256),
            "username and passwordSecret",
        ),
        KafkaAuthType::ScramSha512 => (
            sasl(SaslMechanism::ScramSha512),
            "username and passwordSecret",
        ),
    };
    let is_tls = a.kind == KafkaAuthType::Tls;
    if auth.is_none() {
        problems.add(&at, format!("this type needs {wants}"));
    }
    if is_tls && (a.username.is_some() || a.password_secret.is_some()) {
        problems.add(&at, "username and passwordSecret are not for type tls");
    }
    if !is_tls && a.certificate_and_key.is_some() {
        problems.add(&at, "certificateAndKey is only for type tls");
    }
    if is_tls && !has_tls {
        problems.add(&at, "type tls needs a tls block");
    }
    auth
}

/// NATS credentials; each type takes its own field and refuses the others (as the CRD does).
pub(super) fn nats_auth(
    problems: &mut Problems,
    at: &str,
    a: &NatsAuthenticationSpec,
) -> Option<NatsAuth> {
    let at = format!("{at}.authentication");
    let given = [
        (
            "credsSecret",
            a.creds_secret.is_some(),
            a.kind == NatsAuthType::Creds,
        ),
        (
            "seedSecret",
            a.seed_secret.is_some(),
            a.kind == NatsAuthType::Nkey,
        ),
        (
            "tokenSecret",
            a.token_secret.is_some(),
            a.kind == NatsAuthType::Token,
        ),
        (
            "username",
            a.username.is_some(),
            a.kind == NatsAuthType::UserPassword,
        ),
        (
            "passwordSecret",
            a.password_secret.is_some(),
            a.kind == NatsAuthType::UserPassword,
        ),
    ];
    for (field, present, wanted) in given {
        if present != wanted {
            let verb = if wanted { "needs" } else { "does not take" };
            problems.add(&at, format!("this type {verb} {field}"));
        }
    }
    match a.kind {
        NatsAuthType::Creds => a
            .creds_secret
            .as_ref()
            .map(|s| NatsAuth::Creds(secret_key(s))),
        NatsAuthType::Nkey => a
            .seed_secret
            .as_ref()
            .map(|s| NatsAuth::Nkey(secret_key(s))),
        NatsAuthType::Token => a
            .token_secret
            .as_ref()
            .map(|s| NatsAuth::Token(secret_key(s))),
        NatsAuthType::UserPassword => match (&a.username, &a.password_secret) {
            (Some(u), Some(p)) => Some(NatsAuth::UserPassword {
                username: u.clone(),
                password: password(p),
            }),
            _ => None,
        },
    }
}
