//! Reading JSON request bodies: bounded in size, with errors that name the bad field.

use bytes::{Buf, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use warp::{Filter, Rejection};

use super::error::ApiError;

/// Extracts a JSON body of at most `limit` bytes into `T`.
///
/// Not declared `application/json` → 415 `UNSUPPORTED_MEDIA_TYPE` (so that no cross-site form,
/// which can only send `text/plain`, form or multipart bodies, reaches a JSON endpoint);
/// malformed JSON → 400 `INVALID_REQUEST`; a missing or mistyped field → 422
/// `VALIDATION_ERROR` with `details.field`; too large → 413 (also for chunked bodies, which
/// carry no length up front).
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::body::stream())
        .and_then(move |content_type: Option<String>, body| async move {
            if !is_json(content_type.as_deref()) {
                return Err(warp::reject::custom(ApiError::unsupported_media_type(
                    "application/json",
                )));
            }
            let bytes = collect_limited(body, limit).await?;
            parse_json(&bytes).map_err(warp::reject::custom)
        })
}

/// Whether a `Content-Type` is JSON: `application/json` or `application/<x>+json`, with any
/// parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(essence) = content_type.and_then(|value| value.split(';').next()) else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"))
}

async fn collect_limited<S, B>(body: S, limit: u64) -> Result<BytesMut, Rejection>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut body = std::pin::pin!(body);
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|err| warp::reject::custom(body_error(&err)))?;
        if (collected.len() + chunk.remaining()) as u64 > limit {
            return Err(warp::reject::custom(ApiError::payload_too_large(limit)));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let len = part.len();
            collected.extend_from_slice(part);
            chunk.advance(len);
        }
    }
    Ok(collected)
}

/// Reads a whole number also when it is written with a zero fraction (`3.0`): JSON Schema
/// counts that an integer, so clients generated from the OpenAPI document may send it.
pub fn whole_number<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= u64::MAX as f64)
            .map(|n| n as u64)
    });
    whole.and_then(|n| T::try_from(n).ok()).ok_or_else(|| {
        D::Error::custom(format!(
            "invalid value: {number}, expected a whole number in range"
        ))
    })
}

/// [`whole_number`] for an optional field (`null` or absent: `None`).
pub fn optional_whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    #[derive(Deserialize)]
    struct Whole<T: TryFrom<u64>>(#[serde(deserialize_with = "whole_number")] T);
    Ok(Option::<Whole<T>>::deserialize(deserializer)?.map(|Whole(n)| n))
}

/// Reads a struct only from a JSON object: serde also fills a struct from an array of its
/// fields in order (`[true, null]`), which the API never documents.
pub fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    let map = serde_json::Map::deserialize(deserializer)?;
    T::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom)
}

/// [`object_only`] for an optional field (`null` or absent: `None`).
pub fn optional_object_only<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    Option::<serde_json::Map<String, serde_json::Value>>::deserialize(deserializer)?
        .map(|map| T::deserialize(serde_json::Value::Object(map)).map_err(D::Error::custom))
        .transpose()
}

/// The API error for a body that could not be read: 408 when it did not arrive in time
/// ([`crate::server::BodyTimedOut`]), else 400.
pub fn body_error(err: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<crate::server::BodyTimedOut>() {
            return ApiError::request_timeout();
        }
        cause = err.source();
    }
    ApiError::bad_request(format!("could not read request body: {err}"))
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body must be a JSON document",
        ));
    }
    // Syntax first, so that malformed JSON is always a 400 whatever the fields.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map_err(|err| ApiError::bad_request(format!("malformed JSON: {err}")))?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                let field = missing_field(&message)
                    .map(|name| join_path(&path, name))
                    .unwrap_or(path);
                ApiError::validation(&field, strip_position(&message))
            }
            _ => ApiError::bad_request(format!("malformed JSON: {inner}")),
        }
    })?;
    Ok(value)
}

/// The field name in serde's "missing field `name`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join_path(path: &str, field: &str) -> String {
    if path == "." {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// serde_json appends " at line L column C"; the field already locates the problem.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
        traits: Option<Traits>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Traits {
        name: String,
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse_json::<Login>(br#"{"email":"a@b.c"}"#).unwrap_err();
        assert_eq!(err.status, 422);
        assert_eq!(err.details["field"], "password");
        assert_eq!(err.details["reason"], "missing field `password`");
    }

    #[test]
    fn nested_and_mistyped_fields_are_named() {
        let err = parse_json::<Login>(br#"{"email":"a","password":"b","traits":{"name":5}}"#)
            .unwrap_err();
        assert_eq!(err.details["field"], "traits.name");
        let err = parse_json::<Login>(br#"{"email":"a","password":"b","traits":{}}"#).unwrap_err();
        assert_eq!(err.details["field"], "traits.name");
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        for body in [&b"{\"email\":"[..], b"not json", b"{} trailing", b"  "] {
            let err = parse_json::<Login>(body).unwrap_err();
            assert_eq!(err.status, 400, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(err.code, "INVALID_REQUEST");
        }
    }

    #[test]
    fn only_json_media_types_are_json() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(Some(json)), "{json}");
        }
        for other in [
            None,
            Some("text/plain"),
            Some("text/plain; application/json"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonp"),
        ] {
            assert!(!is_json(other), "{other:?}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Counts {
        #[serde(deserialize_with = "whole_number")]
        stars: u8,
        #[serde(default, deserialize_with = "optional_whole_number")]
        limit: Option<usize>,
        #[serde(default, deserialize_with = "optional_object_only")]
        traits: Option<Traits>,
    }

    #[test]
    fn whole_numbers_may_carry_a_zero_fraction_and_structs_come_from_objects_only() {
        let counts: Counts =
            parse_json(br#"{"stars": 4.0, "limit": 20.0, "traits": {"name": "x"}}"#).unwrap();
        assert_eq!((counts.stars, counts.limit), (4, Some(20)));
        let counts: Counts = parse_json(br#"{"stars": 4, "limit": null}"#).unwrap();
        assert_eq!(counts.limit, None);
        for bad in [
            &br#"{"stars": 4.5}"#[..],
            br#"{"stars": 256}"#,
            br#"{"stars": -1}"#,
            br#"{"stars": 1, "traits": ["x"]}"#,
        ] {
            let err = parse_json::<Counts>(bad).unwrap_err();
            assert_eq!(err.status, 422, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
