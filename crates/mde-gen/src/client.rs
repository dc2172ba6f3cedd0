//! OpenAI-compatible chat-completion teacher on async-openai 0.43.
//!
//! async-openai's default executor retries 429/5xx/connect errors itself (3 times, its own
//! backoff) and hides status codes and `Retry-After` behind a generic error. Our runner owns
//! retry/backoff and budgets, so we install our own transport with
//! `Client::with_http_service`: a plain reqwest call (no retry layer) that turns every non-2xx
//! response into an [`HttpStatusError`] carrying the status and the parsed `Retry-After`. The
//! request and response go through async-openai's `byot` path as plain JSON, so the extra or
//! missing fields of vLLM / Ollama / llama.cpp servers do not break deserialisation.
use crate::config::{TeacherConfig, TeacherKind};
use crate::error::{GenError, Result};
use async_openai::config::{AzureConfig, OpenAIConfig};
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::Client;
use base64::Engine;
use mde_core::teacher::{
    BoxFuture, ChatMessage, Teacher, TeacherError, TeacherReply, TeacherRequest,
};
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A non-2xx HTTP response, as seen by our transport.
#[derive(Debug, Clone, thiserror::Error)]
#[error("HTTP {status}: {body}")]
pub struct HttpStatusError {
    pub status: u16,
    /// Seconds from `Retry-After` (delta-seconds or HTTP-date) or `retry-after-ms`.
    pub retry_after: Option<f64>,
    /// First bytes of the body (error message from the server).
    pub body: String,
}

/// Parses a `Retry-After` value: delta-seconds (integer or, leniently, decimal) or an IMF-fixdate
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), relative to `now_unix` seconds.
pub fn parse_retry_after(value: &str, now_unix: f64) -> Option<f64> {
    let v = value.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some(s);
    }
    let t = parse_http_date(v)?;
    Some((t - now_unix).max(0.0))
}

/// IMF-fixdate to unix seconds (the only HTTP-date form servers send today).
fn parse_http_date(v: &str) -> Option<f64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<_>>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]) as f64)
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn retry_after_of(headers: &reqwest::header::HeaderMap) -> Option<f64> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(ms / 1000.0);
        }
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| parse_retry_after(s, now_unix()))
}

/// Transport without any retry: one request, non-2xx mapped to [`HttpStatusError`].
#[derive(Clone)]
struct StatusTransport {
    client: reqwest::Client,
}

impl tower::Service<HttpRequestFactory> for StatusTransport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<
        Box<
            dyn Future<Output = std::result::Result<reqwest::Response, OpenAIError>>
                + Send
                + 'static,
        >,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = client
                .execute(request)
                .await
                .map_err(OpenAIError::Reqwest)?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after_of(response.headers());
            // The body may itself fail (dropped connection); the status is what matters.
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(500).collect();
            Err(OpenAIError::Boxed(Box::new(HttpStatusError {
                status: status.as_u16(),
                retry_after,
                body,
            })))
        })
    }
}

/// Maps an async-openai error to the runner's retry classes: 429, 5xx, timeouts, connection and
/// body errors and malformed bodies are retryable; other 4xx and client-side errors are fatal.
pub fn classify_error(e: &OpenAIError) -> TeacherError {
    match e {
        OpenAIError::Boxed(b) => {
            if let Some(h) = b.downcast_ref::<HttpStatusError>() {
                let retryable = h.status == 429 || h.status == 408 || h.status >= 500;
                let mut err = TeacherError {
                    message: h.to_string(),
                    retryable,
                    retry_after: h.retry_after,
                };
                // OpenAI's "insufficient_quota" 429 will not heal by waiting.
                if h.status == 429 && h.body.contains("insufficient_quota") {
                    err.retryable = false;
                }
                return err;
            }
            TeacherError::retryable(format!("transport: {b}"))
        }
        OpenAIError::Reqwest(r) => {
            let kind = if r.is_timeout() {
                "timeout"
            } else if r.is_connect() {
                "connect"
            } else if r.is_body() || r.is_decode() || r.is_request() {
                "connection"
            } else {
                "http"
            };
            if r.is_builder() {
                return TeacherError::fatal(format!("request build error: {r}"));
            }
            TeacherError::retryable(format!("{kind} error: {r}"))
        }
        OpenAIError::JSONDeserialize(err, body) => {
            let snippet: String = body.chars().take(200).collect();
            TeacherError::retryable(format!("malformed response body ({err}): {snippet}"))
        }
        OpenAIError::ApiError(api) => {
            let s = api.status_code.as_u16();
            TeacherError {
                message: api.to_string(),
                retryable: s == 429 || s >= 500,
                retry_after: None,
            }
        }
        other => TeacherError::fatal(other.to_string()),
    }
}

enum AnyClient {
    OpenAi(Client<OpenAIConfig>),
    Azure(Client<AzureConfig>),
}

/// A [`Teacher`] speaking the OpenAI chat-completions protocol.
pub struct OpenAiTeacher {
    client: AnyClient,
    cfg: TeacherConfig,
}

impl OpenAiTeacher {
    /// Builds the client. The API key is read from `cfg.api_key_env` (never logged).
    pub fn new(cfg: &TeacherConfig) -> Result<Self> {
        crate::config::GenConfig {
            teacher: cfg.clone(),
            ..Default::default()
        }
        .validate()
        .map_err(GenError::Client)?;
        let key = match &cfg.api_key_env {
            Some(var) if !var.is_empty() => {
                std::env::var(var).unwrap_or_default().trim().to_string()
            }
            _ => String::new(),
        };
        // async-openai would panic building the header on a key with control characters.
        if key.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
            return Err(GenError::Client(format!(
                "the API key in ${} contains characters not allowed in an HTTP header",
                cfg.api_key_env.as_deref().unwrap_or("")
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(cfg.timeout_s))
            .connect_timeout(Duration::from_secs_f64(cfg.connect_timeout_s))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| GenError::Client(format!("cannot build HTTP client: {e}")))?;
        let base = cfg.base_url.trim_end_matches('/').to_string();
        let transport = StatusTransport {
            client: http.clone(),
        };
        let client = match cfg.kind {
            TeacherKind::Openai => {
                let c = OpenAIConfig::new()
                    .with_api_base(base)
                    .with_api_key(key)
                    .with_org_id("")
                    .with_project_id("");
                AnyClient::OpenAi(Client::build(http, c).with_http_service(transport))
            }
            TeacherKind::Azure => {
                let c = AzureConfig::new()
                    .with_api_base(base)
                    .with_api_key(key)
                    .with_deployment_id(cfg.azure_deployment.clone().unwrap_or_default())
                    .with_api_version(
                        cfg.azure_api_version
                            .clone()
                            .unwrap_or_else(|| "2024-10-21".into()),
                    );
                AnyClient::Azure(Client::build(http, c).with_http_service(transport))
            }
        };
        Ok(Self {
            client,
            cfg: cfg.clone(),
        })
    }

    /// The JSON body sent for `req` (exposed for inspection and tests).
    pub fn request_body(&self, req: &TeacherRequest) -> std::result::Result<Value, TeacherError> {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            messages.push(self.message_json(m)?);
        }
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "stream": false,
        });
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        Ok(body)
    }

    fn message_json(&self, m: &ChatMessage) -> std::result::Result<Value, TeacherError> {
        if !self.cfg.vision || m.images.is_empty() || m.role != "user" {
            return Ok(json!({"role": m.role, "content": m.content}));
        }
        let mut parts = vec![json!({"type": "text", "text": m.content})];
        for img in &m.images {
            parts.push(json!({"type": "image_url", "image_url": {"url": self.image_url(img)?}}));
        }
        Ok(json!({"role": m.role, "content": parts}))
    }

    /// http(s) and data URLs pass through; a local path becomes a base64 data URL.
    fn image_url(&self, img: &str) -> std::result::Result<String, TeacherError> {
        if crate::config::is_remote_image(img) {
            return Ok(img.to_string());
        }
        // The one path policy: a query file alone can never make us send a local file that lies
        // outside the configured image root to a remote party.
        let path = self
            .cfg
            .image_policy()
            .resolve(img)
            .map_err(|e| TeacherError::fatal(format!("query image refused: {e}")))?;
        let bytes = std::fs::read(&path)
            .map_err(|e| TeacherError::fatal(format!("{}: {e}", path.display())))?;
        let mime = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => "image/png",
            Some("webp") => "image/webp",
            Some("gif") => "image/gif",
            _ => "image/jpeg",
        };
        Ok(format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    async fn call(&self, req: &TeacherRequest) -> std::result::Result<TeacherReply, TeacherError> {
        let body = self.request_body(req)?;
        let resp: std::result::Result<Value, OpenAIError> = match &self.client {
            AnyClient::OpenAi(c) => c.chat().create_byot(body).await,
            AnyClient::Azure(c) => c.chat().create_byot(body).await,
        };
        let v = resp.map_err(|e| classify_error(&e))?;
        parse_completion(&v, &self.cfg.model)
    }
}

/// Extracts text and usage from a chat-completion JSON body. A body without a text message is a
/// malformed (retryable) reply; an explicit `error` object is classified like an HTTP error.
pub fn parse_completion(
    v: &Value,
    default_model: &str,
) -> std::result::Result<TeacherReply, TeacherError> {
    if let Some(err) = v.get("error") {
        return Err(TeacherError::retryable(format!(
            "error object in 200 response: {err}"
        )));
    }
    let msg = v
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("message"));
    let content = msg.and_then(|m| m.get("content"));
    let text = match content {
        Some(Value::String(s)) => s.clone(),
        // Content parts (some servers): concatenate the text parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => {
            let snippet: String = v.to_string().chars().take(200).collect();
            return Err(TeacherError::retryable(format!(
                "response has no choices[0].message.content: {snippet}"
            )));
        }
    };
    let usage = v.get("usage");
    let tok = |k: &str| {
        usage
            .and_then(|u| u.get(k))
            .and_then(|x| x.as_u64())
            .unwrap_or(0)
    };
    Ok(TeacherReply {
        text,
        prompt_tokens: tok("prompt_tokens"),
        completion_tokens: tok("completion_tokens"),
        model: v
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or(default_model)
            .to_string(),
    })
}

impl Teacher for OpenAiTeacher {
    fn name(&self) -> String {
        self.cfg.model.clone()
    }
    fn complete<'a>(
        &'a self,
        req: &'a TeacherRequest,
    ) -> BoxFuture<'a, std::result::Result<TeacherReply, TeacherError>> {
        Box::pin(self.call(req))
    }
}

/// Builds the configured teacher as a shareable trait object.
pub fn build_teacher(cfg: &TeacherConfig) -> Result<Arc<dyn Teacher>> {
    Ok(Arc::new(OpenAiTeacher::new(cfg)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120", 0.0), Some(120.0));
        assert_eq!(parse_retry_after(" 0.25 ", 0.0), Some(0.25));
        assert_eq!(parse_retry_after("-1", 0.0), None);
        assert_eq!(parse_retry_after("soon", 0.0), None);
        // 1445412480 = Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0),
            Some(10.0)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490.0),
            Some(0.0)
        );
    }

    #[test]
    fn completion_parsing() {
        let v = json!({"model":"m","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}});
        let r = parse_completion(&v, "x").unwrap();
        assert_eq!(
            (
                r.text.as_str(),
                r.prompt_tokens,
                r.completion_tokens,
                r.model.as_str()
            ),
            ("hi", 3, 1, "m")
        );
        let e = parse_completion(&json!({"choices":[]}), "x").unwrap_err();
        assert!(e.retryable);
        let r =
            parse_completion(&json!({"choices":[{"message":{"content":"a"}}]}), "dflt").unwrap();
        assert_eq!((r.prompt_tokens, r.model.as_str()), (0, "dflt"));
    }
}
