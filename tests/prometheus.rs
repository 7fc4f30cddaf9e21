//! The Prometheus trigger against real servers on 127.0.0.1: Debian's Prometheus fed by a
//! pushgateway, a header-recording HTTP server, a TLS server with a test CA, and a SigV4
//! verifier built on botocore (an implementation independent of qscale's signer).
//!
//! Needs `bash .ci/run` once (Debian packages `prometheus` and `prometheus-pushgateway`, and
//! `.venv` with moto/botocore); `QSCALE_SKIP_PROMETHEUS=1` skips what needs them.

#[path = "support/prometheus.rs"]
mod prom_support;

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prom_support::{PromStack, SigV4Verifier, VerifierKeys};
use qscale::config::{
    BasicAuth, Dur, OnEmpty, PrometheusAuth, PrometheusTrigger, SigV4, TlsSettings,
};
use qscale::triggers::aws::AwsContext;
use qscale::triggers::prometheus::{HttpClients, PrometheusPoller};
use qscale::triggers::TriggerError;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

const AWS_ACCESS_KEY: &str = "AKIDQSCALETEST000001";
const AWS_SECRET_KEY: &str = "qscaleTestSecret/0123456789+abcdefEXAMPLE";
const AWS_SESSION_TOKEN: &str = "qscale-test-session-token-EXAMPLE";
const AWS_REGION: &str = "us-east-1";
const PASSWORD_ENV: &str = "QSCALE_TEST_PROM_PASSWORD";
const PASSWORD_IN_ENV: &str = "env-s3cret?";

/// Sets the process environment once, before any test gets further: AWS credentials for the
/// SigV4 tests (no metadata service, no profile files, nothing leaves the machine) and the
/// basic-auth password variable.
fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", AWS_SECRET_KEY),
            ("AWS_SESSION_TOKEN", AWS_SESSION_TOKEN),
            ("AWS_REGION", AWS_REGION),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent/qscale-test-aws-config"),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/qscale-test-aws-credentials",
            ),
            (PASSWORD_ENV, PASSWORD_IN_ENV),
        ] {
            std::env::set_var(name, value);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_ROLE_ARN");
        std::env::remove_var("AWS_WEB_IDENTITY_TOKEN_FILE");
    });
}

fn spec(server: &str, query: &str) -> PrometheusTrigger {
    PrometheusTrigger {
        server: server.to_string(),
        query: query.to_string(),
        on_empty: OnEmpty::Error,
        namespace: None,
        custom_headers: BTreeMap::new(),
        query_parameters: BTreeMap::new(),
        timeout: Dur::from_secs(5),
        auth: PrometheusAuth::default(),
        tls: TlsSettings::default(),
    }
}

fn poller(spec: &PrometheusTrigger) -> PrometheusPoller {
    PrometheusPoller::new(spec, &HttpClients::default(), &AwsContext::new())
        .unwrap_or_else(|e| panic!("build poller: {e}"))
}

/// Reads until `done` holds for the result or `limit` passes; returns the last result.
async fn read_until(
    poller: &PrometheusPoller,
    limit: Duration,
    done: impl Fn(&Result<f64, TriggerError>) -> bool,
) -> Result<f64, TriggerError> {
    let start = Instant::now();
    loop {
        let result = poller.read().await;
        if done(&result) || start.elapsed() > limit {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_no_secret(error: &TriggerError, secrets: &[&str]) {
    let text = format!("{error} {error:?}");
    for secret in secrets {
        assert!(!text.contains(secret), "error shows a secret: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Real Prometheus + pushgateway

#[tokio::test]
async fn reads_a_pushed_series_then_an_empty_result_then_an_outage() {
    init();
    let Some(mut stack) = PromStack::start().await else {
        return;
    };
    stack
        .pushgateway
        .push("qscale_test", &[], "jobs_waiting 42\n")
        .await;

    let default = poller(&spec(&stack.server(), "sum(jobs_waiting)"));
    let seen = read_until(&default, Duration::from_secs(30), Result::is_ok).await;
    assert_eq!(seen, Ok(42.0), "jobs_waiting 42 read back through sum()");

    // Spaces and quotes in a GET query string.
    let spaced = poller(&spec(
        &stack.server(),
        "sum by () ( jobs_waiting{job=\"qscale_test\"} )",
    ));
    assert_eq!(spaced.read().await, Ok(42.0));

    // A query too long for a URL goes as a POST form, which Prometheus must decode the same.
    let alternatives: Vec<String> = (0..300).map(|i| format!("other_job_{i}")).collect();
    let long_query = format!(
        "sum(jobs_waiting{{job=~\"{}|qscale_test\"}})",
        alternatives.join("|")
    );
    assert!(long_query.len() > 4096);
    assert_eq!(
        poller(&spec(&stack.server(), &long_query)).read().await,
        Ok(42.0)
    );

    let mut zero_spec = spec(&stack.server(), "sum(jobs_waiting)");
    zero_spec.on_empty = OnEmpty::Zero;
    let zero = poller(&zero_spec);
    assert_eq!(zero.read().await, Ok(42.0));

    stack.pushgateway.delete("qscale_test", &[]).await;
    let gone = read_until(&default, Duration::from_secs(30), Result::is_err).await;
    assert!(
        matches!(&gone, Err(TriggerError::Empty(m)) if m.contains("no series")),
        "an empty result is an error by default: {gone:?}"
    );
    assert_eq!(zero.read().await, Ok(0.0), "and zero with on_empty = zero");

    stack.prometheus.stop();
    let started = Instant::now();
    let down = default.read().await;
    assert!(matches!(down, Err(TriggerError::Network(_))), "{down:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn two_series_are_rejected_with_advice_to_aggregate() {
    init();
    let Some(stack) = PromStack::start().await else {
        return;
    };
    let pushgateway = &stack.pushgateway;
    pushgateway
        .push("qscale_two", &[("queue", "a")], "jobs_waiting 1\n")
        .await;
    pushgateway
        .push("qscale_two", &[("queue", "b")], "jobs_waiting 2\n")
        .await;

    let summed = poller(&spec(&stack.server(), "sum(jobs_waiting)"));
    let total = read_until(&summed, Duration::from_secs(30), |r| *r == Ok(3.0)).await;
    assert_eq!(total, Ok(3.0));

    let raw = poller(&spec(&stack.server(), "jobs_waiting"));
    let result = raw.read().await;
    let Err(TriggerError::BadResponse(message)) = &result else {
        panic!("two series must be an error: {result:?}");
    };
    assert!(message.contains("2 series"), "{message}");
    assert!(
        message.contains("aggregate") && message.contains("sum("),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// A loopback server that records what it receives

#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

struct Recorder {
    seen: Mutex<Vec<Seen>>,
    reply: Mutex<(u16, String)>,
    delay: Mutex<Duration>,
    url: String,
}

const VALUE_3: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"3"]}]}}"#;

impl Recorder {
    async fn start() -> Arc<Recorder> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let recorder = Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            reply: Mutex::new((200, VALUE_3.to_string())),
            delay: Mutex::new(Duration::ZERO),
            url: format!("http://{}", listener.local_addr().unwrap()),
        });
        let app = Router::new().fallback(record).with_state(recorder.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        recorder
    }

    fn reply(&self, status: u16, body: &str) {
        *self.reply.lock().unwrap() = (status, body.to_string());
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

async fn record(
    State(recorder): State<Arc<Recorder>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    recorder.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        headers,
        body: body.to_vec(),
    });
    let delay = *recorder.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (status, body) = recorder.reply.lock().unwrap().clone();
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if (300..400).contains(&status) {
        response
            .headers_mut()
            .insert("location", "http://elsewhere.invalid/".parse().unwrap());
    }
    response
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v.to_str().unwrap())
}

fn form_pairs(encoded: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{encoded}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

#[tokio::test]
async fn bearer_token_is_sent_and_reread_when_the_file_changes() {
    init();
    let recorder = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "first-token-abc\n").unwrap();
    let mut spec = spec(&recorder.url, "sum(up)");
    spec.auth.bearer_token_file = Some(token_file.clone());
    let poller = poller(&spec);

    assert_eq!(poller.read().await, Ok(3.0));
    assert_eq!(
        header(&recorder.last(), "authorization"),
        Some("Bearer first-token-abc")
    );

    // Projected service-account tokens are swapped in place by the kubelet.
    std::fs::write(&token_file, "second-token-xyz").unwrap();
    assert_eq!(poller.read().await, Ok(3.0));
    assert_eq!(
        header(&recorder.last(), "authorization"),
        Some("Bearer second-token-xyz")
    );

    // A server that echoes the token in its refusal does not get it into our error.
    recorder.reply(401, "token second-token-xyz is expired");
    let denied = poller.read().await.unwrap_err();
    assert!(
        matches!(&denied, TriggerError::AccessDenied(m) if m.contains("<redacted>")),
        "{denied:?}"
    );
    assert_no_secret(&denied, &["second-token-xyz"]);

    std::fs::remove_file(&token_file).unwrap();
    let missing = poller.read().await.unwrap_err();
    assert!(
        matches!(missing, TriggerError::Credentials(_)),
        "{missing:?}"
    );
}

#[tokio::test]
async fn basic_auth_password_from_a_file_or_an_env_var() {
    init();
    let recorder = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "file-s3cret!\n").unwrap();

    let mut from_file = spec(&recorder.url, "sum(up)");
    from_file.auth.basic_auth = Some(BasicAuth {
        username: "alice".into(),
        password_file: Some(password_file),
        password_env: None,
    });
    assert_eq!(poller(&from_file).read().await, Ok(3.0));
    // base64("alice:file-s3cret!")
    assert_eq!(
        header(&recorder.last(), "authorization"),
        Some("Basic YWxpY2U6ZmlsZS1zM2NyZXQh")
    );

    let mut from_env = spec(&recorder.url, "sum(up)");
    from_env.auth.basic_auth = Some(BasicAuth {
        username: "bob".into(),
        password_file: None,
        password_env: Some(PASSWORD_ENV.into()),
    });
    let env_poller = poller(&from_env);
    assert_eq!(env_poller.read().await, Ok(3.0));
    // base64("bob:env-s3cret?")
    assert_eq!(
        header(&recorder.last(), "authorization"),
        Some("Basic Ym9iOmVudi1zM2NyZXQ/")
    );

    recorder.reply(
        403,
        &format!("user bob with password {PASSWORD_IN_ENV} may not"),
    );
    let denied = env_poller.read().await.unwrap_err();
    assert!(
        matches!(denied, TriggerError::AccessDenied(_)),
        "{denied:?}"
    );
    assert_no_secret(&denied, &[PASSWORD_IN_ENV, "Ym9iOmVudi1zM2NyZXQ/"]);

    let mut unset = from_env.clone();
    unset.auth.basic_auth.as_mut().unwrap().password_env = Some("QSCALE_TEST_UNSET_VAR".into());
    let error = poller(&unset).read().await.unwrap_err();
    assert!(
        matches!(&error, TriggerError::Credentials(m) if m.contains("QSCALE_TEST_UNSET_VAR")),
        "{error:?}"
    );
}

#[tokio::test]
async fn tenant_custom_headers_and_query_parameters_are_sent_as_configured() {
    init();
    let recorder = Recorder::start().await;
    let mut spec = spec(
        &format!("{}/prefix/", recorder.url),
        "sum(rate(jobs_total[1m]))",
    );
    spec.namespace = Some("team-a".into());
    spec.custom_headers = BTreeMap::from([
        ("X-Custom-One".to_string(), "value one".to_string()),
        ("x-request-source".to_string(), "qscale".to_string()),
    ]);
    spec.query_parameters = BTreeMap::from([
        ("dedup".to_string(), "false".to_string()),
        ("partial_response".to_string(), "true".to_string()),
    ]);
    assert_eq!(poller(&spec).read().await, Ok(3.0));

    let seen = recorder.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, "/prefix/api/v1/query");
    assert_eq!(header(&seen, "x-scope-orgid"), Some("team-a"));
    assert_eq!(header(&seen, "x-custom-one"), Some("value one"));
    assert_eq!(header(&seen, "x-request-source"), Some("qscale"));
    assert_eq!(header(&seen, "accept"), Some("application/json"));
    assert_eq!(header(&seen, "authorization"), None);
    assert_eq!(
        form_pairs(seen.query.as_deref().unwrap()),
        vec![
            ("dedup".to_string(), "false".to_string()),
            ("partial_response".to_string(), "true".to_string()),
            ("query".to_string(), "sum(rate(jobs_total[1m]))".to_string()),
        ]
    );
}

#[tokio::test]
async fn long_queries_are_sent_as_a_post_form() {
    init();
    let recorder = Recorder::start().await;
    let long_query = format!("sum(jobs{{queue=~\"{}\"}})", "q|".repeat(2000));
    let mut spec = spec(&recorder.url, &long_query);
    spec.query_parameters = BTreeMap::from([("dedup".to_string(), "true".to_string())]);
    spec.namespace = Some("tenant-b".into());
    assert_eq!(poller(&spec).read().await, Ok(3.0));

    let seen = recorder.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.query, None);
    assert_eq!(
        header(&seen, "content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(header(&seen, "x-scope-orgid"), Some("tenant-b"));
    assert_eq!(
        form_pairs(std::str::from_utf8(&seen.body).unwrap()),
        vec![
            ("dedup".to_string(), "true".to_string()),
            ("query".to_string(), long_query),
        ]
    );
}

#[tokio::test]
async fn http_errors_map_to_trigger_errors() {
    init();
    let recorder = Recorder::start().await;
    let poller = poller(&spec(&recorder.url, "sum(up)"));
    let cases: &[(u16, &str, &str)] = &[
        (401, "", "access_denied"),
        (403, "forbidden", "access_denied"),
        (429, "slow down", "throttled"),
        (404, "404 page not found", "not_found"),
        (503, "overloaded", "network"),
        (302, "", "bad_response"),
        (
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#,
            "bad_response",
        ),
        (500, "<html>oops</html>", "bad_response"),
        (200, "not json at all", "bad_response"),
    ];
    for (status, body, kind) in cases {
        recorder.reply(*status, body);
        let error = poller.read().await.unwrap_err();
        assert_eq!(error.kind(), *kind, "HTTP {status}: {error}");
        if *status != 200 {
            assert!(error.to_string().contains(&status.to_string()), "{error}");
        }
    }
    recorder.reply(
        400,
        r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#,
    );
    let error = poller.read().await.unwrap_err().to_string();
    assert!(
        error.contains("bad_data") && error.contains("parse error"),
        "{error}"
    );
    recorder.reply(302, "");
    let error = poller.read().await.unwrap_err().to_string();
    assert!(
        error.contains("elsewhere.invalid"),
        "redirects are not followed: {error}"
    );

    recorder.reply(200, VALUE_3);
    assert_eq!(
        poller.read().await,
        Ok(3.0),
        "the poller works again afterwards"
    );
}

#[tokio::test]
async fn triggers_with_the_same_tls_settings_share_one_client() {
    init();
    let recorder = Recorder::start().await;
    let clients = HttpClients::default();
    let aws = AwsContext::new();
    let pollers: Vec<PrometheusPoller> = ["sum(a)", "sum(b)", "sum(c)"]
        .iter()
        .map(|query| PrometheusPoller::new(&spec(&recorder.url, query), &clients, &aws).unwrap())
        .collect();
    for poller in &pollers {
        assert_eq!(poller.read().await, Ok(3.0));
    }
    assert_eq!(clients.len(), 1);
    let mut insecure = spec(&recorder.url, "sum(d)");
    insecure.tls.insecure_skip_verify = true;
    PrometheusPoller::new(&insecure, &clients, &aws).unwrap();
    assert_eq!(clients.len(), 2);
    assert_eq!(recorder.count(), 3);
}

// ---------------------------------------------------------------------------------------------
// Down and slow

#[tokio::test]
async fn a_closed_port_is_a_quick_network_error() {
    init();
    let port = prom_support::free_port();
    let poller = poller(&spec(&format!("http://127.0.0.1:{port}"), "sum(up)"));
    let started = Instant::now();
    let error = poller.read().await.unwrap_err();
    assert!(matches!(error, TriggerError::Network(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_server_times_out_and_the_poller_recovers() {
    init();
    let recorder = Recorder::start().await;
    *recorder.delay.lock().unwrap() = Duration::from_secs(10);
    let mut spec = spec(&recorder.url, "sum(up)");
    spec.timeout = Dur(Duration::from_millis(300));
    let poller = poller(&spec);

    let started = Instant::now();
    let error = poller.read().await.unwrap_err();
    assert_eq!(error, TriggerError::Timeout(Duration::from_millis(300)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    *recorder.delay.lock().unwrap() = Duration::ZERO;
    assert_eq!(poller.read().await, Ok(3.0));
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA, and a certificate it issued for 127.0.0.1 and localhost.
struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

impl TestPki {
    fn new(name: &str) -> TestPki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestPki { ca, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf certificate and its key, as DER for the server and as PEM files for the client.
    fn issue(
        &self,
        name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> (Vec<u8>, Vec<u8>, PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_file = self.dir.path().join(format!("{name}.crt"));
        let key_file = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (
            cert.der().to_vec(),
            key.serialize_der(),
            cert_file,
            key_file,
        )
    }
}

/// A blocking rustls server on 127.0.0.1 answering every request with [`VALUE_3`].
struct TlsServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl TlsServer {
    fn start(pki: &TestPki, require_client_cert: bool) -> TlsServer {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let (cert, key, _, _) = pki.issue("server", ExtendedKeyUsagePurpose::ServerAuth);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = Arc::new(
            builder
                .with_single_cert(
                    vec![CertificateDer::from(cert)],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let config = config.clone();
                    std::thread::spawn(move || serve_tls(config, stream));
                }
            }
        });
        TlsServer { port, stop }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_tls(config: Arc<rustls::ServerConfig>, stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{VALUE_3}",
        VALUE_3.len()
    );
    let _ = tls.write_all(response.as_bytes());
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn tls_spec(server: &TlsServer, tls: TlsSettings) -> PrometheusTrigger {
    let mut spec = spec(&server.url(), "sum(up)");
    spec.tls = tls;
    spec
}

#[tokio::test]
async fn a_custom_ca_is_trusted_and_a_wrong_one_is_a_tls_error() {
    init();
    let pki = TestPki::new("qscale test CA");
    let server = TlsServer::start(&pki, false);

    let trusted = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    assert_eq!(poller(&tls_spec(&server, trusted)).read().await, Ok(3.0));

    let other = TestPki::new("some other CA");
    let wrong = TlsSettings {
        ca_file: Some(other.ca_file()),
        ..TlsSettings::default()
    };
    let error = poller(&tls_spec(&server, wrong)).read().await.unwrap_err();
    assert!(
        matches!(&error, TriggerError::Tls(m) if m.contains("UnknownIssuer") && m.contains("tls.ca_file")),
        "a wrong CA is a clear TLS error: {error:?}"
    );

    let error = poller(&tls_spec(&server, TlsSettings::default()))
        .read()
        .await
        .unwrap_err();
    assert!(
        matches!(error, TriggerError::Tls(_)),
        "system roots do not know the test CA: {error:?}"
    );
}

#[tokio::test]
async fn insecure_skip_verify_accepts_an_unknown_certificate() {
    init();
    let pki = TestPki::new("unknown CA");
    let server = TlsServer::start(&pki, false);
    let insecure = TlsSettings {
        insecure_skip_verify: true,
        ..TlsSettings::default()
    };
    assert_eq!(poller(&tls_spec(&server, insecure)).read().await, Ok(3.0));
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    init();
    let pki = TestPki::new("mTLS CA");
    let server = TlsServer::start(&pki, true);
    let (_, _, cert_file, key_file) =
        pki.issue("qscale-client", ExtendedKeyUsagePurpose::ClientAuth);

    let with_cert = TlsSettings {
        ca_file: Some(pki.ca_file()),
        cert_file: Some(cert_file),
        key_file: Some(key_file),
        insecure_skip_verify: false,
    };
    assert_eq!(poller(&tls_spec(&server, with_cert)).read().await, Ok(3.0));

    let without_cert = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    let error = poller(&tls_spec(&server, without_cert))
        .read()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TriggerError::Tls(m) if m.contains("client certificate")),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SigV4 (Amazon Managed Prometheus)

fn verifier_keys(secret_key: &str) -> VerifierKeys<'_> {
    VerifierKeys {
        access_key: AWS_ACCESS_KEY,
        secret_key,
        session_token: Some(AWS_SESSION_TOKEN),
        region: AWS_REGION,
        service: "aps",
    }
}

fn sigv4_spec(server: &str, query: &str) -> PrometheusTrigger {
    // Written as a user would, to check that `service` defaults to `aps`.
    let sigv4: SigV4 = toml::from_str(&format!("region = \"{AWS_REGION}\"")).unwrap();
    assert_eq!(sigv4.service, "aps");
    let mut spec = spec(&format!("{server}/workspaces/ws-qscale-test"), query);
    spec.auth.aws_sigv4 = Some(sigv4);
    spec
}

#[tokio::test]
async fn sigv4_signed_queries_pass_an_independent_verifier() {
    init();
    let Some(verifier) = SigV4Verifier::start(&verifier_keys(AWS_SECRET_KEY), 7.0) else {
        return;
    };
    let mut get = sigv4_spec(
        &verifier.url(),
        "sum by (queue) (rate(jobs_total{env=\"prod a\"}[5m]))",
    );
    get.namespace = Some("tenant-1".into());
    get.custom_headers = BTreeMap::from([("X-Extra".to_string(), "signed too".to_string())]);
    get.query_parameters = BTreeMap::from([("timeout".to_string(), "4s".to_string())]);
    assert_eq!(
        poller(&get).read().await,
        Ok(7.0),
        "GET with tenant, headers, parameters"
    );

    let long_query = format!("sum(jobs{{queue=~\"{}\"}})", "q|".repeat(2000));
    assert_eq!(
        poller(&sigv4_spec(&verifier.url(), &long_query))
            .read()
            .await,
        Ok(7.0),
        "POST form, body signed"
    );
}

#[tokio::test]
async fn sigv4_with_a_tampered_secret_is_rejected() {
    init();
    // qscale signs with the secret in its environment; the verifier holds one that differs
    // by one character, as if either side had been tampered with.
    let tampered = AWS_SECRET_KEY.replace("EXAMPLE", "EXAMPLF");
    let Some(verifier) = SigV4Verifier::start(&verifier_keys(&tampered), 7.0) else {
        return;
    };
    let error = poller(&sigv4_spec(&verifier.url(), "sum(up)"))
        .read()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, TriggerError::AccessDenied(m) if m.contains("403") && m.contains("signature")),
        "{error:?}"
    );
    assert_no_secret(&error, &[AWS_SECRET_KEY, &tampered, AWS_SESSION_TOKEN]);
}
