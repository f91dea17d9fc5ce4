//! Authentication of the REST API's mutating endpoints: `Authorization: Bearer <token>` or
//! `Basic <user:password>`, compared in constant time against the credentials from the
//! governor configuration (`restapi.auth`). Without configured credentials those endpoints
//! are disabled (403); a request without valid credentials gets 401 and changes nothing.

use crate::config::ApiCredentials;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use subtle::ConstantTimeEq;

/// Why a request may not mutate anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// 401 or 403.
    pub status: StatusCode,
    /// The message.
    pub message: &'static str,
}

/// Checks the `Authorization` header against `creds`.
pub fn check(creds: Option<&ApiCredentials>, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(creds) = creds else {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            message: "this governor has no restapi.auth credentials; its mutating endpoints are disabled",
        });
    };
    let unauthorized = Refused {
        status: StatusCode::UNAUTHORIZED,
        message: "missing or wrong credentials (Authorization: Bearer <token> or Basic)",
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(unauthorized.clone())?;
    let ok = if let Some(token) = value.strip_prefix("Bearer ") {
        creds
            .token
            .as_ref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.trim().as_bytes())))
    } else if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap_or_default();
        creds.basic.as_ref().is_some_and(|(user, password)| {
            let expected = format!("{user}:{password}");
            bool::from(expected.as_bytes().ct_eq(&decoded))
        })
    } else {
        false
    };
    if ok { Ok(()) } else { Err(unauthorized) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(v).expect("ascii"),
        );
        h
    }

    fn creds() -> ApiCredentials {
        ApiCredentials {
            token: Some("s3cret".into()),
            basic: Some(("admin".into(), "pw".into())),
        }
    }

    #[test]
    fn a_matching_token_or_basic_pair_passes() {
        assert_eq!(check(Some(&creds()), &headers("Bearer s3cret")), Ok(()));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:pw");
        assert_eq!(
            check(Some(&creds()), &headers(&format!("Basic {basic}"))),
            Ok(())
        );
    }

    #[test]
    fn anything_else_is_401_and_no_credentials_is_403() {
        for bad in ["Bearer s3cre", "Bearer ", "Basic !!!", "Token s3cret"] {
            let r = check(Some(&creds()), &headers(bad));
            assert_eq!(
                r.map_err(|e| e.status),
                Err(StatusCode::UNAUTHORIZED),
                "{bad}"
            );
        }
        let wrong = base64::engine::general_purpose::STANDARD.encode("admin:nope");
        assert_eq!(
            check(Some(&creds()), &headers(&format!("Basic {wrong}"))).map_err(|e| e.status),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            check(Some(&creds()), &HeaderMap::new()).map_err(|e| e.status),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            check(None, &headers("Bearer s3cret")).map_err(|e| e.status),
            Err(StatusCode::FORBIDDEN)
        );
        let token_only = ApiCredentials {
            token: Some("t".into()),
            basic: None,
        };
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:pw");
        assert_eq!(
            check(Some(&token_only), &headers(&format!("Basic {basic}"))).map_err(|e| e.status),
            Err(StatusCode::UNAUTHORIZED)
        );
    }
}
