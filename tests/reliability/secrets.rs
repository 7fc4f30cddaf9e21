//! Secrets never leak: the agent runs with AWS keys (and a session token), a Prometheus bearer
//! token, basic-auth passwords (from a file and from the environment) and a Kubernetes token;
//! every error path the fakes can provoke is provoked, with servers that echo credentials back;
//! no secret may then appear in the logs (at debug level, every crate), `/metrics`, Events, the
//! state ConfigMap, or any error message.

use std::time::Duration;

use crate::harness::{
    converge, metric, prometheus_rule, sqs_rule, Kube, Launch, Qscale, Queues, Recorder,
    DEPLOYMENT, NS,
};
use crate::support::eventually;
use crate::support::fake_kube::{on, FakeKube};
use crate::support::fake_prometheus::{FakePrometheus, PromFault};
use crate::support::sqs_faults::{SqsFault, SqsFaults};

const AWS_KEY_ID: &str = "AKIAQSCALELEAKCHECK7";
const AWS_SECRET: &str = "qscaleAwsSecretKey/DoNotLeak+0001";
const AWS_SESSION: &str = "qscaleAwsSessionToken/DoNotLeak+0002";
const BEARER: &str = "qscale-bearer-token-do-not-leak-0003";
const BASIC_FILE: &str = "qscale-basic-file-password-0004";
const BASIC_ENV: &str = "qscale-basic-env-password-0005";
const KUBE_TOKEN: &str = "qscale-kube-token-do-not-leak-0006";
const PASSWORD_VAR: &str = "QSCALE_TEST_PROM_PASSWORD";

fn base64(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every secret, in every form it travels in. The AWS access key id is an identifier, not a
/// secret (the AWS SDK itself prints it in its debug logs); it is only checked to sign requests.
fn secrets() -> Vec<(String, String)> {
    vec![
        ("AWS secret access key".into(), AWS_SECRET.into()),
        ("AWS session token".into(), AWS_SESSION.into()),
        ("bearer token".into(), BEARER.into()),
        ("basic-auth password (file)".into(), BASIC_FILE.into()),
        ("basic-auth password (env)".into(), BASIC_ENV.into()),
        (
            "basic-auth credentials (file)".into(),
            base64(&format!("alice:{BASIC_FILE}")),
        ),
        (
            "basic-auth credentials (env)".into(),
            base64(&format!("bob:{BASIC_ENV}")),
        ),
        ("Kubernetes token".into(), KUBE_TOKEN.into()),
    ]
}

fn assert_no_secret(place: &str, text: &str) {
    for (what, secret) in secrets() {
        if let Some(at) = text.find(&secret) {
            let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "the {what} appears in {place}:\n{}",
                &text[from..to.min(from + 2000)]
            );
        }
    }
}

/// A kubeconfig for `kube` whose user authenticates with [`KUBE_TOKEN`].
fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: {server}\n\
         users:\n- name: fake\n  user:\n    token: {KUBE_TOKEN}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
         \x20   namespace: {NS}\n"
    )
}

fn launch(rules: &str, kube: &FakeKube) -> Launch {
    let mut launch = Launch::rules(rules)
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_SESSION_TOKEN", AWS_SESSION)
        .env(PASSWORD_VAR, BASIC_ENV);
    launch.kubeconfig = Some(kubeconfig(&kube.url()));
    // Everything every crate logs at debug level: what an operator turns on to investigate.
    launch.rust_log = "debug".into();
    launch
}

/// The Prometheus answers of one error path each; `secret` is echoed in the body (and the
/// request's Authorization header wherever `{authorization}` is).
fn prometheus_faults(secret: &str) -> Vec<PromFault> {
    let vector = |value: &str| {
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{value}"]}}]}}}}"#
        )
    };
    vec![
        PromFault::Echo(
            401,
            format!("invalid credentials {{authorization}} / {secret}"),
        ),
        PromFault::Echo(
            403,
            format!(
                r#"{{"status":"error","errorType":"forbidden","error":"{{authorization}} {secret}"}}"#
            ),
        ),
        PromFault::Echo(
            500,
            format!(r#"{{"status":"error","errorType":"internal","error":"{secret}"}}"#),
        ),
        PromFault::Echo(
            200,
            format!(
                r#"{{"status":"error","errorType":"bad_data","error":"token {secret} {{authorization}}"}}"#
            ),
        ),
        PromFault::Echo(200, format!("not json at all: {secret} {{authorization}}")),
        PromFault::Echo(200, vector(secret)),
        PromFault::Echo(
            200,
            format!(r#"{{"status":"success","data":{{"resultType":"{secret}","result":[]}}}}"#),
        ),
        PromFault::Echo(
            200,
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"token":"{secret}"}},"value":[1,"1"]}},{{"metric":{{}},"value":[1,"2"]}}]}}}}"#
            ),
        ),
        PromFault::Redirect(302, format!("http://127.0.0.1:1/login?token={secret}")),
        PromFault::Echo(404, format!("no such path for {secret}")),
        PromFault::Echo(429, format!("slow down, {secret}")),
        PromFault::Echo(503, format!("{{\"message\":\"unavailable for {secret}\"}}")),
        PromFault::Slow(Duration::from_secs(2)),
        PromFault::Reset,
    ]
}

fn sqs_faults() -> Vec<SqsFault> {
    let error =
        |status: u16, error_type: &str, query_error: Option<&str>, message: &str| SqsFault::Error {
            status,
            error_type: error_type.into(),
            query_error: query_error.map(str::to_string),
            message: message.into(),
        };
    vec![
        SqsFault::AccessDenied,
        SqsFault::Throttling,
        SqsFault::RequestThrottled,
        error(
            400,
            "com.amazon.coral.service#UnrecognizedClientException",
            Some("InvalidClientTokenId"),
            "The security token included in the request is invalid.",
        ),
        error(
            400,
            "com.amazonaws.sqs#QueueDoesNotExist",
            Some("AWS.SimpleQueueService.NonExistentQueue"),
            "The specified queue does not exist.",
        ),
        error(
            403,
            "com.amazon.coral.service#ExpiredTokenException",
            Some("ExpiredToken"),
            "The security token included in the request is expired",
        ),
        error(
            500,
            "com.amazonaws.sqs#InternalError",
            Some("InternalError"),
            "We encountered an internal error. Please try again.",
        ),
        SqsFault::Slow(Duration::from_secs(5)),
        SqsFault::Reset,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_metrics_events_or_errors_whatever_fails() {
    let queues = Queues::start(&["sqs-secret"]).await;
    let proxy = SqsFaults::start(queues.moto.endpoint()).await;
    let bearer_server = FakePrometheus::start(30.0).await;
    let basic_server = FakePrometheus::start(30.0).await;
    let env_server = FakePrometheus::start(30.0).await;
    let plain_server = FakePrometheus::start(30.0).await;
    let kube = Kube::start().await;
    let names = [
        "sqs-secret",
        "prom-bearer",
        "prom-basic",
        "prom-basic-env",
        "forbidden",
    ];
    for name in names {
        kube.create_deployment(NS, name, 0);
    }
    // A custom kind the Role does not grant: every access is a 403.
    kube.create_worker(NS, "forbidden", 1);
    queues.send("sqs-secret", 15).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    let password_file = dir.path().join("password");
    std::fs::write(&token_file, format!("{BEARER}\n")).expect("token");
    std::fs::write(&password_file, BASIC_FILE).expect("password");
    let rules = [
        sqs_rule(
            "sqs-secret",
            queues.url("sqs-secret"),
            &proxy.endpoint(),
            "",
            // Long enough for the SDK's own retries of a throttled call (at most ~3 s).
            "timeout = \"4s\"",
        ),
        prometheus_rule(
            "prom-bearer",
            &bearer_server.url(),
            "fallback = { after_failures = 2, replicas = 5, mode = \"static\" }",
            &format!("bearer_token_file = \"{}\"", token_file.display()),
        ),
        prometheus_rule(
            "prom-basic",
            &basic_server.url(),
            "",
            &format!(
                "basic_auth = {{ username = \"alice\", password_file = \"{}\" }}",
                password_file.display()
            ),
        ),
        prometheus_rule(
            "prom-basic-env",
            &env_server.url(),
            "",
            &format!("basic_auth = {{ username = \"bob\", password_env = \"{PASSWORD_VAR}\" }}"),
        ),
        prometheus_rule("forbidden", &plain_server.url(), "", "").replace(
            "target = { kind = \"Deployment\", name = \"forbidden\" }",
            "target = { kind = \"Worker\", name = \"forbidden\", api_version = \"example.com/v1\" }",
        ),
    ]
    .concat();
    let recorder = Recorder::start(&kube, DEPLOYMENT, &names);
    let mut agent = Qscale::launch(&kube, launch(&rules, &kube));
    for name in ["sqs-secret", "prom-bearer", "prom-basic", "prom-basic-env"] {
        converge(&agent, &kube, name, 3, Duration::from_secs(30)).await;
    }
    // The credentials did travel (so "not in the logs" means something).
    let seen_bearer = bearer_server
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(format!("Bearer {BEARER}").as_str()));
    assert!(seen_bearer, "the bearer token is sent");
    let seen_basic = basic_server.requests().iter().any(|r| {
        r.header("authorization")
            == Some(format!("Basic {}", base64(&format!("alice:{BASIC_FILE}"))).as_str())
    });
    assert!(seen_basic, "the basic-auth password is sent");
    let seen_session = proxy.requests().iter().any(|r| {
        r.header("x-amz-security-token") == Some(AWS_SESSION)
            && r.header("authorization")
                .is_some_and(|a| a.contains(AWS_KEY_ID))
    });
    assert!(seen_session, "the AWS keys sign the SQS requests");

    // Every error path, two polls each.
    let prometheus = [
        (&bearer_server, prometheus_faults(BEARER)),
        (&basic_server, prometheus_faults(BASIC_FILE)),
        (&env_server, prometheus_faults(BASIC_ENV)),
    ];
    let sqs = sqs_faults();
    let phases = sqs.len().max(prometheus[0].1.len());
    for phase in 0..phases {
        proxy.set(sqs.get(phase).cloned().unwrap_or(SqsFault::None));
        for (server, faults) in &prometheus {
            server.set_fault(faults.get(phase).cloned().unwrap_or(PromFault::None));
        }
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    // No endpoint at all, a missing token file, and API errors on every write.
    proxy.set(SqsFault::None);
    proxy.set_down(true).await;
    for (server, _) in &prometheus {
        server.set_fault(PromFault::None);
        server.set_value(60.0);
    }
    std::fs::remove_file(&token_file).expect("remove the token file");
    // 500s for one rule's writes, enough for two of them to fail after every retry (five
    // attempts each; shared by every rule that writes, they could all end in a success); then
    // 401s and 403s for any rule.
    kube.fail_next(
        |r: &crate::support::fake_kube::RecordedRequest| {
            r.is_scale_write() && r.path.ends_with("/prom-basic/scale")
        },
        10,
        500,
    );
    kube.fail_next(on("PATCH", "/scale"), 4, 401);
    kube.fail_next(on("PATCH", "/scale"), 4, 403);
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Everything heals: the agent follows every trigger again.
    kube.clear_faults();
    proxy.set_down(false).await;
    std::fs::write(&token_file, BEARER).expect("token");
    queues.send("sqs-secret", 20).await;
    converge(&agent, &kube, "sqs-secret", 7, Duration::from_secs(30)).await;
    for name in ["prom-bearer", "prom-basic", "prom-basic-env"] {
        converge(&agent, &kube, name, 6, Duration::from_secs(30)).await;
    }
    assert!(agent.is_running(), "{}", agent.tail());

    // The paths were taken.
    let metrics = agent.metrics();
    for (rule, kind) in [
        ("sqs-secret", "access_denied"),
        ("sqs-secret", "throttled"),
        ("sqs-secret", "not_found"),
        ("sqs-secret", "timeout"),
        ("prom-bearer", "access_denied"),
        ("prom-bearer", "bad_response"),
        ("prom-bearer", "credentials"),
        ("prom-basic", "throttled"),
        ("prom-basic", "not_found"),
        ("prom-basic-env", "network"),
        ("prom-basic-env", "timeout"),
    ] {
        let count = metric(
            &metrics,
            "qscale_trigger_errors_total",
            &[("rule", rule), ("kind", kind)],
        );
        assert!(
            count.is_some_and(|c| c > 0.0),
            "{rule}: no {kind} error was provoked\n{metrics}"
        );
    }
    for kind in ["server", "forbidden"] {
        let count = metric(&metrics, "qscale_target_errors_total", &[("kind", kind)]);
        assert!(
            count.is_some_and(|c| c > 0.0),
            "no {kind} API error\n{metrics}"
        );
    }
    let events = kube.events(NS);
    assert!(
        events.iter().any(|e| e["reason"] == "FallbackEntered"),
        "{events:?}"
    );

    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(5)).is_some());
    let logs = agent.logs();
    assert!(
        logs.contains("redacted") || logs.contains("withheld"),
        "echoed credentials were scrubbed, not just absent"
    );
    assert_no_secret("the logs", &logs);
    assert_no_secret("/metrics", &metrics);
    assert_no_secret(
        "the Events",
        &serde_json::to_string(&events).unwrap_or_default(),
    );
    let sent: Vec<String> = kube
        .requests()
        .iter()
        .filter_map(|r| r.body.clone())
        .collect();
    assert_no_secret("what was sent to the API server", &sent.join("\n"));
    for name in names {
        recorder.assert_within(name, 0, 8);
    }
    agent.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_the_error_when_qscale_cannot_start() {
    // `qscale run` gives up at start with the secrets in its environment and kubeconfig: the
    // error message carries none of them.
    let kube = FakeKube::start().await;
    let rules = prometheus_rule("start", "http://127.0.0.1:9", "", "");
    let fails = |launch: Launch, what: &str| {
        let mut agent = Qscale::launch(&kube, launch);
        let exited = agent.wait_exit(Duration::from_secs(30));
        let logs = agent.logs();
        assert!(
            exited.is_some_and(|s| !s.success()),
            "{what}: qscale run should fail: {exited:?}\n{logs}"
        );
        assert_no_secret(what, &logs);
    };

    // The admin port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("address").port();
    fails(
        launch(&rules, &kube).args(&["--metrics-addr", &format!("127.0.0.1:{port}")]),
        "the busy-port error",
    );
    // Rules that do not validate.
    fails(
        launch("[[rules]]\nname = 'x'\nmax_replicas = 'many'\n", &kube),
        "the invalid-rules error",
    );
    // Kubeconfigs that cannot be used, with the token in them.
    for (what, text) in [
        (
            "a kubeconfig without a current context",
            kubeconfig(&kube.url()).replace("current-context: fake\n", ""),
        ),
        (
            "a kubeconfig with a malformed server URL",
            kubeconfig("http://[::1:not-a-url"),
        ),
    ] {
        let mut broken = launch(&rules, &kube);
        broken.kubeconfig = Some(text);
        fails(broken, what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_the_error_for_a_malformed_kubeconfig() {
    let kube = FakeKube::start().await;
    let rules = prometheus_rule("start", "http://127.0.0.1:9", "", "");
    for (what, text) in [
        (
            "a kubeconfig whose user is a bare token",
            kubeconfig(&kube.url()).replace(
                &format!("user:\n    token: {KUBE_TOKEN}"),
                &format!("user: {KUBE_TOKEN}"),
            ),
        ),
        (
            "a kubeconfig with a typo on the line after the token",
            kubeconfig(&kube.url()).replace(
                &format!("token: {KUBE_TOKEN}\n"),
                &format!("token: {KUBE_TOKEN}\n    extra: [1, 2\n"),
            ),
        ),
    ] {
        let mut broken = launch(&rules, &kube);
        broken.kubeconfig = Some(text);
        let mut agent = Qscale::launch(&kube, broken);
        let exited = agent.wait_exit(Duration::from_secs(30));
        assert!(exited.is_some_and(|s| !s.success()), "{what}: {exited:?}");
        let logs = agent.logs();
        assert!(logs.contains("kubeconfig"), "{what}: {logs}");
        assert_no_secret(&format!("the error for {what}"), &logs);
    }
}

/// A failed SigV4 check as AWS JSON services phrase it: the canonical request the server
/// expected, which lists the signed headers with their values, `x-amz-security-token`
/// (the session token) among them.
fn signature_mismatch_echoing_the_canonical_request() -> SqsFault {
    let message = format!(
        "The request signature we calculated does not match the signature you provided. Check \
         your AWS Secret Access Key and signing method. Consult the service documentation for \
         details.\n\nThe Canonical String for this request should have been\n'POST\n/\n\n\
         content-type:application/x-amz-json-1.0\nhost:sqs.us-east-1.amazonaws.com\n\
         x-amz-date:20250101T000000Z\nx-amz-security-token:{AWS_SESSION}\n\
         x-amz-target:AmazonSQS.GetQueueAttributes\n\n\
         content-type;host;x-amz-date;x-amz-security-token;x-amz-target\n\
         0123456789abcdef'\n\nThe String-to-Sign should have been\n'AWS4-HMAC-SHA256\n\
         20250101T000000Z\n20250101/us-east-1/sqs/aws4_request\nfedcba9876543210'\n"
    );
    SqsFault::Error {
        status: 400,
        error_type: "com.amazon.coral.service#InvalidSignatureException".into(),
        query_error: Some("SignatureDoesNotMatch".into()),
        message,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_error_echoing_the_session_token_is_scrubbed() {
    let queues = Queues::start(&["sqs-echo"]).await;
    let proxy = SqsFaults::start(queues.moto.endpoint()).await;
    let kube = Kube::start().await;
    kube.create_deployment(NS, "sqs-echo", 0);
    queues.send("sqs-echo", 15).await;
    let rules = sqs_rule(
        "sqs-echo",
        queues.url("sqs-echo"),
        &proxy.endpoint(),
        "",
        "",
    );
    let mut agent = Qscale::launch(&kube, launch(&rules, &kube));
    converge(&agent, &kube, "sqs-echo", 3, Duration::from_secs(30)).await;
    proxy.set(signature_mismatch_echoing_the_canonical_request());
    let failed = eventually(Duration::from_secs(10), || {
        agent.logs().contains("does not match the signature")
    })
    .await;
    assert!(failed.is_some(), "{}", agent.tail());
    assert_eq!(kube.replicas_of("sqs-echo"), 3);
    agent.signal("TERM");
    assert!(agent.wait_exit(Duration::from_secs(5)).is_some());
    assert_no_secret("the logs", &agent.logs());
}
