//! Every signature checked against `aws_sigv4`'s own signer.

use std::time::{Duration, UNIX_EPOCH};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use proptest::prelude::*;

use super::*;

/// The `authorization` and `x-amz-date` headers `aws_sigv4` itself makes for the request.
fn reference(
    credentials: &Credentials,
    url: &str,
    region: &str,
    body: &[u8],
    now: SystemTime,
) -> (String, String) {
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map(Into::into);
    let Ok(params) = params else {
        panic!("signing params");
    };
    let signable = SignableRequest::new(
        "POST",
        url,
        FIXED_HEADERS.iter().copied(),
        SignableBody::Bytes(body),
    );
    let Ok(Ok(signed)) = signable.map(|s| sign(s, &params)) else {
        panic!("aws_sigv4 could not sign");
    };
    let (instructions, _) = signed.into_parts();
    let mut authorization = String::new();
    let mut date = String::new();
    for header in instructions.into_parts().0 {
        match header.name() {
            "authorization" => authorization = header.value().to_string(),
            "x-amz-date" => date = header.value().to_string(),
            _ => {}
        }
    }
    (authorization, date)
}

fn check(url: &str, region: &str, credentials: &Credentials, body: &str, now: SystemTime) {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string());
    let Some(signer) = parsed.ok().and_then(|u| FixedSigner::for_url(&u, region)) else {
        panic!("{url} should take the fixed signer");
    };
    let payload = Payload::new(body.to_string());
    let Ok(ours) = signer.sign(&Arc::new(credentials.clone()), &payload, now) else {
        panic!("{url} did not sign");
    };
    let (authorization, date) = reference(credentials, url, region, body.as_bytes(), now);
    assert_eq!(
        ours.authorization.to_str().ok(),
        Some(authorization.as_str()),
        "{url} {region}"
    );
    assert_eq!(ours.date.to_str().ok(), Some(date.as_str()));
    assert!(authorization.ends_with(ours.signature.as_str()));
    assert!(ours.authorization.is_sensitive());
    assert_eq!(
        ours.token.as_ref().and_then(|t| t.to_str().ok()),
        credentials.session_token()
    );
}

#[test]
fn signatures_match_aws_sigv4_with_and_without_a_session_token() {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_219_400);
    let keys = Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", None, None, "test");
    let session = Credentials::new("ASIAEXAMPLE", "secret", Some("tok/en+=".into()), None, "t");
    let body = super::super::call::body("https://sqs.eu-west-1.amazonaws.com/1/q");
    for url in [
        "https://sqs.eu-west-1.amazonaws.com",
        "https://sqs.eu-west-1.amazonaws.com/",
        "https://sqs.eu-west-1.amazonaws.com:443/",
        "http://127.0.0.1:4566",
        "http://localhost:80/",
        "http://[::1]:4566",
    ] {
        check(url, "eu-west-1", &keys, &body, now);
        check(url, "eu-west-1", &session, &body, now);
    }
}

/// A signer for the regional endpoint of us-east-1.
fn us_east_1() -> FixedSigner {
    let Ok(url) = reqwest::Url::parse("https://sqs.us-east-1.amazonaws.com") else {
        panic!("url");
    };
    let Some(signer) = FixedSigner::for_url(&url, "us-east-1") else {
        panic!("signer");
    };
    signer
}

/// Session credentials with `token`, in an `Arc` of their own.
fn session(token: &str) -> Arc<Credentials> {
    Arc::new(Credentials::new(
        "AKID",
        "one",
        Some(token.into()),
        None,
        "t",
    ))
}

#[test]
fn the_key_follows_the_day_and_the_secret() {
    let signer = us_east_1();
    let payload = Payload::new("{}".into());
    let day = UNIX_EPOCH + Duration::from_secs(1_796_219_400);
    let first = Arc::new(Credentials::new("AKID", "one", None, None, "t"));
    let rotated = Arc::new(Credentials::new("AKID", "two", None, None, "t"));
    for (credentials, now) in [
        (&first, day),
        (&first, day + Duration::from_secs(86_400)),
        (&rotated, day + Duration::from_secs(86_400)),
        (&first, day + Duration::from_secs(86_401)),
        // The same second again: the kept date and key.
        (&first, day + Duration::from_secs(86_401)),
    ] {
        let Ok(ours) = signer.sign(credentials, &payload, now) else {
            panic!("did not sign");
        };
        let url = "https://sqs.us-east-1.amazonaws.com";
        let (authorization, _) = reference(credentials, url, "us-east-1", b"{}", now);
        assert_eq!(
            ours.authorization.to_str().ok(),
            Some(authorization.as_str())
        );
    }
}

#[test]
fn credentials_fetched_again_unchanged_keep_the_key() {
    let signer = us_east_1();
    let payload = Payload::new("{}".into());
    let now = UNIX_EPOCH + Duration::from_secs(1_796_219_400);
    let kept_key = |credentials: &Arc<Credentials>| {
        let Ok((key, _)) = signer.kept(credentials, now) else {
            panic!("no key");
        };
        key
    };
    let first = session("tok");
    let again = session("tok");
    let other_token = session("new");
    let key = kept_key(&first);
    assert!(
        Arc::ptr_eq(&key, &kept_key(&again)),
        "equal credentials share the key"
    );
    assert!(
        !Arc::ptr_eq(&key, &kept_key(&other_token)),
        "a new token makes a new key"
    );
    let Ok(signed) = signer.sign(&other_token, &payload, now) else {
        panic!("did not sign");
    };
    assert_eq!(
        signed.token.as_ref().map(|t| t.as_bytes()),
        Some(&b"new"[..])
    );
}

#[test]
fn a_path_or_a_query_goes_to_the_general_signer() {
    for url in ["http://proxy.local/sqs/", "http://proxy.local/?a=b"] {
        let Ok(url) = reqwest::Url::parse(url) else {
            panic!("url");
        };
        assert!(FixedSigner::for_url(&url, "us-east-1").is_none(), "{url}");
    }
}

proptest! {
    #[test]
    fn any_host_region_time_and_body_sign_as_aws_sigv4_does(
        // Names, not addresses: a last label of digits would be read as an IPv4 address.
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9]{0,9}){0,3}",
        port in proptest::option::of(1u16..),
        https in any::<bool>(),
        region in "[a-z]{2}-[a-z]{4,9}-[1-9]",
        secs in 0u64..4_102_444_800,
        queue in "[ -~]{0,80}",
        token in proptest::option::of("[A-Za-z0-9+/=]{1,200}"),
    ) {
        let scheme = if https { "https" } else { "http" };
        let url = match port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let credentials = Credentials::new("AKID", "s3cr3t", token, None, "p");
        let body = super::super::call::body(&queue);
        check(&url, &region, &credentials, &body, UNIX_EPOCH + Duration::from_secs(secs));
    }
}
