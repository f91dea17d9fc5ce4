//! `POST /hooks/git`: a forge's push webhook starts `spilo watch`'s next pass at once, instead
//! of at the next fetch (`--fetch-interval`, 30 s by default). The request carries nothing
//! the pass uses (the pass fetches the branch itself), so a forged one could only cause an
//! early fetch; it is still refused without the shared secret: GitHub's
//! `X-Hub-Signature-256` (HMAC-SHA256 of the body) or GitLab's `X-Gitlab-Token`.

use axum::http::{HeaderMap, StatusCode};
use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

/// Whether a request with `headers` and `body` proves it knows `secret`.
pub fn authentic(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(signature) = header("x-hub-signature-256") {
        let Some(hex) = signature.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        return bool::from(
            expected
                .as_bytes()
                .ct_eq(hex.to_ascii_lowercase().as_bytes()),
        );
    }
    if let Some(token) = header("x-gitlab-token") {
        return bool::from(token.as_bytes().ct_eq(secret.as_bytes()));
    }
    false
}

/// The answer to a hook: 202 when it started a pass, 401 when it is not authentic.
pub fn answer(
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    start: impl FnOnce(),
) -> (StatusCode, &'static str) {
    if authentic(secret, headers, body) {
        start();
        (StatusCode::ACCEPTED, "fetching the branch now\n")
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "not signed with the hook secret (X-Hub-Signature-256 or X-Gitlab-Token)\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn a_github_signature_is_the_hmac_of_the_body() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload
        // "Hello, World!".
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let body = b"Hello, World!";
        let secret = "It's a Secret to Everybody";
        assert!(authentic(
            secret,
            &headers(&[("x-hub-signature-256", sig)]),
            body
        ));
        assert!(!authentic(
            secret,
            &headers(&[("x-hub-signature-256", sig)]),
            b"Hello, World?"
        ));
        assert!(!authentic(
            "another",
            &headers(&[("x-hub-signature-256", sig)]),
            body
        ));
        assert!(!authentic(
            secret,
            &headers(&[("x-hub-signature-256", "757107ea")]),
            body
        ));
    }

    #[test]
    fn a_gitlab_token_must_equal_the_secret_and_nothing_else_passes() {
        assert!(authentic(
            "s3cret",
            &headers(&[("x-gitlab-token", "s3cret")]),
            b"{}"
        ));
        assert!(!authentic(
            "s3cret",
            &headers(&[("x-gitlab-token", "s3cre")]),
            b"{}"
        ));
        assert!(!authentic("s3cret", &headers(&[]), b"{}"));
        let mut started = false;
        let (status, _) = answer("s3cret", &headers(&[]), b"{}", || started = true);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!started);
        let (status, _) = answer(
            "s3cret",
            &headers(&[("x-gitlab-token", "s3cret")]),
            b"{}",
            || started = true,
        );
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(started);
    }
}
