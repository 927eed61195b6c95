//! One error type for the HTTP API. Each variant maps to one status in
//! [`ApiError::status_code`]; the body is JSON naming the problem. Store and
//! internal details are logged where they happen and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::intake::InvalidPayload;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong credentials")]
    Unauthorized,
    #[error("content type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error(transparent)]
    InvalidPayload(#[from] InvalidPayload),
    #[error("invalid parameter `{field}`: {message}")]
    BadParameter { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    /// Understood and refused (a decision the person may not take now).
    #[error("{0}")]
    Forbidden(String),
    /// A reload refused: every problem, one a line; the running
    /// configuration stays.
    #[error("the configuration was not reloaded; the running one stays")]
    InvalidConfiguration(Vec<String>),
    /// Retry later: the store failed or the service is overloaded.
    #[error("service unavailable: {0}")]
    Unavailable(&'static str),
}

impl ApiError {
    #[must_use]
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidPayload(_) | Self::BadParameter { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::InvalidConfiguration(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::InvalidPayload(_) => "invalid_payload",
            Self::BadParameter { .. } => "bad_parameter",
            Self::NotFound(_) => "not_found",
            Self::Forbidden(_) => "refused",
            Self::InvalidConfiguration(_) => "invalid_configuration",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = match &self {
            Self::InvalidPayload(e) => Some(e.field.clone()),
            Self::BadParameter { field, .. } => Some(field.clone()),
            _ => None,
        };
        let mut body = json!({ "error": self.code(), "message": self.to_string(), "field": field });
        if let Self::InvalidConfiguration(problems) = &self {
            body["problems"] = json!(problems);
        }
        let mut response = (self.status_code(), Json(body)).into_response();
        match self {
            Self::Unauthorized => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer, Basic realm=\"remedy\""),
                );
            }
            Self::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
