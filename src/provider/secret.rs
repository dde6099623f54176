//! Credentials as a provider reads them: files under the relay's secrets directory, one per
//! Secret key, at `<dir>/<secretName>/<key>`. In a cluster the operator mounts exactly the keys a
//! pipeline names there (default [`DEFAULT_SECRETS_DIR`]); a standalone relay finds the same
//! layout under `--secrets-dir`, so one manifest works in both places.
//!
//! A value is read when a provider connects, and never printed: `Display` and `Debug` of every
//! type here show the Secret's name and key, not what the file holds.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// Where the operator mounts the Secret keys a pipeline references.
pub const DEFAULT_SECRETS_DIR: &str = "/var/run/secrets/dualwrite";

/// The health reason of a provider whose Secret key cannot be read (the message names the Secret
/// and the key).
pub const REASON_SECRET_MISSING: &str = "SecretMissing";

/// One key of one Secret, as a file.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub secret: String,
    pub key: String,
    /// `<secrets dir>/<secret>/<key>`.
    pub path: PathBuf,
}

impl SecretFile {
    /// The key `key` of Secret `secret` under the secrets directory `dir`.
    pub fn new(dir: &Path, secret: &str, key: &str) -> Self {
        Self {
            secret: secret.to_string(),
            key: key.to_string(),
            path: dir.join(secret).join(key),
        }
    }

    /// The same key under another secrets directory.
    pub fn rebase(&mut self, dir: &Path) {
        self.path = dir.join(&self.secret).join(&self.key);
    }

    /// The file's content. The error names the Secret and key, never the content.
    pub fn read(&self) -> Result<Vec<u8>, SecretMissing> {
        std::fs::read(&self.path).map_err(|e| SecretMissing {
            secret: self.secret.clone(),
            key: self.key.clone(),
            reason: e.kind().to_string(),
        })
    }

    /// The content as text, trimmed of surrounding whitespace (a password or token file written
    /// with a trailing newline).
    pub fn read_text(&self) -> Result<String, SecretMissing> {
        let bytes = self.read()?;
        String::from_utf8(bytes)
            .map(|s| s.trim().to_string())
            .map_err(|_| SecretMissing {
                secret: self.secret.clone(),
                key: self.key.clone(),
                reason: "not UTF-8 text".into(),
            })
    }
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({}/{})", self.secret, self.key)
    }
}

impl fmt::Display for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret {:?} key {:?}", self.secret, self.key)
    }
}

/// A Secret key the relay cannot read (the Secret or the key does not exist, or is not mounted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Secret {secret:?} key {key:?} cannot be read ({reason}); create it in the pipeline's namespace, or check --secrets-dir")]
pub struct SecretMissing {
    pub secret: String,
    pub key: String,
    pub reason: String,
}

/// TLS to a broker: the CAs to trust (none: the system's) and an optional client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub trusted_certificates: Vec<SecretFile>,
    pub client: Option<CertAndKey>,
}

/// A client certificate and its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertAndKey {
    pub certificate: SecretFile,
    pub key: SecretFile,
}

impl TlsFiles {
    /// Every file this TLS setting reads.
    pub fn files(&self) -> Vec<&SecretFile> {
        let mut out: Vec<&SecretFile> = self.trusted_certificates.iter().collect();
        if let Some(c) = &self.client {
            out.push(&c.certificate);
            out.push(&c.key);
        }
        out
    }

    /// Every file this TLS setting reads, to re-root them.
    pub fn files_mut(&mut self) -> Vec<&mut SecretFile> {
        let mut out: Vec<&mut SecretFile> = self.trusted_certificates.iter_mut().collect();
        if let Some(c) = &mut self.client {
            out.push(&mut c.certificate);
            out.push(&mut c.key);
        }
        out
    }
}

/// How a provider authenticates to Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaAuth {
    /// Mutual TLS with this client certificate.
    Tls(CertAndKey),
    /// SASL with a user name and a password from a Secret.
    Sasl {
        mechanism: SaslMechanism,
        username: String,
        password: SecretFile,
    },
}

/// SASL mechanisms librdkafka is built with here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl KafkaAuth {
    pub fn files(&self) -> Vec<&SecretFile> {
        match self {
            KafkaAuth::Tls(c) => vec![&c.certificate, &c.key],
            KafkaAuth::Sasl { password, .. } => vec![password],
        }
    }

    pub fn files_mut(&mut self) -> Vec<&mut SecretFile> {
        match self {
            KafkaAuth::Tls(c) => vec![&mut c.certificate, &mut c.key],
            KafkaAuth::Sasl { password, .. } => vec![password],
        }
    }
}

/// How a provider authenticates to NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    /// A `.creds` file: user JWT and nkey seed.
    Creds(SecretFile),
    /// An nkey seed.
    Nkey(SecretFile),
    UserPassword {
        username: String,
        password: SecretFile,
    },
    Token(SecretFile),
}

impl NatsAuth {
    pub fn files(&self) -> Vec<&SecretFile> {
        match self {
            NatsAuth::Creds(f) | NatsAuth::Nkey(f) | NatsAuth::Token(f) => vec![f],
            NatsAuth::UserPassword { password, .. } => vec![password],
        }
    }

    pub fn files_mut(&mut self) -> Vec<&mut SecretFile> {
        match self {
            NatsAuth::Creds(f) | NatsAuth::Nkey(f) | NatsAuth::Token(f) => vec![f],
            NatsAuth::UserPassword { password, .. } => vec![password],
        }
    }
}

/// The Secret files a provider's clients were built from, and a fingerprint of their content then,
/// so that its supervisor notices when one changes (the kubelet rewrites a mounted Secret in
/// place) and reconnects with the new value. Only a hash of the content is kept.
#[derive(Debug)]
pub struct SecretWatch {
    files: Vec<SecretFile>,
    /// Fingerprint of the content the clients in use were built from; `None` before any.
    built: Option<u64>,
}

/// What [`SecretWatch::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretCheck {
    /// The files hold what the clients were built from.
    Unchanged,
    /// The files changed (or were read for the first time): build clients from them and then
    /// call [`SecretWatch::built`] with this fingerprint.
    Changed(u64),
    /// A file cannot be read.
    Missing(SecretMissing),
}

impl SecretWatch {
    pub fn new<'a>(files: impl IntoIterator<Item = &'a SecretFile>) -> Self {
        Self {
            files: files.into_iter().cloned().collect(),
            built: None,
        }
    }

    /// Reads every file and compares it with what the clients were built from.
    pub fn check(&self) -> SecretCheck {
        match self.fingerprint() {
            Err(missing) => SecretCheck::Missing(missing),
            Ok(f) if self.built == Some(f) => SecretCheck::Unchanged,
            Ok(f) => SecretCheck::Changed(f),
        }
    }

    /// A fingerprint of every file's content now.
    pub fn fingerprint(&self) -> Result<u64, SecretMissing> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for f in &self.files {
            f.read()?.hash(&mut h);
        }
        Ok(h.finish())
    }

    /// Records that the clients in use were built from the content with `fingerprint`.
    pub fn built(&mut self, fingerprint: u64) {
        self.built = Some(fingerprint);
    }
}

/// `nats://user:pass@host:4222` → `nats://***@host:4222`: a URL fit for logs, status and errors.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            let (scheme, rest) = match u.find("://") {
                Some(i) => (&u[..i + 3], &u[i + 3..]),
                None => ("", u),
            };
            let host_end = rest.find('/').unwrap_or(rest.len());
            match rest[..host_end].rfind('@') {
                Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
                None => u.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_info() {
        for (url, shown) in [
            ("nats://h:4222", "nats://h:4222"),
            ("nats://u:p@h:4222", "nats://***@h:4222"),
            (
                "u:p@h:4222, tls://tok@h2:1/x",
                "***@h:4222,tls://***@h2:1/x",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn a_watch_sees_a_key_appear_and_change() {
        let dir = tempfile::tempdir().unwrap();
        let f = SecretFile::new(dir.path(), "s", "k");
        let mut w = SecretWatch::new([&f]);
        assert!(matches!(w.check(), SecretCheck::Missing(_)));
        std::fs::create_dir_all(dir.path().join("s")).unwrap();
        std::fs::write(&f.path, "one").unwrap();
        let SecretCheck::Changed(fp) = w.check() else {
            panic!("appeared")
        };
        w.built(fp);
        assert_eq!(w.check(), SecretCheck::Unchanged);
        std::fs::write(&f.path, "two").unwrap();
        assert!(matches!(w.check(), SecretCheck::Changed(n) if n != fp));
        assert!(!format!("{w:?}").contains("two"));
        assert!(SecretWatch::new([]).check() != SecretCheck::Unchanged);
    }

    #[test]
    fn a_missing_key_names_the_secret_and_key_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = SecretFile::new(dir.path(), "kafka-relay", "password");
        let err = f.read().unwrap_err().to_string();
        assert!(
            err.contains("\"kafka-relay\"") && err.contains("\"password\""),
            "{err}"
        );
        std::fs::create_dir_all(dir.path().join("kafka-relay")).unwrap();
        std::fs::write(&f.path, "s3cr3t-value\n").unwrap();
        assert_eq!(f.read_text().unwrap(), "s3cr3t-value");
        assert!(!format!("{f:?} {f}").contains("s3cr3t"));
    }
}
