//! Credentials for a Prometheus query: a bearer token, basic auth, or an AWS SigV4 signature.
//!
//! Secrets are read at every poll, not once at start, so a rotated projected service-account
//! token or a re-mounted Secret is picked up without a restart. They only ever travel in
//! sensitive header values; what is returned beside them is the list of strings that must be
//! scrubbed from any server text quoted in an error.

use std::path::{Path, PathBuf};

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, Url};

use crate::config::{PrometheusAuth, SigV4};
use crate::triggers::aws::{AwsContext, AwsIdentity};
use crate::triggers::secrets::Secrets;
use crate::triggers::sigv4::{sensitive_header, sign_request};
use crate::triggers::TriggerError;

/// How each request is authenticated.
pub(super) enum Auth {
    None,
    Bearer {
        token_file: PathBuf,
    },
    Basic {
        username: String,
        password: PasswordSource,
    },
    SigV4(Box<SigV4Signer>),
}

pub(super) enum PasswordSource {
    File(PathBuf),
    Env(String),
}

pub(super) struct SigV4Signer {
    aws: AwsContext,
    identity: AwsIdentity,
    region: String,
    service: String,
}

/// What a request is made of, as it will be sent: the signature covers exactly these.
pub(super) struct RequestParts<'a> {
    pub method: &'a Method,
    pub url: &'a Url,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl Auth {
    pub fn from_spec(spec: &PrometheusAuth, aws: &AwsContext) -> Result<Self, TriggerError> {
        let chosen = [
            spec.bearer_token_file.is_some(),
            spec.basic_auth.is_some(),
            spec.aws_sigv4.is_some(),
        ];
        if chosen.iter().filter(|set| **set).count() > 1 {
            return Err(TriggerError::Config(
                "use one of `bearer_token_file`, `basic_auth`, `aws_sigv4`".into(),
            ));
        }
        if let Some(token_file) = &spec.bearer_token_file {
            return Ok(Auth::Bearer {
                token_file: token_file.clone(),
            });
        }
        if let Some(basic) = &spec.basic_auth {
            let password = match (&basic.password_file, &basic.password_env) {
                (Some(file), None) => PasswordSource::File(file.clone()),
                (None, Some(var)) => PasswordSource::Env(var.clone()),
                _ => {
                    return Err(TriggerError::Config(
                        "basic_auth needs exactly one of `password_file` or `password_env`".into(),
                    ))
                }
            };
            if basic.username.contains(':') {
                return Err(TriggerError::Config(
                    "basic_auth.username cannot contain `:`".into(),
                ));
            }
            return Ok(Auth::Basic {
                username: basic.username.clone(),
                password,
            });
        }
        if let Some(sigv4) = &spec.aws_sigv4 {
            return Ok(Auth::SigV4(Box::new(SigV4Signer::new(sigv4, aws)?)));
        }
        Ok(Auth::None)
    }

    /// The scheme's name, for debug output that must not show the credential itself.
    pub fn mode(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Bearer { .. } => "bearer",
            Auth::Basic { .. } => "basic",
            Auth::SigV4(_) => "aws_sigv4",
        }
    }

    /// Whether the credential is a reusable secret that plain HTTP would expose.
    pub fn sends_reusable_secret(&self) -> bool {
        matches!(self, Auth::Bearer { .. } | Auth::Basic { .. })
    }

    /// Adds this request's credentials to `request`, which must be built from `parts`.
    pub async fn authorize(
        &self,
        request: RequestBuilder,
        parts: &RequestParts<'_>,
    ) -> Result<(RequestBuilder, Secrets), TriggerError> {
        let mut secrets = Secrets::default();
        let request = match self {
            Auth::None => request,
            Auth::Bearer { token_file } => {
                let token = read_secret("bearer_token_file", token_file).await?;
                secrets.add(&token);
                let value = sensitive_header(&format!("Bearer {token}")).ok_or_else(|| {
                    TriggerError::Credentials(format!(
                        "bearer_token_file {} holds characters not allowed in an HTTP header",
                        token_file.display()
                    ))
                })?;
                request.header(reqwest::header::AUTHORIZATION, value)
            }
            Auth::Basic { username, password } => {
                let password = match password {
                    PasswordSource::File(path) => {
                        read_secret("basic_auth.password_file", path).await?
                    }
                    PasswordSource::Env(var) => read_env_secret(var)?,
                };
                secrets.add(&password);
                request.basic_auth(username, Some(password))
            }
            Auth::SigV4(signer) => signer.sign(request, parts, &mut secrets).await?,
        };
        Ok((request, secrets))
    }
}

impl SigV4Signer {
    fn new(spec: &SigV4, aws: &AwsContext) -> Result<Self, TriggerError> {
        if spec.region.trim().is_empty() || spec.service.trim().is_empty() {
            return Err(TriggerError::Config(
                "aws_sigv4 needs a `region` (and a non-empty `service`, `aps` by default)".into(),
            ));
        }
        if spec.external_id.is_some() && spec.role_arn.is_none() {
            return Err(TriggerError::Config(
                "aws_sigv4.external_id only means something with `role_arn`".into(),
            ));
        }
        Ok(Self {
            aws: aws.clone(),
            identity: AwsIdentity {
                region: Some(spec.region.clone()),
                role_arn: spec.role_arn.clone(),
                external_id: spec.external_id.clone(),
            },
            region: spec.region.clone(),
            service: spec.service.clone(),
        })
    }

    /// Signs the method, URL, headers and body exactly as they will be sent, with the SigV4
    /// header scheme AMP expects (`Authorization`, `X-Amz-Date`, `X-Amz-Security-Token`).
    async fn sign(
        &self,
        mut request: RequestBuilder,
        parts: &RequestParts<'_>,
        secrets: &mut Secrets,
    ) -> Result<RequestBuilder, TriggerError> {
        let credentials = self.aws.credentials(&self.identity).await?;
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in parts.headers {
            let value = value.to_str().map_err(|_| {
                TriggerError::Config(format!(
                    "header {name} is not visible ASCII, cannot sign it"
                ))
            })?;
            headers.push((name.as_str(), value));
        }
        let signature = sign_request(
            credentials.as_ref().clone(),
            &self.region,
            &self.service,
            parts.method.as_str(),
            parts.url.as_str(),
            headers.into_iter(),
            parts.body,
        )?;
        for secret in &signature.secrets {
            secrets.add(secret);
        }
        for (name, value) in signature.headers {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// A secret from a file, trimmed like Prometheus trims its `*_file` secrets, so the trailing
/// newline editors and `echo > file` leave does not become part of the credential.
async fn read_secret(field: &str, path: &Path) -> Result<String, TriggerError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| TriggerError::Credentials(format!("{field} {}: {e}", path.display())))?;
    let secret = text.trim().to_string();
    if secret.is_empty() {
        return Err(TriggerError::Credentials(format!(
            "{field} {} is empty",
            path.display()
        )));
    }
    Ok(secret)
}

/// A secret from the environment. `VarError`'s own message would print a non-UTF-8 value, so
/// it is not used.
fn read_env_secret(var: &str) -> Result<String, TriggerError> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) => Err(TriggerError::Credentials(format!(
            "basic_auth.password_env {var} is empty"
        ))),
        Err(std::env::VarError::NotPresent) => Err(TriggerError::Credentials(format!(
            "basic_auth.password_env {var} is not set"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(TriggerError::Credentials(format!(
            "basic_auth.password_env {var} is not valid UTF-8"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BasicAuth;

    #[test]
    fn one_scheme_at_most() {
        let aws = AwsContext::new();
        let both = PrometheusAuth {
            bearer_token_file: Some("/t".into()),
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                password_file: Some("/p".into()),
                password_env: None,
            }),
            aws_sigv4: None,
        };
        assert!(matches!(
            Auth::from_spec(&both, &aws),
            Err(TriggerError::Config(_))
        ));
        let neither_password = PrometheusAuth {
            basic_auth: Some(BasicAuth {
                username: "u".into(),
                password_file: None,
                password_env: None,
            }),
            ..PrometheusAuth::default()
        };
        assert!(matches!(
            Auth::from_spec(&neither_password, &aws),
            Err(TriggerError::Config(_))
        ));
        assert!(matches!(
            Auth::from_spec(&PrometheusAuth::default(), &aws),
            Ok(Auth::None)
        ));
    }

    #[tokio::test]
    async fn secret_files_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, " abc def\r\n").unwrap();
        assert_eq!(read_secret("f", &path).await.unwrap(), "abc def");
        std::fs::write(&path, "\n").unwrap();
        let error = read_secret("f", &path).await.unwrap_err();
        assert!(matches!(&error, TriggerError::Credentials(m) if m.contains("empty")));
        let error = read_secret("f", &dir.path().join("missing"))
            .await
            .unwrap_err();
        assert!(matches!(error, TriggerError::Credentials(_)));
    }
}
