//! Secret strings of one request, kept to remove them from any server text (an error message
//! may echo the request) before it is put in an error or a log line.

use reqwest::header::HeaderValue;

/// Secret strings used for one request, to be removed from any server text before it is put
/// in an error or a log line.
#[derive(Default)]
pub(crate) struct Secrets {
    strings: Vec<String>,
    /// A secret too short to search for without mangling innocent text: server text is then
    /// withheld entirely rather than risk quoting it.
    withhold: bool,
}

/// Secrets shorter than this are not searched for (see [`Secrets::withhold`]).
const MIN_SCRUBBED_LEN: usize = 4;

impl Secrets {
    pub fn add(&mut self, secret: &str) {
        if secret.len() >= MIN_SCRUBBED_LEN {
            self.strings.push(secret.to_string());
        } else if !secret.trim().is_empty() {
            self.withhold = true;
        }
    }

    /// A sensitive header's value as sent, and its credential without the scheme word
    /// (`Basic <base64>`), since a server could echo either.
    pub fn add_header(&mut self, value: &HeaderValue) {
        if let Ok(text) = value.to_str() {
            self.add(text);
            if let Some((_, credential)) = text.split_once(' ') {
                self.add(credential.trim());
            }
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        if self.withhold {
            return "<server text withheld: a credential is too short to redact>".into();
        }
        self.strings.iter().fold(text.to_string(), |text, secret| {
            text.replace(secret.as_str(), "<redacted>")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_text() {
        let mut secrets = Secrets::default();
        secrets.add("s3cr3t-token");
        assert_eq!(
            secrets.scrub("denied for s3cr3t-token (ab)"),
            "denied for <redacted> (ab)"
        );
        secrets.add_header(&HeaderValue::from_static("Basic YWxpY2U6cHc="));
        assert_eq!(secrets.scrub("got YWxpY2U6cHc="), "got <redacted>");
        secrets.add("ab");
        assert!(!secrets.scrub("denied (ab)").contains("ab"));
    }
}
