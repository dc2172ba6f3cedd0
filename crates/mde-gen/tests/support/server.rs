//! A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests and the benchmark,
//! with injectable faults. Requests are keyed by a `QID=<id>` marker in the prompt.
#![allow(dead_code)]
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault injected on one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// 429 with this Retry-After header value.
    RateLimit(&'static str),
    /// 500 with an OpenAI error body.
    ServerError,
    /// Sleeps this long (beyond the client timeout) and then answers 503.
    Slow(Duration),
    /// 200 whose body stream breaks after a few bytes (connection dropped mid-reply).
    Drop,
    /// 200 with a body that is not a chat completion.
    Malformed,
    /// 400 (fatal).
    BadRequest,
}

/// Decides the fault for (key, attempt number starting at 1); None answers normally.
pub type Plan = Arc<dyn Fn(&str, u32) -> Option<Fault> + Send + Sync>;

pub struct ServerState {
    pub plan: Plan,
    pub latency: Duration,
    /// Attempts per key.
    pub attempts: Mutex<HashMap<String, u32>>,
    /// Successful (200, valid) replies per key.
    pub successes: Mutex<HashMap<String, u32>>,
    /// Arrival time of each attempt per key.
    pub arrivals: Mutex<HashMap<String, Vec<std::time::Instant>>>,
    /// Last request body seen.
    pub last_body: Mutex<Option<Value>>,
    /// Every request body seen, in arrival order (what left the client, for leak checks).
    pub bodies: Mutex<Vec<Value>>,
    /// Every `Authorization` header seen (to prove a configured key was sent).
    pub auth_headers: Mutex<Vec<String>>,
}

pub struct TestServer {
    pub base_url: String,
    pub state: Arc<ServerState>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// The reply text for a key: a well-formed teacher answer naming the key.
pub fn reply_for(key: &str) -> String {
    format!(
        "Question: What is shown in picture {key}?\nChoices: (A) A cat (B) A dog (C) A bus (D) A tree\nAnswer: The answer is (A): A cat.\nExplanation: Picture {key} shows a cat."
    )
}

pub async fn start(plan: Plan, latency: Duration) -> TestServer {
    let state = Arc::new(ServerState {
        plan,
        latency,
        attempts: Mutex::new(HashMap::new()),
        successes: Mutex::new(HashMap::new()),
        arrivals: Mutex::new(HashMap::new()),
        last_body: Mutex::new(None),
        bodies: Mutex::new(Vec::new()),
        auth_headers: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    TestServer {
        base_url: format!("http://{addr}/v1"),
        state,
        handle,
    }
}

fn key_of(body: &Value) -> String {
    let text = body.to_string();
    text.split("QID=")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .unwrap_or_default()
}

async fn chat(State(st): State<Arc<ServerState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(a) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        st.auth_headers.lock().unwrap().push(a.to_string());
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad json").into_response(),
    };
    let key = key_of(&body);
    *st.last_body.lock().unwrap() = Some(body.clone());
    st.bodies.lock().unwrap().push(body.clone());
    let attempt = {
        let mut a = st.attempts.lock().unwrap();
        let n = a.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    st.arrivals
        .lock()
        .unwrap()
        .entry(key.clone())
        .or_default()
        .push(std::time::Instant::now());
    if !st.latency.is_zero() {
        tokio::time::sleep(st.latency).await;
    }
    let err_body = |msg: &str, t: &str| {
        json!({"error": {"message": msg, "type": t, "param": null, "code": null}}).to_string()
    };
    match (st.plan)(&key, attempt) {
        Some(Fault::RateLimit(after)) => {
            return Response::builder()
                .status(429)
                .header("retry-after", after)
                .header("content-type", "application/json")
                .body(Body::from(err_body("slow down", "rate_limit_error")))
                .unwrap();
        }
        Some(Fault::ServerError) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                err_body("boom", "server_error"),
            )
                .into_response();
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                err_body("late", "server_error"),
            )
                .into_response();
        }
        Some(Fault::Drop) => {
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"id\":\"x\",\"choices\":[")),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "dropped",
                )),
            ];
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", "4096")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap();
        }
        Some(Fault::Malformed) => {
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(
                    "{\"id\": \"x\", \"choices\": [{\"message\": oops",
                ))
                .unwrap();
        }
        Some(Fault::BadRequest) => {
            return (
                StatusCode::BAD_REQUEST,
                err_body("invalid model", "invalid_request_error"),
            )
                .into_response();
        }
        None => {}
    }
    *st.successes.lock().unwrap().entry(key.clone()).or_default() += 1;
    let model = body
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or("test")
        .to_string();
    let resp = json!({
        "id": format!("chatcmpl-{key}-{attempt}"),
        "object": "chat.completion",
        "created": 1_700_000_000u32,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_for(&key)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        resp.to_string(),
    )
        .into_response()
}
