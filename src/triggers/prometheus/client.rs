//! HTTP clients for Prometheus servers, one per distinct TLS setup.
//!
//! A `reqwest::Client` owns a connection pool; sharing one between every trigger with the same
//! TLS settings keeps connections (and TLS sessions) warm across polls and rules instead of
//! opening a new one per poll.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::TlsSettings;
use crate::triggers::TriggerError;

/// Bound on establishing a TCP connection, independent of a trigger's own (longer or shorter)
/// `timeout`, so a black-holed server does not hold a connection attempt forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle pooled connections are dropped after this: above the usual poll interval, so polls
/// reuse a connection, and below the 60 s idle timeout of common load balancers (AMP's
/// included), so we close first rather than send into a connection being closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Idle connections kept per host: enough for the calls in flight at once (SQS bounds its
/// own to 32), so a burst does not leave hundreds of sockets behind.
pub const POOL_MAX_IDLE_PER_HOST: usize = 32;

/// Pool of HTTP clients keyed by TLS settings; Clone + Default + Send + Sync.
#[derive(Clone, Debug, Default)]
pub struct HttpClients {
    clients: Arc<Mutex<HashMap<TlsSettings, reqwest::Client>>>,
}

impl HttpClients {
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared client for these TLS settings, built (and its files read) on first use.
    pub fn get(&self, tls: &TlsSettings) -> Result<reqwest::Client, TriggerError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| TriggerError::Other("HTTP client pool lock poisoned".into()))?;
        if let Some(client) = clients.get(tls) {
            return Ok(client.clone());
        }
        let client = build_client(tls)?;
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }

    /// How many distinct clients exist; lets tests check that triggers share one.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn build_client(tls: &TlsSettings) -> Result<reqwest::Client, TriggerError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("qscale/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry credentials to another host, and a signed request cannot
        // follow one anyway; the error names the status so `server` can be corrected.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST);

    if tls.insecure_skip_verify {
        tracing::warn!(
            ca_file = ?tls.ca_file,
            "Prometheus TLS certificate verification is OFF (tls.insecure_skip_verify = true): \
             any server can impersonate Prometheus and feed qscale numbers; use tls.ca_file instead"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    } else if let Some(ca_file) = &tls.ca_file {
        // Like Prometheus' own `tls_config.ca_file`: the bundle replaces the system roots, so a
        // private CA cannot be bypassed by a public one.
        let pem = read_file("tls.ca_file", ca_file)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            TriggerError::Config(format!(
                "tls.ca_file {}: not a PEM certificate bundle: {}",
                ca_file.display(),
                describe(&e)
            ))
        })?;
        if certs.is_empty() {
            return Err(TriggerError::Config(format!(
                "tls.ca_file {}: no PEM certificate in it",
                ca_file.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }

    match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let mut pem = read_file("tls.cert_file", cert_file)?;
            pem.push(b'\n');
            pem.extend(read_file("tls.key_file", key_file)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                TriggerError::Config(format!(
                    "tls.cert_file {} / tls.key_file {}: not a PEM certificate and private key: {}",
                    cert_file.display(),
                    key_file.display(),
                    describe(&e)
                ))
            })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(TriggerError::Config(
                "tls.cert_file and tls.key_file go together: set both or neither".into(),
            ))
        }
    }

    builder
        .build()
        .map_err(|e| TriggerError::Tls(format!("cannot build the HTTP client: {}", describe(&e))))
}

fn read_file(field: &str, path: &Path) -> Result<Vec<u8>, TriggerError> {
    std::fs::read(path)
        .map_err(|e| TriggerError::Config(format!("{field} {}: {e}", path.display())))
}

/// Maps a failed request onto the trigger error kinds. TLS failures are told apart from plain
/// network ones so a wrong CA bundle does not look like a down server.
pub(super) fn classify(error: reqwest::Error, timeout: Duration) -> TriggerError {
    if error.is_timeout() {
        return TriggerError::Timeout(timeout);
    }
    let error = error.without_url();
    if let Some(tls) = find_tls_error(&error) {
        return TriggerError::Tls(format!("{tls}{}", tls_hint(tls)));
    }
    let text = describe(&error);
    if error.is_builder() {
        return TriggerError::Config(text);
    }
    TriggerError::Network(text)
}

/// What to change for the TLS failures a configuration can cause.
fn tls_hint(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(_) => {
            "; the server's certificate is not trusted: check `tls.ca_file` (it replaces the \
             system roots) and that the certificate names the host in `server`"
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
        | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
        | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
            "; the server refused our client certificate: check `tls.cert_file` and `tls.key_file`"
        }
        _ => "",
    }
}

/// The rustls error somewhere in the chain. `std::io::Error::source` skips the error it wraps,
/// so each I/O error's inner error is inspected as well.
fn find_tls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = find_tls_error(inner) {
                    return Some(tls);
                }
            }
        }
        current = error.source();
    }
    None
}

pub(super) use crate::triggers::error::error_chain as describe;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn same_settings_share_one_client() {
        let clients = HttpClients::new();
        let plain = TlsSettings::default();
        clients.get(&plain).unwrap();
        clients.clone().get(&plain).unwrap();
        assert_eq!(clients.len(), 1);
        let insecure = TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        };
        clients.get(&insecure).unwrap();
        assert_eq!(clients.len(), 2);
    }

    #[test]
    fn missing_or_bad_files_are_config_errors() {
        let clients = HttpClients::new();
        let missing = TlsSettings {
            ca_file: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..TlsSettings::default()
        };
        let error = clients.get(&missing).unwrap_err();
        assert!(
            matches!(&error, TriggerError::Config(m) if m.contains("/nonexistent/ca.pem")),
            "{error:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let junk_ca = TlsSettings {
            ca_file: Some(junk.clone()),
            ..TlsSettings::default()
        };
        assert!(matches!(
            clients.get(&junk_ca),
            Err(TriggerError::Config(_))
        ));

        let half = TlsSettings {
            cert_file: Some(junk),
            ..TlsSettings::default()
        };
        let error = clients.get(&half).unwrap_err();
        assert!(
            matches!(&error, TriggerError::Config(m) if m.contains("set both")),
            "{error:?}"
        );
        assert!(clients.is_empty());
    }
}
