//! TLS and SASL for librdkafka, from a [`KafkaConfig`]'s `tls` and `auth`: the settings every
//! client of the provider gets (producer, admin, consumer) and `dualwrite verify`'s reader too,
//! so they all connect the same way. Secret files are read when the settings are made (at
//! connect, and again when the supervisor sees them change).
//!
//! Values that are secret (the SASL password) go into librdkafka's configuration only; a client
//! certificate's key is handed over by path, so its content never sits in a `ClientConfig`.

use rdkafka::config::ClientConfig;

use super::KafkaConfig;
use crate::provider::secret::{CertAndKey, KafkaAuth, SecretFile, SecretMissing};

/// librdkafka's `security.protocol` for a TLS setting (present or not) and an authentication.
/// `None`: plaintext, librdkafka's default.
pub(super) fn security_protocol(tls: bool, auth: Option<&KafkaAuth>) -> Option<&'static str> {
    match (tls, auth) {
        (false, None) => None,
        (true, None) | (_, Some(KafkaAuth::Tls(_))) => Some("SSL"),
        (true, Some(KafkaAuth::Sasl { .. })) => Some("SASL_SSL"),
        (false, Some(KafkaAuth::Sasl { .. })) => Some("SASL_PLAINTEXT"),
    }
}

/// The security settings of `spec`, with the Secret files read now. Errs when one cannot be read
/// (the error names the Secret and key).
pub(super) fn security_settings(
    spec: &KafkaConfig,
) -> Result<Vec<(&'static str, String)>, SecretMissing> {
    let mut out = Vec::new();
    let Some(protocol) = security_protocol(spec.tls.is_some(), spec.auth.as_ref()) else {
        return Ok(out);
    };
    out.push(("security.protocol", protocol.to_string()));
    let tls = spec.tls.as_ref();
    match tls
        .map(|t| t.trusted_certificates.as_slice())
        .unwrap_or(&[])
    {
        // None given: the system's CAs (librdkafka's default).
        [] => {}
        // One: librdkafka reads the file; it is read here first so a missing one is reported
        // by its Secret and key.
        [one] => {
            one.read()?;
            out.push(("ssl.ca.location", path_text(one)));
        }
        // Several: librdkafka takes one CA location, so they go in as one PEM bundle.
        several => {
            let mut bundle = String::new();
            for f in several {
                let pem = String::from_utf8(f.read()?).map_err(|_| SecretMissing {
                    secret: f.secret.clone(),
                    key: f.key.clone(),
                    reason: "not a PEM certificate".into(),
                })?;
                bundle.push_str(pem.trim_end());
                bundle.push('\n');
            }
            out.push(("ssl.ca.pem", bundle));
        }
    }
    let client = match &spec.auth {
        Some(KafkaAuth::Tls(c)) => Some(c),
        _ => tls.and_then(|t| t.client.as_ref()),
    };
    if let Some(CertAndKey { certificate, key }) = client {
        certificate.read()?;
        key.read()?;
        out.push(("ssl.certificate.location", path_text(certificate)));
        out.push(("ssl.key.location", path_text(key)));
    }
    if let Some(KafkaAuth::Sasl {
        mechanism,
        username,
        password,
    }) = &spec.auth
    {
        out.push(("sasl.mechanism", mechanism.as_librdkafka().to_string()));
        out.push(("sasl.username", username.clone()));
        out.push(("sasl.password", password.read_text()?));
    }
    Ok(out)
}

/// Applies `spec`'s TLS and authentication to a librdkafka client configuration (see
/// [`security_settings`]). `dualwrite verify` uses it for its reader.
pub fn apply_security(config: &mut ClientConfig, spec: &KafkaConfig) -> Result<(), SecretMissing> {
    for (k, v) in security_settings(spec)? {
        config.set(k, v);
    }
    Ok(())
}

fn path_text(f: &SecretFile) -> String {
    f.path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::secret::{SaslMechanism, TlsFiles};

    #[test]
    fn protocol_table() {
        let dir = std::path::Path::new("/s");
        let sasl = KafkaAuth::Sasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "u".into(),
            password: SecretFile::new(dir, "p", "password"),
        };
        let mtls = KafkaAuth::Tls(CertAndKey {
            certificate: SecretFile::new(dir, "c", "tls.crt"),
            key: SecretFile::new(dir, "c", "tls.key"),
        });
        for (tls, auth, want) in [
            (false, None, None),
            (true, None, Some("SSL")),
            (true, Some(&mtls), Some("SSL")),
            (false, Some(&mtls), Some("SSL")),
            (true, Some(&sasl), Some("SASL_SSL")),
            (false, Some(&sasl), Some("SASL_PLAINTEXT")),
        ] {
            assert_eq!(security_protocol(tls, auth), want, "{tls} {auth:?}");
        }
    }

    #[test]
    fn settings_read_the_files_and_bundle_several_cas() {
        let dir = tempfile::tempdir().unwrap();
        let file = |secret: &str, key: &str, content: &str| {
            let f = SecretFile::new(dir.path(), secret, key);
            std::fs::create_dir_all(f.path.parent().unwrap()).unwrap();
            std::fs::write(&f.path, content).unwrap();
            f
        };
        let mut spec = KafkaConfig {
            brokers: vec!["b:9093".into()],
            topic: "t".into(),
            partitions: None,
            replication_factor: None,
            min_insync_replicas: None,
            key: Default::default(),
            group_id: None,
            config: Default::default(),
            tls: Some(TlsFiles {
                trusted_certificates: vec![
                    file("ca1", "ca.crt", "A"),
                    file("ca2", "ca.crt", "B\n"),
                ],
                client: None,
            }),
            auth: Some(KafkaAuth::Sasl {
                mechanism: SaslMechanism::ScramSha256,
                username: "relay".into(),
                password: file("pw", "password", "s3cret\n"),
            }),
        };
        let got: std::collections::BTreeMap<_, _> =
            security_settings(&spec).unwrap().into_iter().collect();
        assert_eq!(got["security.protocol"], "SASL_SSL");
        assert_eq!(got["ssl.ca.pem"], "A\nB\n");
        assert_eq!(got["sasl.mechanism"], "SCRAM-SHA-256");
        assert_eq!(got["sasl.password"], "s3cret");

        spec.tls.as_mut().unwrap().trusted_certificates.truncate(1);
        let got: std::collections::BTreeMap<_, _> =
            security_settings(&spec).unwrap().into_iter().collect();
        assert!(got["ssl.ca.location"].ends_with("ca1/ca.crt"));

        spec.auth = Some(KafkaAuth::Sasl {
            mechanism: SaslMechanism::Plain,
            username: "relay".into(),
            password: SecretFile::new(dir.path(), "absent", "password"),
        });
        let err = security_settings(&spec).unwrap_err();
        assert_eq!(
            (err.secret.as_str(), err.key.as_str()),
            ("absent", "password")
        );
    }
}
